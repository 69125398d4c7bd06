"""People taken for car (issue 24): on photos that come with a people mask (cars_in_the_wild's
street frames: people/NAME.png, 255 = a person on foot or on a bicycle), how much of the people
the model masks as car.

Two figures, over the frames that hold people:
- the share of all person pixels the model calls car (pooled over the frames);
- the frames where at least one person is taken for car: a person is a connected piece of the
  people mask (8-connected) of at least MIN_PERSON_PIXELS pixels, and is taken when more than
  TAKEN_SHARE of its pixels are called car. Smaller pieces are slivers of a hidden person, where
  a pixel or two along a car's outline would count as a whole person; their pixels still count
  in the first figure.
"""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd

MIN_PERSON_PIXELS = 25  # at the photo's own size (480x360 for the street frames)
TAKEN_SHARE = 0.10
RULE = (f"a person is a connected piece of the people mask of at least {MIN_PERSON_PIXELS} "
        f"pixels; it is taken for car when over {TAKEN_SHARE:.0%} of its pixels are called car")
COLUMNS = ("person_pixels", "person_called_car", "people", "people_taken")


def people_figures(prediction: np.ndarray, people: np.ndarray) -> dict[str, int]:
    """One photo's figures (the COLUMNS) from the predicted car mask and the people mask, both
    bool at the photo's size."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(people.astype(np.uint8), connectivity=8)
    called_car = np.bincount(labels[prediction], minlength=count)  # per piece; 0 is background
    sizes = stats[1:, cv2.CC_STAT_AREA]
    persons = sizes >= MIN_PERSON_PIXELS
    taken = persons & (called_car[1:] > TAKEN_SHARE * sizes)
    return {"person_pixels": int(sizes.sum()), "person_called_car": int(called_car[1:].sum()),
            "people": int(persons.sum()), "people_taken": int(taken.sum())}


def as_counts(per_image: pd.DataFrame) -> pd.DataFrame:
    """The people columns as whole numbers, blank for photos without a people mask (pandas
    would make them floats)."""
    return per_image.astype({column: "Int64" for column in COLUMNS if column in per_image})


def with_people(per_image: pd.DataFrame) -> pd.DataFrame:
    """The scored photos that hold people (none when no photo came with a people mask)."""
    if "person_pixels" not in per_image:
        return per_image.iloc[:0]
    return per_image[per_image["person_pixels"].fillna(0) > 0]


def people_summary(per_image: pd.DataFrame) -> dict | None:
    """The two figures (and what they count) over the photos with people; None when none has."""
    frames = with_people(per_image)
    if frames.empty:
        return None
    pixels, called = int(frames["person_pixels"].sum()), int(frames["person_called_car"].sum())
    return {"frames_with_people": len(frames), "person_pixels": pixels,
            "person_pixels_called_car": round(called / pixels, 6),
            "frames_with_a_person_taken": int((frames["people_taken"] > 0).sum()),
            "people": int(frames["people"].sum()), "people_taken": int(frames["people_taken"].sum()),
            "rule": RULE}


def people_section_html(per_image: pd.DataFrame, worst: int = 12) -> str:
    """The report's cards and the frames whose people are most taken for car."""
    from carmask.apps import report as html

    summary = people_summary(per_image)
    if summary is None:
        return ""
    frames_with_people = summary["frames_with_people"]
    frames = with_people(per_image).assign(
        share=lambda f: f["person_called_car"] / f["person_pixels"]).sort_values("share", ascending=False)
    cards = html.cards([
        ("Person pixels called car", f"{summary['person_pixels_called_car']:.2%}",
         f"of {summary['person_pixels']:,} over {frames_with_people} frames with people"),
        ("Frames with a person taken", f"{summary['frames_with_a_person_taken']} / {frames_with_people}",
         f"{summary['people_taken']} of {summary['people']} people"),
    ])
    columns = ["image_id", "make", "dice", "person_pixels", "share", "people", "people_taken"]
    table = frames.head(worst)[columns]
    return cards + html.table_html(
        table.rename(columns={"make": "kind", "share": "share called car"}),
        formats={"dice": ".4f", "share called car": ".1%"})
