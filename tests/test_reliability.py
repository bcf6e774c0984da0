"""`leukoscope reliability` at a small scale (issue 16): a real `leukoscope run` (embedded
Redis, capture, a worker, the API), hostile input pushed over HTTP beside good frames, and
the report's verdict: outcomes and every role's peak RSS against its bound."""

from __future__ import annotations

from pathlib import Path

from daemon.cli.reliability import reliability_report
from daemon.cli.reliability_bounds import GB, bounds, failures, rss_limits
from daemon.settings import Settings, load_settings
from daemon.store.keys import (
    CELL_REVIEW_KEY,
    ORDER_KEY,
    RESULT_KEY,
    SPECIMEN_FRAMES_KEY,
    SPECIMEN_KEY,
    SPECIMEN_ORDER_KEY,
)
from tests.conftest import settings_dict

SMALL = {"push-hostile": {"good": 3, "uhd": 2, "tiff_pages": 3, "tiff_side": 5000,
                          "sharp_side": 4200}}


def test_pushed_hostile_input_leaves_good_frames_done_and_every_process_in_bounds(
        tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    settings = load_settings(None, **settings_dict(tmp_path, tiny_models))
    report = reliability_report(settings, ["push-hostile"], scale=SMALL)
    push = report["push-hostile"]
    assert report["failures"] == [], report
    answers = push["answers"]
    assert answers["jpeg bomb 20000x20000"].startswith("422 too_large")
    assert answers["png bomb 20000x20000"].startswith("422 too_large")
    assert answers["tiff 3 pages of 5000x5000"].startswith("422 too_large")
    assert answers["tiff 400 pages of 64x64"].startswith("413")
    assert answers["jpeg with 2 KB of random bytes"].startswith("422 undecodable")
    for label in ("um_per_pixel=inf", "specimen_id with a trailing line feed",
                  "rig_id with a trailing line feed", "name with a trailing line feed"):
        assert answers[label].startswith("400"), (label, answers[label])
    assert push["good_done"] == push["good_frames"] == 5 and push["duplicates"] == 0
    assert push["api_pid_before"] == push["api_pid_after"]
    limits = report["bounds"]
    for role in ("capture", "worker", "api", "supervisor"):  # each sampled, each judged
        assert limits[role]["ok"] is True, (role, limits[role])
    assert rss_limits(settings)["capture"] == 1 * GB  # the "capture RSS < 1 GB"
    assert rss_limits(settings)["worker"] == 3 * GB  # and "worker RSS < 3 GB"


def test_a_role_over_its_bound_or_a_failed_check_fails_the_run() -> None:
    """The verdict is computed, not printed: one role 1 MiB over, or one false check, and
    `leukoscope reliability` exits 1 (run_reliability returns 1 when failures is not empty)."""
    report: dict = {"hostile": {"peak_rss_mib": {"capture": 900.0, "worker": 2861.0},
                                "checks": {"every good file done": True}},
                    "flood": {"peak_rss_mib": {"worker": 2862.1}}}
    report["bounds"] = bounds(report, Settings())
    assert report["bounds"]["capture"]["ok"] is True
    assert report["bounds"]["worker"] == {"limit_mib": 2861.0, "peak_mib": 2862.1,
                                          "scenario": "flood", "ok": False}
    assert failures(report) == ["bounds: worker peak 2862.1 MiB (in flood) over 2861.0 MiB"]
    report["bounds"]["worker"]["ok"] = True
    report["hostile"]["checks"]["every good file done"] = False
    assert failures(report) == ["hostile: every good file done"]


def test_reliability_exits_1_when_the_report_has_a_failure(monkeypatch, capsys) -> None:
    from daemon.cli import reliability

    verdicts = iter([[], ["poison: poison failed, alone"]])
    monkeypatch.setattr(reliability, "reliability_report",
                        lambda *a, **k: {"failures": next(verdicts)})
    assert reliability.run_reliability(Settings(), ["poison"], 0, True) == 0
    assert reliability.run_reliability(Settings(), ["poison"], 0, True) == 1
    assert "poison failed, alone" in capsys.readouterr().err
    assert failures({"exit_code": -9}) == ["the daemon exited -9 on SIGTERM"]


def test_workers_killed_holding_frames_lose_none_and_fail_none(
        tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    """`worker-kill` at a small scale: 40 fields queued, the worker SIGKILLed 3 times, each
    time holding frames delivered to it for the first time (read from XPENDING with the
    worker frozen); every field ends done, once, and the supervisor restarted it each time."""
    settings = load_settings(None, **settings_dict(tmp_path, tiny_models))
    report = reliability_report(settings, ["worker-kill"],
                                scale={"worker-kill": {"frames": 40, "kills": 3}})
    kill = report["worker-kill"]
    assert report["failures"] == [], report
    assert kill["kills"] == 3 and all(k["held_first_delivery"] > 0 for k in kill["killed"])
    assert (kill["done"], kill["failed"], kill["duplicates"]) == (40, 0, 0)
    assert kill["worker_restarts"] >= 3
    assert report["bounds"]["worker"]["ok"] is True


def test_specimen_memory_measures_what_a_specimen_keeps_and_retention_frees_it(
        tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    settings = load_settings(None, **settings_dict(tmp_path, tiny_models))
    report = reliability_report(settings, ["specimen-memory"],
                                scale={"specimen-memory": {"specimens": 3, "frames": 20}})
    measured = report["specimen-memory"]
    assert report["failures"] == []
    assert measured["results_trimmed"] == 3 * 20 + 1  # and the warm-up frame
    assert 0 < measured["redis_bytes_per_specimen_kept"] \
        < measured["redis_bytes_per_specimen_with_results"]
    stored, kept = (measured["bytes_per_specimen_by_key_with_results"],
                    measured["bytes_per_specimen_by_key_kept"])
    assert {SPECIMEN_FRAMES_KEY, RESULT_KEY} <= set(stored)
    assert {SPECIMEN_KEY, CELL_REVIEW_KEY, ORDER_KEY} <= set(kept)
    assert not {SPECIMEN_FRAMES_KEY, RESULT_KEY} & set(kept)  # left with the results
    assert measured["specimens_forgotten"] == 3
    left = set(measured["bytes_by_key_left"])
    assert not {SPECIMEN_KEY, CELL_REVIEW_KEY, SPECIMEN_ORDER_KEY, ORDER_KEY} & left
