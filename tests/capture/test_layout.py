"""Inbox layout and file moves, without Redis."""

from __future__ import annotations

from pathlib import Path

from capture.layout import is_ignored_name, place
from capture.mover import free_name, move_file, write_reason
from daemon.domain.ids import UNASSIGNED, valid_specimen_id


def test_specimen_ids() -> None:
    assert valid_specimen_id("S-2024_001.a")
    for bad in ("", ".x", "-x", "a b", "a..b", "x" * 65, "a/b", "é"):
        assert not valid_specimen_id(bad), bad


def test_ignored_names() -> None:
    for name in (".hidden.jpg", "a.jpg.part", "a.JPG.PART", "b.tmp", ".staging"):
        assert is_ignored_name(name), name
    assert not is_ignored_name("a.jpg")


def test_place(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    assert place(inbox, inbox / "f.jpg").specimen_id == UNASSIGNED
    good = place(inbox, inbox / "S1" / "f.TIFF")
    assert (good.specimen_id, good.name, good.problem) == ("S1", "f.TIFF", None)
    assert "nested too deep" in place(inbox, inbox / "S1" / "sub" / "f.jpg").problem
    assert "not a valid specimen id" in place(inbox, inbox / "bad name" / "f.jpg").problem
    assert place(inbox, inbox / "S1" / "f.jpg.part") is None
    assert place(inbox, inbox / ".staging" / "f.jpg") is None
    assert place(inbox, tmp_path / "elsewhere.jpg") is None


def test_move_keeps_both_on_name_clash(tmp_path: Path) -> None:
    source = tmp_path / "a.jpg"
    target_dir = tmp_path / "archive" / "S1"
    target_dir.mkdir(parents=True)
    (target_dir / "a.jpg").write_bytes(b"first")
    source.write_bytes(b"second")
    moved = move_file(source, target_dir, "a.jpg")
    assert moved == target_dir / "a-1.jpg" and moved.read_bytes() == b"second"
    assert (target_dir / "a.jpg").read_bytes() == b"first" and not source.exists()
    # A file whose note name is taken is also a clash.
    (target_dir / "b.jpg.reason.txt").write_text("old")
    assert free_name(target_dir, "b.jpg", ".reason.txt").name == "b-1.jpg"
    note = write_reason(moved, "truncated", "why", str(source), "abc")
    assert note.name == "a-1.jpg.reason.txt" and "reason: truncated" in note.read_text()


def test_ids_with_a_trailing_line_feed_are_refused():
    """Python's '$' matches before a final '\\n': a line feed would reach HL7 PID-3/OBR-3
    (a LIS splitting on line feeds sees bogus segments) and archive folder names."""
    from daemon.domain.ids import valid_frame_id, valid_name, valid_upload_name

    for check in (valid_specimen_id, valid_name, valid_frame_id, valid_upload_name):
        assert check("S1") and not check("S1\n") and not check("S1\r\n"), check
