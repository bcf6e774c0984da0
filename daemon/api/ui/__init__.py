"""The review station: a web app served by the API process at /ui/ (issue 13).

Server-rendered Jinja2 pages plus one plain ES module (``static/review.js``) and a style
sheet, all served from this package (no CDN, no fonts or scripts from outside, no build
step). Pages read Redis directly; every change goes through the public API routes
(``daemon.api.routes.review``) with the session cookie and the CSRF token from the page's
``<meta name="csrf-token">``.

Sign-in: ``POST /ui/login`` with the form field ``api_key`` (``daemon.api.session``). With no
API keys configured the API is open (loopback only) and so is the app.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from daemon import __version__
from daemon.api import session
from daemon.api.auth import ALLOWED, ANONYMOUS, client_address, hash_key, note_failure
from daemon.api.ui import views
from daemon.domain.classes import CELL_OUTCOMES
from daemon.domain.ids import valid_frame_id, valid_specimen_id
from daemon.store import audit

HERE = Path(__file__).parent
STATIC = HERE / "static"
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.globals["version"] = __version__
templates.env.filters["pct"] = views.pct
templates.env.filters["age"] = views.age
templates.env.filters["label"] = views.label

router = APIRouter(prefix="/ui", include_in_schema=False)

SECURITY_HEADERS = {
    # Everything comes from this origin; no inline scripts; frames only of our own.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Viewer:
    name: str
    role: str
    csrf: str

    @property
    def can_review(self) -> bool:
        return "review" in ALLOWED.get(self.role, frozenset())


def viewer(request: Request) -> Viewer:
    """The signed-in user of a page; no session: a redirect to the login page."""
    settings = request.app.state.settings
    if not settings.auth.keys:
        return Viewer(ANONYMOUS, "admin", "open")
    found = session.read(request)
    if found is not None:
        from daemon.api.auth import key_for_session

        if key_for_session(settings.auth.keys, found) is not None:
            return Viewer(found.name, found.role, found.csrf)
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    raise HTTPException(status_code=303, headers={"Location": f"/ui/login?next={quote(target)}"})


Me = Annotated[Viewer, Depends(viewer)]


def page(request: Request, name: str, me: Viewer | None, status_code: int = 200,
         **context) -> HTMLResponse:
    response = templates.TemplateResponse(
        request, name, {"me": me, "classes": CELL_OUTCOMES, **context}, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


def _safe_next(target: str | None) -> str:
    if target and target.startswith("/ui/") and not target.startswith("//"):
        return target
    return "/ui/specimens"


@router.get("/", response_class=HTMLResponse)
def home() -> Response:
    return RedirectResponse("/ui/specimens", status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> HTMLResponse:  # noqa: A002
    open_api = not request.app.state.settings.auth.keys
    return page(request, "login.html", None, next=_safe_next(next), open_api=open_api)


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    api_key: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str | None, Form(max_length=500)] = None,  # noqa: A002
) -> Response:
    settings = request.app.state.settings
    target = _safe_next(next)
    if not session.same_origin(request):
        return page(request, "login.html", None, 403, next=target, error="cross-site sign-in "
                    "refused", open_api=False)
    if not settings.auth.keys:
        return RedirectResponse(target, status_code=303)
    digest = hash_key(api_key.strip())
    key = None
    for candidate in settings.auth.keys:
        if hmac.compare_digest(digest, candidate.sha256):
            key = candidate
    client = request.app.state.client
    if key is None:
        note_failure(request, "ui_login", action="ui.login_failed")
        return page(request, "login.html", None, 401, next=target, error="unknown API key",
                    open_api=False)
    if key.role == "ingest":
        return page(request, "login.html", None, 403, next=target, open_api=False,
                    error=f"key {key.name!r} has role 'ingest': the review station needs a "
                    "read, reviewer or admin key")
    value, issued = session.issue(request, key.name, key.role, key.sha256)
    audit.record(client, key.name, key.role, "ui.login", address=client_address(request))
    response = RedirectResponse(target, status_code=303)
    session.set_cookie(request, response, value, int(issued.expires - time.time()))
    return response


@router.post("/logout")
def logout(request: Request, csrf_token: Annotated[str, Form(max_length=200)] = "") -> Response:
    found = session.read(request)
    if found is not None:
        if not session.csrf_ok(request, found, csrf_token):
            note_failure(request, "csrf", "auth.forbidden", found.name, found.role)
            raise HTTPException(status_code=403, detail="missing or wrong CSRF token")
        audit.record(request.app.state.client, found.name, found.role, "ui.logout",
                     address=client_address(request))
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(session.COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/specimens", response_class=HTMLResponse)
def specimens_page(
    request: Request, me: Me,
    status: Annotated[str | None, Query(pattern="^(collecting|awaiting|verified)?$")] = None,
    q: Annotated[str | None, Query(max_length=64)] = None,
    sort: Annotated[str, Query(pattern="^(age|id|blast|review|cells)$")] = "age",
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
) -> HTMLResponse:
    rows = views.specimen_rows(request.app.state)
    counts = {s: sum(1 for r in rows if r.state == s) for s in ("collecting", "awaiting",
                                                                "verified")}
    if status:
        rows = [r for r in rows if r.state == status]
    if q:
        rows = [r for r in rows if q.lower() in r.specimen.specimen_id.lower()
                or q.lower() in (r.rig or "").lower()]
    rows = views.sort_rows(rows, sort, order == "desc")
    return page(request, "specimens.html", me, rows=rows, counts=counts, status=status or "",
                q=q or "", sort=sort, order=order, now=time.time())


@router.get("/specimens/{specimen_id}", response_class=HTMLResponse)
def review_page(request: Request, me: Me, specimen_id: str) -> HTMLResponse:
    if not valid_specimen_id(specimen_id):
        raise HTTPException(status_code=400, detail="bad specimen id")
    started = time.perf_counter()
    review = views.specimen_review(request.app.state, specimen_id)
    if review is None:
        raise HTTPException(status_code=404, detail=f"no specimen {specimen_id}")
    audit.record(request.app.state.client, me.name, me.role, "ui.specimen",
                 specimen_id=specimen_id, address=client_address(request))
    response = page(request, "review.html", me, r=review,
                    signatures_required=request.app.state.settings.review.signatures)
    response.headers["Server-Timing"] = f"render;dur={(time.perf_counter() - started) * 1000:.1f}"
    return response


@router.get("/frames/{frame_id}", response_class=HTMLResponse)
def frame_page(request: Request, me: Me, frame_id: str) -> HTMLResponse:
    if not valid_frame_id(frame_id):
        raise HTTPException(status_code=400, detail="bad frame id")
    result = request.app.state.store.get(frame_id)
    if result is None:
        raise HTTPException(status_code=404, detail=f"no frame {frame_id}")
    return page(request, "frame.html", me, result=result)


@router.get("/rigs", response_class=HTMLResponse)
def rigs_page(request: Request, me: Me, partial: bool = False) -> HTMLResponse:
    rigs = views.rig_rows(request.app.state)
    return page(request, "rigs_body.html" if partial else "rigs.html", me, rigs=rigs,
                now=time.time())


def mount(app) -> None:
    """Register the review API routes, the /ui/ pages and their static files on ``app``."""
    from fastapi.staticfiles import StaticFiles

    from daemon.api.routes.review import router as review_router

    app.include_router(review_router)
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=str(STATIC)), name="ui-static")
