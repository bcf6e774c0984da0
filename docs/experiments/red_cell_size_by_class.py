"""Red-cell diameter (px, the daemon's ruler) per class and per slide of the data set's blocks: the pixel scale
differs between slides and goes with the class (model card, "The scale flag follows the models' tolerance").
Run from the repository root: .venv/bin/python docs/experiments/red_cell_size_by_class.py [train|val|test]"""
import collections
import json
import sys
from pathlib import Path

import numpy as np

from daemon.domain.classes import CLASS_CODES
from daemon.imaging.ruler import measure_red_cells
from daemon.training.data import block_split, list_fields, read_rgb

split = sys.argv[1] if len(sys.argv) > 1 else "train"
records = block_split(list_fields(Path("../shared/data/all-taleqani")))[split]
slides: dict[tuple[int, int], list[float]] = collections.defaultdict(list)
for record in records:
    ruler = measure_red_cells(read_rgb(record.image))
    if ruler.reliable and ruler.diameter_px is not None:
        slides[(record.label, record.number // 40)].append(ruler.diameter_px)
report = {}
for label, code in enumerate(CLASS_CODES[:4]):
    medians = [float(np.median(v)) for (lab, _), v in slides.items() if lab == label]
    fields = [d for (lab, _), v in slides.items() if lab == label for d in v]
    report[code] = {"slides": len(medians), "field_median_px": round(float(np.median(fields)), 1),
                    "slide_medians_min_max_px": [round(min(medians), 1), round(max(medians), 1)]}
everything = [float(np.median(v)) for v in slides.values()]
report["all_slides_min_max_px"] = [round(min(everything), 1), round(max(everything), 1)]
print(json.dumps({"split": split, **report}))
