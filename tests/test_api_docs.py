"""The API documents itself: OpenAPI with auth, bodies, parameters and errors; Swagger UI and
ReDoc served from the package (an offline lab network has no CDN)."""

from __future__ import annotations

import re

from pydantic import TypeAdapter

from daemon.api.app import create_app
from daemon.api.routes import frames, orders, review, specimens
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


BINARY = ("image/", "application/octet-stream")


def _has_example(doc: dict, media: dict) -> bool:
    if "example" in media or "examples" in media:
        return True
    schema = media.get("schema", {})
    if "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return "example" in schema or "examples" in schema


def _undocumented(doc: dict, where: str, content: dict | None) -> list[str]:
    if not content:
        return [f"{where}: no body described"]
    missing = []
    for media_type, media in content.items():
        schema = media.get("schema", {})
        if media_type.startswith(BINARY):  # bytes: a binary schema is the description
            if schema.get("format") != "binary":
                missing.append(f"{where} {media_type}: not described as binary")
        elif media_type == "multipart/form-data":  # an upload: its file part is binary
            parts = schema.get("properties", {}).values()
            if not any(part.get("format") == "binary" for part in parts):
                missing.append(f"{where} {media_type}: no binary part")
        elif not _has_example(doc, media):
            missing.append(f"{where} {media_type}: no example")
    return missing


def test_every_answer_and_body_in_openapi_has_an_example(make_settings, redis_client):
    """Issue 14: every route's success and error answers (and JSON bodies) carry an example,
    and the examples of routes with a response model validate against it."""
    app = create_app(make_settings(), redis_client)
    with serve_http(app) as api:
        doc = api.get("/openapi.json").json()
    missing = []
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            codes = set(operation["responses"])
            if not any(code.startswith("2") for code in codes):
                missing.append(f"{method} {path}: no success answer")
            if not any(code[0] in "45" for code in codes):
                missing.append(f"{method} {path}: no error answer")
            for code, answer in operation["responses"].items():
                missing += _undocumented(doc, f"{method} {path} {code}", answer.get("content"))
            if "requestBody" in operation:
                missing += _undocumented(doc, f"{method} {path} body",
                                         operation["requestBody"]["content"])
    assert not missing, "\n".join(missing)

    checked = 0
    routers = (app.router, frames.router, orders.router, review.router, specimens.router)
    for route in (route for router in routers for route in router.routes):
        model = getattr(route, "response_model", None)
        if model is None or not getattr(route, "include_in_schema", False):
            continue
        for method in route.methods:
            operation = doc["paths"][route.path_format][method.lower()]
            for code, answer in operation["responses"].items():
                example = answer.get("content", {}).get("application/json", {}).get("example")
                if code.startswith("2") and example is not None:
                    TypeAdapter(model).validate_python(example)
                    checked += 1
    assert checked >= 10
