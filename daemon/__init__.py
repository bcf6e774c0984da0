"""leukoscope: streaming white-cell segmentation and ALL subtype classification.

For research use only. Not for use in diagnostic procedures.
"""

__version__ = "0.1.0"

