"""Pilot (2026-11-27, validation blocks only): per-rig stain hue offset taken from the median over each suite row's
fields and applied to all of them; rows as arguments, e.g. none,hue_-8deg. Run from the repository root:
    .venv/bin/python docs/experiments/rig_hue_pilot.py none,hue_-8deg,hue_+8deg,mix_small_dim,mix_rig,mix_worst
Result then (deploy/gpu/decision-2026-11-27.txt): net +13 fields over those rows; writes /tmp/x/righue.json."""
import json
import sys
from pathlib import Path

import numpy as np

from daemon.imaging.acquisition import normalise_background
from daemon.imaging.stain import RGB2YIQ
from daemon.inference.analyzer import Analyzer
from daemon.inference.sessions import Classifier, Segmenter
from daemon.training.data import block_split, list_fields, read_rgb
from daemon.training.evaluate import daemon_results, suite_row
from daemon.training.shifts import SUITE, chain, chroma

M = RGB2YIQ.astype(np.float32)
REF = (252., 255., 253.)
def angle(im, ref_grey=253.9, tau=0.9, minchroma=4):
    s = im[::2, ::2].reshape(-1,3).astype(np.float32) @ M.T
    sel = s[:,0] < tau*ref_grey
    i, q = s[sel,1], s[sel,2]
    ok = np.hypot(i,q) > minchroma
    if ok.sum() < 50:
        return np.nan
    return float(np.degrees(np.arctan2(np.median(q[ok]), np.median(i[ok]))))
recs = block_split(list_fields(Path('../shared/data/all-taleqani')))
theta_ref = float(np.nanmedian([angle(normalise_background(read_rgb(r.image), REF)) for r in recs['train']]))
print('theta_ref', round(theta_ref, 2), flush=True)
an = Analyzer(Segmenter(Path('models/segmenter.onnx'), 'cpu', 0), Classifier(Path('models/classifier.onnx'), 'cpu', 0))
val = recs['val']
raw = [read_rgb(r.image) for r in val]
labels = np.array([r.label for r in val])
rows = sys.argv[1].split(',')
out = {}
for name in rows:
    shift = SUITE[name]
    shifted_angles = [angle(normalise_background(shift(im), REF)) for im in raw]
    delta = theta_ref - float(np.nanmedian(shifted_angles))
    base = daemon_results(an, raw, shift=None if name == 'none' else shift)
    applied = delta if abs(delta) >= 3.0 else 0.0
    corr = base if applied == 0 else daemon_results(an, raw, shift=chain(shift, chroma(hue_deg=applied)))
    b, c = suite_row(base, labels), suite_row(corr, labels)
    bc = np.array([r['frame_class'] for r in base])
    cc = np.array([r['frame_class'] for r in corr])
    codes = ['benign','early_pre_b','pre_b','pro_b']
    truth = np.array([codes[k] for k in labels])
    fixed = int(((bc != truth) & (cc == truth)).sum())
    broken = int(((bc == truth) & (cc != truth)).sum())
    out[name] = dict(delta=round(delta,2), applied=round(applied,2), base=round(b['accuracy'],4), corrected=round(c['accuracy'],4), fixed=fixed, broken=broken)
    print(name, out[name], flush=True)
json.dump(out, open('/tmp/x/righue.json','w'), indent=1)
