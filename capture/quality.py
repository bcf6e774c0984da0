"""Frame quality control now lives in :mod:`daemon.imaging.quality`, where workers measure
frames they decode anyway (issue 15: decode once). Kept so ``capture.quality`` imports of
earlier releases and tools still work."""

from daemon.imaging.quality import (
    EMPTY_FIELD,
    OUT_OF_FOCUS,
    OVEREXPOSED,
    QC_REASONS,
    UNDEREXPOSED,
    Quality,
    Thresholds,
    assess,
    focus_score,
    grey,
    measure,
)

__all__ = ["EMPTY_FIELD", "OUT_OF_FOCUS", "OVEREXPOSED", "QC_REASONS", "UNDEREXPOSED", "Quality",
           "Thresholds", "assess", "focus_score", "grey", "measure"]
