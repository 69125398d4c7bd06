"""The torch backend of the predictor: a GPU (fp16, channels-last), or torch on the CPU.

`TorchPredictor` has `carmask.inference.Predictor`'s interface and runs the `.safetensors`
files. For a submission it has a fast path (issue 13): the photos go to the device as uint8 (a
quarter of float32's bytes, pinned on a GPU), are normalised there, and only each mask's
run-length pairs and two confidence counts come back, never the 2.5 MB mask. Its runs are
exactly `rle.runs` of the masks `predict_paths` gives (tests/test_fast_path.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from carmask.data.io import DataError
from carmask.inference.confidence import UNSURE_BAND, Confidence, confidence_from_counts
from carmask.inference.outputs import drop_specks, fit_to_input
from carmask.inference.predictor import Predictor, probability_8bit
from carmask.inference.streaming import Decoded, Prediction, stream_predictions
from carmask.training.device_rle import device_run_pairs
from carmask.training.models.io import load_model, resolve_model_path
from carmask.training.models.outputs import car_mask, car_probability, upsample


def torch_device(device: str | torch.device) -> torch.device:
    """A device name → torch.device; ValueError for a GPU that is not there (rather than a
    failure deep inside the first forward pass)."""
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r}: no CUDA GPU is available here; use cpu")
    return resolved


class TorchPredictor(Predictor):
    """`Predictor` on torch: the model's `.safetensors` file, on any device torch has."""

    backend = "torch"

    def _resolve(self, model: str | Path | None) -> Path:
        path = resolve_model_path(model)
        if path.suffix == ".onnx":
            raise ValueError(f"{path}: the torch backend runs .safetensors model files; "
                             "use --backend onnx for an .onnx file")
        return path

    def _load_network(self, threads: int | None) -> None:
        self.device = torch_device(self.device)
        network = load_model(self.path)[0]
        if threads:
            torch.set_num_threads(threads)  # process-wide: torch has one intra-op pool
        network = network.to(self.device).eval()
        self.half = self.device.type == "cuda"
        if self.half:
            network = network.half().to(memory_format=torch.channels_last)
        self._network = network
        # for the device-side normalisation: tensors, not Python scalars, so the division is a
        # true one (CUDA multiplies by the reciprocal of a scalar divisor) and the model sees
        # exactly what `preprocess` makes
        self._scale = torch.full((1, 1, 1, 1), 255.0, device=self.device)
        self._mean = torch.from_numpy(self.mean.reshape(1, -1, 1, 1)).to(self.device)
        self._std = torch.from_numpy(self.std.reshape(1, -1, 1, 1)).to(self.device)

    def _attached_refiner(self, threads: int | None):
        from carmask.training.refiner import OutlineRefiner

        return OutlineRefiner(self.config["refiner"], model_file=self.path, backend="torch",
                              device=self.device, threads=threads)

    # -- the stages, on the device ------------------------------------------------------------
    def _run(self, batch: np.ndarray) -> torch.Tensor:
        # channels-last, as the fast path's inputs (`normalise`): the same kernels, the same masks
        tensor = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, non_blocking=True)
        return self._forward(tensor.contiguous(memory_format=torch.channels_last))

    def _forward(self, tensor: torch.Tensor) -> torch.Tensor:
        """Normalised (N, C, h, w) float32 on the device → raw outputs, float32 on the device."""
        if self.half:
            tensor = tensor.half().contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return self._network(tensor).float()

    def _look(self, batch: np.ndarray) -> torch.Tensor:
        outputs = self._run(batch)
        if self.tta:
            outputs = (outputs + self._run(np.ascontiguousarray(batch[..., ::-1])).flip(-1)) / 2
        return outputs

    def _look_closer(self, batch: np.ndarray, outputs: torch.Tensor,
                     sizes: Sequence[tuple[int, int]] | None = None) -> torch.Tensor:
        look = self.second_look
        shares = [float(car_mask(output[None, ..., self.columns(size)], self.kind, self.threshold).float().mean())
                  for output, size in zip(outputs, sizes or [None] * len(outputs))]
        again = [i for i, share in enumerate(shares) if share < look.below]
        if not again:
            return outputs
        closer = F.interpolate(torch.from_numpy(batch[again]), size=look.size, mode="bilinear",
                               align_corners=False).numpy()
        second = self._look(closer).to(outputs.device)
        second = F.interpolate(second, size=tuple(outputs.shape[-2:]), mode="bilinear",
                               align_corners=False, antialias=True)
        outputs = outputs.clone()
        outputs[again] = (outputs[again] + second) / 2
        return outputs

    def masks_and_probabilities(self, outputs: torch.Tensor, sizes: Sequence[tuple[int, int]],
                                photos: Sequence[np.ndarray] | None = None
                                ) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
        masks, probabilities = [], []
        for output, size, photo in zip(outputs, sizes, photos or [None] * len(sizes)):
            full = upsample(output[None, ..., self.columns(size)], tuple(size))
            if self.refiner is not None and photo is not None:
                full = torch.from_numpy(self.refiner(photo, full[0, 0].cpu().numpy()))[None, None]
            masks.append(drop_specks(car_mask(full, self.kind, self.threshold)[0].cpu().numpy(),
                                     self.min_car_area))
            probabilities.append(
                probability_8bit(car_probability(full, self.kind)[0, 0].float().cpu().numpy())
                if self.soft_edges else None)
        return masks, probabilities

    def confidences(self, outputs: torch.Tensor, sizes: Sequence[tuple[int, int]] | None = None) -> list[Confidence]:
        """Counted on the device, in each photo's columns: a GPU sends back two numbers a photo."""
        probability = car_probability(outputs.float(), self.kind)[:, 0]
        bands = [photo[:, self.columns(size)] for photo, size in zip(probability, sizes or [None] * len(outputs))]
        low, high = UNSURE_BAND
        counts = torch.stack([torch.stack(((band > 0.5).sum(), ((band > low) & (band < high)).sum()))
                              for band in bands]).tolist()  # one copy back for the whole batch
        return [confidence_from_counts(car, unsure, band.numel()) for (car, unsure), band in zip(counts, bands)]

    # -- the fast path: runs found on the device ----------------------------------------------
    @property
    def finds_runs(self) -> bool:
        """Whether `predict_runs` can serve this model: no refiner (which works on the full-size
        photo on the host), no dropping of small regions (which needs the mask) and no second
        look."""
        return self.refiner is None and not self.min_car_area and self.second_look is None

    def predict_runs(self, paths: Iterable[str | Path], workers: int | None = None,
                     on_error: Callable[[Path, str], None] | None = None) -> Iterator[Prediction]:
        """Like `predict_paths`, but each Prediction carries its mask's `runs` instead of the mask:
        what a submission needs, found on the device, with a few KB a photo copied back.

        The decoding threads resize each photo to the model's size (on the host, with the same
        area filter as `preprocess`, so the masks stay identical) and, on a GPU, pin it, so
        the main thread only queues copies."""
        if not self.finds_runs:
            raise ValueError(f"predict_runs needs no refiner, no speck dropping and no second look "
                             f"({self.name}); use predict_paths")
        pin = self.device.type == "cuda"

        def decode(path) -> Decoded:
            try:
                photo, full = self.load(path)
                pixels = torch.from_numpy(np.ascontiguousarray(fit_to_input(photo, self.size, self.channels, full)))
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
            confidences = self.confidences(outputs, sizes)
            runs = [None] * len(sizes)
            for size in dict.fromkeys(map(tuple, sizes)):  # one upsampling per photo size
                group = [i for i, s in enumerate(sizes) if tuple(s) == size]
                masks = car_mask(upsample(outputs[group][..., self.columns(size)], size), self.kind, self.threshold)
                pairs, per_mask = device_run_pairs(masks)
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


def _run_runs(predictor: TorchPredictor, batch: list[Decoded]) -> list[Prediction]:
    return predictor.run_batch_runs([d.inputs for d in batch], [d.size for d in batch],
                                    [d.path for d in batch])
