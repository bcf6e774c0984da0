"""The cell classes the classifier tells apart, as codes (manifests add display names)."""

from __future__ import annotations

#: The four lymphoid classes of the differential (a specimen's report counts these).
CLASS_CODES: tuple[str, ...] = ("benign", "early_pre_b", "pre_b", "pro_b")
#: A cell the classifier cannot place in any of the four classes (granulocytes, monocytes,
#: platelets, erythroblasts, red cells, debris, cells cut by the field edge): counted, shown,
#: sent to review, never part of the differential.
UNIDENTIFIED = "unidentified"
#: The classifier's outputs, in order: the four classes, then ``unidentified``.
CELL_OUTCOMES: tuple[str, ...] = (*CLASS_CODES, UNIDENTIFIED)
BLAST_CLASSES: tuple[str, ...] = ("early_pre_b", "pre_b", "pro_b")  # counted as blasts
