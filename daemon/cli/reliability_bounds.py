"""The memory bounds ``leukoscope reliability`` asserts, and its verdict (exit code).

Issue 16's "Done when": capture RSS < 1 GB and worker RSS < 3 GB throughout. The others are
this project's stated bounds: the API decodes no frame itself (1 GB, as capture); a child
decoding pushed frames is held by its address-space limit, its start-up size plus
``api.decode_memory_bytes`` (start-up: about 0.5 GB mapped, so 1 GB is allowed for it); the
supervisor only watches (1 GB); the embedded Redis stays within ``redis.memory_budget_bytes``.
GB here is 10^9 bytes (the stricter reading of the issue's figures).
"""

from __future__ import annotations

from daemon.settings import Settings

GB = 10**9
MIB = 2**20


def rss_limits(settings: Settings) -> dict[str, int]:
    """Role -> the most resident memory (bytes) its process may ever hold."""
    return {
        "capture": 1 * GB,
        "worker": 3 * GB,
        "api": 1 * GB,
        "api-decoder": settings.api.decode_memory_bytes + 1 * GB,
        "supervisor": 1 * GB,
        "redis": settings.redis.memory_budget_bytes,
    }


def bounds(report: dict, settings: Settings) -> dict[str, dict]:
    """Every role's peak RSS over the scenarios that ran (``peak_rss_mib``), beside its
    limit: ``{role: {limit_mib, peak_mib, scenario, ok}}``; a role with no limit has
    ``limit_mib: None`` and is reported, not judged."""
    limits = rss_limits(settings)
    peaks: dict[str, tuple[float, str]] = {}
    for name, section in report.items():
        if not isinstance(section, dict):
            continue
        for role, mib in (section.get("peak_rss_mib") or {}).items():
            if role not in peaks or mib > peaks[role][0]:
                peaks[role] = (mib, name)
    out = {}
    for role in sorted(set(peaks) | set(limits)):
        peak, scenario = peaks.get(role, (None, None))
        limit = limits.get(role)
        out[role] = {
            "limit_mib": round(limit / MIB, 1) if limit else None,
            "peak_mib": peak, "scenario": scenario,
            "ok": None if peak is None or limit is None else peak * MIB < limit,
        }
    return out


def failures(report: dict) -> list[str]:
    """What failed: a scenario's error or false check, a role above its bound, or a daemon
    that did not stop cleanly. Empty: the run passed (exit code 0)."""
    found = []
    for name, section in report.items():
        if not isinstance(section, dict) or name == "bounds":
            continue
        if "error" in section:
            found.append(f"{name}: {section['error']}")
        for check, ok in (section.get("checks") or {}).items():
            if not ok:
                found.append(f"{name}: {check}")
    if report.get("exit_code") not in (None, 0):  # SIGTERM must stop the daemon cleanly
        found.append(f"the daemon exited {report['exit_code']} on SIGTERM")
    for role, bound in (report.get("bounds") or {}).items():
        if bound["ok"] is False:
            found.append(f"bounds: {role} peak {bound['peak_mib']} MiB "
                         f"(in {bound['scenario']}) over {bound['limit_mib']} MiB")
    return found
