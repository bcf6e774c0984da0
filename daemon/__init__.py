"""leukoscope: streaming white-cell segmentation and ALL subtype classification.

For research use only. Not for use in diagnostic procedures.
"""

__version__ = "0.1.0"

CLASS_CODES: tuple[str, ...] = ("benign", "early_pre_b", "pre_b", "pro_b")
