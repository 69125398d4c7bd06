"""The data report's page structure and its sections of numbers, tables and photos."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from carmask.apps.eda_stats import DICE_SCALES, MaskStats
from carmask.apps.report import Raw, cards, esc, image_to_data_uri, img_tag, overlay, section, table_html
from carmask.data.io import read_image, read_mask
from carmask.data.layout import DataIndex, Record
from carmask.util.progress import Track

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


def view_angle(view: int) -> str:
    degrees = (view - 1) * 22.5
    return f"{degrees:g}°"


def table_of_contents() -> str:
    links = " · ".join(f'<a href="#{anchor}">{esc(title)}</a>' for anchor, title in SECTIONS.items())
    return f'<nav class="toc">{links}</nav>'


def overview(index: DataIndex, frame: pd.DataFrame, stats: MaskStats) -> str:
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


def resolution_section(stats: MaskStats, base: tuple[int, int]) -> str:
    if not stats.dice:
        return section(SECTIONS["resolution"], warning_note("No masks to measure."),
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


def samples_section(chosen: list[Record], stats: MaskStats, reduce: int, workers: int | None,
                     track: Track) -> str:
    if not chosen:
        return section(SECTIONS["samples"], warning_note("No training images with masks."),
                       anchor="samples")

    def render(record: Record) -> str | None:
        loaded = _load(record, reduce)
        if loaded is None:
            return None
        photo, mask = loaded
        uri = image_to_data_uri(overlay(photo, mask), "jpeg", max_width=SAMPLE_WIDTH)
        coverage = stats.coverage.get(record.image_id, float(mask.mean()))
        label = " ".join(str(x) for x in (record.make, record.model, record.year) if x) or "make unknown"
        caption = (f"{record.image_id} · view {record.view:02d} ({view_angle(record.view)}) · {label} · "
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


def warning_note(text: str) -> str:
    return f'<p class="note warn">{esc(text)}</p>'


def pairs_section(pairs: list[Record], reduce: int, base: tuple[int, int]) -> str:
    if not pairs:
        return section(SECTIONS["pairs"], warning_note("No training images with masks."),
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
        blocks.append(f"<h3>{esc(record.image_id)} · view {record.view:02d} ({view_angle(record.view)})</h3>"
                      f'<div class="pair">{left}{right}</div>')
    caption = ("The view the seed notebooks showed: a photo next to its ground-truth mask (white = car). "
               f"This is the target a model must reproduce, pixel for pixel, at {base[0]}×{base[1]}.")
    return section(SECTIONS["pairs"], "".join(blocks), caption, "pairs")


def files_section(index: DataIndex) -> str:
    sizes = index.image_sizes
    total = sum(sizes.values()) or 1
    expected = sizes.most_common(1)[0][0] if sizes else None
    size_rows = [{"size": f"{w}×{h}", "photos": n, "share": n / total,
                  "note": "most common" if (w, h) == expected else "differs"}
                 for (w, h), n in sizes.most_common()]
    size_html = table_html(size_rows, formats={"share": ".1%"}) if size_rows else \
        warning_note("No photo could be read.")
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


def per_car_section(frame: pd.DataFrame) -> str:
    train = frame[frame.subset == "train"]
    if train.empty:
        return section(SECTIONS["per-car"], warning_note("No training cars."), anchor="per-car")
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
