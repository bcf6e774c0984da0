"""HTTP push: POST /frames against a real API server, real Redis, real bytes."""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
import uvicorn

from daemon.api.app import create_app
from daemon.store.keys import STREAM_KEY
from daemon.store.queue import FrameQueue
from daemon.store.results import ResultStore
from tests.capture.conftest import complete, entries
from tests.capture.frames import blurred_rgb, good_rgb, jpeg, png
from tests.conftest import free_port, http_json, wait_for

LIMIT = 200_000


@contextlib.contextmanager
def _serve(settings) -> Iterator[str]:
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 10, "the API server")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True  # the app's lifespan shuts its decode pool down
        thread.join(timeout=30)


@pytest.fixture
def api(make_settings) -> Iterator[tuple[str, object]]:
    settings = make_settings(api={"max_upload_bytes": LIMIT}, capture={"rig_id": "rig-push"})
    with _serve(settings) as url:
        yield url, settings


def post(url: str, data: bytes, content_type: str = "application/octet-stream",
         ) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": content_type})
    try:
        # A generous deadline, not a speed check: an 8000x8000 decode took 8.6-10.4 s on a
        # loaded 2-core box and failed a 10 s one.
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def multipart(fields: dict[str, str], data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                 f'filename="f.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def test_push_good_oversized_truncated_and_non_image(api, redis_client):
    base, settings = api
    good = jpeg(good_rgb(1))
    meta = json.dumps({"x_um": 1200.5, "objective": "100x oil"})
    code, body = post(f"{base}/frames?specimen_id=P-1&name=f1.jpg&um_per_pixel=0.1"
                      f"&metadata={urllib.request.quote(meta)}", good, "image/jpeg")
    assert code == 202, body
    assert body["status"] == "new" and len(body["frame_id"]) == 24
    (entry,) = entries(redis_client)
    assert entry["data"] == good and entry["specimen_id"] == "P-1"
    assert entry["rig_id"] == "rig-push" and entry["frame_id"] == body["frame_id"]
    assert float(entry["um_per_pixel"]) == 0.1
    assert json.loads(entry["metadata"]) == {"x_um": "1200.5", "objective": "100x oil"}
    assert (settings.archive_dir / "P-1" / "f1.jpg").read_bytes() == good
    # The same frame again: same id, not queued twice.
    code, again = post(f"{base}/frames?specimen_id=P-1&name=f1.jpg", good)
    assert code == 202 and again["frame_id"] == body["frame_id"]

    # Multipart, fields in the form.
    form, content_type = multipart({"specimen_id": "P-2", "name": "m.jpg"}, jpeg(good_rgb(2)))
    code, body = post(f"{base}/frames", form, content_type)
    assert code == 202 and body["status"] == "new", body

    # Oversized: 413, nothing stored.
    code, body = post(f"{base}/frames?specimen_id=P-1", b"\xff\xd8\xff" + b"\0" * LIMIT)
    assert code == 413, body

    # Non-image: 415, rejected result, quarantined with its reason.
    code, body = post(f"{base}/frames?specimen_id=P-1&name=notes.jpg", b"hello, not a frame")
    assert code == 415 and body["reason"] == "not_an_image", body
    store = ResultStore(redis_client)
    assert store.get(body["frame_id"]).status == "rejected"
    assert (settings.quarantine_dir / "P-1" / "notes.jpg.reason.txt").exists()

    # Truncated JPEG: 422.
    code, body = post(f"{base}/frames?specimen_id=P-1&name=cut.jpg", good[: len(good) // 2])
    assert code == 422 and body["reason"] == "truncated", body

    # Failing QC: 422 with the measured values; the rejected result carries them too.
    code, body = post(f"{base}/frames?specimen_id=P-1&name=blur.png", png(blurred_rgb(3)))
    assert code == 422 and body["reason"] == "out_of_focus", body
    assert body["quality"]["focus"] < settings.capture.qc.min_focus
    assert store.get(body["frame_id"]).quality["focus"] == body["quality"]["focus"]

    # Bad parameters.
    assert post(f"{base}/frames", good)[0] == 400  # no specimen_id
    assert post(f"{base}/frames?specimen_id=../x", good)[0] == 400
    assert post(f"{base}/frames?specimen_id=P-1&um_per_pixel=-1", good)[0] == 400

    assert len(entries(redis_client)) == 2
    # Once results are stored, the in-flight records of pushed frames are dropped.
    assert len(FrameQueue(redis_client).inflight()) == 2
    complete(redis_client)
    wait_for(lambda: FrameQueue(redis_client).inflight() == [], 10, "records forgotten")
    code, text = 0, ""
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        code, text = response.status, response.read().decode()
    for reason in ("not_an_image", "truncated", "out_of_focus", "too_large"):
        assert f'leukoscope_frames_rejected_total{{reason="{reason}",rig="rig-push"}} 1.0' in text


def test_push_backpressure(api, redis_client):
    base, settings = api
    queue = FrameQueue(redis_client)
    for i in range(settings.queue.max_backlog):
        queue.enqueue(f"f{i}", "S", f"x{i}", "rig-push", b"x", time.time())
    code, body = post(f"{base}/frames?specimen_id=P-1", jpeg(good_rgb(4)))
    assert code == 503, body


def _tiff(pages: int, seed: int) -> bytes:
    import io

    import numpy as np
    import tifffile

    out = io.BytesIO()
    tifffile.imwrite(out, np.stack([good_rgb(seed + p) for p in range(pages)]),
                     photometric="rgb")
    return out.getvalue()


@pytest.fixture
def small_queue(make_settings) -> Iterator[tuple[str, object]]:
    settings = make_settings(api={"max_upload_bytes": 2_000_000}, queue={"max_backlog": 10})
    with _serve(settings) as url:
        yield url, settings


def test_backpressure_counts_pages_and_concurrent_pushes_never_overshoot(
        small_queue, redis_client):
    """max_backlog 10, no worker draining: eight 3-page TIFFs pushed at once. Admission is
    one Redis script per file counting its pages, so exactly three files (9 frames) get in
    and the other five are told the queue is full; a file of more pages than max_backlog
    is refused outright (it could never be admitted)."""
    base, _settings = small_queue
    files = [_tiff(3, 10 * i) for i in range(8)]
    answers: list[tuple[int, dict]] = [(0, {})] * len(files)
    start = threading.Barrier(len(files))

    def push(i: int) -> None:
        start.wait()
        answers[i] = post(f"{base}/frames?specimen_id=T-{i}&name=t{i}.tif", files[i])

    threads = [threading.Thread(target=push, args=(i,)) for i in range(len(files))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    codes = sorted(code for code, _ in answers)
    assert codes == [202] * 3 + [503] * 5, answers
    assert all(len(body["frames"]) == 3 for code, body in answers if code == 202)
    assert all("queue is full" in body["detail"] for code, body in answers if code == 503)
    queue = FrameQueue(redis_client)
    assert queue.backlog() == 9  # never above max_backlog
    assert redis_client.hlen("lks:admission") == 0  # reservations released
    code, body = post(f"{base}/frames?specimen_id=T-9&name=one.jpg", jpeg(good_rgb(99)))
    assert code == 202, body  # one frame still fits (9 + 1 <= 10) ...
    code, body = post(f"{base}/frames?specimen_id=T-9&name=two.jpg", jpeg(good_rgb(98)))
    assert code == 503, body  # ... and then nothing
    code, body = post(f"{base}/frames?specimen_id=T-9&name=big.tif", _tiff(11, 500))
    assert code == 413 and "11 frames" in body["detail"] and "queue.max_backlog" in body[
        "detail"], body


def test_push_refuses_bombs_and_unphysical_scales(api, redis_client):
    """A 20000x20000 header is refused from the header (the API process never decodes it);
    an infinite or absurd µm/px is a 400, not a worker exception later."""
    from daemon.imaging.synthetic import jpeg_bomb

    base, settings = api
    code, body = post(f"{base}/frames?specimen_id=B-1&name=bomb.jpg", jpeg_bomb(20000, 20000))
    assert code == 422 and body["reason"] == "too_large", body
    assert "20000x20000" in body["detail"]
    for bad in ("inf", "nan", "-1", "0", "1e-9", "1000"):
        code, body = post(f"{base}/frames?specimen_id=B-1&name=f.jpg&um_per_pixel={bad}",
                          jpeg(good_rgb(2)))
        assert code == 400 and "um_per_pixel" in body["detail"], (bad, body)
    code, body = post(f"{base}/frames?specimen_id=B-1&name=f.jpg&um_per_pixel=0.25",
                      jpeg(good_rgb(2)))
    assert code == 202, body
    assert len(entries(redis_client)) == 1


def test_a_refused_body_is_quarantined_once(api, redis_client):
    """Repeats of a refused upload (same specimen, name and bytes) were each written to
    quarantine again (481 MB in 2.5 s from 8 concurrent 60 MB uploads)."""
    base, settings = api
    body = b"%PDF-1.4 this is not an image" * 100
    for _ in range(5):
        code, answer = post(f"{base}/frames?specimen_id=Q-1&name=doc.jpg", body)
        assert code == 415 and answer["reason"] == "not_an_image"
    kept = sorted(p.name for p in (settings.quarantine_dir / "Q-1").iterdir())
    assert kept == ["doc.jpg", "doc.jpg.reason.txt"]


# --- Decoding outside the API process (issue 16) ---------------------------------------------
# The API server runs in this test process (a thread), so "the API process" is this one: its
# peak RSS, its children and their limits are read from /proc (psutil), nothing is mocked.


def _striped_png(side: int) -> bytes:
    """A large frame that compresses to ~100-200 KB: decoding it needs 3 * side**2 bytes."""
    import cv2
    import numpy as np

    image = np.full((side, side, 3), 40, np.uint8)
    image[::7] = 200
    ok, buffer = cv2.imencode(".png", image)
    assert ok
    return buffer.tobytes()


def _decoders(budget: int) -> list[psutil.Process]:
    """This process's children that run with the decode address-space limit: their
    start-up size plus ``budget`` (api.decode_memory_bytes)."""
    found = []
    for child in psutil.Process().children():
        if child.is_running():
            soft, hard = child.rlimit(psutil.RLIMIT_AS)
            if soft == hard != psutil.RLIM_INFINITY and budget < soft < budget + 2**31:
                found.append(child)
    return found


def _peak_rss_reset() -> None:
    # Linux: "5" resets VmHWM (the peak RSS) to the current RSS.
    Path("/proc/self/clear_refs").write_text("5")


def _peak_rss(process: psutil.Process) -> int:
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_pushed_frame_is_decoded_in_a_memory_bounded_child(make_settings, redis_client):
    """An 8000x8000 PNG (192 MB of pixels, 0.2 MB on the wire) is expanded and checked in a
    child process under api.decode_memory_bytes: the API process's peak RSS grows by far less
    than one decoded copy, the child's by more. In-process decoding fails this."""
    settings = make_settings(api={"max_upload_bytes": 2_000_000},
                             capture={"max_frame_pixels": 64_000_000, "rig_id": "rig-push"})
    limit = settings.api.decode_memory_bytes
    big = _striped_png(8000)
    with _serve(settings) as base:
        code, body = post(f"{base}/frames?specimen_id=D-0&name=small.jpg", jpeg(good_rgb(1)))
        assert code == 202, body
        (child,) = _decoders(limit)
        child_before = _peak_rss(child)
        _peak_rss_reset()
        api_before = _peak_rss(psutil.Process())
        code, body = post(f"{base}/frames?specimen_id=D-1&name=big.png", big)
        api_growth = _peak_rss(psutil.Process()) - api_before
        assert code in (202, 422), body  # QC may refuse stripes; either way it was decoded
        assert _decoders(limit) == [child]  # the same child, still alive
        assert _peak_rss(child) - child_before > 8000 * 8000 * 3
        assert api_growth < 60 * 1024 * 1024, api_growth
    wait_for(lambda: not _decoders(limit), 10, "the decode pool to end with the app")


def test_a_decode_over_the_memory_limit_is_refused_and_the_api_keeps_serving(
        make_settings, redis_client):
    """api.decode_memory_bytes of 512 MiB: a 14000x14000 PNG (588 MB of
    pixels alone) is refused 'too_large' with the key named, its rejection stored; the API
    and its decoder go on accepting ordinary frames."""
    budget = 512 * 1024 * 1024
    settings = make_settings(api={"max_upload_bytes": 2_000_000, "decode_memory_bytes": budget},
                             capture={"max_frame_pixels": 200_000_000, "rig_id": "rig-push"})
    big = _striped_png(14000)  # made before the API's peak RSS is measured
    with _serve(settings) as base:
        _peak_rss_reset()
        api_before = _peak_rss(psutil.Process())
        code, body = post(f"{base}/frames?specimen_id=M-1&name=big.png", big)
        assert code == 422, body
        assert body["reason"] == "too_large" and body["status"] == "rejected"
        assert "api.decode_memory_bytes" in body["detail"] and str(budget) in body["detail"]
        assert _peak_rss(psutil.Process()) - api_before < 60 * 1024 * 1024
        stored = ResultStore(redis_client).get(body["frame_id"])
        assert stored is not None and stored.reason == "too_large"
        code, body = post(f"{base}/frames?specimen_id=M-1&name=ok.jpg", jpeg(good_rgb(2)))
        assert code == 202 and body["status"] == "new", body
        assert len(_decoders(budget)) == 1


def test_the_decode_budget_is_what_decoding_may_add_not_the_libraries(make_settings,
                                                                       redis_client):
    """api.decode_memory_bytes 512 MiB, and a 4000x4000 PNG whose decode and quality
    control take about 200 MB: decoded, not refused. The decoder's libraries map about
    0.5 GB before any image; when the limit counted them, this budget left ~30 MB and the
    frame was refused 'too_large'. The child's resident memory grows by what the decode
    takes, within the budget."""
    budget = 512 * 1024 * 1024
    settings = make_settings(api={"max_upload_bytes": 2_000_000, "decode_memory_bytes": budget},
                             capture={"rig_id": "rig-push"})
    frame = _striped_png(4000)
    with _serve(settings) as base:
        code, body = post(f"{base}/frames?specimen_id=B-1&name=big.png", frame)
        assert body.get("reason") != "too_large", body
        assert code in (202, 422), body  # QC may refuse stripes; it was decoded either way
        (child,) = _decoders(budget)
        # The decode's buffers are freed: resident now is about the start-up size.
        growth = _peak_rss(child) - child.memory_info().rss
        assert 4000 * 4000 * 3 < growth < budget, growth


def test_a_killed_decoder_is_replaced_and_the_next_push_is_accepted(make_settings,
                                                                    redis_client):
    """SIGKILL of the decoding child between pushes: the pool is replaced, the next frame is
    decoded by a new child and accepted (not blamed for the dead one)."""
    settings = make_settings(api={"max_upload_bytes": LIMIT}, capture={"rig_id": "rig-push"})
    limit = settings.api.decode_memory_bytes
    with _serve(settings) as base:
        code, body = post(f"{base}/frames?specimen_id=K-1&name=a.jpg", jpeg(good_rgb(1)))
        assert code == 202, body
        (child,) = _decoders(limit)
        child.kill()
        child.wait(10)
        code, body = post(f"{base}/frames?specimen_id=K-1&name=b.jpg", jpeg(good_rgb(2)))
        assert code == 202 and body["status"] == "new", body
        (replacement,) = _decoders(limit)
        assert replacement.pid != child.pid
        code, health = http_json(f"{base}/healthz")
        assert code == 200


def test_a_pushed_frames_verdict_does_not_depend_on_which_decoder_checked_it(
        make_settings, redis_client):
    """Quality control of a frame with too few red cells of its own runs at the rig's
    running estimate. Field A (25 red cells) gives the rig one; then the decoding child is
    killed, so field B (4 red cells) is checked by a new child. B passes at the estimate and
    fails at the size it was captured (the check is made here both ways first): with a
    history kept per child, the new child had none and refused B."""
    import numpy as np

    from capture.intake import Intake, SourceFrame
    from daemon.imaging.synthetic import smear_field

    settings = make_settings(api={"max_upload_bytes": LIMIT}, capture={"rig_id": "rig-push"})
    field_a, _ = smear_field(np.random.default_rng(1), size=(448, 448))
    field_b, _ = smear_field(np.random.default_rng(2), size=(448, 448), red_cells=4)
    in_order = Intake(settings, redis_client)
    assert in_order.check(SourceFrame(field_a, b"")).ok
    assert in_order.check(SourceFrame(field_b, b"")).ok  # at the rig's estimate
    assert not Intake(settings, redis_client).check(SourceFrame(field_b, b"")).ok  # alone
    with _serve(settings) as base:
        code, body = post(f"{base}/frames?specimen_id=H-1&name=a.png", png(field_a))
        assert code == 202 and body["status"] == "new", body
        (child,) = _decoders(settings.api.decode_memory_bytes)
        child.kill()
        child.wait(10)
        code, body = post(f"{base}/frames?specimen_id=H-1&name=b.png", png(field_b))
        assert code == 202 and body["status"] == "new", body
        (replacement,) = _decoders(settings.api.decode_memory_bytes)
        assert replacement.pid != child.pid


def test_two_api_replicas_check_one_rigs_pushes_with_one_red_cell_history(
        make_settings, redis_client):
    """Field A (25 red cells) pushed to one API process gives the rig its estimate; field B
    (4 red cells: passes QC only at the rig's estimate) pushed to a second API process, with
    decoding children of its own, is accepted: the history is the rig's in Redis, not the
    first process's. Each process kept its own before, and the second refused B."""
    import numpy as np

    from capture.intake import Intake, SourceFrame
    from daemon.imaging.scale import HISTORY, MAX_RIGS
    from daemon.imaging.synthetic import smear_field
    from daemon.store.rigs import RedCellHistory

    settings = make_settings(api={"max_upload_bytes": LIMIT}, capture={"rig_id": "rig-push"})
    field_a, _ = smear_field(np.random.default_rng(1), size=(448, 448))
    field_b, _ = smear_field(np.random.default_rng(2), size=(448, 448), red_cells=4)
    assert not Intake(settings, redis_client).check(SourceFrame(field_b, b"")).ok  # alone
    history = RedCellHistory(redis_client, HISTORY, MAX_RIGS)
    with _serve(settings) as first, _serve(settings) as second:
        code, body = post(f"{first}/frames?specimen_id=R-1&name=a.png&rig_id=rig-2", png(field_a))
        assert code == 202 and body["status"] == "new", body
        code, body = post(f"{second}/frames?specimen_id=R-1&name=b.png&rig_id=rig-2",
                          png(field_b))
        assert code == 202 and body["status"] == "new", body
    assert len(history.diameters("rig-2")) == 1  # A's; B has too few red cells to add one
    assert history.diameters("rig-push") == []  # kept by rig


def test_red_cell_histories_are_shared_bounded_and_lose_no_append(redis_client):
    """Two holders (two API processes) on one Redis: appends from both, concurrent ones
    included, all land in one history, which keeps the last ``history`` diameters of at
    most ``max_rigs`` rigs (the least recently measured goes)."""
    from daemon.store.rigs import RedCellHistory

    one, two = (RedCellHistory(redis.Redis.from_url(_url(redis_client)), history=25,
                               max_rigs=2) for _ in range(2))
    assert one.remember("rig-a", [10.0, 11.0]) == [10.0, 11.0]
    assert two.diameters("rig-a") == [10.0, 11.0]

    def append(holder, base: float) -> None:
        for i in range(10):
            holder.remember("rig-a", [base + i])

    threads = [threading.Thread(target=append, args=(h, b))
               for h, b in ((one, 100.0), (two, 200.0))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    kept = one.diameters("rig-a")
    assert kept == two.diameters("rig-a") and len(kept) == 22
    assert sorted(kept[2:]) == [100.0 + i for i in range(10)] + [200.0 + i for i in range(10)]
    two.remember("rig-a", [float(i) for i in range(30)])
    assert one.diameters("rig-a") == [float(i) for i in range(5, 30)]  # the last 25
    one.remember("rig-b", [20.0])
    two.remember("rig-c", [30.0])  # a third rig: rig-a, the least recent, goes
    assert one.diameters("rig-a") == [] and two.diameters("rig-b") == [20.0]
    assert redis_client.hlen("lks:rigs:rbc") == redis_client.zcard("lks:rigs:rbc:used") == 2


def _url(client) -> str:
    return f"unix://{client.connection_pool.connection_kwargs['path']}"


def test_a_pushed_czi_is_admitted_by_its_scenes(make_settings, redis_client, tmp_path):
    """A CZI's header gives no frame count (admitted as 1 before it is expanded): its
    scenes are admitted once known, before any is queued. max_backlog 4 with 2 frames
    queued: a 3-scene CZI is 503 and nothing of it is queued (it queued 3, 5 in all);
    alone, a CZI of more scenes than max_backlog is 413."""
    from tests.capture.test_containers import write_czi

    settings = make_settings(api={"max_upload_bytes": 2_000_000}, queue={"max_backlog": 4},
                             capture={"rig_id": "rig-push"})
    path = tmp_path / "three.czi"
    write_czi(path, {s: [((300 * s, 0), 0, good_rgb(80 + s))] for s in range(3)})
    five = tmp_path / "five.czi"
    write_czi(five, {s: [((300 * s, 0), 0, good_rgb(90 + s))] for s in range(5)})
    queue = FrameQueue(redis_client)
    with _serve(settings) as base:
        for i in range(2):
            code, body = post(f"{base}/frames?specimen_id=C-1&name=f{i}.jpg",
                              jpeg(good_rgb(70 + i)))
            assert code == 202, body
        code, body = post(f"{base}/frames?specimen_id=C-1&name=three.czi", path.read_bytes())
        assert code == 503 and "queue is full" in body["detail"], body
        assert queue.backlog() == 2
        complete(redis_client)  # a worker empties the queue: now the CZI fits
        code, body = post(f"{base}/frames?specimen_id=C-1&name=three.czi", path.read_bytes())
        assert code == 202 and len(body["frames"]) == 3, body
        assert queue.backlog() == 3
        complete(redis_client)
        code, body = post(f"{base}/frames?specimen_id=C-1&name=five.czi", five.read_bytes())
        assert code == 413 and "5 frames" in body["detail"], body
        assert queue.backlog() == 0
    assert redis_client.hlen("lks:admission") == 0


def test_redis_calls_of_a_push_leave_the_event_loop_free(api, redis_client):
    """While Redis is busy (a 2 s script), an upload refused for size records its metric in
    Redis; /healthz (no Redis) must still answer at once: the count is recorded off the event
    loop. On the loop, every request of the API waits for Redis."""
    base, _settings = api
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.putrequest("POST", "/frames?specimen_id=L-1")
    connection.putheader("Transfer-Encoding", "chunked")  # no length: refused while reading
    connection.endheaders()

    def chunk(data: bytes) -> None:
        connection.send(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    chunk(b"\xff\xd8\xff" + b"\0" * 1000)  # the route is reading the body (audit done)
    time.sleep(0.5)
    busy = threading.Thread(target=redis_client.eval, args=(
        "local t0 = tonumber(redis.call('TIME')[1]) "
        "while tonumber(redis.call('TIME')[1]) < t0 + 2 do end return 1", 0), daemon=True)
    busy.start()
    time.sleep(0.2)  # Redis is in the script now
    chunk(b"\0" * (LIMIT + 128 * 1024))  # over the limit: 413, then the metric (Redis)
    time.sleep(0.2)
    slowest = 0.0
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        began = time.monotonic()
        code, _ = http_json(f"{base}/healthz", timeout=5)
        assert code == 200
        slowest = max(slowest, time.monotonic() - began)
        time.sleep(0.05)
    busy.join(10)
    response = connection.getresponse()
    assert response.status == 413
    connection.close()
    assert slowest < 0.5, f"/healthz took {slowest:.2f} s while Redis was busy"


def test_a_file_that_kills_its_decoder_twice_is_refused_with_a_reason(make_settings,
                                                                      redis_client):
    """At the smallest api.decode_memory_bytes (64 MiB beyond the child's start-up size) a
    decoding child cannot even take in a 60 MB upload (two copies in the child) and dies;
    the pool is replaced and the file tried once more, the child dies again: 422
    'undecodable' naming the key, and the next ordinary push is decoded by a fresh child
    and accepted."""
    limit = 64 * 1024 * 1024
    settings = make_settings(api={"max_upload_bytes": 62_000_000, "decode_memory_bytes": limit},
                             capture={"rig_id": "rig-push"})
    blob = b"\x89PNG\r\n\x1a\n" + bytes(60_000_000) + b"IEND\xaeB`\x82"
    with _serve(settings) as base:
        code, body = post(f"{base}/frames?specimen_id=X-1&name=huge.png", blob)
        assert code == 422, body
        assert body["reason"] == "undecodable" and "died twice" in body["detail"]
        assert "api.decode_memory_bytes" in body["detail"]
        code, body = post(f"{base}/frames?specimen_id=X-1&name=ok.jpg", jpeg(good_rgb(3)))
        assert code == 202 and body["status"] == "new", body


def _tiff_with_a_broken_page(pages: int, broken: int) -> bytes:
    """A deflate-compressed multi-page TIFF whose page ``broken`` holds garbage data."""
    import io

    import numpy as np
    import tifffile

    out = io.BytesIO()
    tifffile.imwrite(out, np.stack([good_rgb(40 + p) for p in range(pages)]),
                     photometric="rgb", compression="zlib")
    data = bytearray(out.getvalue())
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        offset, count = tif.pages[broken].dataoffsets[0], tif.pages[broken].databytecounts[0]
    data[offset : offset + count] = bytes((i * 37 + 11) % 256 for i in range(count))
    return bytes(data)


def test_a_page_that_cannot_be_read_after_good_ones_is_its_own_rejected_frame(api,
                                                                              redis_client):
    url, _settings = api
    data = _tiff_with_a_broken_page(2, broken=1)  # under the fixture's 200 KB upload bound
    code, body = post(f"{url}/frames?specimen_id=S-PAGES&name=stack.tif", data)
    assert code == 202, body  # the readable page stands (it was a 500 before)
    parts = {frame["part"]: frame for frame in body["frames"]}
    assert parts["p0"]["status"] == "new"
    assert parts["p1"]["status"] == "rejected" and parts["p1"]["reason"]
    stored = ResultStore(redis_client).get(parts["p1"]["frame_id"])
    assert stored is not None and stored.status == "rejected"
    assert stored.source.endswith("stack.tif#p1")


def test_a_nearly_full_data_disk_answers_507_and_keeps_nothing(make_settings, redis_client):
    """Below queue.min_free_bytes nothing is queued, archived or quarantined: 507 with
    Retry-After and the setting named; a push succeeds again once there is room."""
    import shutil

    import numpy as np

    from daemon.imaging.synthetic import smear_field

    settings = make_settings(api={"max_upload_bytes": LIMIT})
    free = shutil.disk_usage(settings.data_dir.parent).free
    settings.queue.min_free_bytes = free * 4
    field, _ = smear_field(np.random.default_rng(9), size=(224, 224))
    with _serve(settings) as url:
        request = urllib.request.Request(f"{url}/frames?specimen_id=D-1&name=a.png",
                                         data=png(field), method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
        assert refused.value.code == 507
        assert refused.value.headers["Retry-After"] == "30"
        assert "queue.min_free_bytes" in json.loads(refused.value.read())["detail"]
        assert redis_client.xlen(STREAM_KEY) == 0
        assert not any(settings.data_dir.rglob("*.png"))  # neither archived nor quarantined
    settings.queue.min_free_bytes = 1
    with _serve(settings) as url:
        code, body = post(f"{url}/frames?specimen_id=D-1&name=a.png", png(field))
        assert code == 202 and body["status"] == "new", body
