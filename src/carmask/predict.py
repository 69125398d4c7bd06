"""One predictor for every consumer: submission, evaluation, cut-outs, the service and the demo.

Photos are decoded (libjpeg-reduced where the model size allows), resized to the model's input,
run in batches, and the RAW outputs (logits) are upsampled bilinearly to each photo's own size
before thresholding; horizontal-flip TTA averages the raw outputs. The seeds thresholded at
224x224 and resized the masks with nearest neighbour, which cost them most of their score.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from carmask.data.dataset import fit_photo
from carmask.data.io import DataError, read_photo
from carmask.models.io import load_model, read_config, resolve_model_path
from carmask.models.outputs import car_mask, car_probability, upsample
from carmask.parallel import imap_bounded

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    path: Path | None
    mask: np.ndarray | None  # (H, W) bool at the photo's own size
    error: str | None = None


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
    size, since the refiner reads the pixels along the outline.
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
        self.mean = np.array(self.config["mean"], np.float32).reshape(1, 1, -1)
        self.std = np.array(self.config["std"], np.float32).reshape(1, 1, -1)
        self.channels = self.config["channels"]
        self.tta, self.batch, self.backend = tta, batch, backend
        if backend == "onnx":
            from carmask.onnx import OnnxModel
            self._run = OnnxModel.from_model_file(self.path, self.size, self.channels, threads)
        else:
            if threads:
                torch.set_num_threads(threads)  # process-wide: torch has one intra-op pool
            network = network.to(self.device).eval()
            self.half = self.device.type == "cuda"
            if self.half:
                network = network.half().to(memory_format=torch.channels_last)
            self._network = network
            self._run = self._run_torch
        self.refiner = self._load_refiner(threads) if refine and self.kind == "logit" else None

    def _load_refiner(self, threads: int | None):
        from carmask.models.io import load_refiner
        from carmask.refine import OutlineRefiner

        stored = load_refiner(self.path)
        if stored is None:
            return None
        network, config = stored
        return OutlineRefiner(network, config, model_file=self.path, backend=self.backend,
                              device=self.device, threads=threads)

    @property
    def name(self) -> str:
        stages = self.config["architecture"] + (f" + {self.refiner.architecture}" if self.refiner else "")
        return f"{stages} ({self.path.name})"

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
        """(N, C, h, w) normalised → raw outputs (N, K, h, w) float32 on the CPU, TTA averaged."""
        outputs = self._run(batch)
        if self.tta:
            outputs = (outputs + self._run(np.ascontiguousarray(batch[..., ::-1])).flip(-1)) / 2
        return outputs

    def _run_torch(self, batch: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(batch).to(self.device, non_blocking=True)
        if self.half:
            tensor = tensor.half().contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return self._network(tensor).float()

    def to_masks(self, outputs: torch.Tensor, sizes: Sequence[tuple[int, int]],
                 photos: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
        """Upsample each raw output to its photo's size, refine its outline where the model has a
        refiner (which needs the full-size `photos`), then threshold."""
        masks = []
        for index, (output, size) in enumerate(zip(outputs, sizes)):
            full = upsample(output[None], size)
            if self.refiner is not None and photos is not None:
                full = torch.from_numpy(self.refiner(photos[index], full[0, 0].cpu().numpy()))[None, None]
            masks.append(car_mask(full, self.kind, self.threshold)[0].cpu().numpy())
        return masks

    def to_probabilities(self, outputs: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Like to_masks, but the car probability (float32 0..1) for soft edges in cut-outs."""
        return [car_probability(upsample(o[None], s), self.kind)[0, 0].cpu().numpy()
                for o, s in zip(outputs, sizes)]

    # -- conveniences -------------------------------------------------------------------------
    def predict(self, photos: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Masks for RGB uint8 photos, each at its own size."""
        masks: list[np.ndarray] = []
        for start in range(0, len(photos), self.batch):
            chunk = photos[start:start + self.batch]
            batch = np.stack([self.preprocess(p) for p in chunk])
            masks.extend(self.to_masks(self.raw_outputs(batch), [p.shape[:2] for p in chunk], chunk))
        return masks

    def predict_paths(self, paths: Iterable[str | Path], workers: int | None = None,
                      on_error: Callable[[Path, str], None] | None = None) -> Iterator[Prediction]:
        """Stream predictions for photo files, in input order, decoding in a bounded thread pool.

        A photo that cannot be decoded yields a Prediction with `error` set; the stream goes on.
        """
        def decode(path):
            try:
                photo, full = self.load(path)
                # the refiner reads the full-size photo along the outline; otherwise let it go
                return Path(path), (self.preprocess(photo), photo if self.refiner else None), full, None
            except DataError as error:
                return Path(path), None, None, str(error)

        # A GPU runs the model in a fraction of the time a photo takes to decode, so every core
        # decodes; on a CPU the model needs the cores.
        workers = workers or min(4 if self.device.type == "cpu" else 16, os.cpu_count() or 1)
        pending: list[tuple[Path, tuple[np.ndarray, np.ndarray | None], tuple[int, int]]] = []
        for path, inputs, full, error in imap_bounded(decode, paths, workers, ahead=2 * self.batch + workers):
            if error is not None:
                if pending:  # keep the output in input order
                    yield from self._flush(pending)
                    pending = []
                if on_error:
                    on_error(path, error)
                yield Prediction(path, None, error)
                continue
            pending.append((path, inputs, full))
            if len(pending) == self.batch:
                yield from self._flush(pending)
                pending = []
        if pending:
            yield from self._flush(pending)

    def _flush(self, pending) -> Iterator[Prediction]:
        outputs = self.raw_outputs(np.stack([tensor for _, (tensor, _), _ in pending]))
        masks = self.to_masks(outputs, [full for _, _, full in pending],
                              [photo for _, (_, photo), _ in pending])
        for (path, _, _), mask in zip(pending, masks):
            yield Prediction(path, mask)


# -- a whole prediction job: photos → submission CSV and/or mask files -------------------------
@dataclass
class JobSummary:
    expected: int  # images this job (shard) should cover
    predicted: int  # predicted in this run
    resumed: int  # already done by an earlier run
    failures: list[tuple[str, str]]  # (image name, error)
    missing: list[str]  # expected names with no photo or no mask in the end
    seconds: float
    peak_rss_mb: float
    submission: Path | None
    masks_dir: Path | None
    dropped: list[str] = field(default_factory=list)  # resumed rows found invalid and redone

    @property
    def complete(self) -> bool:
        return not self.failures and not self.missing

    @property
    def images_per_second(self) -> float:
        return self.predicted / self.seconds if self.seconds else 0.0


def shard_of(names: Sequence[str], shard: tuple[int, int] | None) -> list[str]:
    """Every n-th name from the i-th (0-based): shards are balanced and disjoint."""
    if shard is None:
        return list(names)
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard must be i/n with 0 <= i < n, got {index}/{count}")
    return list(names[index::count])


def photos_by_name(paths: Iterable[str | Path], masks: bool = False) -> dict[str, Path]:
    """Photos keyed by file name, the `img` of their submission rows. Two photos with one name
    (from two folders) would share a row, and with `masks` two with one stem would share a mask
    file: ValueError naming both, rather than one silently replacing the other."""
    photos: dict[str, Path] = {}
    stems: dict[str, Path] = {}
    for path in map(Path, paths):
        if path.name in photos and photos[path.name] != path:
            raise ValueError(f"two photos are named {path.name}: {photos[path.name]} and {path}; "
                             "rows and masks are named after the photo, so predict them apart")
        if masks and path.stem in stems and stems[path.stem] != path:
            raise ValueError(f"{stems[path.stem]} and {path} would both get the mask "
                             f"{path.stem}_mask.png; predict them apart")
        photos[path.name] = stems[path.stem] = path
    return photos


def check_outputs(submission: Path | None, masks_dir: Path | None, *, resume: bool = False,
                  overwrite: bool = False, locks: ExitStack | None = None) -> None:
    """Refuse outputs that cannot be written, or whose contents would be lost, before any work:
    OutputError naming the path (and the option that would allow it), or SubmissionError for
    resuming into a file that is not a submission.

    With `locks`, the outputs are also locked (held until that stack closes), after the paths
    are checked and before their contents are: a job still writing them is named as such.
    """
    from carmask.outputs import OutputError, check_output_dir, check_output_file, output_lock

    if masks_dir is not None:
        check_output_dir(masks_dir, "--masks-dir")
    if submission is not None:
        check_output_file(submission, "--out submission")
    if locks is not None:
        for output in (submission, masks_dir):
            if output is not None:
                locks.enter_context(output_lock(output))
    if submission is None or overwrite:
        return
    if resume:
        from carmask.submission_writer import check_resumable
        check_resumable(submission)
        return
    spool = submission.with_name(submission.name + ".spool")
    if spool.exists():
        raise OutputError(f"{spool}: a killed run's rows are there; --resume continues it, "
                          "--overwrite starts again")
    if submission.exists():
        raise OutputError(f"{submission} exists; --overwrite replaces it, --resume continues it")


def run_prediction(
    predictor: Predictor,
    photos: dict[str, Path],
    names: Sequence[str],
    *,
    submission: Path | None = None,
    masks_dir: Path | None = None,
    resume: bool = False,
    workers: int | None = None,
    track=None,
) -> JobSummary:
    """Predict `names` (photo names, e.g. 0a0e3fb8f782_01.jpg) found in `photos` and stream them
    into a submission (sample order, atomic, resumable) and/or mask files.

    Names with no photo and photos that fail to decode are listed, the rest goes on; with any
    of them the submission is written with empty rows for them and marked incomplete.
    The outputs are locked for the run (`NAME.lock`): a second job on them raises OutputError.
    """
    import resource
    import time

    from carmask.outputs import output_lock
    from carmask.progress import silent_track

    track = track or silent_track
    started = time.perf_counter()
    with ExitStack() as locks:
        for output in (submission, masks_dir):
            if output is not None:
                locks.enter_context(output_lock(output))
        counts, failures, missing, dropped = _run(predictor, photos, names, submission, masks_dir,
                                                  resume, workers, track)
    return JobSummary(
        expected=len(names), predicted=counts[0], resumed=counts[1], failures=failures,
        missing=missing, seconds=time.perf_counter() - started,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        submission=submission, masks_dir=masks_dir, dropped=dropped)


def _run(predictor, photos, names, submission, masks_dir, resume, workers, track):
    from carmask.data.io import save_mask
    from carmask.parallel import BoundedExecutor
    from carmask.submission_writer import SubmissionWriter

    writer = SubmissionWriter(submission, names, resume=resume,
                              shape=lambda name: _photo_size(photos.get(name))) if submission else None
    todo = writer.remaining if writer else list(names)
    if masks_dir is not None:
        masks_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            todo = [n for n in todo if not _mask_file(masks_dir, n).exists()]
    resumed = len(names) - len(todo)
    missing = [n for n in todo if n not in photos]
    todo = [n for n in todo if n in photos]
    failures: list[tuple[str, str]] = []
    saver = BoundedExecutor(workers=2, name="mask-png") if masks_dir is not None else None
    unsaved: list[tuple[str, str]] = []  # a mask file that could not be written is a failure

    def saved(name, future):
        if future.exception() is not None:
            unsaved.append((name, f"{_mask_file(masks_dir, name)}: {future.exception()}"))

    predicted = 0
    try:
        stream = predictor.predict_paths([photos[n] for n in todo], workers=workers)
        for name, result in track(zip(todo, stream), total=len(todo), description="predicting"):
            if result.error is not None:
                failures.append((name, result.error))
                log.warning("%s", result.error)
                continue
            if writer:
                writer.add(name, result.mask)
            if saver:
                future = saver.submit(save_mask, result.mask, _mask_file(masks_dir, name))
                future.add_done_callback(lambda done, name=name: saved(name, done))
            predicted += 1
    except BaseException:
        if writer:
            writer.close()  # keep the spool: --resume picks up from here
        raise
    finally:
        if saver:
            saver.shutdown()
    failures.extend(unsaved)
    if writer:
        writer.finalize(allow_missing=True)
    if (failures or missing) and submission:
        _write_failures(submission.with_name(submission.stem + ".failures.csv"), failures, missing)
    return (predicted, resumed), failures, missing, writer.dropped if writer else []


def _photo_size(path: Path | None) -> tuple[int, int] | None:
    """A photo's displayed (H, W) from its header, the size its mask must have; None when
    there is no readable photo (its row is then checked for all but its length)."""
    from carmask.data.io import read_photo_header
    try:
        return read_photo_header(path).size if path is not None else None
    except DataError:
        return None


def _mask_file(masks_dir: Path, name: str) -> Path:
    return masks_dir / (Path(name).stem + "_mask.png")


def _write_failures(path: Path, failures: list[tuple[str, str]], missing: list[str]) -> None:
    import csv
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as file:
        out = csv.writer(file)
        out.writerow(["img", "error"])
        out.writerows(failures)
        out.writerows((name, "no photo for this name") for name in missing)
    os.replace(tmp, path)
