"""``POST /frames``: rigs that send frames themselves (HTTP push).

The image is the request body (any content type), or the ``file`` part of a
``multipart/form-data`` body; ``specimen_id`` (required), ``name``, ``um_per_pixel``,
``rig_id`` and ``metadata`` (a JSON object of field metadata: stage position, objective,
...) come as query parameters or, with multipart, as form fields. The frame goes through the
same intake as a file in the watched folder (capture/intake.py): structural checks, CZI and
TIFF expansion, quality control, then the queue. Everything that decodes pixels runs in a
memory-bounded child process (daemon/api/decoding.py), never in the API process.

Answers: 202 with the ``frame_id`` (and every frame's id and state when a CZI or multi-page
TIFF holds several); 413 for a body above ``api.max_upload_bytes``; 415 for a body that is
not an image; 422 for a truncated or undecodable image, one needing more memory to decode
than ``api.decode_memory_bytes`` (``too_large``) or one failing quality control (its
``rejected`` result is stored, with the measured values); 400 for bad parameters; 503 while
the queue is over ``queue.max_backlog``; 507 while the data disk has less free than
``queue.min_free_bytes`` (daemon/store/disk.py). Refused bodies (415/422) are kept under
``<data_dir>/quarantine/<specimen_id>/`` beside a ``.reason.txt``, and accepted originals
under ``<data_dir>/archive/<specimen_id>/``, as for the folder. The same frame (specimen,
name, bytes) pushed twice gets the same ``frame_id``, is queued once and gets one result.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.datastructures import State

from capture.intake import Intake, SourceFrame, derived_frame_id
from capture.mover import free_name, write_reason
from daemon.api.auth import require
from daemon.api.decoding import Decoded, DecodePool, DecoderDied
from daemon.domain.ids import valid_name, valid_specimen_id, valid_upload_name
from daemon.domain.limits import PHYSICAL_UM_PER_PIXEL, valid_um_per_pixel
from daemon.imaging.frames import (
    check_encoded,
    frame_id_for,
    geometry,
    sniff_format,
)
from daemon.settings import REASON_SUFFIX, Settings
from daemon.store import counters
from daemon.store.connection import Outage

log = logging.getLogger(__name__)

router = APIRouter(tags=["frames"])

EXTENSIONS = {"jpeg": "jpg", "png": "png", "tiff": "tif", "bmp": "bmp", "czi": "czi"}
MAX_METADATA_KEYS = 32
UPLOAD_PREFIX = "upload:"  # source of pushed frames (not a file path)


class Refused(Exception):
    def __init__(self, code: int, detail: str, /, **extra: object) -> None:
        super().__init__(detail)
        self.status = code
        self.body = {"detail": detail, **extra}


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise Refused(413, f"body of {length} bytes exceeds api.max_upload_bytes ({limit})")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"body exceeds api.max_upload_bytes ({limit})")
        chunks.append(chunk)
    return b"".join(chunks)


def _metadata(raw: str | None) -> dict[str, str] | None:
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise Refused(400, f"metadata is not JSON: {exc}") from exc
    if not isinstance(value, dict) or len(value) > MAX_METADATA_KEYS:
        raise Refused(400, f"metadata must be a JSON object of at most {MAX_METADATA_KEYS} keys")
    out = {}
    for key, item in value.items():
        if not isinstance(item, str | int | float | bool) or len(str(key)) > 64:
            raise Refused(400, f"metadata {key!r}: values must be strings, numbers or booleans")
        out[str(key)] = str(item)[:256]
    return out


def _keep(directory: Path, name: str, data: bytes) -> Path:
    """Write ``data`` under a free name in ``directory`` (temp file, then rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = free_name(directory, name, companion=REASON_SUFFIX)
    partial = directory / f".{target.name}.{os.getpid()}.part"
    partial.write_bytes(data)
    os.replace(partial, target)
    return target


class UploadJanitor:
    """Forgets the in-flight records of pushed frames once their results are stored.

    A pushed frame has no inbox file for a capture process to archive, but its in-flight
    record is what makes a repeated push of a still-queued frame a no-op ('queued'). This
    thread tails the results log from the moment the first frame is pushed and drops the
    records of ``upload:`` frames (any rig) as their results arrive.
    """

    def __init__(self, intake: Intake) -> None:
        self.queue = intake.queue
        self.results = intake.results
        self.cursor = self.results.last_cursor()
        self.thread = threading.Thread(target=self.run, name="upload-janitor", daemon=True)
        self.thread.start()

    def run(self) -> None:
        # For the life of the API process (a daemon thread): nothing ever stops it.
        Outage("upload janitor").run(threading.Event(), self.tick)

    def tick(self) -> float:
        """Forget the in-flight records of pushed frames stored since the cursor."""
        for entry in self.results.wait_after(self.cursor, 1000):  # blocks up to 1 s
            record = self.queue.inflight_of(entry.frame_id)
            if record is not None and record.path.startswith(UPLOAD_PREFIX):
                self.queue.forget(entry.frame_id)
            self.cursor = entry.cursor
        return 0.0


_setup_lock = threading.Lock()


def _intake_of(state: State) -> tuple[Intake, DecodePool]:
    """The app's intake, upload janitor and decode pool, made on the first push (blocking)."""
    with _setup_lock:
        intake = getattr(state, "intake", None)
        if intake is None:
            intake = Intake(state.settings, state.client)
            state.upload_janitor = UploadJanitor(intake)
            state.intake = intake
        pool = getattr(state, "decode_pool", None)
        if pool is None:  # shut down with the app (create_app's lifespan)
            pool = state.decode_pool = DecodePool(state.settings, state.client)
        return intake, pool


def push(settings: Settings, intake: Intake, data: bytes, fields: dict[str, str | None],
         pool: DecodePool) -> tuple[int, dict]:
    """The work of one upload (blocking: runs in the thread pool); its decoding runs in
    ``pool``'s memory-bounded child processes, never in this one."""
    specimen = fields.get("specimen_id") or ""
    if not valid_specimen_id(specimen):
        raise Refused(400, "specimen_id is required: letters, digits, '.', '_', '-'; at most 64")
    rig = fields.get("rig_id") or settings.capture.rig_id
    if not valid_name(rig):
        raise Refused(400, "rig_id: letters, digits, '.', '_', '-'; at most 64")
    scale = None
    if fields.get("um_per_pixel"):
        try:
            scale = float(fields["um_per_pixel"] or "")
        except ValueError as exc:
            raise Refused(400, "um_per_pixel must be a number") from exc
        if not valid_um_per_pixel(scale):
            low, high = PHYSICAL_UM_PER_PIXEL
            raise Refused(400, f"um_per_pixel must be a finite number from {low} to {high}")
    metadata = _metadata(fields.get("metadata"))
    kind = sniff_format(data)
    name = fields.get("name") or f"upload.{EXTENSIONS.get(kind or '', 'bin')}"
    if not valid_upload_name(name):
        raise Refused(400, "name: letters, digits, '.', '_', '-'; at most 128")
    # The process's own intake's room (once a second), before an intake for another rig is
    # made: nothing is queued or quarantined that the disk could not hold.
    room = intake.disk_room.check()
    if not room.ok:
        raise Refused(507, room.reason(), retry_after=30)
    if rig != intake.rig_id:
        intake = Intake(settings, intake.client, intake.queue, intake.results, rig)
    source = f"{UPLOAD_PREFIX}{specimen}/{name}"
    file_id = frame_id_for(specimen, name, data)
    # Backpressure counts frames (a multi-page TIFF its pages), admitted atomically in
    # Redis against queue.max_backlog, so concurrent pushes cannot overshoot it.
    count = frame_count(data, settings)
    bound = settings.queue.max_backlog
    if count > bound:
        raise Refused(413, f"the file holds {count} frames, more than queue.max_backlog "
                      f"({bound}) can ever admit; split it or raise queue.max_backlog")
    with intake.queue.admission(count, bound) as (admitted, backlog):
        if not admitted:
            raise Refused(503, f"the frame queue is full ({backlog} of {bound} frames, this "
                          f"file {count}); retry later", retry_after=1)
        return _push_admitted(settings, intake, pool, data, specimen, name, source, file_id,
                              scale, metadata, rig, count)


def frame_count(data: bytes, settings: Settings) -> int:
    """How many frames the file will queue, from its header (TIFF/CZI pages); 1 for a plain
    image and for anything unreadable (expand() then rejects it with its reason)."""
    try:
        kind = check_encoded(data, settings.capture.max_frame_bytes)
        found = geometry(data, kind)
    except Exception:  # noqa: BLE001 - the real check is expand()'s, with a clear reason
        return 1
    return max(1, found.pages) if found is not None else 1


@contextlib.contextmanager
def _room_for_the_rest(settings: Settings, intake: Intake, frames: int, admitted: int
                       ) -> Iterator[None]:
    """Room for the frames a file turned out to hold beyond the ``admitted`` counted from
    its header: a CZI's scenes and tiles are known only once it is expanded (frame_count
    answers 1 for it), so they are admitted now, by the same script, before any is queued."""
    if frames <= admitted:
        yield
        return
    bound = settings.queue.max_backlog
    if frames > bound:
        raise Refused(413, f"the file holds {frames} frames, more than queue.max_backlog "
                      f"({bound}) can ever admit; split it or raise queue.max_backlog")
    with intake.queue.admission(frames - admitted, bound) as (more, backlog):
        if not more:
            raise Refused(503, f"the frame queue is full ({backlog} of {bound} frames, this "
                          f"file {frames}); retry later", retry_after=1)
        yield


def _push_admitted(settings: Settings, intake: Intake, pool: DecodePool, data: bytes,
                   specimen: str, name: str, source: str, file_id: str, scale: float | None,
                   metadata: dict[str, str] | None, rig: str, admitted: int
                   ) -> tuple[int, dict]:
    try:
        decoded = pool.decode(data, scale, rig)
    except DecoderDied as exc:  # logged by the pool; the file is refused like any other
        decoded = Decoded(pid=0, rejected=("undecodable", str(exc)))
    if decoded.rejected is not None:
        reason, message = decoded.rejected
        first = intake.store_rejected(file_id, specimen, source, reason, message,
                                      metadata=metadata)
        if first:  # the same refused body again (same id) is not stored twice on disk
            _quarantine(settings, specimen, name, data, reason, message, file_id)
        code = 415 if reason in ("not_an_image", "empty_file") else 422
        raise Refused(code, message, frame_id=file_id, status="rejected", reason=reason)
    with _room_for_the_rest(settings, intake, len(decoded.frames), admitted):
        now = time.time()
        answers = []
        for prepared in decoded.frames:
            # Bytes and the QC verdict from the decoding child; no pixels in this process.
            frame = SourceFrame(None, prepared.data, prepared.label, prepared.um_per_pixel,
                                prepared.metadata, prepared.um_per_pixel_source)
            frame_id = derived_frame_id(specimen, name, frame.label, data)
            label = "" if frame.label is None else f"#{frame.label}"
            # The decoding child's diameters went to the rig's shared history (DecodePool):
            # the worker must not count this frame's a second time.
            offer = intake.offer(frame, frame_id, specimen, source + label, now, metadata,
                                 quality=prepared.quality,
                                 scale_shared=bool(decoded.measured) and frame.um_per_pixel is None)
            answer = {"frame_id": frame_id, "status": offer.outcome}
            if frame.label is not None:
                answer["part"] = frame.label
            if offer.outcome == "rejected":
                answer.update(reason=offer.quality.reason, detail=offer.quality.message,
                              quality=offer.quality.values)
            answers.append(answer)
        if decoded.failed is not None:
            # A page after these could not be read: the pages before it stand, and that page gets
            # its own 'rejected' result, as capture does for a container in a watched folder.
            reason, message = decoded.failed
            label = f"p{len(answers)}"
            frame_id = derived_frame_id(specimen, name, label, data)
            intake.store_rejected(frame_id, specimen, f"{source}#{label}", reason, message,
                                  metadata=metadata)
            answers.append({"frame_id": frame_id, "status": "rejected", "part": label,
                            "reason": reason, "detail": message})
        if all(a["status"] == "rejected" for a in answers):
            first = answers[0]
            _quarantine(settings, specimen, name, data, str(first["reason"]),
                        str(first["detail"]), file_id)
            raise Refused(422, str(first["detail"]), **first, frames=answers)
        if any(a["status"] == "new" for a in answers):
            _keep(settings.archive_dir / specimen, name, data)
        log.info("frame pushed", extra={"specimen_id": specimen, "rig": rig, "source_name": name,
                                        "frames": len(answers), "decode_pid": decoded.pid})
        return 202, {**answers[0], "frames": answers}


def _quarantine(settings: Settings, specimen: str, name: str, data: bytes, reason: str,
                message: str, frame_id: str) -> None:
    try:
        target = _keep(settings.quarantine_dir / specimen, name, data)
        write_reason(target, reason, message, f"upload:{specimen}/{name}", frame_id)
    except OSError as exc:
        log.error("could not quarantine a refused upload", extra={"error": str(exc)})


def _param(name: str, description: str, schema: dict, example: object) -> dict:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema, "example": example}


_IMAGE = {"type": "string", "format": "binary"}
_FRAME_DOC = {
    "parameters": [
        _param("specimen_id", "the specimen (accession number) the frame belongs to; 1-64 of "
               "[A-Za-z0-9._-]", {"type": "string", "maxLength": 64}, "ACC-1001"),
        _param("name", "file name to keep (archive, quarantine); default upload.<ext>",
               {"type": "string", "maxLength": 128}, "field-001.png"),
        _param("um_per_pixel", "pixel size in µm (else capture.um_per_pixel; CZI: its own)",
               {"type": "number", "exclusiveMinimum": 0}, 0.1),
        _param("rig_id", "the microscope (default capture.rig_id)", {"type": "string"}, "rig-1"),
        _param("metadata", "JSON object of string values kept with the result",
               {"type": "string"}, '{"stain": "wright"}'),
    ],
    "requestBody": {
        "required": True,
        "description": "the image (JPEG, PNG, BMP, TIFF, CZI) as the body, or a multipart "
                       "form with a `file` part (and the parameters as form fields)",
        "content": {
            "image/png": {"schema": _IMAGE}, "image/jpeg": {"schema": _IMAGE},
            "image/tiff": {"schema": _IMAGE}, "application/octet-stream": {"schema": _IMAGE},
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                               "properties": {"file": _IMAGE,
                                                              "specimen_id": {"type": "string"},
                                                              "name": {"type": "string"}}}},
        },
    },
}


def _err(description: str, detail: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"example": {"detail": detail}}}}


@router.post(
    "/frames",
    status_code=202,
    tags=["frames"],
    summary="Push a frame (HTTP capture)",
    openapi_extra=_FRAME_DOC,
    responses={
        202: {"description": "queued; the frame ids to poll with GET /frames/{frame_id}",
              "content": {"application/json": {"example": {
                  "frame_id": "9f2c0b1d", "status": "new",
                  "frames": [{"frame_id": "9f2c0b1d", "status": "new"}]}}}},
        400: _err("bad parameters", "specimen_id must be 1-64 of [A-Za-z0-9._-]"),
        413: _err("body above api.max_upload_bytes, or a file of more frames than "
                  "queue.max_backlog", "image exceeds api.max_upload_bytes"),
        415: _err("not an image", "not an image"),
        422: _err("truncated/undecodable image, too large (header budgets, or more memory to "
                  "decode than api.decode_memory_bytes), or failed quality control",
                  "out_of_focus"),
        503: {"description": "queue full (backpressure: queued frames, a multi-page file's "
              "pages each, against queue.max_backlog); retry after Retry-After seconds",
              "headers": {"Retry-After": {"schema": {"type": "integer"}}},
              "content": {"application/json": {"example": {
                  "detail": "the frame queue is full; retry later", "retry_after": 1}}}},
        507: {"description": "the data disk has less free than queue.min_free_bytes: nothing "
              "is queued or stored; retry after Retry-After seconds",
              "headers": {"Retry-After": {"schema": {"type": "integer"}}},
              "content": {"application/json": {"example": {
                  "detail": "the data disk is nearly full: 52428800 bytes free, "
                  "queue.min_free_bytes is 1073741824; intake resumes when there is room "
                  "(move archive/ or audit/ files away, or bound them)", "retry_after": 30}}}},
    },
    dependencies=[Depends(require("ingest", "frame.ingest"))],  # issue 5: keys and audit
)
async def post_frame(request: Request) -> JSONResponse:
    """Queue one frame (or each frame of a CZI / multi-page TIFF) for analysis."""
    settings: Settings = request.app.state.settings
    # Intake's set-up reads Redis (the janitor's cursor): not on the event loop.
    intake, pool = await run_in_threadpool(_intake_of, request.app.state)
    limit = settings.api.max_upload_bytes
    try:
        body = await _read_body(request, limit + 64 * 1024)  # room for multipart framing
        fields: dict[str, str | None] = {
            key: request.query_params.get(key)
            for key in ("specimen_id", "name", "um_per_pixel", "rig_id", "metadata")
        }
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            request._body = body  # let Starlette parse what was read under the limit
            form = await request.form(max_files=1, max_fields=16, max_part_size=1024 * 1024)
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise Refused(400, "multipart body needs a 'file' part with the image")
            data = await upload.read()
            for key in fields:
                value = form.get(key)
                if isinstance(value, str):
                    fields[key] = value
        else:
            data = body
        if len(data) > limit:
            raise Refused(413, f"image exceeds api.max_upload_bytes ({limit})")
        status, answer = await run_in_threadpool(push, settings, intake, data, fields, pool)
        return JSONResponse(status_code=status, content=answer)
    except Refused as exc:
        if exc.status == 413:
            rig = settings.capture.rig_id
            # A Redis round trip (and its retries during an outage): in the thread pool.
            await run_in_threadpool(counters.record, request.app.state.client, counters.counter(
                "leukoscope_frames_rejected_total", {"rig": rig, "reason": "too_large"}))
        retry = exc.body.get("retry_after")
        headers = {"Retry-After": str(retry)} if retry else None
        return JSONResponse(status_code=exc.status, content=exc.body, headers=headers)
