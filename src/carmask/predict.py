"""One predictor for every consumer: submission, evaluation, cut-outs, the service and the demo.

Photos are decoded (libjpeg-reduced where the model size allows), resized to the model's input,
run in batches, and the RAW outputs (logits) are upsampled bilinearly to each photo's own size
before thresholding; horizontal-flip TTA averages the raw outputs. The seeds thresholded at
224x224 and resized the masks with nearest neighbour, which cost them most of their score.

For a submission, `predict_runs` is the fast path of the torch backend (issue 13): the photos go
to the device as uint8 (a quarter of float32's bytes, pinned on a GPU), are normalised there, and
only each mask's run-length pairs and two confidence counts come back, never the 2.5 MB mask.
Its runs are exactly `rle.runs` of the masks `predict_paths` gives (tests/test_fast_path.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from carmask import rle
from carmask.confidence import Confidence, assess
from carmask.data.dataset import fit_photo
from carmask.data.io import DataError, read_photo
from carmask.models.io import load_model, read_config, resolve_model_path
from carmask.models.outputs import car_mask, car_probability, drop_specks, upsample
from carmask.streaming import Decoded, Prediction, stream_predictions

log = logging.getLogger(__name__)


BACKENDS = ("auto", "torch", "onnx")


def resolve_device(device: str | torch.device) -> torch.device:
    """A device name → torch.device; ValueError for a name torch does not know or a GPU that is
    not there (rather than a failure deep inside the first forward pass)."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {device!r}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA GPU is available here; use cpu")
    return resolved


def resolve_backend(backend: str, device: str | torch.device) -> str:
    """'auto' → onnxruntime on the CPU (about twice as fast as torch there), torch on a GPU."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be auto, torch or onnx, got {backend!r}")
    if backend == "auto":
        return "onnx" if torch.device(device).type == "cpu" else "torch"
    return backend


def default_batch(backend: str) -> int:
    """Photos per forward pass when none is given. onnxruntime (the CPU): 1, as fast as 4 (the
    cores are busy within one photo) at half the memory (1.2 GB peak for `predict` with the
    640x960 model, 2.7 GB at 4). torch: 4; on a CPU its batch of 1 is 2.4x slower."""
    return 1 if backend == "onnx" else 4


class Predictor:
    """Load a model file (default: the shipped model) and turn photos into full-size masks.

    `backend` auto is onnxruntime on the CPU and torch on a GPU; `batch` None is
    `default_batch(backend)`. A model file that holds an outline refiner (carmask.refine) gets
    its full-resolution second stage unless `refine` is False: photos are then decoded at full
    size, since the refiner reads the pixels along the outline. `min_car_area` overrides the
    model's share of the photo under which predicted regions are dropped (0: keep all). A model
    whose config asks for a `SecondLook` gets it unless `second_look` is False.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        device: str = "cpu",
        backend: str = "auto",
        size: tuple[int, int] | None = None,
        tta: bool = False,
        batch: int | None = None,
        threshold: float | None = None,
        threads: int | None = None,
        refine: bool = True,
        min_car_area: float | None = None,
        second_look: bool = True,
    ) -> None:
        self.device = resolve_device(device)
        backend = resolve_backend(backend, self.device)
        batch = default_batch(backend) if batch is None else batch
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        self.path = resolve_model_path(model)
        if backend == "onnx":
            if self.device.type != "cpu":
                raise ValueError("the onnx backend runs on the CPU; use --backend torch on a GPU")
            network, self.config = None, read_config(self.path)  # built only if not yet exported
        else:
            network, self.config = load_model(self.path)
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
        self.tta, self.batch, self.backend = tta, batch, backend
        if backend == "onnx":
            from carmask.onnx import OnnxModel
            self._run = OnnxModel.from_model_file(self.path, self.size, self.channels, threads)
            if self.second_look:
                self._run_closer = OnnxModel.from_model_file(self.path, self.second_look.size,
                                                             self.channels, threads)
        else:
            if threads:
                torch.set_num_threads(threads)  # process-wide: torch has one intra-op pool
            network = network.to(self.device).eval()
            self.half = self.device.type == "cuda"
            if self.half:
                network = network.half().to(memory_format=torch.channels_last)
            self._network = network
            self._run = self._run_closer = self._run_torch  # a fully convolutional net: any size
            # for the device-side normalisation: tensors, not Python scalars, so the division is
            # a true one (CUDA multiplies by the reciprocal of a scalar divisor) and the model
            # sees exactly what `preprocess` makes
            self._scale = torch.full((1, 1, 1, 1), 255.0, device=self.device)
            self._mean = torch.from_numpy(self.mean.reshape(1, -1, 1, 1)).to(self.device)
            self._std = torch.from_numpy(self.std.reshape(1, -1, 1, 1)).to(self.device)
        self.refiner = self._load_refiner(threads) if refine and self.kind == "logit" else None

    def _load_refiner(self, threads: int | None):
        from carmask.refine import OutlineRefiner

        if not self.config.get("refiner"):
            return None
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

    # -- the stages ---------------------------------------------------------------------------
    def preprocess(self, photo: np.ndarray) -> np.ndarray:
        """RGB uint8 (H, W, 3) → normalised float32 (C, h, w) at the model's size."""
        photo = fit_photo(photo, self.size, self.channels)
        return ((photo.astype(np.float32) / 255.0 - self.mean) / self.std).transpose(2, 0, 1)

    def load(self, path: str | Path) -> tuple[np.ndarray, tuple[int, int]]:
        """Decode a photo upright (EXIF orientation applied) at the smallest size that still
        covers the model input; return it and the photo's full (H, W) as displayed, the size its
        mask gets. PhotoError (a DataError) names the file and what is wrong with it."""
        photo = read_photo(path, cover=None if self.refiner else self.size)
        return photo.pixels, photo.size

    def raw_outputs(self, batch: np.ndarray) -> torch.Tensor:
        """(N, C, h, w) normalised → raw outputs (N, K, h, w) float32, TTA averaged, with the
        second look averaged in where the model has one and the cars found are small."""
        outputs = self._look(self._run, batch)
        return self._look_closer(batch, outputs) if self.second_look else outputs

    def _look(self, run: Callable[[np.ndarray], torch.Tensor], batch: np.ndarray) -> torch.Tensor:
        outputs = run(batch)
        if self.tta:
            outputs = (outputs + run(np.ascontiguousarray(batch[..., ::-1])).flip(-1)) / 2
        return outputs

    def _look_closer(self, batch: np.ndarray, outputs: torch.Tensor) -> torch.Tensor:
        """Run again, larger, the photos whose cars cover under `second_look.below` of them, and
        average the two looks' raw outputs (at the first look's size)."""
        look = self.second_look
        shares = car_mask(outputs, self.kind, self.threshold).float().mean((1, 2))
        again = torch.nonzero(shares < look.below).flatten().tolist()
        if not again:
            return outputs
        # the inputs are the photo resized and normalised: resizing them again is linear, as
        # resizing the photo is
        closer = F.interpolate(torch.from_numpy(batch[again]), size=look.size, mode="bilinear",
                               align_corners=False).numpy()
        second = self._look(self._run_closer, closer).to(outputs.device)
        second = F.interpolate(second, size=tuple(outputs.shape[-2:]), mode="bilinear",
                               align_corners=False, antialias=True)
        outputs = outputs.clone()
        outputs[again] = (outputs[again] + second) / 2
        return outputs

    def _run_torch(self, batch: np.ndarray) -> torch.Tensor:
        return self._forward(torch.from_numpy(batch).to(self.device, non_blocking=True))

    def _forward(self, tensor: torch.Tensor) -> torch.Tensor:
        """Normalised (N, C, h, w) float32 on the device → raw outputs, float32 on the device."""
        if self.half:
            tensor = tensor.half().contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return self._network(tensor).float()

    # -- the fast path: runs found on the device ----------------------------------------------
    @property
    def finds_runs(self) -> bool:
        """Whether `predict_runs` can serve this model: torch, no refiner (which works on the
        full-size photo on the host), no dropping of small regions (which needs the mask) and no
        second look."""
        return (self.backend == "torch" and self.refiner is None and not self.min_car_area
                and self.second_look is None)

    def predict_runs(self, paths: Iterable[str | Path], workers: int | None = None,
                     on_error: Callable[[Path, str], None] | None = None) -> Iterator[Prediction]:
        """Like `predict_paths`, but each Prediction carries its mask's `runs` instead of the mask:
        what a submission needs, found on the device, with a few KB a photo copied back.

        The decoding threads resize each photo to the model's size (on the host, with the same
        area filter as `preprocess`, so the masks stay identical) and, on a GPU, pin it, so
        the main thread only queues copies."""
        if not self.finds_runs:
            raise ValueError(f"predict_runs needs the torch backend and no refiner ({self.name}, "
                             f"{self.backend}); use predict_paths")
        pin = self.device.type == "cuda"

        def decode(path) -> Decoded:
            try:
                photo, full = self.load(path)
                pixels = torch.from_numpy(np.ascontiguousarray(fit_photo(photo, self.size, self.channels)))
                return Decoded(Path(path), self, pixels.pin_memory() if pin else pixels, full)
            except DataError as error:
                return Decoded(Path(path), error=str(error))

        yield from stream_predictions(decode, paths, workers, self.device, self.batch, on_error,
                                      run=_run_runs)

    def run_batch_runs(self, pixels: Sequence[torch.Tensor], sizes: Sequence[tuple[int, int]],
                       paths: Sequence[Path | None] | None = None) -> list[Prediction]:
        """Photos at the model's size, uint8 (h, w, C) on the host → a Prediction each with its
        mask's `runs` (no mask), the mask being the one `run_batch` would make at `size`."""
        batch = torch.empty((len(pixels), *pixels[0].shape), dtype=torch.uint8, device=self.device)
        for slot, photo in zip(batch, pixels):
            slot.copy_(photo, non_blocking=True)  # asynchronous from pinned memory
        inputs = self.normalise(batch)
        with torch.inference_mode():
            outputs = self._forward(inputs)
            if self.tta:
                outputs = (outputs + self._forward(inputs.flip(-1)).flip(-1)) / 2
            confidences = self.confidences(outputs)
            runs = [None] * len(sizes)
            for size in dict.fromkeys(map(tuple, sizes)):  # one upsampling per photo size
                group = [i for i, s in enumerate(sizes) if tuple(s) == size]
                masks = car_mask(upsample(outputs[group], size), self.kind, self.threshold)
                pairs, per_mask = rle.device_run_pairs(masks)
                for i, mine in zip(group, np.split(pairs.cpu().numpy(), np.cumsum(per_mask)[:-1])):
                    runs[i] = mine
        return [Prediction(path, None, model=self.role, runs=mine, confidence=confidence)
                for path, mine, confidence in zip(paths or [None] * len(sizes), runs, confidences)]

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (N, h, w, C) at the model's size, on the device → `preprocess`'s float32
        (N, C, h, w), laid out channels-last as the plain path's stack of transposed photos is:
        the model then runs the same kernels (on the CPU, channels-last ones 1.5x faster)."""
        pixels = batch.permute(0, 3, 1, 2).float()
        return ((pixels / self._scale - self._mean) / self._std).contiguous(
            memory_format=torch.channels_last)

    # -- the plain path: masks on the host ---------------------------------------------------
    def to_masks(self, outputs: torch.Tensor, sizes: Sequence[tuple[int, int]],
                 photos: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
        """Upsample each raw output to its photo's size, refine its outline where the model has a
        refiner (which needs the full-size `photos`), threshold, and drop the specks under
        `min_car_area` where the model asks for it."""
        masks = []
        for output, size, photo in zip(outputs, sizes, photos or [None] * len(sizes)):
            full = upsample(output[None], size)
            if self.refiner is not None and photo is not None:
                full = torch.from_numpy(self.refiner(photo, full[0, 0].cpu().numpy()))[None, None]
            masks.append(drop_specks(car_mask(full, self.kind, self.threshold)[0].cpu().numpy(),
                                     self.min_car_area))
        return masks

    def confidences(self, outputs: torch.Tensor) -> list[Confidence]:
        """How sure the model is of each photo's mask, from its raw outputs at the model's size,
        counted on their device."""
        return assess(car_probability(outputs.float(), self.kind)[:, 0])

    def to_probabilities(self, outputs: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Like to_masks, but the car probability (float32 0..1) for soft edges in cut-outs."""
        return [car_probability(upsample(o[None], s), self.kind)[0, 0].cpu().numpy()
                for o, s in zip(outputs, sizes)]

    # -- conveniences -------------------------------------------------------------------------
    def predict(self, photos: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Masks for RGB uint8 photos, each at its own size."""
        return [p.mask for p in self.predict_detailed(photos)]

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
        outputs = self.raw_outputs(np.stack(inputs))
        masks = self.to_masks(outputs, sizes, photos)
        # a mask whose only specks were dropped is empty: its warning should say no car was found
        confidences = [c if mask.any() else replace(c, car_share=0.0)
                       for c, mask in zip(self.confidences(outputs), masks)]
        return [Prediction(path, mask, model=self.role, confidence=confidence)
                for path, mask, confidence in zip(paths or [None] * len(masks), masks, confidences)]

    def predict_paths(self, paths: Iterable[str | Path], workers: int | None = None,
                      on_error: Callable[[Path, str], None] | None = None) -> Iterator[Prediction]:
        """Stream predictions for photo files, in input order, decoding in a bounded thread pool.

        A photo that cannot be decoded yields a Prediction with `error` set; the stream goes on.
        """
        def decode(path) -> Decoded:
            try:
                photo, full = self.load(path)
                # the refiner reads the full-size photo along the outline; otherwise let it go
                return Decoded(Path(path), self, self.preprocess(photo), full,
                               photo if self.refiner else None)
            except DataError as error:
                return Decoded(Path(path), error=str(error))

        yield from stream_predictions(decode, paths, workers, self.device, self.batch, on_error,
                                      run=_run_decoded)


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


def _run_runs(predictor: Predictor, batch: list[Decoded]) -> list[Prediction]:
    return predictor.run_batch_runs([d.inputs for d in batch], [d.size for d in batch],
                                    [d.path for d in batch])
