"""API keys with roles.

Keys are configured as SHA-256 hex digests (``auth.keys``), never in clear; a client sends
``Authorization: Bearer <key>``. Roles: ``ingest`` (POST /frames, complete a specimen),
``read`` (results, specimens, reports, status), ``reviewer`` (read, plus reclassify cells and
sign specimens: the review station), ``admin`` (everything, /audit). A missing or unknown key
is 401, a key whose role does not allow the route 403. A browser signed in at /ui/ sends a
session cookie instead (``daemon.api.session``); with it, a state-changing request without
the right CSRF token is 403.

With no key configured the API is open, and ``run_api`` binds it to loopback only.

Refusals (401 and 403) are logged, counted and audited (``auth.failed``, ``auth.forbidden``),
but a flood of them must not grow the audit trail: :class:`RefusalLimiter` lets through a
token bucket's worth per client address and reason and per process; the rest are counted in
``leukoscope_audit_refusals_dropped_total`` and not written.

Route dependencies: ``Depends(require("read", audit="frame.read"))`` authenticates, checks
the role and appends the access to the audit trail (with the route's specimen/frame id).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from daemon import telemetry
from daemon.api import session
from daemon.settings import Settings
from daemon.store import audit

log = logging.getLogger(__name__)

ALLOWED: dict[str, frozenset[str]] = {
    "ingest": frozenset({"ingest"}),
    "read": frozenset({"read"}),
    "reviewer": frozenset({"read", "review"}),
    "admin": frozenset({"ingest", "read", "review", "admin"}),
}
KEY_PREFIX = "lks_"
ANONYMOUS = "anonymous"  # the caller when no keys are configured (loopback-only API)

# Declares the scheme in OpenAPI (and /docs' Authorize button); the checks and their 401
# messages stay ours, so auto_error is off.
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    description="An API key from `leukoscope keygen NAME ROLE`, sent as "
    "`Authorization: Bearer <key>`. Roles: ingest, read, reviewer, admin. Not needed while no key is "
    "configured (the API then serves loopback only).",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


@dataclass(frozen=True)
class Caller:
    name: str
    role: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def keygen(name: str, role: str) -> tuple[str, str]:
    """A new key and its ``auth.keys`` config line (only the digest goes in config)."""
    key = generate_key()
    line = f"- {{name: {name}, role: {role}, sha256: {hash_key(key)}}}"
    return key, line


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TokenBucket:
    """``rate`` tokens per minute, at most ``rate`` held (the burst): ``take()`` is True while
    a token is left."""

    __slots__ = ("rate", "tokens", "stamp")

    def __init__(self, rate: int, now: float) -> None:
        self.rate = rate
        self.tokens = float(rate)
        self.stamp = now

    def refill(self, now: float) -> None:
        self.tokens = min(float(self.rate), self.tokens + (now - self.stamp) * self.rate / 60.0)
        self.stamp = now


class RefusalLimiter:
    """Which refused requests are written to the audit trail: a token bucket per (client
    address, reason) and one for the whole process, both must have a token.

    The per-client buckets are kept for at most ``MAX_CLIENTS`` addresses (least recently
    refused forgotten first), so a flood from many addresses costs bounded memory too; a
    forgotten client starts again with a full bucket, which the process-wide bucket bounds.
    """

    MAX_CLIENTS = 4096

    def __init__(self, per_client: int, overall: int, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.per_client = per_client
        self.clock = clock
        self.overall = TokenBucket(overall, clock())
        self.clients: OrderedDict[tuple[str, str], TokenBucket] = OrderedDict()
        self.lock = threading.Lock()  # sync dependencies run in the thread pool

    def allow(self, address: str | None, reason: str) -> bool:
        now = self.clock()
        key = (address or "-", reason)
        with self.lock:
            bucket = self.clients.pop(key, None) or TokenBucket(self.per_client, now)
            self.clients[key] = bucket  # most recent last
            while len(self.clients) > self.MAX_CLIENTS:
                self.clients.popitem(last=False)
            bucket.refill(now)
            self.overall.refill(now)
            if bucket.tokens < 1 or self.overall.tokens < 1:
                return False
            bucket.tokens -= 1
            self.overall.tokens -= 1
            return True


def limiter(request: Request) -> RefusalLimiter:
    """The app's limiter (made on first use, so an app built without create_app has one)."""
    state = request.app.state
    found = getattr(state, "refusal_limiter", None)
    if found is None:
        trail = state.settings.audit
        found = state.refusal_limiter = RefusalLimiter(trail.refused_per_client_per_minute,
                                                       trail.refused_per_minute)
    return found


def note_failure(request: Request, reason: str, action: str = "auth.failed",
                 key: str = "-", role: str = "-") -> None:
    """Log, count (leukoscope_auth_failures_total) and audit (``action``) a refused caller;
    over the refusal budget (:class:`RefusalLimiter`) the audit entry is only counted."""
    address = client_address(request)
    log.warning(
        "authentication failed" if action != "auth.forbidden" else "request forbidden",
        extra={"reason": reason, "client": address, "method": request.method,
               "path": request.url.path, "key": key},
    )
    telemetry.count("leukoscope_auth_failures_total", {"reason": reason})
    client = request.app.state.client
    try:
        if limiter(request).allow(address, reason):
            audit.record(client, key, role, action, detail=f"{reason} {request.method} "
                         f"{request.url.path}"[:200], address=address)
        else:
            telemetry.count("leukoscope_audit_refusals_dropped_total", {"reason": reason})
    except Exception:  # a refusal must not become a 500 because Redis is away
        log.warning("could not record an authentication failure")


def _refuse(request: Request, reason: str, detail: str) -> HTTPException:
    """A 401, logged, counted and audited (``note_failure``)."""
    note_failure(request, reason)
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def authenticate(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Caller:
    settings: Settings = request.app.state.settings
    keys = settings.auth.keys
    if not keys:
        return Caller(ANONYMOUS, "admin")
    if not request.headers.get("authorization", ""):
        if request.cookies.get(session.COOKIE):
            return _from_session(request, keys)
        raise _refuse(request, "missing", "missing API key: send 'Authorization: Bearer <key>'")
    token = credentials.credentials if credentials is not None else ""
    if not token.strip():
        raise _refuse(request, "malformed",
                      "malformed Authorization header: expected 'Bearer <key>'")
    digest = hash_key(token.strip())
    for key in keys:
        if hmac.compare_digest(digest, key.sha256):
            return Caller(key.name, key.role)
    raise _refuse(request, "unknown_key", "unknown API key")


def key_for_session(keys: list, found: session.Session):
    """The configured key a session was issued for, or None (removed or replaced)."""
    for key in keys:
        if key.name == found.name and key.role == found.role and key.sha256.startswith(
            found.key_prefix
        ):
            return key
    return None


def _from_session(request: Request, keys: list) -> Caller:
    found = session.read(request)
    if found is None or key_for_session(keys, found) is None:
        raise _refuse(request, "session", "session expired or invalid: sign in again")
    if request.method not in session.SAFE_METHODS and not session.csrf_ok(request, found):
        note_failure(request, "csrf", "auth.forbidden", found.name, found.role)
        raise HTTPException(status_code=403, detail="missing or wrong CSRF token")
    return Caller(found.name, found.role)


def check_role(caller: Caller, role: str, request: Request | None = None) -> None:
    """403 unless ``caller``'s role allows ``role``; with ``request``, the refusal is
    logged, counted and audited (rate-limited) like a 401."""
    if role not in ALLOWED[caller.role]:
        if request is not None:
            note_failure(request, "role", "auth.forbidden", caller.name, caller.role)
        raise HTTPException(
            status_code=403,
            detail=f"key {caller.name!r} has role {caller.role!r}; this needs {role!r}",
        )


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


def require(role: str, audit_action: str | None = None) -> Callable[[Request], Caller]:
    """A dependency: authenticate, check ``role``, and audit ``audit_action`` if given."""

    def dependency(request: Request, credentials: Credentials) -> Caller:
        caller = authenticate(request, credentials)
        check_role(caller, role, request)
        if audit_action is not None:
            params = request.path_params
            detail = str(request.url.query)[:200] or None
            audit.record(
                request.app.state.client,
                caller.name,
                caller.role,
                audit_action,
                specimen_id=params.get("specimen_id"),
                frame_id=params.get("frame_id"),
                detail=detail,
                address=client_address(request),
            )
        return caller

    return dependency


def require_if(flag: str, role: str = "read") -> Callable[[Request], Caller | None]:
    """For /healthz, /readyz, /metrics: open unless ``auth.<flag>`` is true."""

    def dependency(request: Request, credentials: Credentials) -> Caller | None:
        settings: Settings = request.app.state.settings
        if not getattr(settings.auth, flag):
            return None
        caller = authenticate(request, credentials)
        check_role(caller, role, request)
        return caller

    return dependency
