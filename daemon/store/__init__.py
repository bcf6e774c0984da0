"""Store: everything that talks to Redis (connection, queue, results, specimens, heartbeats, audit)."""
