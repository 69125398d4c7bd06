"""One predictor for every consumer: submission, evaluation, cut-outs, the service and the demo.

Photos are decoded (libjpeg-reduced where the model size allows), resized to the model's input,
run in batches through onnxruntime, and the RAW outputs (logits) are upsampled bilinearly to each
photo's own size before thresholding; horizontal-flip TTA averages the raw outputs. The seeds
thresholded at 224x224 and resized the masks with nearest neighbour, which cost them most of
their score. `quality="best"` adds flip TTA and the model's outline refiner (carmask.inference.
refine), where it has one, to the one plain pass of "fast".

This module never imports torch. The torch backend (a GPU, and its fast path for submissions)
is `carmask.training.torch_backend.TorchPredictor`, a subclass with the same interface, chosen
by `create_predictor(backend="torch")` where torch is installed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from carmask.data.io import DataError, read_photo
from carmask.inference.confidence import Confidence, assess
from carmask.inference.model_files import (TRAIN_EXTRA, ModelFileError, onnx_file, read_config,
                                           resolve_model_path, shipped_best)
from carmask.inference.outputs import (car_mask, car_probability, drop_specks, fit_to_input, photo_columns,
                                       resize_antialiased, upsample)
from carmask.inference.refine import REFINER_ROLE, OnnxRefiner, Refiner, check_quality, shipped_refiner
from carmask.inference.streaming import Decoded, Prediction, stream_predictions

log = logging.getLogger(__name__)


BACKENDS = ("auto", "torch", "onnx")


def resolve_device(device: str) -> str:
    """A device name, checked: cpu, cuda or cuda:N (a GPU needs the torch backend)."""
    name = str(device)
    if name == "cpu" or name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        return name
    raise ValueError(f"device must be cpu, cuda or cuda:N, got {device!r}")


def resolve_backend(backend: str, device: str) -> str:
    """'auto' → onnxruntime on the CPU (about twice as fast as torch there), torch on a GPU."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be auto, torch or onnx, got {backend!r}")
    if backend == "auto":
        return "onnx" if str(device) == "cpu" else "torch"
    return backend


def default_batch(backend: str) -> int:
    """Photos per forward pass when none is given. onnxruntime (the CPU): 1, as fast as 4 (the
    cores are busy within one photo) at half the memory (1.2 GB peak for `predict` with the
    640x960 model of 2026-12-06, 2.7 GB at 4). torch: 4; on a CPU its batch of 1 is 2.4x slower."""
    return 1 if backend == "onnx" else 4


class Predictor:
    """Load a model (default: the shipped studio model) and turn photos into full-size masks,
    with onnxruntime on the CPU.

    `model` is "studio", "general", a `.onnx` file, a run folder or a `.safetensors` file
    (exported to ONNX once, which needs torch). `batch` None is `default_batch`. `min_car_area`
    overrides the model's share of the photo under which predicted regions are dropped (0: keep
    all). A model whose config asks for a `SecondLook` gets it unless `second_look` is False.
    For the torch backend (a GPU) see `create_predictor`.

    `quality` "fast" (the default) is one plain pass; "best" adds flip TTA and the model's outline
    refiner, and runs the larger-input file a shipped model names for it (weights/models.json
    "best") in its place, at a fraction of the photos per second. `tta` and `refine`, when
    given, override what the quality sets. The refiner is `refiner`, a refiner ONNX file of
    your own (given, it runs unless `refine` is False), else the one attached in a combined
    `.safetensors` file (torch), else a shipped model's own (weights/models.json). A model
    without one runs best as flip TTA alone, and says so in the log.
    """

    backend = "onnx"

    def __new__(cls, *args, backend: str = "auto", device: str = "cpu", **options):
        # Predictor(..., backend="torch") (or a GPU device) gives the torch backend's subclass,
        # which plugs in from the training package where torch is installed
        if cls is Predictor and resolve_backend(backend, resolve_device(device)) == "torch":
            from carmask.inference.route import predictor_class

            cls = predictor_class(backend, device)
        return super().__new__(cls)

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        device: str = "cpu",
        backend: str = "auto",
        size: tuple[int, int] | None = None,
        tta: bool | None = None,
        batch: int | None = None,
        threshold: float | None = None,
        threads: int | None = None,
        refine: bool | None = None,
        quality: str = "fast",
        refiner: str | Path | None = None,
        min_car_area: float | None = None,
        second_look: bool = True,
        soft_edges: bool = False,
    ) -> None:
        self.device = resolve_device(device)
        self.soft_edges = soft_edges  # keep each photo's probability too, for cut-outs
        if resolve_backend(backend, self.device) != self.backend:
            raise ValueError(f"{type(self).__name__} is the {self.backend} backend; "
                             "create_predictor picks the backend")
        self.batch = default_batch(self.backend) if batch is None else batch
        if self.batch < 1:
            raise ValueError(f"batch must be at least 1, got {self.batch}")
        self.quality = check_quality(quality)
        self.path = self._resolve(model)
        if self.quality == "best":
            self.path = self._best_file(self.path)
        self.config = read_config(self.path)
        if self.config.get("role") == REFINER_ROLE:
            raise ModelFileError(f"{self.path}: an outline refiner, which refines a model's outline "
                                 "and masks nothing alone; pass it as the refiner of a model")
        self.size = tuple(size or self.config["input_size"])
        self.kind = self.config["output"]
        self.threshold = self.config.get("threshold", 0.5) if threshold is None else threshold
        # regions under this share of the photo are dropped from masks (None: as the model's
        # config says; the general model's sets it, docs/models.md)
        self.min_car_area = float(self.config.get("min_car_area", 0.0) if min_car_area is None
                                  else min_car_area)
        look = self.config.get("second_look") if second_look else None
        self.second_look = SecondLook(tuple(look["size"]), float(look["below"])) if look else None
        if self.second_look and np.prod(self.second_look.size) <= np.prod(self.size):
            self.second_look = None  # run at --size as large: a second look adds nothing
        self.mean = np.array(self.config["mean"], np.float32).reshape(1, 1, -1)
        self.std = np.array(self.config["std"], np.float32).reshape(1, 1, -1)
        self.channels = self.config["channels"]
        best = self.quality == "best"
        self.tta = best if tta is None else bool(tta)
        self.refiner: Refiner | None = None
        # a refiner file given is asked for; otherwise quality decides, unless `refine` does
        wanted = (best or refiner is not None) if refine is None else refine
        if wanted and self.kind == "logit":
            self.refiner = self._load_refiner(refiner, threads)
        self._load_network(threads)

    # -- what a backend provides ------------------------------------------------------------
    def _resolve(self, model: str | Path | None) -> Path:
        return resolve_model_path(model)

    def _best_file(self, path: Path) -> Path:
        """The shipped file quality "best" runs for a shipped model (weights/models.json "best"),
        where it names one and this install has it; else `path`, as given."""
        best = shipped_best(path)
        if best is None:
            return path
        if not best.is_file():  # a release without it: say so, and go on
            log.warning("%s: its --quality best model %s is not in this install; running %s",
                        path.name, best.name, path.name)
            return path
        return best

    def _load_network(self, threads: int | None) -> None:
        from carmask.inference.onnx_model import OnnxModel

        if self.device != "cpu":
            raise ValueError("the onnx backend runs on the CPU; use --backend torch on a GPU")
        self._run = OnnxModel(onnx_file(self.path), threads)  # one session serves every size

    def _load_refiner(self, given: str | Path | None, threads: int | None) -> Refiner | None:
        """The refiner `given`, else the one attached in the model file, else the shipped one
        weights/models.json names for it; None (logged) where there is none."""
        if given is not None:
            return OnnxRefiner(given, threads, coarse=self.path)
        if self.config.get("refiner"):
            return self._attached_refiner(threads)
        named = shipped_refiner(self.path)
        if named is not None and named.is_file():  # paired by the release, and measured so
            return OnnxRefiner(named, threads)
        runs = "flip TTA only" if self.tta else "no refinement"
        if named is not None:  # a release without its refiner: say so, and go on
            log.warning("%s: its outline refiner %s is not in this install; running %s",
                        self.path.name, named.name, runs)
        else:
            log.info("%s has no outline refiner; running %s", self.path.name, runs)
        return None

    def _attached_refiner(self, threads: int | None) -> Refiner:
        try:  # a refiner inside a .safetensors file is built with torch (exported to ONNX once)
            from carmask.training.refiner import OutlineRefiner
        except ImportError:
            raise ModelFileError(f"{self.path} holds an outline refiner, which needs torch: "
                                 f"{TRAIN_EXTRA}") from None
        return OutlineRefiner(self.config["refiner"], model_file=self.path, backend=self.backend,
                              device=self.device, threads=threads)

    @property
    def role(self) -> str:
        """"studio" (Carvana's turntable), "general" (any background) or, for a model file
        trained before roles existed, "studio"."""
        return self.config.get("role") or "studio"

    @property
    def name(self) -> str:
        stages = self.config["architecture"] + (f" + {self.refiner.architecture}" if self.refiner else "")
        look = (f"; small cars looked at again at {self.second_look.size[0]}x{self.second_look.size[1]}"
                if self.second_look else "")
        return f"{stages} ({self.path.name}{look})"

    @property
    def finds_runs(self) -> bool:
        """Whether `predict_runs` (the torch backend's fast path for submissions) serves it."""
        return False

    def predict_runs(self, paths: Iterable[str | Path], workers: int | None = None,
                     on_error: Callable[[Path, str], None] | None = None) -> Iterator[Prediction]:
        """The torch backend's fast path (`TorchPredictor.predict_runs`); not onnxruntime's."""
        raise ValueError(f"predict_runs needs the torch backend ({self.name} runs on {self.backend}); "
                         "use predict_paths")

    # -- the stages ---------------------------------------------------------------------------
    def preprocess(self, photo: np.ndarray, photo_size: tuple[int, int] | None = None) -> np.ndarray:
        """RGB uint8 (H, W, 3) → normalised float32 (C, h, w) at the model's size, a portrait
        photo padded at its sides (`fit_to_input`). `photo_size` is the photo's full (H, W)
        where it was decoded reduced."""
        photo = fit_to_input(photo, self.size, self.channels, photo_size)
        return ((photo.astype(np.float32) / 255.0 - self.mean) / self.std).transpose(2, 0, 1)

    def load(self, path: str | Path) -> tuple[np.ndarray, tuple[int, int]]:
        """Decode a photo upright (EXIF orientation applied) at the smallest size that still
        covers the model input; return it and the photo's full (H, W) as displayed, the size its
        mask gets. PhotoError (a DataError) names the file and what is wrong with it."""
        photo = read_photo(path, cover=None if self.refiner else self.size)
        return photo.pixels, photo.size

    def raw_outputs(self, batch: np.ndarray, sizes: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
        """(N, C, h, w) normalised → raw outputs (N, K, h, w) float32, TTA averaged, with the
        second look averaged in where the model has one and the cars found are small (in the
        photos of full `sizes`, padding left out; default: the whole inputs)."""
        outputs = self._look(batch)
        return self._look_closer(batch, outputs, sizes) if self.second_look else outputs

    def columns(self, photo_size: tuple[int, int] | None) -> slice:
        """The columns of the model's input (and output) that show a photo of `photo_size`."""
        return photo_columns(photo_size, self.size) if photo_size is not None else slice(None)

    def _look(self, batch: np.ndarray) -> np.ndarray:
        outputs = self._run(batch)
        if self.tta:
            outputs = (outputs + self._run(np.ascontiguousarray(batch[..., ::-1]))[..., ::-1]) / 2
        return outputs

    def _look_closer(self, batch: np.ndarray, outputs: np.ndarray,
                     sizes: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
        """Run again, larger, the photos whose cars cover under `second_look.below` of them, and
        average the two looks' raw outputs (at the first look's size)."""
        look = self.second_look
        shares = np.array([car_mask(output[None, ..., self.columns(size)], self.kind, self.threshold).mean()
                           for output, size in zip(outputs, sizes or [None] * len(outputs))])
        again = np.flatnonzero(shares < look.below)
        if not len(again):
            return outputs
        # the inputs are the photo resized and normalised: resizing them again is linear, as
        # resizing the photo is
        second = self._look(upsample(batch[again], look.size))
        outputs = outputs.copy()
        outputs[again] = (outputs[again] + resize_antialiased(second, outputs.shape[-2:])) / 2
        return outputs

    # -- the plain path: masks on the host ---------------------------------------------------
    def to_masks(self, outputs: np.ndarray, sizes: Sequence[tuple[int, int]],
                 photos: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
        """Upsample each raw output to its photo's size, refine its outline where the model has a
        refiner (which needs the full-size `photos`), threshold, and drop the specks under
        `min_car_area` where the model asks for it."""
        return self.masks_and_probabilities(outputs, sizes, photos)[0]

    def masks_and_probabilities(self, outputs: np.ndarray, sizes: Sequence[tuple[int, int]],
                                photos: Sequence[np.ndarray] | None = None
                                ) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
        """`to_masks`, and with `soft_edges` each photo's car probability at its size (uint8),
        from the same upsampled outputs; None each without."""
        masks, probabilities = [], []
        for output, size, photo in zip(outputs, sizes, photos or [None] * len(sizes)):
            full = upsample(output[None, ..., self.columns(size)], tuple(size))
            if self.refiner is not None and photo is not None:
                full = self.refiner(photo, full[0, 0])[None, None]
            masks.append(drop_specks(car_mask(full, self.kind, self.threshold)[0], self.min_car_area))
            probabilities.append(probability_8bit(car_probability(full, self.kind)[0, 0])
                                 if self.soft_edges else None)
        return masks, probabilities

    def confidences(self, outputs: np.ndarray, sizes: Sequence[tuple[int, int]] | None = None) -> list[Confidence]:
        """How sure the model is of each photo's mask, from its raw outputs at the model's size
        (the photo's columns of them where `sizes` are given)."""
        return [assess(car_probability(output[None, ..., self.columns(size)], self.kind)[:, 0])[0]
                for output, size in zip(outputs, sizes or [None] * len(outputs))]

    # -- conveniences -------------------------------------------------------------------------
    def predict(self, photos: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Masks for RGB uint8 photos, each at its own size."""
        return [p.mask for p in self.predict_detailed(photos)]

    @property
    def decode_cover(self) -> tuple[int, int] | None:
        """The size photos are decoded to cover (None: in full, where a refiner reads them)."""
        return None if self.refiner else self.size

    def predict_decoded(self, pixels: np.ndarray, size: tuple[int, int]) -> Prediction:
        """One photo decoded to cover `decode_cover` (or in full), whose mask gets `size` (H, W):
        the mask `predict_paths` makes of the same file."""
        return self.run_batch([self.preprocess(pixels, size)], [tuple(size)],
                              [pixels if self.refiner else None])[0]

    def predict_detailed(self, photos: Sequence[np.ndarray]) -> list[Prediction]:
        """Predictions (mask, model, confidence) for RGB uint8 photos, each at its own size."""
        results: list[Prediction] = []
        for start in range(0, len(photos), self.batch):
            chunk = photos[start:start + self.batch]
            results.extend(self.run_batch([self.preprocess(p) for p in chunk],
                                          [p.shape[:2] for p in chunk], chunk))
        return results

    def run_batch(self, inputs: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]],
                  photos: Sequence[np.ndarray | None] | None = None,
                  paths: Sequence[Path | None] | None = None) -> list[Prediction]:
        """Preprocessed photos (C, h, w) → a Prediction each, its mask at its photo's `size`. The
        decoded `photos` are needed only by a refiner."""
        outputs = self.raw_outputs(np.stack(inputs), sizes)
        masks, probabilities = self.masks_and_probabilities(outputs, sizes, photos)
        # a mask whose only specks were dropped is empty: its warning should say no car was found
        confidences = [c if mask.any() else replace(c, car_share=0.0)
                       for c, mask in zip(self.confidences(outputs, sizes), masks)]
        return [Prediction(path, mask, model=self.role, confidence=confidence, probability=soft)
                for path, mask, confidence, soft in zip(paths or [None] * len(masks), masks,
                                                        confidences, probabilities)]

    def predict_paths(self, paths: Iterable[str | Path], workers: int | None = None,
                      on_error: Callable[[Path, str], None] | None = None) -> Iterator[Prediction]:
        """Stream predictions for photo files, in input order, decoding in a bounded thread pool.

        A photo that cannot be decoded yields a Prediction with `error` set; the stream goes on.
        """
        def decode(path) -> Decoded:
            try:
                photo, full = self.load(path)
                # the refiner reads the full-size photo along the outline; otherwise let it go
                return Decoded(Path(path), self, self.preprocess(photo, full), full,
                               photo if self.refiner else None)
            except DataError as error:
                return Decoded(Path(path), error=str(error))

        yield from stream_predictions(decode, paths, workers, self.device, self.batch, on_error,
                                      run=_run_decoded)


def probability_8bit(probability: np.ndarray) -> np.ndarray:
    """A float probability map (H, W) as uint8 0..255 (a quarter of the memory)."""
    return (probability * 255.0 + 0.5).astype(np.uint8)


# Photos whose cars cover less than this get the second look: street scenes of distant cars.
# A product photo's car, its subject, covers more (50 of the 52 held out; docs/models.md).
SECOND_LOOK_BELOW = 0.05


def second_look_config(size: tuple[int, int], below: float = SECOND_LOOK_BELOW) -> dict:
    """The `second_look` entry of a model config, checked."""
    if any(side % 32 for side in size):
        raise ValueError(f"second look {size[0]}x{size[1]}: both sides must be multiples of 32")
    return {"size": list(size), "below": below}


@dataclass(frozen=True)
class SecondLook:
    """A model config's `second_look`: photos whose cars cover under `below` of them are run
    again at `size` (H, W), larger, and the two outputs averaged. Distant street cars are a few
    hundred pixels; the two looks together mask them better than either (docs/models.md, "A
    second look")."""
    size: tuple[int, int]
    below: float


def _run_decoded(predictor: Predictor, batch: list[Decoded]) -> list[Prediction]:
    return predictor.run_batch([d.inputs for d in batch], [d.size for d in batch],
                               [d.photo for d in batch], [d.path for d in batch])
