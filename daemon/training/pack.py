"""A training pack: what training reads, in a folder small enough to carry to a GPU machine
that cannot reach the data set (``leukoscope train pack``).

Only the train and validation blocks travel; the test blocks stay behind, so a model trained
from a pack has still never seen them. Layout::

    pack.npz                           per split: names, labels, bit-packed cleaned masks;
                                       the reference background; the training-data sha256
    fields/<split>/<Folder>/<file>     the original field files, byte for byte
    negatives/<split>/<class>/<file>   foreign normal cells (pbc layout), train and val parts,
    negatives/<split>/order.txt        in ``data.pbc_split``'s order

``data.load_splits`` reads a pack wherever it reads a data-set folder (``--data PACK``) and
``data.pbc_split`` reads ``PACK/negatives`` as already split, so training runs unchanged and
its arrays equal those made from the data set itself.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from daemon.training import data as D
from daemon.training.data import PACK_FILE, PACK_SPLITS


def write_pack(
    data_dir: Path, out_dir: Path, block_size: int = 40, seed: int = 0,
    negatives_dir: Path | None = None, cache_dir: Path | None = None,
) -> dict:
    """Write the pack of ``data_dir``'s train and val blocks (and ``negatives_dir``'s train and
    val parts) to ``out_dir`` (``cache_dir``: ``load_splits``'s mask cache); returns ``{"fields": {split: n}, "negatives": {split: n},
    "bytes": total}``."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "fields").mkdir(parents=True)
    splits = D.load_splits(str(data_dir), block_size, seed, cache_dir=cache_dir)
    arrays: dict[str, np.ndarray] = {
        "reference_background": np.asarray(splits["train"]["reference_background"], np.float32),
        "training_data_sha256": np.asarray(D.training_data_sha256(splits["train"]["records"])),
        "block_size": np.asarray(block_size),
        "seed": np.asarray(seed),
    }
    report: dict = {"fields": {}, "negatives": {}}
    for split in PACK_SPLITS:
        part = splits[split]
        for record in part["records"]:
            target = out_dir / "fields" / split / record.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(record.image, target)
        arrays[f"{split}_names"] = np.asarray(part["names"])
        arrays[f"{split}_labels"] = part["labels"]
        arrays[f"{split}_masks"] = np.packbits(part["masks"] > 0, axis=-1)
        arrays[f"{split}_mask_shape"] = np.asarray(part["masks"].shape)
        report["fields"][split] = len(part["names"])
    np.savez_compressed(out_dir / PACK_FILE, **arrays)
    if negatives_dir is not None:
        foreign = D.pbc_split(Path(negatives_dir), seed)
        for split in PACK_SPLITS:
            for path, cls in foreign[split]:
                target = out_dir / "negatives" / split / cls / path.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
            # pbc_split's own order, so that training sees the negatives as it would at home
            (out_dir / "negatives" / split / D.NEGATIVES_ORDER).write_text(
                "".join(f"{cls}/{path.name}\n" for path, cls in foreign[split]))
            report["negatives"][split] = len(foreign[split])
    report["bytes"] = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    return report
