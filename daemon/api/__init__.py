"""API: the FastAPI app, API-key auth, and the routers under routes/."""
