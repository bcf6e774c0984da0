"""Specimens for the review-station tests: originals in the archive, results in Redis."""

from __future__ import annotations

import io
import random
from pathlib import Path

import redis

from daemon.domain.results import CellResult, FrameResult
from daemon.imaging.frames import frame_id_for
from daemon.settings import Settings
from daemon.store.results import ResultStore
from daemon.store.specimens import SpecimenStore
from tests.conftest import synthetic_jpeg

CLASSES = ("benign", "early_pre_b", "pre_b", "pro_b", "unidentified")
REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "all-taleqani" / "original"
SHIPPED_MODELS = Path(__file__).resolve().parents[1] / "models"


def synthetic_specimen(client: redis.Redis, settings: Settings, specimen_id: str,
                       frames: int = 3, cells_per_frame: int = 3, seed: int = 0,
                       complete: bool = False) -> list[FrameResult]:
    """Frames whose originals lie in the archive (as capture leaves them) and results with
    ``cells_per_frame`` cells each, with made-up classes and confidences."""
    rng = random.Random(seed)
    folder = settings.archive_dir / specimen_id
    folder.mkdir(parents=True, exist_ok=True)
    store = ResultStore(client)
    results = []
    for i in range(frames):
        name = f"f{i:04d}.jpg"
        data = synthetic_jpeg(seed * 10_000 + i, 2)
        (folder / name).write_bytes(data)
        cells = []
        for j in range(cells_per_frame):
            code = CLASSES[(i + j) % len(CLASSES)]
            confidence = round(rng.uniform(0.3, 0.99), 3)
            probs = {c: (confidence if c == code else (1 - confidence) / 3) for c in CLASSES[:4]}
            cells.append(CellResult(
                bbox=[10 + 40 * (j % 4), 20 + 30 * (j // 4), 34, 30], area_px=700,
                class_=code, probabilities=probs, confidence=confidence,
                needs_review=confidence < 0.6 or code == "unidentified",
                review_reasons=["low_confidence"] if confidence < 0.6 else []))
        result = FrameResult(
            frame_id=frame_id_for(specimen_id, name, data), specimen_id=specimen_id,
            source=f"/nonexistent/inbox/{specimen_id}/{name}", rig_id="rig-1", status="done",
            captured_at=1_795_000_000.0 + i, completed_at=1_795_000_001.0 + i,
            frame_class=cells[0].class_ if cells else None, cells=cells)
        store.store(result)
        results.append(result)
    if complete:
        SpecimenStore(client).complete(specimen_id, "api")
    return results


def real_specimen(client: redis.Redis, settings: Settings, specimen_id: str,
                  per_class: int = 2) -> list[FrameResult]:
    """Real fields (the Taleqani development set) through the shipped models, in-process
    (``leukoscope classify``'s path); the originals stay in the archive for the images."""
    folder = settings.archive_dir / specimen_id
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for class_dir in ("Benign", "Early", "Pre", "Pro"):
        for source in sorted((REAL_DATA / class_dir).glob("*.jpg"))[:per_class]:
            target = folder / source.name
            target.write_bytes(source.read_bytes())
            paths.append(target)
    return analysed(client, settings, paths)


def synthetic_analysed_specimen(client: redis.Redis, settings: Settings, specimen_id: str,
                                frames: int = 6, seed: int = 100) -> list[FrameResult]:
    """Synthetic smear fields (no patient image) through the configured models: what the
    README's screenshots show."""
    folder = settings.archive_dir / specimen_id
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(frames):
        path = folder / f"field-{i:03d}.jpg"
        path.write_bytes(synthetic_jpeg(seed + i, 3))
        paths.append(path)
    return analysed(client, settings, paths)


def analysed(client: redis.Redis, settings: Settings, paths: list[Path]) -> list[FrameResult]:
    """``paths`` (in ``<archive>/<specimen>/``) through the models, results stored."""
    from daemon.cli.classify import classify_files
    from daemon.inference.analyzer import Analyzer
    from daemon.inference.sessions import Classifier, Segmenter

    analyzer = Analyzer(Segmenter(settings.models.segmenter, "cpu", 1),
                        Classifier(settings.models.classifier, "cpu", 1))
    out = io.StringIO()
    classify_files(analyzer, paths, out)
    store = ResultStore(client)
    results = []
    for line in out.getvalue().splitlines():
        result = FrameResult.model_validate_json(line)
        result.rig_id = "rig-1"
        store.store(result)
        results.append(result)
    return results
