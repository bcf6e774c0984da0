"""The Redis scripts (``scripts/*.lua``), read once at import.

Each script is atomic on the server, which is how the store keeps its exactly-once rules:
a frame is queued once, its result is stored, counted and folded into its specimen once, a
specimen completes once. Register a script per client with ``client.register_script``.
"""

from __future__ import annotations

from importlib.resources import files


def _read(name: str) -> str:
    return (files(__package__) / "scripts" / f"{name}.lua").read_text(encoding="utf-8")


ENQUEUE = _read("enqueue")
ADMIT = _read("admit")
FOLD_SPECIMEN = _read("fold_specimen")
STORE_RESULT = _read("store_result").replace("-- SPECIMEN UPDATE --\n", FOLD_SPECIMEN)
COMPLETE_SPECIMEN = _read("complete_specimen")
ADMIT_RIGS = _read("admit_rigs")
FOLD_FIELDS = _read("fold_fields")
REVIEW_CELL = _read("review_cell")
VERIFY_SPECIMEN = _read("verify_specimen")
