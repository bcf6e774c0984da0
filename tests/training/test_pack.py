"""Training packs: what travels to a GPU machine trains exactly as the data set at home."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from daemon.training import data as D
from daemon.training.pack import write_pack


def test_pack_loads_as_the_data_set_and_leaves_the_test_blocks_home(
    synthetic_data: Path, synthetic_normal_cells: Path, tmp_path: Path
) -> None:
    pack = tmp_path / "pack"
    report = write_pack(synthetic_data, pack, block_size=3, seed=0,
                        negatives_dir=synthetic_normal_cells)
    home = D.load_splits(str(synthetic_data), 3, 0)
    away = D.load_splits(str(pack), 3, 0)
    assert set(away) == {"train", "val"}
    for split in ("train", "val"):
        assert report["fields"][split] == len(home[split]["names"]) > 0
        assert away[split]["names"] == home[split]["names"]
        assert np.array_equal(away[split]["images"], home[split]["images"])
        assert np.array_equal(away[split]["masks"], home[split]["masks"])
        assert np.array_equal(away[split]["labels"], home[split]["labels"])
    # the data set's own sha256 travels: a model trained away names the same training data
    assert away["train"]["training_data_sha256"] == D.training_data_sha256(
        home["train"]["records"])
    shipped = {p.name for p in (pack / "fields").rglob("*") if p.is_file()}
    assert not shipped & {r.image.name for r in home["test"]["records"]}

    foreign_home = D.pbc_split(synthetic_normal_cells, 0)
    foreign_away = D.pbc_split(pack / "negatives", 0)
    for split in ("train", "val"):
        assert [(p.name, c) for p, c in foreign_away[split]] == [
            (p.name, c) for p, c in foreign_home[split]]
        assert all(p.is_file() for p, _ in foreign_away[split])
    assert foreign_away["test"] == [] and foreign_home["test"]


def test_pack_refuses_another_split(synthetic_data: Path, tmp_path: Path) -> None:
    write_pack(synthetic_data, tmp_path / "pack", block_size=3, seed=0)
    with pytest.raises(ValueError, match="block size 3, seed 0"):
        D.load_splits(str(tmp_path / "pack"), 40, 0)
