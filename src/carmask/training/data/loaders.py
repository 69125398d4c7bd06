"""DataLoaders for training: loader processes, and training loaders that resume mid-epoch.

A long CPU run is stopped and resumed many times (the campaign, issue 24). A plain DataLoader
restarts its epoch's shuffled order at every resume, so each resume shows again the photos
already seen that epoch and never reaches those at its end. torchdata's StatefulDataLoader saves
where it is in the epoch (sampler, RNG and loader processes), and Lightning keeps that in every
checkpoint, so a resumed run sees the same photos in the same order as one never stopped.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

try:
    from torchdata.stateful_dataloader import StatefulDataLoader
except ImportError:  # a bare GPU machine (benchmarks/gpu_session.sh) may lack it: train all the same
    StatefulDataLoader = None

log = logging.getLogger(__name__)


def loader_options(workers: int | None) -> dict:
    """DataLoader keywords for `workers` loader processes (default: up to 4)."""
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    if workers > 0:
        import cv2
        cv2.setNumThreads(1)  # inherited by the loader processes: N of them x N threads would thrash
    return dict(num_workers=workers, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())


def training_loader(dataset: Dataset, batch: int, *, drop_last: bool = True, **options: Any) -> DataLoader:
    """A shuffling loader whose place in the epoch is saved in checkpoints, so --resume goes on
    from the next batch of the same order. `options` are DataLoader keywords."""
    if StatefulDataLoader is None:
        log.warning("torchdata is not installed: a resumed run starts its epoch's order again "
                    "(pip install 'carmask[train]')")
        return DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=drop_last, **options)
    return StatefulDataLoader(dataset, batch_size=batch, shuffle=True, drop_last=drop_last, **options)
