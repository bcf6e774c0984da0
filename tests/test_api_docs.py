"""The API documents itself: OpenAPI with auth, bodies, parameters and errors; Swagger UI and
ReDoc served from the package (an offline lab network has no CDN)."""

from __future__ import annotations

import re

from daemon.api.app import create_app
from tests.conftest import serve_http


def test_docs_work_offline_and_openapi_describes_every_route(make_settings, redis_client):
    with serve_http(create_app(make_settings(), redis_client)) as api:
        for page, asset in (("/docs", "/docs/assets/swagger-ui-bundle.js"),
                            ("/redoc", "/redoc/assets/redoc.standalone.js")):
            html = api.get(page).text
            assert asset in html
            assert not re.search(r"(src|href)=\"https?://", html), page  # nothing remote
            assert api.get(asset).status_code == 200
        assert api.get("/docs/assets/swagger-ui.css").status_code == 200
        doc = api.get("/openapi.json").json()
        assert doc["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
        assert "Stability" in doc["info"]["description"]
        push = doc["paths"]["/frames"]["post"]
        assert {p["name"] for p in push["parameters"]} >= {"specimen_id", "name", "um_per_pixel"}
        assert "multipart/form-data" in push["requestBody"]["content"]
        assert {"202", "413", "415", "422", "503"} <= set(push["responses"])
        order = doc["paths"]["/fhir/ServiceRequest"]["post"]
        assert "application/fhir+json" in order["requestBody"]["content"]
        assert {"201", "409", "422"} <= set(order["responses"])
        for path, methods in doc["paths"].items():
            for method, operation in methods.items():
                assert {"401", "403", "503"} <= set(operation["responses"]), (method, path)
