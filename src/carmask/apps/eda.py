"""The data report: one self-contained HTML page that shows what is in a Carvana folder.

Every mask is decoded once, in a thread pool (Pillow and OpenCV release the GIL), and reduced to
its coverage, its bounding box and a 1/8-size thumbnail that feeds the mean mask of its view; a
seeded sample of masks is also measured for how much Dice a model loses just by predicting at a
lower resolution. Photos are only decoded for the handful of samples shown, at reduced size.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from carmask.apps.eda_figures import cars_section, coverage_section, mean_mask_section
from carmask.apps.eda_sections import (SECTIONS, SAMPLE_WIDTH, files_section, overview, pairs_section,
                                       per_car_section, resolution_section, samples_section, table_of_contents)
from carmask.apps.eda_stats import DICE_SAMPLE, pick_pairs, pick_samples, scan_masks
from carmask.apps.report import page, write_html
from carmask.data.layout import CARVANA_SIZE, DataIndex, index_dataset
from carmask.util.progress import Track, silent_track

__all__ = ["SECTIONS", "write_eda_report"]

log = logging.getLogger(__name__)


def write_eda_report(root_or_index: str | Path | DataIndex, out_dir: str | Path, *, samples: int = 12,
                     track: Track = silent_track, seed: int = 0, workers: int | None = None) -> Path:
    """Write `out_dir/index.html` about a Kaggle-layout folder (or an index of one); return its path.

    A path is indexed with `index_dataset` first (which also finds the data problems); coverage
    missing from a given index is computed on the way. `samples` photos are shown with their masks,
    chosen by `seed`. Progress goes to `track`, messages to logging: nothing is printed.
    """
    started = time.perf_counter()
    if isinstance(root_or_index, DataIndex):
        index = root_or_index
    else:
        index = index_dataset(root_or_index, track=track, workers=workers)
    rng = np.random.default_rng(seed)
    masked = [r for r in index.train if r.mask_path is not None]
    base_w, base_h = index.image_sizes.most_common(1)[0][0] if index.image_sizes else CARVANA_SIZE
    dice_ids = {masked[i].image_id for i in rng.permutation(len(masked))[:DICE_SAMPLE]}
    stats = scan_masks(masked, (base_w, base_h), dice_ids, workers, track)
    for image_id, value in index.coverage.items():
        stats.coverage.setdefault(image_id, value)
    chosen = pick_samples(masked, samples, rng)
    pairs = pick_pairs(masked, {r.image_id for r in chosen}, rng)
    reduce = next((f for f in (8, 4, 2) if base_w // f >= SAMPLE_WIDTH), 1)

    frame = index.to_frame()
    if frame.empty:  # no records at all: keep the columns the sections group by
        frame = pd.DataFrame(columns=["image_id", "car_id", "view", "subset", "make", "model", "year",
                                      "image_path", "mask_path", "coverage"])
    frame["coverage"] = frame["image_id"].map(stats.coverage)
    frame["make"] = frame["make"].replace("", "unknown")
    body = "".join([
        table_of_contents(),
        overview(index, frame, stats),
        cars_section(index, frame),
        coverage_section(frame, stats),
        mean_mask_section(stats, (base_w, base_h)),
        resolution_section(stats, (base_w, base_h)),
        samples_section(chosen, stats, reduce, workers, track),
        pairs_section(pairs, reduce, (base_w, base_h)),
        files_section(index),
        per_car_section(frame),
    ])
    subtitle = f"{index.root} · generated {datetime.now():%Y-%m-%d %H:%M}"
    footer = f"carmask EDA · built in {time.perf_counter() - started:.1f} s · one self-contained file"
    html = page("Carvana data report", body, subtitle=subtitle, footer=footer)
    path = write_html(Path(out_dir) / "index.html", html)
    log.info("EDA report %s: %.1f MB in %.1f s", path, len(html) / 1e6, time.perf_counter() - started)
    return path
