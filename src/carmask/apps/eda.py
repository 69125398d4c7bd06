"""The data report: one self-contained HTML page that shows what is in a Carvana folder.

Every mask is decoded once, in a thread pool (Pillow and OpenCV release the GIL), and reduced to
its coverage, its bounding box and a 1/8-size thumbnail that feeds the mean mask of its view; a
seeded sample of masks is also measured for how much Dice a model loses just by predicting at a
lower resolution. Photos are only decoded for the handful of samples shown, at reduced size.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator
from PIL import Image

from carmask.data.io import binary_problem, read_image, read_mask
from carmask.data.layout import CARVANA_SIZE, DataIndex, Record, index_dataset
from carmask.util.progress import Track, silent_track
from carmask.apps.report import (Raw, cards, esc, figure_to_data_uri, image_to_data_uri, img_tag, overlay,
                            page, section, table_html, write_html)

log = logging.getLogger(__name__)

# anchor -> heading, in page order (tests check every heading is on the page)
SECTIONS = {
    "overview": "Overview",
    "cars": "Makes, models and years",
    "coverage": "Mask coverage",
    "mean-masks": "Mean mask of each view",
    "resolution": "What resolution costs",
    "samples": "Sample images with their masks",
    "pairs": "Input image and true mask",
    "files": "Image sizes and data problems",
    "per-car": "Per-car table",
}
SAMPLE_WIDTH = 480  # px, sample photos in the page
THUMB_WIDTH = 240  # px, masks averaged into the mean mask of each view
DICE_SCALES = (2, 4, 8, 16)  # the seed notebooks trained at 240x160: 1/8 of 1918x1280
DICE_SAMPLE = 48  # masks measured for the resolution table
ACCENT, SECOND = "#2f6fde", "#e8590c"


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
    stats = _scan_masks(masked, (base_w, base_h), dice_ids, workers, track)
    for image_id, value in index.coverage.items():
        stats.coverage.setdefault(image_id, value)
    chosen = _pick_samples(masked, samples, rng)
    pairs = _pick_pairs(masked, {r.image_id for r in chosen}, rng)
    reduce = next((f for f in (8, 4, 2) if base_w // f >= SAMPLE_WIDTH), 1)

    frame = index.to_frame()
    if frame.empty:  # no records at all: keep the columns the sections group by
        frame = pd.DataFrame(columns=["image_id", "car_id", "view", "subset", "make", "model", "year",
                                      "image_path", "mask_path", "coverage"])
    frame["coverage"] = frame["image_id"].map(stats.coverage)
    frame["make"] = frame["make"].replace("", "unknown")
    body = "".join([
        _toc(),
        _overview(index, frame, stats),
        _cars_section(index, frame),
        _coverage_section(frame, stats),
        _mean_mask_section(stats, (base_w, base_h)),
        _resolution_section(stats, (base_w, base_h)),
        _samples_section(chosen, stats, reduce, workers, track),
        _pairs_section(pairs, reduce, (base_w, base_h)),
        _files_section(index),
        _per_car_section(frame),
    ])
    subtitle = f"{index.root} · generated {datetime.now():%Y-%m-%d %H:%M}"
    footer = f"carmask EDA · built in {time.perf_counter() - started:.1f} s · one self-contained file"
    html = page("Carvana data report", body, subtitle=subtitle, footer=footer)
    path = write_html(Path(out_dir) / "index.html", html)
    log.info("EDA report %s: %.1f MB in %.1f s", path, len(html) / 1e6, time.perf_counter() - started)
    return path


# --------------------------------------------------------------------------- the pass over masks

def _scan_masks(records: list[Record], base: tuple[int, int], dice_ids: set[str], workers: int | None,
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


def _pick_samples(records: list[Record], count: int, rng: np.random.Generator) -> list[Record]:
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


def _pick_pairs(records: list[Record], avoid: set[str], rng: np.random.Generator) -> list[Record]:
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


# --------------------------------------------------------------------------- sections

def _angle(view: int) -> str:
    degrees = (view - 1) * 22.5
    return f"{degrees:g}°"


def _toc() -> str:
    links = " · ".join(f'<a href="#{anchor}">{esc(title)}</a>' for anchor, title in SECTIONS.items())
    return f'<nav class="toc">{links}</nav>'


def _overview(index: DataIndex, frame: pd.DataFrame, stats: MaskStats) -> str:
    summary = index.summary()
    train = frame[frame.subset == "train"]
    cars = train.drop_duplicates("car_id")
    models = {(m, o) for m, o in zip(cars.make, cars.model) if m != "unknown"}
    sizes = summary["image_sizes"]
    errors = len(index.fatal)
    warnings = len(index.problems) - errors
    coverage = train["coverage"].dropna()
    missing = summary["train_images"] - summary["masks"]
    items = [
        ("Cars", summary["train_cars"],
         f"+ {summary['test_cars']} test cars" if summary["test_cars"] else ""),
        ("Train images", summary["train_images"],
         f"{summary['train_images'] / max(1, summary['train_cars']):.1f} per car"),
        ("Masks", summary["masks"], ", ".join(filter(None, [
            f"{missing} missing" if missing else "",
            f"{len(stats.unreadable)} unusable" if stats.unreadable else ""])) or "one per image"),
        ("Test images", summary["test_images"], "no masks (Kaggle test set)"),
        ("Makes", summary["makes"] or "unknown", "" if summary["makes"] else "no metadata.csv rows"),
        ("Models", len(models) or "unknown", "distinct make + model"),
        ("Years", summary["years"].replace("-", "–") or "unknown", "model years"),
        ("Image sizes", next(iter(sizes)).replace("x", "×") if len(sizes) == 1 else f"{len(sizes)} sizes",
         f"{sum(sizes.values())} photos read" if sizes else "none readable"),
        ("Car pixels", f"{coverage.mean():.1%}" if len(coverage) else "–",
         f"{coverage.min():.1%} – {coverage.max():.1%}" if len(coverage) else "no masks decoded"),
        ("Problems", len(index.problems),
         f"{errors} errors, {warnings} warnings" if index.problems else "none found"),
    ]
    caption = ("Headline numbers for this folder. Problems counts every file-level issue the "
               "indexer found; the table near the end lists them.")
    return section(SECTIONS["overview"], cards(items), caption, "overview")


def _style(ax, grid_axis: str = "y") -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.grid(axis=grid_axis, color="#e3e6eb", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.tick_params(labelsize=9)


def _cars_section(index: DataIndex, frame: pd.DataFrame) -> str:
    cars = frame[frame.subset == "train"].drop_duplicates("car_id")
    if cars.empty:
        return section(SECTIONS["cars"], _note("No training cars."), anchor="cars")
    meta = index.metadata
    reference = meta is not None and len(meta) > 2 * len(cars)  # metadata.csv describes a wider population
    counts = cars["make"].value_counts().sort_values()
    if list(counts.index) == ["unknown"]:
        make_html = _note("Makes unknown: metadata.csv is missing or has no rows for these cars.")
    else:
        make_html = img_tag(_make_figure(counts, meta if reference else None, len(cars)), "cars per make")

    years = cars["year"].dropna().astype(int)
    if len(years):
        span = range(years.min(), years.max() + 1)
        per_year = years.value_counts().reindex(span, fill_value=0)
        fig = Figure(figsize=(6.2, 2.8), layout="constrained")
        ax = fig.add_subplot()
        ax.bar(per_year.index, per_year.values, color=ACCENT, width=0.75)
        if reference:
            meta_years = pd.to_numeric(meta["year"], errors="coerce").dropna().astype(int)
            expected = meta_years.value_counts(normalize=True).reindex(span, fill_value=0) * len(cars)
            ax.plot(expected.index, expected.values, "_", color=SECOND, markersize=18, mew=2.5,
                    label="expected from metadata.csv")
            ax.legend(fontsize=8, frameon=False)
        ax.set_xticks(list(span))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("cars")
        _style(ax)
        year_html = img_tag(figure_to_data_uri(fig), "cars per model year")
    else:
        year_html = _note("No model years known (no metadata.csv rows for these cars).")

    known = cars[cars.make != "unknown"]
    if len(known):
        table = (known.groupby(["make", "model"])
                 .agg(cars=("car_id", "size"), first=("year", "min"), last=("year", "max"))
                 .reset_index().sort_values(["cars", "make", "model"], ascending=[False, True, True]))
        table["years"] = [_year_span(a, b) for a, b in zip(table["first"], table["last"])]
        models_html = table_html(table, ["make", "model", "cars", "years"], max_rows=15)
    else:
        models_html = _note("Models unknown: metadata.csv is missing or has no rows for these cars.")
    content = (f'<div class="grid wide"><div>{make_html}</div>'
               f"<div>{year_html}<h3>Top models</h3>{models_html}</div></div>")
    caption = ("Which cars the model will learn from. Bars count cars (16 photos each) per make and "
               "model year; a make with one or two cars is effectively unseen, so expect its paint and "
               "shape to be the hard cases.")
    if reference:
        caption += (" Orange ticks show how many cars of each make or year a random draw from "
                    "metadata.csv would give: bars far from their tick mean this folder is skewed.")
    return section(SECTIONS["cars"], content, caption, "cars")


def _make_figure(counts: pd.Series, meta: pd.DataFrame | None, cars: int) -> str:
    """Cars per make as bars; with `meta`, ticks at what a random draw from metadata.csv would give."""
    fig = Figure(figsize=(6.2, 1.2 + 0.24 * len(counts)), layout="constrained")
    ax = fig.add_subplot()
    ax.barh(counts.index, counts.values, color=ACCENT, height=0.7, label="cars in this folder")
    if meta is not None:
        share = meta["make"].value_counts(normalize=True) * cars
        ax.scatter(share.reindex(counts.index).fillna(0).values, counts.index, marker="|", s=120,
                   color=SECOND, zorder=3, label=f"expected from metadata.csv ({len(meta):,} cars)")
        ax.legend(loc="lower right", fontsize=8, frameon=False)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("cars")
    ax.margins(y=0.01)
    _style(ax, "x")
    return figure_to_data_uri(fig)


def _year_span(first: float, last: float) -> str:
    if pd.isna(first):
        return "–"
    return f"{int(first)}" if first == last else f"{int(first)}–{int(last)}"


def _coverage_section(frame: pd.DataFrame, stats: MaskStats) -> str:
    train = frame[(frame.subset == "train") & frame.coverage.notna()]
    if train.empty:
        return section(SECTIONS["coverage"], _note("No masks could be decoded."),
                       anchor="coverage")
    values = train["coverage"] * 100
    fig = Figure(figsize=(5.4, 3.2), layout="constrained")
    ax = fig.add_subplot()
    ax.hist(values, bins=min(40, max(8, len(values) // 8)), color=ACCENT, alpha=0.9)
    ax.axvline(values.mean(), color=SECOND, linewidth=1.6, label=f"mean {values.mean():.1f}%")
    ax.axvline(values.median(), color="#1d2330", linewidth=1.2, linestyle="--",
               label=f"median {values.median():.1f}%")
    ax.set_xlabel("car pixels in the mask (% of the image)")
    ax.set_ylabel("masks")
    ax.legend(fontsize=8, frameon=False)
    _style(ax)
    hist = figure_to_data_uri(fig)

    views = sorted(train["view"].unique())
    groups = [train.loc[train.view == v, "coverage"].values * 100 for v in views]
    fig = Figure(figsize=(6.4, 3.2), layout="constrained")
    ax = fig.add_subplot()
    ax.boxplot(groups, positions=range(len(views)), widths=0.6, patch_artist=True, showfliers=True,
               boxprops={"facecolor": "#cfdcf6", "edgecolor": ACCENT}, medianprops={"color": ACCENT},
               flierprops={"markersize": 3, "markeredgecolor": "#8a94a3"})
    means = [g.mean() for g in groups]
    ax.plot(range(len(views)), means, "o-", color=SECOND, markersize=4, linewidth=1.2)
    ax.set_xticks(range(len(views)), [f"{v:02d}\n{_angle(v)}" if (v - 1) % 4 == 0 else f"{v:02d}"
                                      for v in views], fontsize=8)
    ax.set_xlabel("view (01 = front, each next view turns the car 22.5°)")
    ax.set_ylabel("car pixels (%)")
    _style(ax)
    by_view = figure_to_data_uri(fig)

    per_view = train.groupby("view")["coverage"].mean()
    high, low = per_view.idxmax(), per_view.idxmin()
    background = 1 - train.coverage.mean()
    sides = {3, 4, 5, 6, 7, 11, 12, 13, 14, 15}  # within 45° of a side-on view
    usual = high in sides and low not in sides
    verdict = ("side views fill more of the frame than the front and back" if usual
               else "here the usual pattern (side views largest) does not hold")
    caption = (f"How much of each photo is car. Over {len(train)} masks the car covers "
               f"{train.coverage.mean():.1%} of the pixels on average ({train.coverage.min():.1%} to "
               f"{train.coverage.max():.1%}), so {background:.0%} of the pixels are background: a model "
               f"that predicts 'background' everywhere already has {background:.0%} pixel accuracy, which "
               f"is why accuracy is a useless score here and Dice is used. By view the mean is highest for "
               f"view {high:02d} ({_angle(high)}, {per_view[high]:.1%}) and lowest for view {low:02d} "
               f"({_angle(low)}, {per_view[low]:.1%}): {verdict}. Boxes show the spread over cars, the "
               f"orange line the mean per view.")
    boxes = pd.DataFrame(list(stats.bbox.values()), columns=["x", "y", "w", "h", "W", "H"])
    boxes = boxes[boxes.w > 0]
    extra = ""
    if len(boxes):
        touch = {"left": (boxes.x == 0).mean(), "right": (boxes.x + boxes.w >= boxes.W).mean(),
                 "top": (boxes.y == 0).mean(), "bottom": (boxes.y + boxes.h >= boxes.H).mean()}
        x0, y0 = boxes.x.min(), boxes.y.min()
        x1, y1 = (boxes.x + boxes.w).max() - 1, (boxes.y + boxes.h).max() - 1  # inclusive
        touching = ", ".join(f"{side} {share:.0%}" for side, share in touch.items())
        extra = (f'<h3>Where the car sits</h3><p class="caption">Every car lies inside columns '
                 f"{x0}–{x1} and rows {y0}–{y1} of the frame (the union of all bounding boxes). Masks "
                 f"touching each image edge: {esc(touching)}. A car cut by the edge means a crop or "
                 f"padding choice matters there; a wide empty margin means random crops can be taken "
                 f"safely.</p>")
    content = (f'<div class="grid wide">{img_tag(hist, "coverage histogram")}'
               f'{img_tag(by_view, "coverage by view")}</div>{extra}')
    return section(SECTIONS["coverage"], content, caption, "coverage")


def _mean_mask_section(stats: MaskStats, base: tuple[int, int]) -> str:
    if not stats.view_sum:
        return section(SECTIONS["mean-masks"], _note("No masks could be decoded."),
                       anchor="mean-masks")
    views = sorted(stats.view_sum)
    rows = (len(views) + 3) // 4
    h, w = next(iter(stats.view_sum.values())).shape
    fig = Figure(figsize=(10, (10 * 0.86 / 4) * (h / w) * rows * 1.18 + 0.2))
    # a fixed layout: constrained layout costs a second here and gains nothing on a regular grid
    axes = fig.subplots(rows, 4, squeeze=False, gridspec_kw={"left": 0.005, "right": 0.865, "bottom": 0.01,
                                                              "top": 1 - 0.3 / fig.get_figheight(),
                                                              "wspace": 0.04, "hspace": 0.22})
    shown = None
    for ax in axes.flat:
        ax.axis("off")
    per_view_boxes: dict[int, list] = defaultdict(list)
    for image_id, box in stats.bbox.items():
        per_view_boxes[int(image_id.rsplit("_", 1)[1])].append(box)
    for ax, view in zip(axes.flat, views):
        mean = stats.view_sum[view] / stats.view_count[view]
        shown = ax.imshow(mean, cmap="magma", vmin=0, vmax=1, interpolation="bilinear")
        boxes = [b for b in per_view_boxes.get(view, []) if b[2] > 0]
        if boxes:  # the union of this view's bounding boxes, in thumbnail pixels
            sx, sy = w / boxes[0][4], h / boxes[0][5]
            x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
            x1, y1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
            ax.add_patch(Rectangle((x0 * sx - 0.5, y0 * sy - 0.5), (x1 - x0) * sx, (y1 - y0) * sy,
                                   fill=False, edgecolor="#4fd1c5", linewidth=1, linestyle="--"))
        ax.set_title(f"view {view:02d} · {_angle(view)} · {mean.mean():.1%}", fontsize=9)
    fig.colorbar(shown, cax=fig.add_axes((0.9, 0.2, 0.018, 0.6)), label="share of cars covering the pixel")
    always = np.mean([np.mean(stats.view_sum[v] / stats.view_count[v] >= 0.999) for v in views])
    never = np.mean([np.mean(stats.view_sum[v] == 0) for v in views])
    cars = max(stats.view_count.values())
    caption = (f"The average mask of each view over up to {cars} cars (computed at 1/{round(base[0] / w)} "
               f"size). Bright = almost every car covers that pixel; the dashed box is the union of that "
               f"view's bounding boxes. On average {never:.0%} of a view's pixels are never car and "
               f"{always:.0%} are always car: a model must earn its score on the blurred rim, the part "
               f"that changes from car to car.")
    return section(SECTIONS["mean-masks"], img_tag(figure_to_data_uri(fig, dpi=100), "mean mask per view"),
                   caption, "mean-masks")


def _resolution_section(stats: MaskStats, base: tuple[int, int]) -> str:
    if not stats.dice:
        return section(SECTIONS["resolution"], _note("No masks to measure."),
                       anchor="resolution")
    rows = []
    for scale in DICE_SCALES:
        scores = np.array(stats.dice[scale])
        rows.append({"scale": f"1/{scale}", "size": f"{base[0] // scale}×{base[1] // scale}",
                     "mean Dice": scores.mean(), "worst Dice": scores.min(),
                     "wrong pixels / image": float(np.mean(stats.wrong[scale]))})
    formats = {"mean Dice": ".5f", "worst Dice": ".5f", "wrong pixels / image": ",.0f"}
    table = table_html(rows, formats=formats)
    loss = 1 - np.mean(stats.dice[8])
    caption = (f"The best Dice a perfect model could reach if it predicts at a lower resolution and its "
               f"mask is scaled back up to {base[0]}×{base[1]} (measured on {len(stats.dice[8])} masks: "
               f"area-downscale, bilinear upscale, threshold at one half). The seed notebooks trained at "
               f"240×160 (1/8 size), which alone costs about {loss:.4f} Dice before any model error; the "
               f"top Kaggle scores were around 0.997 and a few ten-thousandths apart, so the last points "
               f"need half or full resolution, or at least a careful upsampling of the edges.")
    return section(SECTIONS["resolution"], table, caption, "resolution")


def _samples_section(chosen: list[Record], stats: MaskStats, reduce: int, workers: int | None,
                     track: Track) -> str:
    if not chosen:
        return section(SECTIONS["samples"], _note("No training images with masks."),
                       anchor="samples")

    def render(record: Record) -> str | None:
        loaded = _load(record, reduce)
        if loaded is None:
            return None
        photo, mask = loaded
        uri = image_to_data_uri(overlay(photo, mask), "jpeg", max_width=SAMPLE_WIDTH)
        coverage = stats.coverage.get(record.image_id, float(mask.mean()))
        label = " ".join(str(x) for x in (record.make, record.model, record.year) if x) or "make unknown"
        caption = (f"{record.image_id} · view {record.view:02d} ({_angle(record.view)}) · {label} · "
                   f"car {coverage:.2%}")
        return img_tag(uri, record.image_id, caption, {"class": "sample", "data-image-id": record.image_id,
                                                       "data-coverage": f"{coverage:.6f}"})

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        tiles = [tile for tile in track(pool.map(render, chosen), total=len(chosen),
                                        description="sample images") if tile]
    caption = (f"{len(tiles)} photos from {len({r.car_id for r in chosen})} cars and "
               f"{len({r.view for r in chosen})} views, chosen with seed-driven randomness, with the true "
               f"mask tinted pink and its outline drawn. Look at the outline: wheels, antennas, mirrors "
               f"and see-through windows are where masks are hardest, and where the annotators had to "
               f"decide.")
    return section(SECTIONS["samples"], f'<div class="grid">{"".join(tiles)}</div>', caption, "samples")


def _load(record: Record, reduce: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A photo decoded at 1/`reduce` size and its mask area-averaged to that size (float 0..1)."""
    try:
        jpeg = record.image_path.suffix.lower() in (".jpg", ".jpeg")
        photo = read_image(record.image_path, reduce=reduce if jpeg else 1)
        mask = read_mask(record.mask_path)
    except (ValueError, OSError) as error:  # DataError is a ValueError; the problems table says why
        log.warning("%s not shown: %s", record.image_id, error)
        return None
    size = (photo.shape[1], photo.shape[0])
    return photo, cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA)


def _note(text: str) -> str:
    return f'<p class="note warn">{esc(text)}</p>'


def _pairs_section(pairs: list[Record], reduce: int, base: tuple[int, int]) -> str:
    if not pairs:
        return section(SECTIONS["pairs"], _note("No training images with masks."),
                       anchor="pairs")
    blocks = []
    for record in pairs:
        loaded = _load(record, reduce)
        if loaded is None:
            continue
        photo, mask = loaded
        truth = (mask * 255).round().astype(np.uint8)
        left = img_tag(image_to_data_uri(photo, "jpeg", SAMPLE_WIDTH), "input", "Input image")
        right = img_tag(image_to_data_uri(truth, "png", SAMPLE_WIDTH), "true mask", "True mask")
        blocks.append(f"<h3>{esc(record.image_id)} · view {record.view:02d} ({_angle(record.view)})</h3>"
                      f'<div class="pair">{left}{right}</div>')
    caption = ("The view the seed notebooks showed: a photo next to its ground-truth mask (white = car). "
               f"This is the target a model must reproduce, pixel for pixel, at {base[0]}×{base[1]}.")
    return section(SECTIONS["pairs"], "".join(blocks), caption, "pairs")


def _files_section(index: DataIndex) -> str:
    sizes = index.image_sizes
    total = sum(sizes.values()) or 1
    expected = sizes.most_common(1)[0][0] if sizes else None
    size_rows = [{"size": f"{w}×{h}", "photos": n, "share": n / total,
                  "note": "most common" if (w, h) == expected else "differs"}
                 for (w, h), n in sizes.most_common()]
    size_html = table_html(size_rows, formats={"share": ".1%"}) if size_rows else \
        _note("No photo could be read.")
    if index.problems:
        problems = [{"level": Raw(f'<span class="badge {"error" if p.fatal else "warning"}">'
                                  f'{"error" if p.fatal else "warning"}</span>'),
                     "kind": p.kind, "file": _relative(p.path, index.root), "message": p.message}
                    for p in index.problems]
        problem_html = table_html(problems, max_rows=300)
    else:
        problem_html = ('<p class="note">No problems found: every photo is readable and complete, every '
                        "training image has exactly one binary mask of its size, and metadata.csv covers "
                        "every car.</p>")
    content = f"<h3>Photo sizes</h3>{size_html}<h3>Data problems</h3>{problem_html}"
    caption = ("File-level checks from the indexer: photo sizes (a model resizes everything to one size, "
               "so an odd size is worth knowing about) and every problem found, errors first. Errors "
               "make a file unusable for training; warnings are worth knowing but do not block.")
    return section(SECTIONS["files"], content, caption, "files")


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _per_car_section(frame: pd.DataFrame) -> str:
    train = frame[frame.subset == "train"]
    if train.empty:
        return section(SECTIONS["per-car"], _note("No training cars."), anchor="per-car")
    table = (train.groupby("car_id")
             .agg(make=("make", "first"), model=("model", "first"), year=("year", "first"),
                  views=("view", "nunique"), coverage_mean=("coverage", "mean"),
                  coverage_min=("coverage", "min"), coverage_max=("coverage", "max"))
             .reset_index().sort_values(["make", "model", "car_id"]))
    table["year"] = [str(int(y)) if pd.notna(y) else "" for y in table["year"]]
    short = (table.views < 16).sum()
    formats = {"coverage_mean": ".2%", "coverage_min": ".2%", "coverage_max": ".2%"}
    content = (f"<details><summary>Show all {len(table)} cars</summary>"
               f"{table_html(table, formats=formats)}</details>")
    caption = (f"One row per training car: its metadata, how many of the 16 views it has "
               f"({'all complete' if not short else f'{short} cars incomplete'}) and its mask coverage. "
               f"Big coverage means a big vehicle (vans, pickups) or one parked close to the camera.")
    return section(SECTIONS["per-car"], content, caption, "per-car")
