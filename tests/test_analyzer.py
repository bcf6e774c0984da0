from pathlib import Path

import numpy as np
import pytest

from daemon.domain.manifest import ManifestError
from daemon.imaging.synthetic import smear_field
from daemon.inference.analyzer import Analyzer
from daemon.inference.sessions import Classifier, Segmenter, providers_for


@pytest.fixture(scope="module")
def analyzer(tiny_models: tuple[Path, Path]) -> Analyzer:
    return Analyzer(Segmenter(tiny_models[0], "cpu"), Classifier(tiny_models[1], "cpu"))


def test_finds_every_white_cell_and_classifies_it(analyzer: Analyzer) -> None:
    rng = np.random.default_rng(7)
    fields = [smear_field(rng, white_cells=n) for n in (0, 1, 3)]
    analyses = analyzer.analyze([image for image, _ in fields])
    for (_, truth), analysis in zip(fields, analyses, strict=True):
        assert len(analysis.cells) == len(truth)
        for x, y, _ in truth:  # every drawn cell lies inside one found box
            assert any(b.x <= x < b.x + b.w and b.y <= y < b.y + b.h for b in analysis.cells)
        assert analysis.cell_probabilities.shape == (len(truth), 4)
    assert analyses[0].frame_probabilities is None
    described = analyzer.describe(analyses[2])
    assert described["frame_class"] in analyzer.classes
    assert abs(sum(described["frame_probabilities"].values()) - 1) < 1e-4
    assert len(described["cells"]) == 3


def test_frames_of_other_sizes_work(analyzer: Analyzer) -> None:
    image, truth = smear_field(np.random.default_rng(3), size=(301, 457), white_cells=4)
    (analysis,) = analyzer.analyze([image])
    assert len(analysis.cells) == 4


def test_batched_and_single_frames_agree(analyzer: Analyzer) -> None:
    rng = np.random.default_rng(11)
    images = [smear_field(rng, white_cells=2)[0] for _ in range(3)]
    together = analyzer.analyze(images)
    alone = [analyzer.analyze([image])[0] for image in images]
    for a, b in zip(together, alone, strict=True):
        assert np.allclose(a.cell_probabilities, b.cell_probabilities, atol=1e-5)


def test_model_refs_carry_manifest_versions(analyzer: Analyzer) -> None:
    refs = analyzer.model_refs()
    assert refs["segmenter"].version == "0.0.1-test" and len(refs["classifier"].sha256) == 64


def test_tampered_model_is_refused(tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    for source in tiny_models[0].parent.glob("segmenter.*"):
        (tmp_path / source.name).write_bytes(source.read_bytes())
    with (tmp_path / "segmenter.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ManifestError, match="sha256"):
        Segmenter(tmp_path / "segmenter.onnx", "cpu")


def test_cpu_provider_on_a_machine_without_gpu() -> None:
    assert providers_for("cpu") == ["CPUExecutionProvider"]
    assert providers_for("auto")[-1] == "CPUExecutionProvider"


def test_a_frame_above_the_pixel_budget_is_segmented_in_tiles(tiny_models) -> None:
    """A 4K field in one U-Net call costs ~3.3 GB on the CPU; in tiles of the budget it costs
    what one tile does, and every pixel still gets the whole-frame answer (issue 16)."""
    import numpy as np

    from daemon.imaging.synthetic import smear_field
    from daemon.inference.sessions import Segmenter, tile_spans

    assert tile_spans(100, 100, 8) == [(0, 100)]
    spans = tile_spans(1000, 256, 16)
    assert spans[0][0] == 0 and spans[-1][1] == 1000
    assert all(b[0] + 16 <= a[1] - 16 for a, b in zip(spans, spans[1:], strict=False))
    image, _ = smear_field(np.random.default_rng(3))
    image = np.tile(image, (2, 3, 1))[:400, :600]
    whole = Segmenter(tiny_models[0], "cpu").compute([image])[0]
    tiled_model = Segmenter(tiny_models[0], "cpu", max_pixels=192 * 192)
    calls = []
    run = tiled_model.session.run

    def counting(names, feed):
        calls.append(next(iter(feed.values())).shape)
        return run(names, feed)

    tiled_model.session.run = counting
    tiled = tiled_model.compute([image])[0]
    assert tiled.shape == whole.shape and np.isfinite(tiled).all()
    assert len(calls) > 1 and all(s[2] * s[3] <= 192 * 192 for s in calls)
    assert np.abs(tiled - whole).max() < 1e-3
