"""Frame images, cell crops and class-activation maps for the review station (issue 13).

Where a frame's pixels are after processing: capture moves a watched-folder file to
``<data_dir>/archive/<specimen_id>/<name>`` once its result is stored (``name-1.jpg``... when
the name was taken), and ``POST /frames`` keeps an accepted upload there too. A frame's id is
a hash of (specimen, name, bytes), so the original is found by name and *proved* by its hash:
a different file under the same name is never served. CZI scenes and TIFF pages are read
back with capture's own reader (``capture.intake.expand``) and picked by their label. Before
archiving, the file is still at its inbox path (the result's ``source``). Live-camera frames
have no file and no image.

Bounds: a file over ``capture.max_frame_bytes`` is not read; images are served at most
``review.image_max_side`` wide/high; the API keeps at most ``review.image_cache_frames``
decoded frames (LRU) so a gallery's crops decode each frame once.

The CAM: the classifier's ``cam`` output ([N, C, h, w]) for the crop exactly as the worker
made it (frame rescaled to the models' scale and background, ``crop_cells`` with the
manifest's crop recipe), upsampled and blended over the crop as a heat map.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np

from capture.intake import derived_frame_id, expand
from daemon.domain.classes import UNIDENTIFIED
from daemon.domain.results import FrameResult, ScaleInfo
from daemon.imaging.frames import FrameRejected, decode_rgb
from daemon.imaging.pipeline import CellBox, crop_cells
from daemon.imaging.stain import turn_hue
from daemon.settings import Settings

UPLOAD_PREFIX = "upload:"
CROP_PX = 128


class NoImage(Exception):
    """The frame's original is not (or no longer) available to this API process."""


def _candidates(result: FrameResult, settings: Settings) -> tuple[list[Path], str, str | None]:
    source, label = result.source, None
    if "#" in source:
        source, _, label = source.rpartition("#")
    specimen = result.specimen_id
    if source.startswith(UPLOAD_PREFIX):
        name = source[len(UPLOAD_PREFIX):].rpartition("/")[2]
        paths: list[Path] = []
    else:
        name = Path(source).name
        paths = [Path(source)]
    folder = settings.archive_dir / specimen
    paths.append(folder / name)
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem:
        stem, suffix = name, ""
    if folder.is_dir() and name:
        pattern = f"{stem}-*.{suffix}" if suffix else f"{stem}-*"
        paths.extend(sorted(folder.glob(pattern))[:200])
    return paths, name, label


def load_original(result: FrameResult, settings: Settings) -> np.ndarray:
    """The frame as captured, (H, W, 3) uint8 RGB; raises NoImage."""
    paths, name, label = _candidates(result, settings)
    limit = settings.capture.max_frame_bytes
    for path in paths:
        try:
            if not path.is_file() or (limit and path.stat().st_size > limit):
                continue
            data = path.read_bytes()
        except OSError:
            continue
        if derived_frame_id(result.specimen_id, name, label, data) != result.frame_id:
            continue
        try:
            if label is None:
                return decode_rgb(data, limit)
            for frame in expand(data, settings):
                if frame.label == label:
                    return frame.rgb
        except FrameRejected as exc:
            raise NoImage(f"the original cannot be decoded: {exc}") from exc
    raise NoImage("the original is not in the archive (moved, deleted, or on another host)")


def png(image_rgb: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise NoImage("cannot encode the image")
    return buffer.tobytes()


def jpeg(image_rgb: np.ndarray, quality: int = 90) -> bytes:
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR),
                              [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise NoImage("cannot encode the image")
    return buffer.tobytes()


def bounded(image_rgb: np.ndarray, max_side: int) -> np.ndarray:
    height, width = image_rgb.shape[:2]
    if max(height, width) <= max_side:
        return image_rgb
    factor = max_side / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(image_rgb, size, interpolation=cv2.INTER_AREA)


class FrameImages:
    """Decoded originals (LRU-bounded), crops and CAMs, for one API process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.lock = threading.Lock()
        self._analyzer = None
        self._analyzer_lock = threading.Lock()

    def original(self, result: FrameResult) -> np.ndarray:
        with self.lock:
            if result.frame_id in self.cache:
                self.cache.move_to_end(result.frame_id)
                return self.cache[result.frame_id]
        image = load_original(result, self.settings)
        with self.lock:
            self.cache[result.frame_id] = image
            while len(self.cache) > self.settings.review.image_cache_frames:
                self.cache.popitem(last=False)
        return image

    def frame_jpeg(self, result: FrameResult) -> bytes:
        return jpeg(bounded(self.original(result), self.settings.review.image_max_side))

    def crop(self, result: FrameResult, index: int) -> np.ndarray:
        x, y, w, h = result.cells[index].bbox
        box = CellBox(x, y, w, h, result.cells[index].area_px)
        return crop_cells(self.original(result), [box], self.analyzer().crop_spec, CROP_PX)[0]

    def analyzer(self):
        with self._analyzer_lock:
            if self._analyzer is None:
                from daemon.inference.analyzer import Analyzer
                from daemon.inference.sessions import Classifier, Segmenter

                models = self.settings.models
                self._analyzer = Analyzer(Segmenter(models.segmenter, "cpu", 1),
                                          Classifier(models.classifier, "cpu", 1))
            return self._analyzer

    def cam(self, result: FrameResult, index: int, class_code: str | None = None) -> np.ndarray:
        """The crop with the classifier's activation map for ``class_code`` (default: the
        model's call) blended over it, (CROP_PX, CROP_PX, 3) uint8 RGB."""
        analyzer = self.analyzer()
        cell = result.cells[index]
        scale = result.scale or ScaleInfo(um_per_pixel=None, source="assumed", factor=1.0)
        prepared, _ = analyzer.prepare(self.original(result), scale)
        turned = result.acquisition.stain_turned_deg if result.acquisition else 0.0
        if turned:  # the rig's stain calibration turned the frame the models saw: so here
            prepared = turn_hue(prepared, turned)
        f = scale.factor
        x, y, w, h = cell.bbox
        box = CellBox(round(x * f), round(y * f), max(1, round(w * f)), max(1, round(h * f)),
                      cell.area_px)
        size = analyzer.classifier.crop_size
        crops = crop_cells(prepared, [box], analyzer.crop_spec, size)
        classifier = analyzer.classifier
        from daemon.imaging.pipeline import to_tensor

        tensor = to_tensor(crops, classifier.manifest.input)
        _probs, cams = classifier.session.run(["probabilities", "cam"], classifier._feed(tensor))
        classes = analyzer.classes
        code = class_code or cell.class_
        if code not in classes:
            code = UNIDENTIFIED if UNIDENTIFIED in classes else classes[0]
        heat = np.asarray(cams[0, classes.index(code)], dtype=np.float32)
        heat = heat - heat.min()
        heat = heat / heat.max() if heat.max() > 0 else heat
        heat = cv2.resize(heat, (CROP_PX, CROP_PX), interpolation=cv2.INTER_CUBIC)
        colour = cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8),
                                   cv2.COLORMAP_JET)
        colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB)
        base = crop_cells(self.original(result), [CellBox(x, y, w, h, cell.area_px)],
                          analyzer.crop_spec, CROP_PX)[0]
        return cv2.addWeighted(base, 0.55, colour, 0.45, 0)
