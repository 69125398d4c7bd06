"""The data report's sections drawn as charts: the cars, the mask coverage and the mean mask of
each view."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from carmask.apps.eda_sections import SECTIONS, view_angle, warning_note
from carmask.apps.eda_stats import MaskStats
from carmask.apps.report import esc, figure_to_data_uri, img_tag, section, table_html
from carmask.data.layout import DataIndex

ACCENT, SECOND = "#2f6fde", "#e8590c"


def _style(ax, grid_axis: str = "y") -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.grid(axis=grid_axis, color="#e3e6eb", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.tick_params(labelsize=9)


def cars_section(index: DataIndex, frame: pd.DataFrame) -> str:
    cars = frame[frame.subset == "train"].drop_duplicates("car_id")
    if cars.empty:
        return section(SECTIONS["cars"], warning_note("No training cars."), anchor="cars")
    meta = index.metadata
    reference = meta is not None and len(meta) > 2 * len(cars)  # metadata.csv describes a wider population
    counts = cars["make"].value_counts().sort_values()
    if list(counts.index) == ["unknown"]:
        make_html = warning_note("Makes unknown: metadata.csv is missing or has no rows for these cars.")
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
        year_html = warning_note("No model years known (no metadata.csv rows for these cars).")

    known = cars[cars.make != "unknown"]
    if len(known):
        table = (known.groupby(["make", "model"])
                 .agg(cars=("car_id", "size"), first=("year", "min"), last=("year", "max"))
                 .reset_index().sort_values(["cars", "make", "model"], ascending=[False, True, True]))
        table["years"] = [_year_span(a, b) for a, b in zip(table["first"], table["last"])]
        models_html = table_html(table, ["make", "model", "cars", "years"], max_rows=15)
    else:
        models_html = warning_note("Models unknown: metadata.csv is missing or has no rows for these cars.")
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


def coverage_section(frame: pd.DataFrame, stats: MaskStats) -> str:
    train = frame[(frame.subset == "train") & frame.coverage.notna()]
    if train.empty:
        return section(SECTIONS["coverage"], warning_note("No masks could be decoded."),
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
    ax.set_xticks(range(len(views)), [f"{v:02d}\n{view_angle(v)}" if (v - 1) % 4 == 0 else f"{v:02d}"
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
               f"view {high:02d} ({view_angle(high)}, {per_view[high]:.1%}) and lowest for view {low:02d} "
               f"({view_angle(low)}, {per_view[low]:.1%}): {verdict}. Boxes show the spread over cars, the "
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


def mean_mask_section(stats: MaskStats, base: tuple[int, int]) -> str:
    if not stats.view_sum:
        return section(SECTIONS["mean-masks"], warning_note("No masks could be decoded."),
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
        ax.set_title(f"view {view:02d} · {view_angle(view)} · {mean.mean():.1%}", fontsize=9)
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
