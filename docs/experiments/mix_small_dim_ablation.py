"""Validation ablation of the shift suite's mix_small_dim (0.5x, 20 % darker, hue -6, saturation x1.25, JPEG 50):
which part costs, each field alone through the daemon's path. Run from the repository root:
    .venv/bin/python docs/experiments/mix_small_dim_ablation.py
2026-11-27: m 97.6, m_j 95.9, m_e_j 96.5, m_c_j 94.8, m_e_c 94.1, e_c_j 97.2, full 94.8 % (459 fields)."""
from pathlib import Path

import numpy as np

from daemon.inference.analyzer import Analyzer
from daemon.inference.sessions import Classifier, Segmenter
from daemon.training.data import block_split, list_fields, read_rgb
from daemon.training.evaluate import daemon_results, suite_row
from daemon.training.shifts import chain, chroma, exposure, jpeg, magnify

recs = block_split(list_fields(Path('../shared/data/all-taleqani')))
an = Analyzer(Segmenter(Path('models/segmenter.onnx'), 'cpu', 0), Classifier(Path('models/classifier.onnx'), 'cpu', 0))
val = recs['val']
raw = [read_rgb(r.image) for r in val]
labels = np.array([r.label for r in val])
V = {
 'm': chain(magnify(0.5)),
 'm_j': chain(magnify(0.5), jpeg(50)),
 'm_e_j': chain(magnify(0.5), exposure(0.8), jpeg(50)),
 'm_c_j': chain(magnify(0.5), chroma(hue_deg=-6, saturation=1.25), jpeg(50)),
 'm_e_c': chain(magnify(0.5), exposure(0.8), chroma(hue_deg=-6, saturation=1.25)),
 'e_c_j': chain(exposure(0.8), chroma(hue_deg=-6, saturation=1.25), jpeg(50)),
 'full': chain(magnify(0.5), exposure(0.8), chroma(hue_deg=-6, saturation=1.25), jpeg(50)),
}
for k, s in V.items():
    r = suite_row(daemon_results(an, raw, shift=s), labels)
    print(k, round(r['accuracy'],4), 'review', round(r['review_share'],4), flush=True)
