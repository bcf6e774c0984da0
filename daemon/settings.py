"""Settings: one pydantic model, read from config.yaml, overridable by environment variables.

``LEUKOSCOPE_API__PORT=9000`` overrides ``api.port``. Relative paths given in a file resolve
against that file's folder; without a file, against the working directory. Omitted model
paths default to the models shipped in this repository's ``models/``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, overload
from urllib.parse import parse_qs, unquote, urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from daemon.domain.ids import KEY_NAME_PATTERN, RIG_ID_PATTERN, SPECIMEN_ID_PATTERN, UNASSIGNED
from daemon.domain.limits import HL7_MAX_LENGTH, HL7_RESERVED, PHYSICAL_UM_PER_PIXEL

SHIPPED_MODELS = Path(__file__).resolve().parent.parent / "models"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SentinelSettings(_Section):
    """Redis high availability: the master is found through Redis Sentinel (redis-py's
    ``Sentinel``), and found again after a failover."""

    master: str = Field(min_length=1, description="the name the sentinels monitor the master as")
    nodes: list[str] = Field(min_length=1, description="sentinels, each 'host:port'")
    password: str | None = Field(default=None, description="password of the Redis servers")
    username: str | None = Field(default=None, description="ACL user of the Redis servers")
    sentinel_password: str | None = Field(default=None, description="password of the sentinels")
    db: int = Field(default=0, ge=0)
    ssl: bool = Field(default=False, description="TLS to the Redis servers and the sentinels")
    ssl_ca_certs: Path | None = Field(default=None, description="CA bundle (PEM) for TLS")

    @field_validator("nodes")
    @classmethod
    def _host_port(cls, nodes: list[str]) -> list[str]:
        for node in nodes:
            host, _, port = node.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{node!r} is not 'host:port'")
        return nodes

    def addresses(self) -> list[tuple[str, int]]:
        return [(n.rpartition(":")[0].strip("[]"), int(n.rpartition(":")[2])) for n in self.nodes]


SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")


def sentinel_from_url(url: str) -> SentinelSettings:
    """``redis+sentinel://[[user]:password@]host:port[,host:port...]/master[/db]`` (``rediss+``
    for TLS; query ``sentinel_password`` and ``ssl_ca_certs``) -> the ``redis.sentinel`` block.
    The user and password are the Redis servers'; the sentinels' own password is a query
    parameter because one URL has one userinfo."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    path = [unquote(p) for p in parts.path.split("/") if p]
    if not hosts or not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"{parts.scheme} URLs are {parts.scheme}://[[user]:password@]host:port"
                         "[,host:port...]/master[/db]")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"sentinel_password", "ssl_ca_certs"}
    if unknown:
        raise ValueError(f"unknown {parts.scheme} URL parameter(s): {', '.join(sorted(unknown))}")
    return SentinelSettings(
        master=path[0], nodes=hosts.split(","), db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(username) or None, password=unquote(password) or None,
        sentinel_password=query.get("sentinel_password"),
        ssl=parts.scheme == "rediss+sentinel", ssl_ca_certs=query.get("ssl_ca_certs"))


class RedisSettings(_Section):
    url: str | None = Field(
        default=None,
        description="redis://, rediss:// or unix:// URL, or redis+sentinel:// / rediss+sentinel:// "
        "(read as redis.sentinel); null runs an embedded Redis under data_dir (unless "
        "redis.sentinel is set)",
    )
    sentinel: SentinelSettings | None = Field(
        default=None, description="find the master through Redis Sentinel (instead of url)"
    )
    memory_budget_bytes: int = Field(
        default=2 * 1024**3,
        gt=0,
        description="Redis memory this installation is sized for: shown in /status and "
        "/metrics (leukoscope_redis_memory_budget_bytes); the alert fires above 80 %",
    )

    @model_validator(mode="after")
    def _url_or_sentinel(self) -> RedisSettings:
        if self.url and self.sentinel is not None:
            raise ValueError("set redis.url or redis.sentinel, not both")
        if self.url and self.url.split("://", 1)[0] in SENTINEL_SCHEMES:
            # One form for the code after this: the URL becomes the settings block.
            try:
                self.sentinel, self.url = sentinel_from_url(self.url), None
            except (ValueError, ValidationError) as exc:  # name the key the user wrote
                problems = exc.errors() if isinstance(exc, ValidationError) else [{"msg": exc}]
                raise ValueError("url: " + "; ".join(str(p["msg"]) for p in problems)) from exc
        return self


class QcSettings(_Section):
    """Frame quality control, run where a frame is decoded for analysis (the workers; see
    daemon/imaging/quality.py for the measures)."""

    enabled: bool = True
    min_focus: float = Field(
        default=25.0, ge=0, description="variance of the Laplacian; calibrate per rig and objective"
    )
    saturated_level: int = Field(default=254, ge=1, le=255)
    max_saturated_fraction: float = Field(default=0.90, ge=0, le=1)
    dark_level: int = Field(default=25, ge=0, le=254)
    max_dark_fraction: float = Field(default=0.50, ge=0, le=1)
    min_mean_brightness: float = Field(default=40.0, ge=0, le=255)
    stain_saturation: int = Field(default=40, ge=0, le=255)
    min_stained_fraction: float = Field(default=0.005, ge=0, le=1)


class OpenCvSettings(_Section):
    """``capture.source: opencv``: anything cv2.VideoCapture opens."""

    uri: str = Field(default="0", description="device index, path, image sequence, URL or pipeline")
    backend: Literal["any", "ffmpeg", "gstreamer", "v4l2", "dshow", "msmf", "images"] = "any"
    width: int | None = Field(default=None, gt=0)
    height: int | None = Field(default=None, gt=0)
    fps: float | None = Field(default=None, gt=0)
    exposure: float | None = Field(default=None, description="CAP_PROP_EXPOSURE, backend units")
    fourcc: str | None = Field(default=None, min_length=4, max_length=4)
    latest_only: bool | None = Field(
        default=None,
        description="keep only the newest frame (live); null: false for files and sequences",
    )
    stall_seconds: float = Field(
        default=5.0, gt=0, description="no new (or only identical) frames this long: reconnect"
    )
    max_read_failures: int = Field(default=30, gt=0)
    reconnect_min_seconds: float = Field(default=0.5, gt=0)
    reconnect_max_seconds: float = Field(default=30.0, gt=0)
    specimen_id: str = Field(default=UNASSIGNED, pattern=SPECIMEN_ID_PATTERN)
    encoding: Literal["png", "jpg"] = "png"


class GatingSettings(_Section):
    """Which frames of a live stream are captured."""

    mode: Literal["settle", "interval", "every"] = "settle"
    motion_threshold: float = Field(
        default=0.005, gt=0, le=1, description="share of pixels changed by >15 grey levels = moving"
    )
    settle_seconds: float = Field(default=0.5, ge=0, description="still this long before capture")
    require_focus: bool = Field(default=True, description="settle waits for qc.min_focus too")
    interval_seconds: float = Field(default=5.0, gt=0)


class CaptureSettings(_Section):
    source: Literal["directory", "opencv"] = "directory"
    um_per_pixel: float | None = Field(
        default=None,
        ge=PHYSICAL_UM_PER_PIXEL[0],
        le=PHYSICAL_UM_PER_PIXEL[1],
        allow_inf_nan=False,
        description="pixel size of this rig's frames (µm, 0.01-100); CZI metadata wins",
    )
    tiff_bit_depth: int | None = Field(
        default=None,
        ge=9,
        le=16,
        description="significant bits of >8-bit TIFFs; null: smallest of 10/12/14/16 holding the max",
    )
    czi_tile_frames: bool = Field(
        default=True, description="one frame per CZI tile (mosaics); false: one per scene"
    )
    qc: QcSettings = QcSettings()
    opencv: OpenCvSettings = OpenCvSettings()
    gating: GatingSettings = GatingSettings()
    directory: Path = Path("inbox")
    rig_id: str = Field(default="rig-1", pattern=RIG_ID_PATTERN)
    settle_seconds: float = Field(
        default=1.0,
        gt=0,
        description="a file is taken once its size and mtime are unchanged this long",
    )
    poll_seconds: float = Field(default=1.0, gt=0, description="rescan interval (network shares)")
    native_events: bool = Field(default=True, description="use inotify & co. where the OS has them")
    empty_folder_seconds: float = Field(
        default=86_400.0,
        ge=0,
        allow_inf_nan=False,
        description="a folder in the inbox that stays empty this long (by its mtime) is removed, "
        "so the inbox does not keep a folder per specimen for ever; 0: never",
    )
    max_frame_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    max_frame_pixels: int = Field(
        default=16_777_216,
        gt=0,
        le=1 << 28,
        description="width x height of one frame (page, scene, tile), read from the header "
        "before decoding; larger: rejected 'too_large' (capture, HTTP push and workers)",
    )
    max_file_pages: int = Field(
        default=64, gt=0, description="frames (TIFF pages, CZI scenes/tiles) of one file; "
        "more: the file is rejected 'too_large'"
    )


class QueueSettings(_Section):
    max_backlog: int = Field(
        default=256, gt=0, description="capture pauses while this many frames wait in Redis"
    )
    claim_idle_seconds: float = Field(
        default=30.0, gt=0, description="a frame pending this long on a silent worker is reclaimed"
    )
    max_deliveries: int = Field(
        default=3, gt=0, description="a frame that crashed this many workers is stored as failed"
    )
    ready_max_backlog: int = Field(
        default=1024, gt=0, description="/readyz?scope=installation fails while more frames "
        "than this wait (plain /readyz is per API process since issue 16)"
    )
    inline_max_bytes: int | None = Field(
        default=32_768, ge=0,
        description="frames larger than this travel through the frame store "
        "(<data_dir>/frames/) and the queue entry carries a reference; null: every frame "
        "inline in Redis (as before issue 15)",
    )
    min_free_bytes: int | None = Field(
        default=1 << 30, gt=0,
        description="intake stops while the data_dir filesystem has less free than this "
        "(capture pauses, live frames are not queued, POST /frames answers 507) so Redis and "
        "the frames already queued keep room to store their results; null: no floor",
    )
    frame_store_orphan_seconds: float = Field(
        default=600.0, gt=0,
        description="a stored frame this old whose frame has a result, or is no longer in "
        "flight, is deleted by housekeeping (a capture or worker died between its steps)",
    )


class TlsSettings(_Section):
    certfile: Path | None = Field(default=None, description="PEM certificate (chain) for HTTPS")
    keyfile: Path | None = Field(default=None, description="PEM private key for HTTPS")

    @model_validator(mode="after")
    def _both_or_neither(self) -> TlsSettings:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("certfile and keyfile go together")
        return self


class ApiSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_page: int = Field(default=1000, gt=0)
    max_upload_bytes: int = Field(default=64 * 1024 * 1024, gt=0, description="POST /frames body")
    tls: TlsSettings = TlsSettings()
    # POST /frames decodes (expands, quality-checks) pushed images in child processes with
    # this address-space limit, never in the API process itself (issue 16).
    decode_memory_bytes: int = Field(
        default=4 * 1024 * 1024 * 1024, ge=64 * 1024 * 1024, description="memory each "
        "process decoding pushed frames may add to its start-up size (interpreter and "
        "libraries, not counted): its address-space limit (RLIMIT_AS) is that size plus "
        "this; an image needing more is rejected 'too_large' (422)"
    )
    decode_workers: int = Field(
        default=1, ge=1, le=64, description="processes decoding pushed frames at once"
    )
    max_body_bytes: int = Field(
        default=68 * 1024 * 1024, gt=0, description="larger request bodies are refused (413)"
    )
    # Slow clients (issue 16): each connection must send its request head, then its body,
    # within a deadline, so slow or stalled senders cannot hold the server.
    header_timeout_seconds: float = Field(
        default=10.0, gt=0, description="a request line and headers not complete this long "
        "after the connection (or the previous response): 408 and closed"
    )
    body_timeout_seconds: float = Field(
        default=120.0, gt=0, description="a request body not complete this long after its "
        "headers: 408 and closed (64 MB at 5 MB/s takes 13 s)"
    )
    keep_alive_seconds: float = Field(
        default=5.0, gt=0, description="an idle keep-alive connection is closed after this"
    )
    max_connections: int = Field(
        default=1000, gt=0, description="open connections above this get 503 for their "
        "requests (uvicorn limit_concurrency)"
    )
    max_header_bytes: int = Field(
        default=16 * 1024, ge=1024, description="a request head larger than this is refused "
        "(400, h11 max incomplete event size)"
    )


class ApiKey(_Section):
    name: str = Field(pattern=KEY_NAME_PATTERN)
    role: Literal["ingest", "read", "reviewer", "admin"]
    sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the key (leukoscope keygen)"
    )


class AuthSettings(_Section):
    keys: list[ApiKey] = Field(
        default=[], description="API keys; none: the API is open and binds to loopback only"
    )
    protect_health: bool = Field(default=False, description="require a key for /healthz")
    protect_ready: bool = Field(default=False, description="require a key for /readyz")
    protect_metrics: bool = Field(default=False, description="require a key for /metrics")
    open_network: bool = Field(
        default=False,
        description="without keys, still serve on a non-loopback api.host (a container whose "
        "port is published on loopback only); logged loudly at start",
    )


class MllpSettings(_Section):
    host: str
    port: int = Field(ge=1, le=65535)
    ack_timeout_seconds: float = Field(default=10.0, gt=0)
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    retry_initial_seconds: float = Field(default=5.0, gt=0)
    retry_max_seconds: float = Field(default=600.0, gt=0)
    max_attempts: int | None = Field(
        default=100, gt=0, description="a message that failed this many times is parked (dead "
        "letter, /status lis.parked) until an operator retries it; null: retry for ever"
    )
    park_on: list[Literal["AE", "AR"]] = Field(
        default_factory=list, description="ACK codes that park a message at once (the LIS "
        "will never take it as it is); empty: every rejection is retried"
    )


class MllpListenSettings(_Section):
    host: str = Field(default="127.0.0.1", description="address the order listener binds")
    port: int = Field(default=2575, ge=0, le=65535, description="0: any free port (tests)")
    max_message_bytes: int = Field(default=1024 * 1024, gt=0,
                                   description="a larger MLLP frame closes the connection")
    idle_timeout_seconds: float = Field(default=300.0, gt=0,
                                        description="an idle LIS connection is closed after")


class LisSettings(_Section):
    statement: str = Field(
        default="For research use only. Not for use in diagnostic procedures.",
        min_length=1,
        description="carried by every specimen report (FHIR and HL7)",
    )
    sending_application: str = Field(default="LEUKOSCOPE", min_length=1,
                                     max_length=HL7_MAX_LENGTH["sending_application"])
    sending_facility: str = Field(default="LAB", min_length=1,
                                  max_length=HL7_MAX_LENGTH["sending_facility"])
    receiving_application: str = Field(default="LIS", min_length=1,
                                       max_length=HL7_MAX_LENGTH["receiving_application"])
    receiving_facility: str = Field(default="LAB", min_length=1,
                                    max_length=HL7_MAX_LENGTH["receiving_facility"])
    mllp: MllpSettings | None = Field(
        default=None, description="push completed specimens' ORU^R01 over MLLP"
    )
    listen: MllpListenSettings | None = Field(
        default=None, description="accept orders (OML^O33, ORM^O01) over MLLP; started by "
        "`leukoscope run` (or `leukoscope lis`)")
    processing_id: Literal["P", "T", "D"] = Field(
        default="P", description="MSH-11: P production, T training, D debugging")
    filler_authority: str = Field(
        default="LEUKOSCOPE", min_length=1, max_length=20,
        description="namespace of the filler order numbers this daemon assigns (ORC-3/OBR-3)")
    hold_unordered: bool = Field(
        default=True, description="do not push a specimen over MLLP until an order names it "
        "(its reports would carry no patient)")

    @field_validator("sending_application", "sending_facility", "receiving_application",
                     "receiving_facility", "statement")
    @classmethod
    def _hl7_safe(cls, value: str, info: ValidationInfo) -> str:
        # MSH fields go into the message as they are; the statement (NTE) is escaped by the
        # report writer, but a line end would still split its segment.
        reserved = "\r\n" if info.field_name == "statement" else HL7_RESERVED
        bad = sorted({c for c in value if c in reserved or ord(c) < 32})
        if bad:
            raise ValueError(f"must not contain HL7 delimiters or control characters "
                             f"({', '.join(repr(c) for c in bad)})")
        return value


class SpecimenSettings(_Section):
    idle_complete_seconds: float | None = Field(
        default=1800.0, gt=0, description="an open specimen idle this long completes; null: never"
    )
    complete_grace_seconds: float = Field(
        default=300.0,
        gt=0,
        description="a requested completion waits this long at most for frames still in flight",
    )
    low_confidence: float = Field(
        default=0.6, gt=0, le=1, description="a cell whose top probability is below is counted"
    )
    retention_days: float | None = Field(
        default=None, gt=0, description="complete specimens that completed longer ago than "
        "this leave Redis with their review, late frames and order (logged, audited, "
        "leukoscope_specimens_forgotten_total); one whose LIS message is still owed (outbox "
        "or parked) stays until it is not; an order as old whose specimen never came goes "
        "too; null: kept for ever (Redis grows with each one)"
    )


class ReviewSettings(_Section):
    """The review station (/ui/, issue 13): sessions and sign-off."""

    signatures: int = Field(
        default=1, ge=1, le=2,
        description="distinct reviewer keys that must sign before a specimen is verified "
                    "(2: two-person sign-off)")
    session_hours: float = Field(default=8.0, gt=0, le=24 * 7,
                                 description="a /ui/ sign-in lasts this long")
    session_secret: str | None = Field(
        default=None, min_length=32,
        description="HMAC secret signing session cookies; null: a random one kept in Redis "
                    "(shared by every API replica)")
    image_max_side: int = Field(default=2048, ge=64, le=8192,
                                description="frame images are served at most this wide/high")
    image_cache_frames: int = Field(default=64, ge=0, le=4096,
                                    description="decoded frames the API keeps for crops")


class ResultsSettings(_Section):
    retention_days: float | None = Field(
        default=30.0, gt=0, description="frames' results older than this are trimmed (about "
        "2.3 KB of Redis each); null: keep for ever (Redis then grows with every frame)"
    )


class ArchiveSettings(_Section):
    """The originals kept under <data_dir>/archive/<specimen>/ once analysed (issue 16)."""

    retention_days: float | None = Field(
        default=None, gt=0, description="originals archived longer ago than this (file "
        "mtime) are deleted, oldest first, only once their result is stored (logged, "
        "leukoscope_archive_originals_deleted_total); null: kept for ever"
    )
    max_bytes: int | None = Field(
        default=None, gt=0, description="the archive holds at most this many bytes: the "
        "oldest originals whose result is stored are deleted first; null: no limit"
    )


class QuarantineSettings(_Section):
    """The rejected files kept under <data_dir>/quarantine/<specimen>/ beside their reason."""

    retention_days: float | None = Field(
        default=None, gt=0, description="files quarantined longer ago than this (their "
        "reason note's mtime) are deleted with the note, oldest first (logged, "
        "leukoscope_quarantine_files_deleted_total); null: kept for ever"
    )
    max_bytes: int | None = Field(
        default=None, gt=0, description="the quarantine holds at most this many bytes: the "
        "oldest files and their notes are deleted first; null: no limit"
    )


class AuditSettings(_Section):
    """The audit trail in Redis is bounded; what is trimmed goes to files first."""

    retention_days: float | None = Field(
        default=90.0, gt=0, description="entries older than this leave Redis; null: no limit"
    )
    max_entries: int | None = Field(
        default=1_000_000, gt=0, description="at most this many entries in Redis (about 100 "
        "bytes each); the oldest leave first; null: no limit"
    )
    archive: bool = Field(
        default=True, description="append trimmed entries to <data_dir>/audit/audit-<UTC "
        "day>.jsonl (one JSON object per line, fsynced) before they leave Redis"
    )
    files_retention_days: float | None = Field(
        default=None, gt=0, description="audit files (<data_dir>/audit/audit-<day>.jsonl) of "
        "days that ended longer ago than this are deleted, oldest first (logged, "
        "leukoscope_audit_files_deleted_total); null: kept for ever (archive them yourself)"
    )
    files_max_bytes: int | None = Field(
        default=None, gt=0, description="the audit files hold at most this many bytes: the "
        "oldest days' files are deleted first (today's is kept); null: no limit"
    )
    refused_per_client_per_minute: int = Field(
        default=30, gt=0, description="refused requests (401/403) audited per client address "
        "and reason per minute (a token bucket, bursts of this size); the rest are only counted "
        "(leukoscope_audit_refusals_dropped_total), so a flood cannot grow the trail"
    )
    refused_per_minute: int = Field(
        default=600, gt=0, description="refused requests audited per minute by one API process, "
        "all clients together (a token bucket); the rest are only counted"
    )


class WorkerSettings(_Section):
    count: int = Field(default=1, ge=0, le=64)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_frames: int = Field(default=8, gt=0, le=256, description="frames read per batch "
                              "(on CUDA a segmenter call of several frames is filled to this "
                              "many, so the card meets few input shapes)")
    max_batch_cells: int = Field(default=64, gt=0, description="crops per classifier call (on "
                                 "CUDA every call runs exactly this many, blank crops filling "
                                 "the last: each new shape costs cuDNN planning)")
    max_batch_pixels: int = Field(
        default=4_194_304,
        ge=65_536,
        description="pixels segmented in one model call: a batch is split so its frames' "
        "pixels stay below this, and a larger frame is segmented alone in overlapping tiles "
        "of this size (a worker's memory grows with this, not with batch_frames)",
    )
    threads: int = Field(default=0, ge=0, description="ONNX Runtime intra-op threads; 0 = auto")
    heartbeat_seconds: float = Field(default=2.0, gt=0)
    stale_after_seconds: float = Field(default=15.0, gt=0)
    forget_after_seconds: float = Field(
        default=300.0, gt=0, description="a worker silent this long is dropped from /status"
    )
    fp16: bool = Field(default=False, description="use the fp16 model files on CUDA")
    tensorrt: bool = Field(
        default=False, description="put ONNX Runtime's TensorRT provider before CUDA (engines "
        "built once per model and card, kept in trt_engine_cache); falls back to CUDA, with a "
        "log line, where ONNX Runtime has no TensorRT")
    trt_engine_cache: Path | None = Field(
        default=None, description="folder of built TensorRT engines; null: <data_dir>/trt-engines")
    io_binding: bool | None = Field(
        default=None, description="hand tensors to ONNX Runtime as OrtValues bound on the "
        "session's device (one copy each way on a GPU); null: on with CUDA/TensorRT, off on CPU")
    decode_threads: int = Field(
        default=1, ge=0, le=64, description="threads decoding a batch's next frames while "
        "the current one is rescaled and checked (for GPU hosts, where the models wait on "
        "the CPU); 0: min(4, CPUs); 1: decode in turn (on 2 CPU cores threads gained nothing)")
    reduced_decode: bool = Field(
        default=True, description="decode a JPEG at 1/2, 1/4 or 1/8 of its size (libjpeg's DCT "
        "scaling, several times faster) when its factor to the models' scale is known before "
        "decoding (a given um_per_pixel, or the rig's running red-cell estimate) and the frame "
        "would be shrunk at least that much anyway; false: always decode in full")
    overlap_analysis: bool = Field(
        default=True, description="analyse a batch in two halves, the first while the "
        "second is prepared (decode, red-cell ruler, rescale, QC: single-threaded), so the "
        "models use the core preparing leaves free; false: prepare all, then analyse all")
    stain_calibration: bool = Field(
        default=True, description="turn each rig's frames to the models' stain hue once the "
        "rig's running median hue (last 256 frames, from its 64th; over-exposed frames left "
        "out) is 6.5-20 degrees off it (daemon/imaging/stain.py); acts only with models whose "
        "segmenter manifest states acquisition.stain_hue_deg (the shipped ones do). Chosen on "
        "the validation blocks met slide by slide as one rig: +17 field calls over the shift "
        "suite, none lost (model card, 'Stain calibration per rig'); false: measure and "
        "report the hue, turn nothing")
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = Field(
        default="EXHAUSTIVE", description="how the CUDA provider picks cuDNN convolution "
        "kernels for each new input shape (ONNX Runtime's option): EXHAUSTIVE times them all "
        "once per shape, which the first batches of every new batch size pay for; HEURISTIC "
        "asks cuDNN's heuristics and pays nothing up front")
    max_queue_delay_ms: float = Field(
        default=0.0, ge=0, le=10_000, description="dynamic batching across frames: after the "
        "first frame, wait at most this long for up to batch_frames to arrive (as Triton's "
        "max_queue_delay); 0: take what is queued at once (best on the CPU)")


class ModelSettings(_Section):
    segmenter: Path = SHIPPED_MODELS / "segmenter.onnx"
    classifier: Path = SHIPPED_MODELS / "classifier.onnx"


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class MetricsSettings(_Section):
    port: int = Field(
        default=0, ge=0, le=65535,
        description="serve this process's own metrics on host:port/metrics: a worker, capture "
        "or lis process started alone (another host); 0: off. The API always serves "
        "/metrics, and `leukoscope run` turns this off for its children, whose metrics the "
        "API renders")
    host: str = Field(default="127.0.0.1", description="address of metrics.port")


#: The note beside each file in ``quarantine_dir``: ``<name>.reason.txt`` says why (capture,
#: the API and the housekeeping leader all name it from here).
REASON_SUFFIX = ".reason.txt"


class DataFolder:
    """A read-only ``Settings`` attribute ``<name>_dir``: the folder ``<name>`` under
    ``data_dir``."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.folder = name.removesuffix("_dir")

    @overload
    def __get__(self, settings: None, owner: type | None = None) -> DataFolder: ...
    @overload
    def __get__(self, settings: Settings, owner: type | None = None) -> Path: ...
    def __get__(self, settings: Settings | None, owner: type | None = None) -> Path | DataFolder:
        if settings is None:  # on the class: the descriptor itself
            return self
        return settings.data_dir / self.folder


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LEUKOSCOPE_", env_nested_delimiter="__", extra="forbid",
        ignored_types=(DataFolder,),
    )

    data_dir: Path = Path("var")
    redis: RedisSettings = RedisSettings()
    capture: CaptureSettings = CaptureSettings()
    queue: QueueSettings = QueueSettings()
    api: ApiSettings = ApiSettings()
    workers: WorkerSettings = WorkerSettings()
    models: ModelSettings = ModelSettings()
    logging: LoggingSettings = LoggingSettings()
    auth: AuthSettings = AuthSettings()
    lis: LisSettings = LisSettings()
    specimens: SpecimenSettings = SpecimenSettings()
    results: ResultsSettings = ResultsSettings()
    audit: AuditSettings = AuditSettings()
    archive: ArchiveSettings = ArchiveSettings()
    quarantine: QuarantineSettings = QuarantineSettings()
    review: ReviewSettings = ReviewSettings()
    metrics: MetricsSettings = MetricsSettings()

    @field_validator("data_dir")
    @classmethod
    def _data_dir_not_empty(cls, value: Path) -> Path:
        if str(value) == "":
            raise ValueError("must not be empty")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file (the file arrives as init kwargs).
        return (env_settings, init_settings)

    # Paths derived from data_dir, one place so every process agrees.
    archive_dir = DataFolder()
    quarantine_dir = DataFolder()
    redis_dir = DataFolder()
    audit_dir = DataFolder()
    metrics_dir = DataFolder()  # `leukoscope run`'s multiprocess metrics (daemon.telemetry)
    frames_dir = DataFolder()  # the frame store: bytes of queued frames above queue.inline_max_bytes

    @property
    def trt_engine_dir(self) -> Path:
        return self.workers.trt_engine_cache or self.data_dir / "trt-engines"


class ConfigError(Exception):
    """The configuration file or a value in it is invalid; the message names the key."""


def _format_validation_error(error: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        value = item.get("input")
        shown = "" if isinstance(value, dict) or item["type"] == "missing" else f" (got {value!r})"
        lines.append(f"  {key}: {message}{shown}")
    return "\n".join(lines)


def _resolve(path: Path, base: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else (base / path)


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read ``path`` (YAML) into Settings; env vars and ``overrides`` win over the file.

    Raises ConfigError naming the key for a missing/unparsable file or an invalid value.
    """
    data: dict[str, Any] = {}
    base = Path.cwd()
    origin = "defaults and environment"
    if path is not None:
        file = Path(path)
        origin = str(file)
        try:
            text = file.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {file}: {exc.strerror}") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"configuration file {file} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"configuration file {file}: top level must be a mapping of keys")
        data = loaded
        base = file.resolve().parent
    for key, value in overrides.items():
        data[key] = value
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, origin)) from exc
    settings.data_dir = _resolve(settings.data_dir, base)
    settings.capture.directory = _resolve(settings.capture.directory, base)
    settings.models.segmenter = _resolve(settings.models.segmenter, base)
    settings.models.classifier = _resolve(settings.models.classifier, base)
    if settings.workers.trt_engine_cache is not None:
        settings.workers.trt_engine_cache = _resolve(settings.workers.trt_engine_cache, base)
    if settings.api.tls.certfile is not None:
        settings.api.tls.certfile = _resolve(settings.api.tls.certfile, base)
    if settings.api.tls.keyfile is not None:
        settings.api.tls.keyfile = _resolve(settings.api.tls.keyfile, base)
    return settings
