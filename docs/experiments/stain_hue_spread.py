"""Stain hue of single fields (model card, "Stain calibration per rig"; README): the spread of the YIQ chroma angle
of stained pixels over the training and validation fields, per class, of the red cells alone, and what a -8/+8 degree
turn reads. Run from the repository root (a few seconds):
    .venv/bin/python docs/experiments/stain_hue_spread.py
2026-11-27: training all fields p10/50/90 145.2/154.6/166.3; red cells alone 153.0/161.8/170.5; -8 reads -8.39 (median)."""
from pathlib import Path

import numpy as np

from daemon.imaging.acquisition import normalise_background
from daemon.imaging.stain import RGB2YIQ
from daemon.training.data import block_split, list_fields, read_rgb
from daemon.training.shifts import chroma

recs = block_split(list_fields(Path('../shared/data/all-taleqani')))
M = RGB2YIQ.astype(np.float32)
def angle(im, ref_grey=253.9, tau=0.9, minchroma=4):
    s = im[::2, ::2].reshape(-1,3).astype(np.float32) @ M.T
    sel = (s[:,0] < tau*ref_grey)
    i, q = s[sel,1], s[sel,2]
    ok = np.hypot(i,q) > minchroma
    if ok.sum() < 50:
        return np.nan, np.nan
    mi, mq = np.median(i[ok]), np.median(q[ok])
    return np.degrees(np.arctan2(mq, mi)), np.hypot(mi, mq)
ref = np.array([252.,255.,253.])
for split in ('train','val'):
    rs = recs[split][::3 if split=='train' else 2]
    A = {}
    for r in rs:
        n = normalise_background(read_rgb(r.image), tuple(ref))
        A.setdefault(r.label, []).append(angle(n))
    allang = np.concatenate([np.array(v)[:,0] for v in A.values()])
    print(split, 'all angle p10/50/90', np.nanpercentile(allang,[10,50,90]).round(1))
    for k,v in A.items():
        v=np.array(v)
        print(' class',k,'angle p10/50/90',np.nanpercentile(v[:,0],[10,50,90]).round(1),'chroma med',np.nanmedian(v[:,1]).round(1))
# rotation recovery
rs = recs['val'][::4]
for h in (-8, 8):
    d=[]
    for r in rs:
        n = normalise_background(read_rgb(r.image), tuple(ref))
        d.append(angle(chroma(hue_deg=h)(n))[0]-angle(n)[0])
    print('shift',h,'measured delta p10/50/90',np.nanpercentile(d,[10,50,90]).round(2))

# --- the red cells alone (violet score < 25) ---
def rbc_angle(im, ref_grey=253.9, tau=0.92, vmax=25):
    s8 = im[::2, ::2].reshape(-1,3).astype(np.float32)
    violet = (s8[:,0]+s8[:,2])/2 - s8[:,1]
    s = s8 @ M.T
    sel = (s[:,0] < tau*ref_grey) & (violet < vmax) & (s[:,0] > 120)
    if sel.sum() < 100:
        return np.nan
    mi, mq = np.median(s[sel,1]), np.median(s[sel,2])
    return np.degrees(np.arctan2(mq, mi))
ref = np.array([252.,255.,253.])
for split in ('train','val'):
    rs = recs[split][::3]
    A = {}
    for r in rs:
        n = normalise_background(read_rgb(r.image), tuple(ref))
        A.setdefault(r.label, []).append(rbc_angle(n))
    allang = np.concatenate([np.array(v) for v in A.values()])
    print(split, 'all p10/25/50/75/90', np.nanpercentile(allang,[10,25,50,75,90]).round(1), 'nan', np.isnan(allang).sum(), len(allang))
    for k,v in A.items():
        print(' class',k, np.nanpercentile(v,[10,50,90]).round(1))
