"""The HTTP API. Routes are thin: state comes from Redis through injected dependencies, and
the OpenAPI schema is generated from the same pydantic models the workers store."""

import logging
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Literal

import redis
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from daemon import __version__, telemetry
from daemon.api import examples as ex
from daemon.api.auth import require, require_if
from daemon.api.paging import After
from daemon.domain.ids import valid_frame_id
from daemon.domain.results import FrameResult, ResultPage
from daemon.ops.metrics import RedisCollector
from daemon.ops.status import Readiness, StatusReader, StatusReport
from daemon.settings import Settings
from daemon.store.connection import connect
from daemon.store.paging import BadCursor
from daemon.store.results import ResultStore

log = logging.getLogger(__name__)

MetricsScope = Literal["all", "shared", "process"]


def get_store(request: Request) -> ResultStore:
    return request.app.state.store


def get_reader(request: Request) -> StatusReader:
    return request.app.state.reader


Store = Annotated[ResultStore, Depends(get_store)]
Reader = Annotated[StatusReader, Depends(get_reader)]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    # The decoding processes of POST /frames (made on the first push) end with the app.
    pool = getattr(app.state, "decode_pool", None)
    if pool is not None:
        await run_in_threadpool(pool.shutdown)


def create_app(settings: Settings, client: redis.Redis | None = None) -> FastAPI:
    client = client or connect(settings)
    started_at = time.time()
    reader = StatusReader(client, settings, started_at)
    try:  # a Redis of your own keeps specimens' frame indexes compact without a hand setting
        reader.zsets.state()
    except redis.RedisError as exc:  # down at start-up: checked again with /status
        log.warning("redis unavailable at start-up", extra={"error": str(exc)})
    store = ResultStore(client)
    # /metrics in three scopes: "shared" (the Redis-kept counts and live gauges: the same in
    # every API replica), "process" (the process-local metrics: this process's, or its
    # `leukoscope run` tree's through the multiprocess folder, and this server's slow-client
    # bounds) and "all" (both, the default: one replica, or `leukoscope run`).
    from daemon.api.server import HttpStats

    http_stats = HttpStats()  # the slow-client bounds of the server serving this app
    shared = RedisCollector(client, reader.live_gauges)
    local = telemetry.collector()
    registries = {"all": CollectorRegistry(auto_describe=False),
                  "shared": CollectorRegistry(auto_describe=False),
                  "process": CollectorRegistry(auto_describe=False)}
    for scope, parts in (("all", (shared, local, http_stats)), ("shared", (shared,)),
                         ("process", (local, http_stats))):
        for part in parts:
            registries[scope].register(part)

    app = FastAPI(
        title="leukoscope",
        version=__version__,
        description="White-cell segmentation and ALL subtype classification results, LIS "
        "orders and reports. For research use only. Not for use in diagnostic procedures.\n\n"
        "**Stability:** routes, fields and codes documented here change only compatibly "
        "(fields and routes are added, never renamed or removed) within a major version of "
        "`leukoscope`; `info.version` is that version. Errors are JSON `{\"detail\": ...}` "
        "with the status codes listed per route; 401 (no or unknown key), 403 (role) and 503 "
        "(Redis unavailable) can come from any protected route.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        responses={
            401: {"description": "missing, malformed or unknown API key (when keys are "
                  "configured)", "content": {"application/json": {"example": {
                      "detail": "missing API key: send 'Authorization: Bearer <key>'"}}}},
            403: {"description": "the key's role does not allow this route",
                  "content": {"application/json": {"example": {
                      "detail": "key 'lis' has role 'read'; this needs 'ingest'"}}}},
            503: {"description": "Redis unavailable", "content": {"application/json": {
                "example": {"detail": "redis unavailable: Connection refused"}}}},
        },
    )
    from daemon.api.docs import add_docs

    add_docs(app)

    app.state.settings = settings
    app.state.client = client
    app.state.store = store
    app.state.reader = reader
    app.state.http_stats = http_stats
    from daemon.api.routes.specimens import router as specimens_router

    app.include_router(specimens_router)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.api.max_body_bytes:
            return JSONResponse(
                status_code=413,
                content={"detail": f"request body over {settings.api.max_body_bytes} bytes"},
            )
        return await call_next(request)

    @app.exception_handler(BadCursor)
    async def bad_cursor(_request: Request, exc: BadCursor) -> JSONResponse:
        # Every paged route (/results, /specimens, /audit): a cursor we did not hand out.
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    @app.exception_handler(redis.RedisError)
    async def redis_down(_request: Request, exc: redis.RedisError) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": f"redis unavailable: {exc}"})

    @app.get("/healthz", tags=["ops"], responses={200: ex.ok({"status": "ok"})},
             dependencies=[Depends(require_if("protect_health"))])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["ops"],
        response_model=Readiness,
        responses={200: ex.ok(ex.READY, "ready"),
                   503: {"model": Readiness, **ex.ok(ex.NOT_READY, "not ready, and why")}},
        dependencies=[Depends(require_if("protect_ready"))],
    )
    def readyz(
        reader: Reader,
        scope: Annotated[Literal["process", "installation"], Query(
            description="`process` (default): this API process can serve (Redis answers). "
            "`installation`: also a live worker and the backlog within "
            "`queue.ready_max_backlog`, which /readyz checked before issue 16")] = "process",
    ) -> JSONResponse:
        readiness = reader.readiness(scope)
        return JSONResponse(
            status_code=200 if readiness.ready else 503, content=readiness.model_dump()
        )

    @app.get("/status", tags=["ops"], responses={200: ex.ok(ex.STATUS)},
             dependencies=[Depends(require("read"))])
    def status(reader: Reader) -> StatusReport:
        return reader.report()

    @app.get(
        "/metrics",
        tags=["ops"],
        response_class=Response,
        responses={200: ex.ok(ex.METRICS, "Prometheus text format", CONTENT_TYPE_LATEST)},
        dependencies=[Depends(require_if("protect_metrics"))],
    )
    def metrics_endpoint(
        scope: Annotated[MetricsScope, Query(
            description="all; shared: the Redis-kept counts and live gauges (the same in every "
            "replica: scrape one); process: the process-local metrics of this API process, "
            "and under `leukoscope run` of its whole process tree (scrape every replica)")
        ] = "all",
    ) -> Response:
        return Response(generate_latest(registries[scope]), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/results",
        tags=["results"],
        response_model=ResultPage,
        response_model_by_alias=True,
        responses={200: ex.ok(ex.RESULT_PAGE), 400: ex.BAD_CURSOR},
        dependencies=[Depends(require("read", "results.page"))],
    )
    def results(
        store: Store,
        after: After = None,
        limit: Annotated[int, Query(ge=1, le=settings.api.max_page,
                                    description="items per page at most")] = 100,
    ) -> ResultPage:
        return ResultPage.of(store.page(after, limit))

    @app.get(
        "/frames/{frame_id}",
        tags=["results"],
        response_model=FrameResult,
        response_model_by_alias=True,
        responses={200: ex.ok(ex.FRAME), 400: ex.BAD_FRAME_ID, 404: ex.NO_FRAME},
        dependencies=[Depends(require("read", "frame.read"))],
    )
    def frame(store: Store, frame_id: str) -> FrameResult:
        if not valid_frame_id(frame_id):
            raise HTTPException(status_code=400, detail="frame_id must be 1-64 of [A-Za-z0-9_-]")
        result = store.get(frame_id)
        if result is None:
            raise HTTPException(status_code=404, detail=f"no result for frame {frame_id}")
        return result

    from daemon.api.routes.frames import router as frames_router

    app.include_router(frames_router)  # POST /frames: HTTP push of frames (issue 4)
    from daemon.api.routes.orders import router as orders_router

    app.include_router(orders_router)  # orders from the LIS (FHIR ServiceRequest)
    from daemon.api.ui import mount as mount_review_station

    mount_review_station(app)  # /ui/ and the API under it (issue 13)
    return app


def run_api(settings: Settings) -> int:
    import uvicorn

    app = create_app(settings)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT and then re-raises the signal to the
    # handlers that were there before it; no-op handlers make that a clean exit 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    from daemon.api.auth import is_loopback
    from daemon.ops.housekeeping import Housekeeper

    host = settings.api.host
    if not settings.auth.keys:
        if not is_loopback(host) and settings.auth.open_network:
            log.error(
                "NO API KEYS CONFIGURED and auth.open_network is on: the API is open without "
                "authentication on a non-loopback address; make sure only trusted hosts reach it",
                extra={"host": host},
            )
        elif not is_loopback(host):
            log.error(
                "NO API KEYS CONFIGURED: refusing to serve an open API on a non-loopback "
                "address; binding to 127.0.0.1 instead. Add auth.keys (leukoscope keygen "
                "NAME ROLE) to serve other hosts.",
                extra={"configured_host": host},
            )
            host = "127.0.0.1"
        else:
            log.warning(
                "no API keys configured: the API is open without authentication and "
                "listens on loopback only",
                extra={"host": host},
            )
    if "ready_max_backlog" in settings.queue.model_fields_set:
        log.warning(
            "queue.ready_max_backlog is set, but /readyz now says whether this API process can "
            "serve; the worker and backlog checks are at /readyz?scope=installation",
            extra={"ready_max_backlog": settings.queue.ready_max_backlog},
        )
    tls = settings.api.tls
    ssl = (
        {"ssl_certfile": str(tls.certfile), "ssl_keyfile": str(tls.keyfile)} if tls.certfile else {}
    )
    housekeeper = Housekeeper(settings, app.state.client)
    housekeeper.start()
    log.info(
        "api listening",
        extra={
            "host": host,
            "port": settings.api.port,
            "scheme": "https" if ssl else "http",
            "api_keys": len(settings.auth.keys),
        },
    )
    from daemon.api.server import server_config

    try:
        uvicorn.Server(server_config(app, settings, host, settings.api.port,
                                     app.state.http_stats, **ssl)).run()
    finally:
        housekeeper.stop()
    return 0
