"""Which model masks a photo: the studio model (Carvana's turntable, the best there) or the general
model (cars on any background). Every consumer's default is `AutoPredictor`, which looks at each
photo, picks one and says which; a user never has to know there are two.

The studio looks the same in every Carvana photo: a light grey, colourless wall across the top
and down both sides. `studio_look` measures that on a 64x96 thumbnail. The limits were set on
the data (every Carvana photo is studio, no street frame is; docs/models.md, "Which model").
Product shots on light backgrounds look like a studio too, but the studio model is unsure of
them as it never is of Carvana's photos: a studio-looking photo whose studio mask comes back
unsure is masked again by the general model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from carmask.data.io import DataError, read_photo
from carmask.inference.model_files import TRAIN_EXTRA
from carmask.inference.predictor import Predictor, resolve_backend, resolve_device
from carmask.inference.streaming import Decoded, Prediction, stream_predictions

THUMB = (64, 96)  # (h, w)
TOP_ROWS, SIDE_COLUMNS = 10, 6  # the wall: the top 15% of the picture, the outer 6% each side
TOP_LIGHT, SIDES_LIGHT = 0.9, 0.65  # least share of light, colourless pixels there
# The studio model's unsure pixels per car pixel (carmask.inference.confidence) on the 205
# Carvana photos it never saw (160 held out, 45 test): median 0.013, 99th percentile 0.0201, max
# 0.0205. A studio-looking photo above the limit is not Carvana's studio (a product shot on a
# light background, say), and the general model masks it better: every one of the 38
# studio-looking product shots of cars_in_the_wild, training and held out, is masked better by
# the general model, and the studio model's least unsure of them is at 0.0233 (a training photo).
# The limit sits between the two. Each studio file moved it: 0.05 for the model of 2026-11
# (its max on Carvana 0.036), 0.03 for the 640x960 file of 2026-12-06 (max 0.023); the present
# 768x1152 file is surer of Carvana's photos and of product shots alike, and kept one held-out
# product shot at 0.03 (0.970 against the general model's 0.993).
STUDIO_UNSURE_LIMIT = 0.022


@dataclass(frozen=True)
class StudioLook:
    top: float  # share of light, colourless pixels along the top
    sides: float  # the same down the left and right edges

    @property
    def is_studio(self) -> bool:
        return self.top >= TOP_LIGHT and self.sides >= SIDES_LIGHT


def studio_look(photo: np.ndarray) -> StudioLook:
    """How much an RGB uint8 photo's edges look like Carvana's studio wall."""
    thumb = cv2.resize(photo, THUMB[::-1], interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(thumb, cv2.COLOR_RGB2HSV)
    light = (hsv[..., 2] > 140) & (hsv[..., 1] < 40)
    sides = np.concatenate([light[:, :SIDE_COLUMNS], light[:, -SIDE_COLUMNS:]], axis=1)
    return StudioLook(float(light[:TOP_ROWS].mean()), float(sides.mean()))


class AutoPredictor:
    """A studio and a general `Predictor` behind one interface; each photo goes to the one its
    look asks for (`studio_look`), and back to the general one when the studio mask is unsure.
    Options are those of `Predictor` and apply to both, but `refiner` (a refiner file of your
    own), which is the studio model's. With quality "best" each runs flip TTA and its outline
    refiner: the studio model's (weights/models.json); the general model has none."""

    def __init__(self, studio: str | Path | None = "studio", general: str | Path | None = "general",
                 refiner: str | Path | None = None, **options) -> None:
        # the backend's class: Predictor.__new__
        self.studio = Predictor(studio, refiner=refiner, **options)
        self.general = Predictor(general, **options)
        self.config = self.studio.config  # the validation cars and the like: the studio model's
        self.path, self.size, self.tta = self.studio.path, self.studio.size, self.studio.tta
        self.quality = self.studio.quality
        self.backend, self.device, self.batch = self.studio.backend, self.studio.device, self.studio.batch
        # decode at the larger input of the two, and in full where a refiner reads the outline
        self._cover = None if (self.studio.refiner or self.general.refiner) else \
            max(self.studio.size, self.general.size, key=lambda s: s[0] * s[1])

    @property
    def name(self) -> str:
        return f"auto: studio {self.studio.name} or general {self.general.name}"

    @property
    def decode_cover(self) -> tuple[int, int] | None:
        """The size photos are decoded to cover (None: in full), as `predict_paths` does."""
        return self._cover

    def predict_decoded(self, pixels: np.ndarray, size: tuple[int, int]) -> Prediction:
        """One photo decoded to cover `decode_cover` (or in full), whose mask gets `size` (H, W):
        the mask `predict_paths` makes of the same file."""
        predictor = self.choose(pixels)
        return self._run(predictor, [Decoded(None, predictor, pixels, tuple(size))])[0]

    def choose(self, photo: np.ndarray) -> Predictor:
        return self.studio if studio_look(photo).is_studio else self.general

    def predict(self, photos: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [p.mask for p in self.predict_detailed(photos)]

    def predict_detailed(self, photos: Sequence[np.ndarray]) -> list[Prediction]:
        """Each photo through its model, in input order."""
        results: list[Prediction | None] = [None] * len(photos)
        choices = [self.choose(photo) for photo in photos]
        for predictor in (self.studio, self.general):
            chosen = [i for i, choice in enumerate(choices) if choice is predictor]
            for start in range(0, len(chosen), predictor.batch):
                batch = chosen[start:start + predictor.batch]
                items = [Decoded(None, predictor, photos[i], photos[i].shape[:2]) for i in batch]
                for i, prediction in zip(batch, self._run(predictor, items)):
                    results[i] = prediction
        return results

    def predict_paths(self, paths: Iterable[str | Path], workers: int | None = None,
                      on_error: Callable[[Path, str], None] | None = None) -> Iterator[Prediction]:
        """Like `Predictor.predict_paths`: in input order, a bad photo yields its error."""
        def decode(path) -> Decoded:
            try:
                photo = read_photo(path, cover=self._cover)
                return Decoded(Path(path), self.choose(photo.pixels), photo.pixels, photo.size)
            except DataError as error:
                return Decoded(Path(path), error=str(error))

        yield from stream_predictions(decode, paths, workers, self.device, self.batch, on_error,
                                      run=self._run)

    def _run(self, predictor: Predictor, batch: Sequence[Decoded],
             second_opinion: bool = True) -> list[Prediction]:
        """Decoded photos (`inputs` are their pixels) through one model; unsure studio masks get
        the general model's second opinion."""
        results = predictor.run_batch([predictor.preprocess(d.inputs, d.size) for d in batch],
                                      [d.size for d in batch], [d.inputs for d in batch],
                                      [d.path for d in batch])
        for index, (decoded, prediction) in enumerate(zip(batch, results)):
            unsure = prediction.warnings or prediction.confidence.unsure_share > STUDIO_UNSURE_LIMIT
            if second_opinion and predictor is self.studio and unsure:
                results[index] = self._run(self.general, [decoded], second_opinion=False)[0]
        return results


def create_predictor(model: str | Path | None = None, **options) -> Predictor | AutoPredictor:
    """The predictor every consumer uses: `AutoPredictor` for no model (or "auto"), else a
    `Predictor` for exactly the model asked for."""
    if model is None or str(model) == "auto":
        return AutoPredictor(**options)
    return Predictor(model, **options)


def predictor_class(backend: str = "auto", device: str = "cpu") -> type[Predictor]:
    """The Predictor of a backend: onnxruntime's here, or torch's, which plugs in from the
    training package (it needs torch) behind the same interface."""
    if resolve_backend(backend, resolve_device(device)) == "onnx":
        return Predictor
    try:
        from carmask.training.torch_backend import TorchPredictor
    except ImportError:
        raise ValueError(f"the torch backend (and any GPU) needs torch: {TRAIN_EXTRA}") from None
    return TorchPredictor
