"""``leukoscope reliability --scenarios push-hostile``: issue 16's hostile input, pushed over
``POST /frames`` to the running daemon's API instead of dropped in a folder.

Beside ordinary fields: a JPEG bomb (a few hundred bytes, header 20000x20000), a PNG bomb,
TIFFs of many pages (40 of 10000x10000; 400 small ones, more than ``queue.max_backlog``), a
sharp 8064x8064 JPEG, a batch of 3840x2160 fields pushed at once, a JPEG with 2 KB of random
bytes inside, ``um_per_pixel=inf``, and ids (specimen, rig, name) ending in a line feed.
Records each answer (HTTP status, reason), the API's pid and RSS before and after (it must
be the same process: none of this may kill it), and that every good frame ends ``done``.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from daemon.cli.reliability_daemon import Daemon, camera_jpeg, pages_tiff, smear_jpeg
from daemon.imaging.synthetic import jpeg_bomb, png_bomb

SPECIMEN = "PUSH-HOSTILE"


def post(base: str, data: bytes, timeout: float = 120, **params: str) -> tuple[int, dict]:
    """POST /frames; (HTTP status, JSON body); status 0 when the connection failed (the
    API died or never answered)."""
    url = f"{base}/frames?{urllib.parse.urlencode(params)}"
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body) if body else {}
        except ValueError:
            return exc.code, {"detail": body[:200].decode(errors="replace")}
    except OSError as exc:
        return 0, {"detail": f"{type(exc).__name__}: {exc}"}


def _answer(code: int, body: dict) -> str:
    reason = body.get("reason") or body.get("status") or ""
    detail = str(body.get("detail") or "")
    text = f"{code}" + (f" {reason}" if reason else "")
    return text + (f": {detail[:120]}" if detail and code >= 400 else "")


def push_hostile(daemon: Daemon, good: int = 10, uhd: int = 9, tiff_pages: int = 40,
                 tiff_side: int = 10000, sharp_side: int = 8064) -> dict:
    """``good`` ordinary fields and ``uhd`` 3840x2160 fields (pushed all at once) must end
    ``done``; every hostile push gets a 4xx with its reason; the API is the same process."""
    base = daemon.base
    api_before = daemon.api_pid()
    rss_before = daemon.rss(api_before)
    restarts_before = daemon.restarts()
    rng = np.random.default_rng(1616)
    corrupt = bytearray(smear_jpeg(8000))
    corrupt[len(corrupt) // 3 : len(corrupt) // 3 + 2048] = rng.integers(
        0, 256, 2048, dtype=np.uint8).tobytes()
    good_field = smear_jpeg(8001)
    hostile: dict[str, tuple[bytes, dict[str, str]]] = {
        "jpeg bomb 20000x20000": (jpeg_bomb(20000, 20000), {"name": "bomb.jpg"}),
        "png bomb 20000x20000": (png_bomb(20000, 20000), {"name": "bomb.png"}),
        f"tiff {tiff_pages} pages of {tiff_side}x{tiff_side}":
            (pages_tiff(tiff_pages, tiff_side), {"name": "pages.tif"}),
        "tiff 400 pages of 64x64": (pages_tiff(400, 64), {"name": "pages-400.tif"}),
        f"sharp {sharp_side}x{sharp_side} jpeg":
            (camera_jpeg(8002, sharp_side, sharp_side), {"name": "sharp.jpg"}),
        "jpeg with 2 KB of random bytes": (bytes(corrupt), {"name": "corrupt.jpg"}),
        "um_per_pixel=inf": (good_field, {"name": "inf.jpg", "um_per_pixel": "inf"}),
        "um_per_pixel=nan": (good_field, {"name": "nan.jpg", "um_per_pixel": "nan"}),
        "specimen_id with a trailing line feed": (good_field, {"name": "nl.jpg",
                                                          "specimen_id": f"{SPECIMEN}\n"}),
        "rig_id with a trailing line feed": (good_field, {"name": "nl-rig.jpg", "rig_id": "rig-1\n"}),
        "name with a trailing line feed": (good_field, {"name": "nl-name.jpg\n"}),
    }
    goods = {f"good-{i:02d}.jpg": smear_jpeg(8100 + i) for i in range(good)}
    uhds = {f"uhd-{i}.jpg": camera_jpeg(8200 + i, 3840, 2160) for i in range(uhd)}
    answers: dict[str, str] = {}
    bad_codes: dict[str, int] = {}
    started = time.monotonic()
    for label, (data, params) in hostile.items():
        code, body = post(base, data, **{"specimen_id": SPECIMEN, **params})
        answers[label] = _answer(code, body)
        bad_codes[label] = code
    # the good ones, and the 3840x2160 batch pushed at once (one connection each)
    with ThreadPoolExecutor(max_workers=max(1, len(goods) + len(uhds))) as pool:
        futures = {name: pool.submit(post, base, data, 300, specimen_id=SPECIMEN, name=name)
                   for name, data in {**goods, **uhds}.items()}
        good_codes = {name: f.result()[0] for name, f in futures.items()}
    pushed = time.monotonic() - started
    for name in uhds:
        answers[f"3840x2160 field {name} (one of {len(uhds)} at once)"] = str(good_codes[name])
    answers[f"{len(goods)} ordinary fields"] = ", ".join(
        f"{c} x{list(good_codes[n] for n in goods).count(c)}"
        for c in sorted({good_codes[n] for n in goods}))
    wanted = set(goods) | set(uhds)
    deadline = time.monotonic() + 600
    mine: dict[str, list[dict]] = {}
    while time.monotonic() < deadline:
        mine = {}
        for item in daemon.results():
            if item["source"].startswith(f"upload:{SPECIMEN}/"):
                mine.setdefault(item["source"].split("/", 1)[1], []).append(item)
        if wanted <= set(mine):
            break
        time.sleep(0.5)
    elapsed = time.monotonic() - started
    api_after = daemon.api_pid()
    done = sum(1 for n in wanted for r in mine.get(n, []) if r["status"] == "done")
    duplicates = sum(len(mine.get(n, [])) - 1 for n in wanted if mine.get(n))
    refused_ok = all(400 <= c < 500 for c in bad_codes.values())
    return {
        "answers": answers,
        "good_frames": len(wanted), "good_done": done, "duplicates": duplicates,
        "seconds_to_push_all": round(pushed, 1),
        "seconds_to_all_good_done": round(elapsed, 1),
        "api_pid_before": api_before, "api_pid_after": api_after,
        "api_rss_mib_before": round(rss_before / 2**20, 1),
        "api_rss_mib_after": round(daemon.rss(api_after) / 2**20, 1),
        "restarts": daemon.restarts() - restarts_before,
        "checks": {
            "every hostile push answered 4xx": refused_ok,
            "every good push accepted (202)": all(c == 202 for c in good_codes.values()),
            "every good frame done": done == len(wanted),
            "none stored twice": duplicates == 0,
            "the API is the same process": api_before is not None and api_before == api_after,
            "no process restarted": daemon.restarts() == restarts_before,
        },
    }
