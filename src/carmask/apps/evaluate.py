"""Score a model on photos with true masks: Dice (Kaggle's metric) and IoU at full resolution,
per view angle and make, a per-image CSV and an HTML report with the worst images. Photos that
come with a people mask also count the people taken for car (carmask.apps.people_count)."""

from __future__ import annotations

import heapq
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from carmask.data.io import DataError, read_mask, read_photo
from carmask.data.layout import Record, index_dataset
from carmask.data.split import SplitError, recorded_validation
from carmask.data.wild import as_records, is_wild_folder, read_wild, split_wild
from carmask.apps.outline import OutlineErrors, paint_errors, worst_window
from carmask.apps.car_losses import RULE as LOSS_RULE, car_loss_figures, car_loss_summary
from carmask.apps.people_count import RULE, as_counts, people_figures, people_section_html, people_summary
from carmask.util.atomic import atomic_path
from carmask.util.parallel import imap_bounded
from carmask.inference.predictor import Predictor
from carmask.inference.refine import describe_quality, quality_record
from carmask.inference.streaming import Prediction
from carmask.util.progress import Track, silent_track

log = logging.getLogger(__name__)
THUMB_WIDTH = 480
# true positive, false positive (predicted car on background), false negative (missed car)
COLOURS = {"tp": (46, 160, 67), "fp": (230, 57, 70), "fn": (52, 120, 246)}


def dice_and_iou(prediction: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Kaggle's Dice (1 when both masks are empty) and IoU of two bool masks."""
    intersection = np.count_nonzero(prediction & truth)
    total = np.count_nonzero(prediction) + np.count_nonzero(truth)
    if total == 0:
        return 1.0, 1.0
    return 2 * intersection / total, intersection / (total - intersection)


class EvaluationError(ValueError):
    """Nothing could be scored: the message names the photos and masks, and why."""


def photos_to_score(data: Path, cars: str | None, config: Mapping) -> tuple[list[Record], dict[str, Path]]:
    """The photos of `data` with true masks to score, and the people masks by photo name (an
    outdoor folder's street frames have them). `cars`: None for all of them; "val" for those the
    model `config` was not trained on (an outdoor folder's held-out split, or the validation cars
    its training record lists); or car ids, comma-separated. EvaluationError when none is left."""
    people = {}
    if is_wild_folder(data):
        try:
            training, held_out = split_wild(read_wild(data))
        except DataError as error:
            raise EvaluationError(str(error)) from None
        photos = held_out if cars == "val" else training + held_out
        records = as_records(photos)
        people = {p.name: p.people_path for p in photos if p.people_path}
    else:
        records = [r for r in index_dataset(data, check_pixels=False).train if r.mask_path]
        if cars == "val":
            try:
                records = recorded_validation(records, config.get("training") or {})
            except SplitError as error:
                raise EvaluationError(f"--cars val: {error}") from None
    if cars and cars != "val":
        wanted = set(cars.split(","))
        records = [r for r in records if r.car_id in wanted]
    if not records:
        raise EvaluationError(f"{data}: no training photos with masks to evaluate"
                              + (f" for cars {cars}" if cars else ""))
    return records, people


@dataclass
class Evaluation:
    # image_id, car_id, view, make, dice, iou, wrong_pixels; car_pixels, hole_pixels, holes,
    # low_pixels, low_missed, high_pixels, high_missed (carmask.apps.car_losses); with people
    # masks also person_pixels, person_called_car, people, people_taken (apps.people_count)
    per_image: pd.DataFrame
    report: Path | None = None
    outline: OutlineErrors | None = None  # with a report: wrong pixels by distance to the outline
    unscored: list[tuple[str, str]] = field(default_factory=list)  # (image id, why not scored)
    quality: dict | None = None  # what ran: {"quality", "tta", "refiner"} (refine.quality_record)

    @property
    def dice(self) -> float:
        return float(self.per_image["dice"].mean())

    @property
    def iou(self) -> float:
        return float(self.per_image["iou"].mean())

    def by(self, column: str) -> pd.DataFrame:
        return self.per_image.groupby(column)[["dice", "iou"]].agg(["mean", "min", "count"])

    @property
    def people(self) -> dict | None:
        """People taken for car over the photos with people, or None when none has."""
        return people_summary(self.per_image)

    def car_losses(self) -> dict | None:
        """Holes and the lower body cut off (carmask.apps.car_losses), over all photos and by
        make (for an outdoor folder: by kind of photo)."""
        overall = car_loss_summary(self.per_image)
        if overall is None:
            return None
        by_make = {str(make): car_loss_summary(frame) for make, frame in self.per_image.groupby("make")}
        for summary in by_make.values():
            summary.pop("rule")
        return {**overall, "by_make": by_make}

    def as_json(self) -> dict:
        """The scores; `by_make` is by kind of photo for an outdoor folder (web, camvid), and
        `people` is there when some photos came with a people mask."""
        by_make = self.per_image.groupby("make")[["dice", "iou"]].agg(["mean", "count"])
        scores = {"dice": round(self.dice, 6), "iou": round(self.iou, 6), "images": len(self.per_image),
                  "unscored": len(self.unscored),
                  "by_make": {str(make): {"dice": round(row[("dice", "mean")], 6),
                                          "iou": round(row[("iou", "mean")], 6),
                                          "images": int(row[("dice", "count")])}
                              for make, row in by_make.iterrows()}}
        losses, people = self.car_losses(), self.people
        if losses is not None:
            scores["car_losses"] = losses
        if people is not None:
            scores["people"] = people
        if self.quality is not None:
            scores["quality"] = self.quality
        return scores


def evaluate(predictor: Predictor, records: list[Record], out: Path | None = None, *,
             worst: int = 12, workers: int | None = None, track: Track = silent_track,
             people: Mapping[str, Path] | None = None) -> Evaluation:
    """Predict every record's photo, compare with its mask at full size, optionally write
    `out/per_image.csv` and `out/index.html`. `people` maps image ids to people masks (255 = a
    person): those photos also count the people the model takes for car.

    A photo that cannot be scored (unreadable, its mask not binary or unreadable, the two of
    different sizes, likewise its people mask) is left out and listed in `unscored` with why;
    when none can be scored, EvaluationError names them (there is no score to give)."""
    records = [r for r in records if r.mask_path is not None]
    if not records:
        raise ValueError("no photos with true masks to evaluate")
    people = people or {}
    truths = imap_bounded(partial(_read_truth, people=people), records, workers)
    predictions = predictor.predict_paths([r.image_path for r in records], workers=workers)
    rows: list[dict] = []
    unscored: list[tuple[str, str]] = []
    keep: list[tuple] = []  # the `worst` images by Dice, with small pictures of both masks
    outline = OutlineErrors()  # where the wrong pixels lie, for the report
    for record, truth, prediction in track(zip(records, truths, predictions), total=len(records),
                                           description="evaluating"):
        problem = _unscorable(record, truth, prediction, people.get(record.image_id))
        if problem:
            log.warning("%s", problem)
            unscored.append((record.image_id, problem))
            continue
        truth, people_mask = truth
        dice, iou = dice_and_iou(prediction.mask, truth)
        rows.append({"image_id": record.image_id, "car_id": record.car_id, "view": record.view,
                     "make": record.make, "dice": dice, "iou": iou,
                     "wrong_pixels": int(np.count_nonzero(prediction.mask != truth)),
                     **car_loss_figures(prediction.mask, truth),
                     **(people_figures(prediction.mask, people_mask) if people_mask is not None else {})})
        if out is not None:
            outline.add(prediction.mask, truth)
            # Max-heap on Dice (stored negated): its top is the best of the worst kept so far.
            # Only what the report shows is kept: small masks, and both masks where the errors
            # crowd (the photo there is read once the worst are known).
            if len(keep) < worst or dice < -keep[0][0]:
                item = (-dice, record.image_id, record, _thumb(prediction.mask), _thumb(truth),
                        _error_window(prediction.mask, truth))
                (heapq.heappush if len(keep) < worst else heapq.heapreplace)(keep, item)
    if not rows:
        raise EvaluationError(_none_scored(unscored))
    evaluation = Evaluation(as_counts(pd.DataFrame(rows)), unscored=unscored,
                            quality=quality_record(predictor))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "per_image.csv") as tmp:
            evaluation.per_image.to_csv(tmp, index=False)
        worst_first = [(-negated, record, pred, truth, window)
                       for negated, _, record, pred, truth, window in sorted(keep, reverse=True)]
        evaluation.outline = outline
        evaluation.report = write_evaluation_report(evaluation, worst_first, predictor,
                                                    {r.image_id: r for r in records}, out)
    return evaluation


Truth = tuple[np.ndarray, "np.ndarray | None"]  # the car mask, and the people mask if any


def _read_truth(record: Record, people: Mapping[str, Path]) -> Truth | DataError:
    """A record's true mask and its people mask (None without one), or why either cannot be
    read (not binary, unreadable): an error in one mask must not end a scoring of thousands."""
    try:
        people_path = people.get(record.image_id)
        return read_mask(record.mask_path), (read_mask(people_path) if people_path else None)
    except DataError as error:
        return error


def _unscorable(record: Record, truth: Truth | DataError, prediction: Prediction,
                people_path: Path | None = None) -> str | None:
    """Why a photo cannot be scored against its masks (naming the files), or None."""
    if prediction.error:
        return prediction.error
    if isinstance(truth, DataError):
        return str(truth)
    (height, width), (car, people) = prediction.mask.shape, truth
    for what, path, mask in (("mask", record.mask_path, car), ("people mask", people_path, people)):
        if mask is not None and mask.shape != (height, width):  # masks align with the photo as displayed
            return (f"{record.image_path} is {width}x{height} as displayed but its {what} {path} "
                    f"is {mask.shape[1]}x{mask.shape[0]}; not scored")
    return None


def _none_scored(unscored: list[tuple[str, str]]) -> str:
    """One line for an evaluation with no score: how many, and the first reason (each one is
    logged as it is found)."""
    others = f" (and {len(unscored) - 1} more, each named above)" if len(unscored) > 1 else ""
    return f"none of the {len(unscored)} photo(s) could be scored: {unscored[0][1]}{others}"


CROP = 192  # side of the full-resolution error crops in the report


def _error_window(prediction: np.ndarray, truth: np.ndarray) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """Where a photo's wrong pixels crowd most, and both masks there, at full resolution."""
    top, left, _ = worst_window(prediction, truth, CROP)
    rows, cols = slice(top, top + CROP), slice(left, left + CROP)
    return rows, cols, prediction[rows, cols].copy(), truth[rows, cols].copy()


def error_crop_of(record: Record, window: tuple[slice, slice, np.ndarray, np.ndarray]) -> np.ndarray:
    """The photo's full-resolution crop at an `_error_window`, its errors painted in."""
    rows, cols, prediction, truth = window
    return paint_errors(read_photo(record.image_path).pixels[rows, cols], prediction, truth, COLOURS)


def _thumb(mask: np.ndarray) -> np.ndarray:
    height, width = mask.shape
    size = (THUMB_WIDTH, max(1, round(height * THUMB_WIDTH / width)))
    return cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)


def error_overlay(photo: np.ndarray, prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The photo with true positives, false positives and false negatives in three colours."""
    picture = photo.astype(np.float32)
    for name, where in (("tp", prediction & truth), ("fp", prediction & ~truth),
                        ("fn", ~prediction & truth)):
        alpha = 0.35 if name == "tp" else 0.85  # errors must stand out against the car
        picture[where] = (1 - alpha) * picture[where] + alpha * np.array(COLOURS[name])
    return picture.astype(np.uint8)


def write_evaluation_report(evaluation: Evaluation, worst: list[tuple], predictor: Predictor,
                            records: dict[str, Record], out: Path) -> Path:
    """out/index.html: headline scores, per view and make, the worst images, triptychs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from carmask.apps import report as html

    frame = evaluation.per_image

    def photo_thumb(record: Record) -> np.ndarray:
        photo = read_photo(record.image_path, reduce=4).pixels
        return cv2.resize(photo, (THUMB_WIDTH, round(photo.shape[0] * THUMB_WIDTH / photo.shape[1])),
                          interpolation=cv2.INTER_AREA)

    headline = html.cards([
        ("Mean Dice", f"{evaluation.dice:.5f}", "Kaggle's metric, at full resolution"),
        ("Mean IoU", f"{evaluation.iou:.5f}"),
        ("Images", len(frame), f"{frame['car_id'].nunique()} cars"),
        ("Worst Dice", f"{frame['dice'].min():.4f}", frame.loc[frame['dice'].idxmin(), 'image_id']),
        ("Model", predictor.config["architecture"], predictor.path.name),
        ("Input", f"{predictor.size[0]}x{predictor.size[1]}", "the model's input size"),
        ("Quality", evaluation.quality["quality"], describe_quality(evaluation.quality)),
    ])
    figure, axis = plt.subplots(figsize=(9, 3.2))
    per_view = frame.groupby("view")["dice"].agg(["mean", "min"])
    axis.bar(per_view.index, per_view["mean"], color="#2f6fde", label="mean")
    axis.plot(per_view.index, per_view["min"], "o", color="#c0352b", label="worst")
    axis.set(xlabel="view (01 = front, 22.5° apart)", ylabel="Dice", xticks=list(per_view.index),
             ylim=(max(0.0, per_view["min"].min() - 0.01), 1.0))
    axis.legend(loc="lower right")
    axis.grid(alpha=0.3, axis="y")
    views = html.img_tag(html.figure_to_data_uri(figure), "Dice by view")
    by_view = html.table_html(per_view.reset_index().rename(columns={"mean": "mean Dice", "min": "worst Dice"}),
                              formats={"mean Dice": ".5f", "worst Dice": ".5f"})
    per_make = frame.groupby("make")["dice"].agg(["mean", "min", "count"]).sort_values("mean").reset_index()
    by_make = html.table_html(per_make.rename(columns={"mean": "mean Dice", "min": "worst Dice", "count": "images"}),
                              formats={"mean Dice": ".5f", "worst Dice": ".5f"})
    legend = " · ".join(f'<span style="color:rgb{COLOURS[k]}">■</span> {label}' for k, label in
                        (("tp", "car, found"), ("fp", "background called car"), ("fn", "car missed")))
    tiles = "".join(html.img_tag(
        html.image_to_data_uri(error_overlay(photo_thumb(record), prediction, truth)),
        record.image_id, f"{record.image_id} · view {record.view:02d} · {record.make} · Dice {dice:.4f}")
        for dice, record, prediction, truth, _ in worst)
    crops = "".join(html.img_tag(html.image_to_data_uri(error_crop_of(record, window), "png"),
                                 record.image_id, f"{record.image_id} · Dice {dice:.4f}")
                    for dice, record, _, _, window in worst)
    errors = evaluation.outline
    outline = html.cards([
        ("Wrong pixels / image", f"{errors.wrong / max(1, errors.images):,.0f}"),
        ("False car / image", f"{errors.false_car.sum() / max(1, errors.images):,.0f}", "background called car"),
        ("Missed car / image", f"{errors.missed_car.sum() / max(1, errors.images):,.0f}", "car called background"),
    ]) + html.table_html(errors.table())
    ranked = frame.sort_values("dice").reset_index(drop=True)
    picks = [ranked.iloc[-1], ranked.iloc[len(ranked) // 2], ranked.iloc[0]]
    triptychs = ""
    for label, row in zip(("best", "median", "worst"), picks):
        record = records[row["image_id"]]
        photo = read_photo(record.image_path).pixels
        predicted = predictor.predict([photo])[0]
        truth = read_mask(record.mask_path)
        cells = [html.img_tag(html.image_to_data_uri(photo, max_width=THUMB_WIDTH), "input", "Input image"),
                 html.img_tag(html.image_to_data_uri(truth.astype(np.uint8) * 255, "png", THUMB_WIDTH), "true", "True mask"),
                 html.img_tag(html.image_to_data_uri(predicted.astype(np.uint8) * 255, "png", THUMB_WIDTH), "predicted", "Predicted mask")]
        triptychs += f"<h3>{label}: {html.esc(record.image_id)} · Dice {row['dice']:.4f}</h3>" \
                     f"<div class='grid'>{''.join(cells)}</div>"
    body = "".join([
        html.section("Scores", headline, "Dice = 2|A∩B|/(|A|+|B|) per image, averaged; masks are "
                     "predicted at the model's input size and upsampled as logits to each photo's full size."),
        html.section("By view angle", views + by_view, "Which views are hardest for this model."),
        html.section("By make", by_make, "Worst makes first (for an outdoor folder: by kind of "
                     "photo, web or camvid street frame)."),
        html.section("Where car is lost", _car_losses_html(evaluation),
                     f"Holes enclosed by the predicted mask (a shadow or a reflection on the body) "
                     f"and the lower body cut off: {LOSS_RULE}."),
        html.section("People taken for car", people_section_html(frame),
                     f"On the photos with a people mask: {RULE}. The frames whose people are most "
                     "taken for car first.") if evaluation.people else "",
        html.section("Along the outline", outline + f"<p>{legend}</p><div class='grid'>{crops}</div>",
                     "Wrong pixels by distance to the true outline (1 = the first pixel outside or "
                     "inside it), and each worst image's full-resolution crop where they crowd most."),
        html.section(f"The {len(worst)} worst images", f"<p>{legend}</p><div class='grid'>{tiles}</div>",
                     "Errors in colour over the photo: most are thin bands along the outline, "
                     "wheels, antennas and see-through windows."),
        html.section("Input / true mask / predicted mask", triptychs,
                     "The seeds' view of a prediction, for the best, the median and the worst image."),
    ])
    return html.write_html(out / "index.html", html.page(
        f"carmask evaluation: Dice {evaluation.dice:.5f}", body,
        subtitle=f"{len(frame)} images · {predictor.name}"))


def _car_losses_html(evaluation: Evaluation) -> str:
    """A table of the car lost in holes and at the lower body, overall and by make or kind."""
    from carmask.apps import report as html

    losses = evaluation.car_losses()
    rows = [("all", losses)] + sorted(losses["by_make"].items())
    columns = ["", "photos", "car pixels in holes", "photos with a hole", "lower body missed",
               "rest of the body missed"]
    return html.table_html([[name, f["photos"], f["car_pixels_in_holes"], f["photos_with_a_hole"],
                             f["lower_body_missed"], f["upper_body_missed"]] for name, f in rows],
                           columns, formats={column: ".3%" for column in columns[2:] if "photos" not in column})
