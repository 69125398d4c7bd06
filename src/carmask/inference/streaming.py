"""The stream every consumer's predictions flow through: photos decoded in a bounded thread pool,
run in batches through the predictor each was decoded for, yielded in input order, a photo that
failed yielding its error and the stream going on."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from carmask.kaggle import rle
from carmask.inference.confidence import Confidence
from carmask.util.parallel import imap_bounded

if TYPE_CHECKING:
    from carmask.inference.predictor import Predictor


@dataclass
class Prediction:
    path: Path | None
    mask: np.ndarray | None  # (H, W) bool at the photo's own size; None from predict_runs
    error: str | None = None
    model: str = ""  # the role of the model that made the mask: "studio" or "general"
    confidence: Confidence | None = None
    runs: np.ndarray | None = None  # from predict_runs: the mask's (k, 2) rle.runs, not the mask
    # the car probability at the photo's size as uint8 0..255, for soft cut-out edges; only
    # from a predictor made with `soft_edges=True`
    probability: np.ndarray | None = None
    # what the use of the mask adds to the model's warnings (a cut-out enlarged on a canvas)
    notes: list[str] = field(default_factory=list)

    @property
    def rle(self) -> str:
        """The mask as Kaggle RLE text, from whichever of `mask` and `runs` it carries."""
        if self.runs is not None:
            return rle.format_runs(self.runs)
        if self.mask is None:
            raise ValueError(f"{self.path}: no mask ({self.error})")
        return rle.encode(self.mask)

    @property
    def warnings(self) -> list[str]:
        """What a user should know before trusting the mask (or the cut-out made of it); empty
        when all is well."""
        return (self.confidence.warnings if self.confidence else []) + self.notes


@dataclass
class Decoded:
    """A photo read for prediction: the model's input, the mask's size and, where needed, the
    pixels; or the error that stopped it."""
    path: Path | None
    predictor: Predictor | None = None  # the model it goes to
    # preprocessed (C, h, w), the decoded photo, or for the torch backend's predict_runs a
    # tensor of the uint8 (h, w, C) photo at the model's size
    inputs: np.ndarray | None = None
    size: tuple[int, int] | None = None  # the photo's displayed (H, W)
    photo: np.ndarray | None = None
    error: str | None = None


def stream_predictions(decode: Callable[[str | Path], Decoded], paths: Iterable[str | Path],
                       workers: int | None, device: object, batch: int,
                       on_error: Callable[[Path, str], None] | None,
                       run: Callable[[Predictor, list[Decoded]], list[Prediction]]) -> Iterator[Prediction]:
    """Decode `paths` in a bounded pool and `run` them in batches through the predictor each
    was decoded for, keeping the input order: a batch ends at its predictor's batch size, at a
    photo for another predictor, and at a photo that failed, which yields its error."""
    # A GPU runs the model in a fraction of the time a photo takes to decode, so every core
    # decodes; on a CPU the model needs the cores.
    workers = workers or min(4 if str(device).startswith("cpu") else 16, os.cpu_count() or 1)
    pending: list[Decoded] = []
    chosen: Predictor | None = None
    for decoded in imap_bounded(decode, paths, workers, ahead=2 * batch + workers):
        predictor = decoded.predictor
        if pending and predictor is not chosen:
            yield from run(chosen, pending)
            pending = []
        if decoded.error:
            if on_error:
                on_error(decoded.path, decoded.error)
            yield Prediction(decoded.path, None, decoded.error)
            continue
        chosen = predictor
        pending.append(decoded)
        if len(pending) == chosen.batch:
            yield from run(chosen, pending)
            pending = []
    if pending:
        yield from run(chosen, pending)
