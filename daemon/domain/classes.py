"""The cell classes the classifier tells apart, as codes (manifests add display names)."""

from __future__ import annotations

CLASS_CODES: tuple[str, ...] = ("benign", "early_pre_b", "pre_b", "pro_b")
BLAST_CLASSES: tuple[str, ...] = ("early_pre_b", "pre_b", "pro_b")  # counted as blasts
