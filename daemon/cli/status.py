"""``leukoscope status``: /status as tables for a person at a terminal."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request

from daemon.settings import Settings


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body])


def format_status(status: dict) -> str:
    backlog = status["backlog"]
    out = [
        f"leukoscope {status['version']}  up {status['uptime_seconds']:.0f} s  "
        f"redis {status['redis']}  results stored {status['results_stored']}",
        f"backlog {backlog['length']} frames ({backlog['pending']} in progress, "
        f"bound {backlog['max_backlog']})",
        *([f"{status['unassigned_frames']} frame(s) without a specimen, never reported: "
           "GET /specimens/unassigned"] if status.get("unassigned_frames") else []),
        "",
        _table(
            ["capture", "host", "state", "queued", "rejected", "beat age", "directory"],
            [
                [
                    c["id"],
                    c.get("host") or "",
                    c["state"] if c["alive"] else "DOWN",
                    str(c["frames_queued"]),
                    str(c["frames_rejected"]),
                    f"{c['heartbeat_age_seconds']:.1f}s",
                    c.get("directory") or "",
                ]
                for c in status["captures"]
            ],
        ),
        "",
        _table(
            ["worker", "host", "provider", "alive", "frames", "beat age"],
            [
                [
                    w["id"],
                    w["host"],
                    w["provider"],
                    "yes" if w["alive"] else "NO",
                    str(w["frames_done"]),
                    f"{w['heartbeat_age_seconds']:.1f}s",
                ]
                for w in status["workers"]
            ],
        ),
        "",
        _table(
            ["model", "version", "sha256"],
            [[m["name"], m["version"], m["sha256"][:16]] for m in status["models"]],
        ),
    ]
    return "\n".join(out)


KEY_ENV = "LEUKOSCOPE_API_KEY"


def print_status(settings: Settings, url: str | None, key: str | None = None) -> int:
    base = url or f"http://{settings.api.host}:{settings.api.port}"
    key = key or os.environ.get(KEY_ENV) or None
    request = urllib.request.Request(f"{base}/status")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            status = json.load(response)
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("detail", "")
        except (ValueError, AttributeError):
            detail = ""
        if exc.code == 401:
            how = "the key was refused" if key else f"no key given: pass --key or set {KEY_ENV}"
            print(f"leukoscope status: {base}/status answered 401 ({detail or 'unauthorized'}); "
                  f"{how}", file=sys.stderr)
        elif exc.code == 403:
            print(f"leukoscope status: {base}/status answered 403 ({detail}); use a key with "
                  "role read or admin", file=sys.stderr)
        else:
            print(f"leukoscope status: {base}/status answered {exc.code} {detail}",
                  file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"leukoscope status: cannot reach {base}/status: {exc}", file=sys.stderr)
        return 1
    print(format_status(status))
    print(f"\n(as of {time.strftime('%Y-%m-%d %H:%M:%S')})")
    return 0
