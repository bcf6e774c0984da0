"""Browser sessions for the review station (/ui/, issue 13).

Signing in (``POST /ui/login`` with the form field ``api_key``) checks the key like a Bearer
key and sets one cookie: ``<payload>.<HMAC-SHA256>``, the payload holding the key's name, role,
a prefix of its digest (removing or replacing the key in config ends its sessions), the expiry
and a random CSRF token. The cookie is HttpOnly, SameSite=Strict, Secure under TLS, and lasts
``review.session_hours``. Every state-changing request made with the cookie must send the
CSRF token in the ``X-CSRF-Token`` header (or the ``csrf_token`` form field) and, when the
browser sends an ``Origin``, come from the API's own origin. Bearer-key clients need neither:
they hold no ambient credential a foreign page could ride on.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from fastapi import Request

COOKIE = "lks_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Session:
    name: str
    role: str
    key_prefix: str
    expires: float
    csrf: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def secret(request: Request) -> bytes:
    """The signing secret: ``review.session_secret``, else a random one shared via Redis."""
    state = request.app.state
    cached = getattr(state, "session_secret", None)
    if cached is None:
        configured = state.settings.review.session_secret
        if configured:
            cached = configured.encode()
        else:
            from daemon.store.review import session_secret

            cached = session_secret(state.client, secrets.token_bytes(32))
        state.session_secret = cached
    return cached


def issue(request: Request, name: str, role: str, key_sha256: str) -> tuple[str, Session]:
    hours = request.app.state.settings.review.session_hours
    session = Session(name, role, key_sha256[:16], time.time() + hours * 3600,
                      secrets.token_urlsafe(24))
    payload = _b64(json.dumps({"n": name, "r": role, "k": session.key_prefix,
                               "e": session.expires, "c": session.csrf}).encode())
    mac = hmac.new(secret(request), payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(mac)}", session


def read(request: Request) -> Session | None:
    """The request's valid, unexpired session, or None."""
    cookie = request.cookies.get(COOKIE)
    if not cookie or "." not in cookie or len(cookie) > 2000:
        return None
    payload, _, mac = cookie.partition(".")
    expected = hmac.new(secret(request), payload.encode(), hashlib.sha256).digest()
    try:
        if not hmac.compare_digest(_unb64(mac), expected):
            return None
        data = json.loads(_unb64(payload))
        session = Session(str(data["n"]), str(data["r"]), str(data["k"]), float(data["e"]),
                          str(data["c"]))
    except (ValueError, KeyError, TypeError):
        return None
    if session.expires < time.time():
        return None
    return session


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another origin."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null" and request.method in SAFE_METHODS:
        return True
    host = request.headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}")


def csrf_ok(request: Request, session: Session, form_token: str | None = None) -> bool:
    if not same_origin(request):
        return False
    token = request.headers.get(CSRF_HEADER) or form_token or ""
    return bool(token) and hmac.compare_digest(token.encode(), session.csrf.encode())


def set_cookie(request: Request, response, value: str, max_age: int) -> None:
    response.set_cookie(
        COOKIE, value, max_age=max_age, path="/", httponly=True, samesite="strict",
        secure=request.url.scheme == "https",
    )
