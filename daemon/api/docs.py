"""API documentation served from the package, so it works on an offline lab network.

``/docs``: Swagger UI from the ``swagger-ui-bundle`` package's files, at ``/docs/assets``;
``/redoc``: ReDoc from ``daemon/api/static/redoc/`` (vendored ``redoc.standalone.js`` 2.5.4,
MIT), without Google Fonts. ``/openapi.json`` is FastAPI's, with the bearer scheme, the
routes' examples (``daemon.api.examples``) and one for FastAPI's own validation error. No page
loads anything from another host.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

REDOC_DIR = Path(__file__).parent / "static" / "redoc"


def add_docs(app: FastAPI) -> None:
    import swagger_ui_bundle

    from daemon.api.examples import VALIDATION_ERROR

    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = generate()
            # FastAPI's 422 (a parameter or body that fails validation) on every such route.
            found = schema.get("components", {}).get("schemas", {}).get("HTTPValidationError")
            if found is not None:
                found["examples"] = [VALIDATION_ERROR]
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path),
              name="swagger-ui")
    app.mount("/redoc/assets", StaticFiles(directory=REDOC_DIR), name="redoc")

    # What both pages share: the schema, the title, the icon (all served from here).
    common = {"openapi_url": app.openapi_url or "/openapi.json", "title": f"{app.title} API"}
    favicon = "/docs/assets/favicon-32x32.png"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(**common, swagger_js_url="/docs/assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/assets/swagger-ui.css",
                                   swagger_favicon_url=favicon)

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(**common, redoc_js_url="/redoc/assets/redoc.standalone.js",
                              redoc_favicon_url=favicon, with_google_fonts=False)
