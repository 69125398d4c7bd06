"""The data report's pass over the masks (coverage, bounding box, mean mask of each view, what a
lower resolution costs) and its seeded choice of the photos it shows."""

from __future__ import annotations

import logging
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from carmask.data.io import binary_problem
from carmask.data.layout import Record
from carmask.util.progress import Track

log = logging.getLogger(__name__)

THUMB_WIDTH = 240  # px, masks averaged into the mean mask of each view
DICE_SCALES = (2, 4, 8, 16)  # the seed notebooks trained at 240x160: 1/8 of 1918x1280
DICE_SAMPLE = 48  # masks measured for the resolution table


@dataclass
class MaskStats:
    """What one pass over the masks found; keyed by image id."""

    coverage: dict[str, float] = field(default_factory=dict)
    bbox: dict[str, tuple[int, int, int, int, int, int]] = field(default_factory=dict)  # x, y, w, h, W, H
    view_sum: dict[int, np.ndarray] = field(default_factory=dict)
    view_count: Counter = field(default_factory=Counter)
    dice: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    wrong: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    unreadable: list[str] = field(default_factory=list)


def scan_masks(records: list[Record], base: tuple[int, int], dice_ids: set[str], workers: int | None,
                track: Track) -> MaskStats:
    factor = max(1, round(base[0] / THUMB_WIDTH))
    target = (max(1, base[0] // factor), max(1, base[1] // factor))  # (w, h)
    stats = MaskStats()

    def job(record: Record):
        return record, _read_mask_stats(record.mask_path, factor, target, record.image_id in dice_ids)

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        results = track(pool.map(job, records), total=len(records), description="reading masks")
        for record, result in results:
            if result is None:
                stats.unreadable.append(record.image_id)
                continue
            coverage, box, thumb, dice = result
            stats.coverage[record.image_id] = coverage
            stats.bbox[record.image_id] = box
            if record.view in stats.view_sum:
                stats.view_sum[record.view] += thumb
            else:
                stats.view_sum[record.view] = thumb.astype(np.float64)
            stats.view_count[record.view] += 1
            for scale, (score, wrong) in dice.items():
                stats.dice[scale].append(score)
                stats.wrong[scale].append(wrong)
    if stats.unreadable:
        log.warning("%d masks could not be used (see the problems table)", len(stats.unreadable))
    return stats


def _read_mask_stats(path: Path, factor: int, target: tuple[int, int], measure_dice: bool):
    """(coverage, bbox, thumbnail, {scale: (dice, wrong pixels)}) of one mask, or None if unusable."""
    try:
        with Image.open(path) as image:
            values = np.asarray(image if image.mode in ("P", "L", "1") else image.convert("L"))
    except (OSError, SyntaxError, ValueError):
        return None
    if values.ndim != 2 or binary_problem(values):
        return None
    if values.dtype == bool:
        values = values.view(np.uint8)
    h, w = values.shape
    car = np.count_nonzero(values)
    x, y, bw, bh = cv2.boundingRect(values) if car else (0, 0, 0, 0)
    # an exact block average on the largest crop that divides evenly (INTER_AREA's fast path)
    ch, cw = h // factor * factor or h, w // factor * factor or w
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = values[top:top + ch, left:left + cw].astype(np.float32)
    thumb = cv2.resize(crop, (max(1, cw // factor), max(1, ch // factor)), interpolation=cv2.INTER_AREA)
    if thumb.shape != (target[1], target[0]):
        thumb = cv2.resize(thumb, target, interpolation=cv2.INTER_AREA)
    top_value = float(values.max(initial=0))
    if top_value > 1:
        thumb /= top_value
    dice = {}
    if measure_dice and car:
        truth = values != 0
        full = truth.astype(np.uint8) * 255
        for scale in DICE_SCALES:
            small = cv2.resize(full, (max(1, w // scale), max(1, h // scale)), interpolation=cv2.INTER_AREA)
            back = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) >= 128
            inter = np.count_nonzero(back & truth)
            predicted = np.count_nonzero(back)
            dice[scale] = (2.0 * inter / (predicted + car), int(predicted + car - 2 * inter))
    return car / values.size, (x, y, bw, bh, w, h), thumb, dice


def pick_samples(records: list[Record], count: int, rng: np.random.Generator) -> list[Record]:
    """`count` records spread over as many cars and views as there are, in a seeded order."""
    by_car: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_car[record.car_id].append(record)
    cars = [sorted(by_car)[i] for i in rng.permutation(len(by_car))]
    views = [int(v) + 1 for v in rng.permutation(16)]
    chosen: list[Record] = []
    taken: set[str] = set()
    for i in range(min(count, len(records))):
        for step in range(len(cars)):  # the next car that still has an unused view
            left = [r for r in by_car[cars[(i + step) % len(cars)]] if r.image_id not in taken]
            if left:
                break
        want = views[i % 16]
        pick = min(left, key=lambda r: (min(abs(r.view - want), 16 - abs(r.view - want)), r.view))
        chosen.append(pick)
        taken.add(pick.image_id)
    return chosen


def pick_pairs(records: list[Record], avoid: set[str], rng: np.random.Generator) -> list[Record]:
    """Three photos, from the front, the side and three-quarters behind, of different cars if possible."""
    cars = sorted({r.car_id for r in records})
    order = {car: rank for rank, car in enumerate(cars[i] for i in rng.permutation(len(cars)))}
    pairs: list[Record] = []
    for view in (1, 5, 11):
        used = {p.car_id for p in pairs}
        options = [r for r in records if r not in pairs]
        if options:
            pairs.append(min(options, key=lambda r: (r.view != view, r.car_id in used,
                                                     r.image_id in avoid, order[r.car_id])))
    return pairs
