"""People cut from street frames and laid into training pictures beside and in front of cars
(issue 24): the general model kept people as car on street photos, where they stand by parked
cars and cross in front of them.

The people come from cars_in_the_wild's people masks (people/NAME.png: a person on foot or on a
bicycle) of the TRAINING street frames only: a held-out frame's people never reach training
(`PeopleBank` checks `is_held_out` itself, whatever photos it is given). The donor's people mask
is the alpha, and a person is never car: the returned car mask loses every pixel the person
covers, so a car stays car only where it is still visible.

Placement follows the car the person stands by: feet on the ground line of the car's bottom
(beside it) or a little nearer the camera (in front of it, and larger by as much), the person's
height about the car's box height (a person is 1.6-1.9 m tall, a car 1.4-1.8 m). A picture with
no car to stand by gets the person where it stood in its own frame (the street frames share one
dashboard camera), moved along the road as `paste_street_cars` moves cars.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from carmask.data.io import read_image, read_mask
from carmask.data.wild import WildPhoto, is_held_out
from carmask.training.data.paste import jitter_colour


@dataclass(frozen=True)
class PeoplePasteConfig:
    people: tuple[int, int] = (1, 2)  # how many people a picture gets
    # smaller pieces of a people mask (at the donor's 480x360) are far away or mostly hidden
    min_pixels: int = 120
    height: tuple[float, float] = (0.95, 1.3)  # beside a car: the person's height / the car's box height
    front: float = 0.5  # chance the person stands in front of the car rather than beside it
    # in front: the feet this share of the car's height nearer the camera (lower in the picture),
    # the person larger by as much
    nearer: tuple[float, float] = (0.05, 0.35)
    scale: tuple[float, float] = (0.8, 1.25)  # no car to stand by: scaled from its own frame
    horizon: float = 0.45  # the street frames' horizon, as a share of the height
    min_car_height: int = 12  # cars lower than this (px) are too far away to stand a person by
    # a person is drawn at most this many times its size in its frame: more, and the few pixels
    # of a distant person turn into blocks no camera makes
    max_upscale: float = 2.0
    flip: float = 0.5
    colour: float = 0.15  # brightness/contrast/saturation jitter, ± this share


@dataclass(frozen=True)
class Person:
    pixels: np.ndarray  # RGB crop of the person's box in its frame
    alpha: np.ndarray  # float32 crop, 1 = person
    feet: tuple[float, float]  # (row of the feet, column of the centre) as shares of its frame
    frame_height: int  # its frame's, in pixels
    source: str  # the street frame it was cut from


def people_pieces(people: np.ndarray, min_pixels: int) -> list[tuple[int, int, int]]:
    """(height, row, column) of a pixel of each person in a bool people mask: its connected
    pieces of at least `min_pixels`, leaving out those the frame's edge cuts off (a straight cut
    through a person pasted in the middle of a picture is no person)."""
    count, labels, boxes, _ = cv2.connectedComponentsWithStats(people.astype(np.uint8), connectivity=8)
    rows, cols = people.shape
    pieces = []
    for k in range(1, count):
        x, y, w, h, area = (int(v) for v in boxes[k])
        if area >= min_pixels and x > 0 and y > 0 and x + w < cols and y + h < rows:
            row, col = np.argwhere(labels[y:y + h, x:x + w] == k)[0]
            pieces.append((h, y + int(row), x + int(col)))
    return pieces


def cut_person(photo: np.ndarray, people: np.ndarray, seed: tuple[int, int], source: str) -> Person:
    """The person of `photo` whose piece of the people mask holds pixel `seed` (row, column)."""
    _, labels, boxes, _ = cv2.connectedComponentsWithStats(people.astype(np.uint8), connectivity=8)
    k = labels[seed]
    x, y, w, h = (int(v) for v in boxes[k, :4])
    rows, cols = people.shape
    alpha = (labels[y:y + h, x:x + w] == k).astype(np.float32)
    return Person(photo[y:y + h, x:x + w].copy(), alpha, ((y + h) / rows, (x + w / 2) / cols), rows, source)


class PeopleBank:
    """The people of the training street frames that have a people mask: found once (their
    masks are small), cut from their frame when drawn."""

    def __init__(self, photos: Sequence[WildPhoto], config: PeoplePasteConfig = PeoplePasteConfig()) -> None:
        # the split's own rule, not the caller's word: a held-out frame never gives a person
        self.donors = [p for p in photos if p.people_path is not None and not is_held_out(p)]
        self.people = [(height, index, (row, col)) for index, donor in enumerate(self.donors)
                       for height, row, col in people_pieces(read_mask(donor.people_path), config.min_pixels)]
        self.heights = np.array([height for height, _, _ in self.people])

    def __len__(self) -> int:
        return len(self.people)

    def draw(self, rng: np.random.Generator, min_height: int = 0) -> Person | None:
        """A random person at least `min_height` pixels tall in its frame; None when none is."""
        tall_enough = np.flatnonzero(self.heights >= min_height)
        if not len(tall_enough):
            return None
        _, index, seed = self.people[tall_enough[rng.integers(len(tall_enough))]]
        donor = self.donors[index]
        return cut_person(read_image(donor.image_path), read_mask(donor.people_path), seed, donor.name)


# a person at least this many pixels tall in its frame, or None when there is none
DrawPerson = Callable[[int], "Person | None"]


def paste_people(picture: np.ndarray, mask: np.ndarray, draw: DrawPerson, count: int,
                 rng: np.random.Generator, config: PeoplePasteConfig = PeoplePasteConfig()
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Lay `count` people from `draw` into `picture` (RGB uint8), each beside or in front of a
    car of its bool car `mask` (where it has one): returns the new picture and mask, which is no
    longer car wherever a person covers it. A person is left out when `draw` has none tall
    enough for the car drawn."""
    out, out_mask = picture.astype(np.float32), mask.copy()
    cars = car_boxes(mask, config.min_car_height)
    for _ in range(count):
        car = cars[rng.integers(len(cars))] if cars else None
        # by a close car only a tall person: a distant one would have to be blown up
        person = draw(int(np.ceil(car[3] * config.height[0] / config.max_upscale)) if car else 0)
        if person is None:
            continue
        pixels, alpha = person.pixels, person.alpha
        if rng.random() < config.flip:
            pixels, alpha = pixels[:, ::-1], alpha[:, ::-1]
        if car:
            height, (bottom, centre) = by_a_car(car, alpha.shape, rng, config)
        else:
            height, (bottom, centre) = as_in_its_frame(person, picture.shape[:2], rng, config)
        _lay(out, out_mask, jitter_colour(np.ascontiguousarray(pixels), config.colour, rng), alpha,
             min(height, config.max_upscale * alpha.shape[0]), bottom, centre)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), out_mask


def car_boxes(mask: np.ndarray, min_height: int) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h) of each car (connected piece of the mask) at least `min_height` tall."""
    count, _, boxes, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return [tuple(int(v) for v in boxes[k, :4]) for k in range(1, count) if boxes[k, 3] >= min_height]


def by_a_car(car: tuple[int, int, int, int], shape: tuple[int, int], rng: np.random.Generator,
             config: PeoplePasteConfig) -> tuple[float, tuple[float, float]]:
    """Where a person of crop `shape` (h, w) stands by `car` (x, y, w, h): (its height in
    pixels, (row of its feet, column of its centre))."""
    x, y, w, h = car
    in_front = rng.random() < config.front
    nearer = rng.uniform(*config.nearer) if in_front else rng.uniform(-0.03, 0.03)
    height = h * rng.uniform(*config.height) * (1 + nearer)  # nearer the camera: larger
    width = height * shape[1] / shape[0]
    if in_front:  # across the car's body: it hides part of the car
        centre = rng.uniform(x + 0.1 * w, x + 0.9 * w)
    elif rng.random() < 0.5:  # by its left or right end, overlapping it a little at most
        centre = x - width * rng.uniform(0.1, 0.6)
    else:
        centre = x + w + width * rng.uniform(0.1, 0.6)
    return height, (y + h + nearer * h, centre)


def as_in_its_frame(person: Person, size: tuple[int, int], rng: np.random.Generator,
                    config: PeoplePasteConfig) -> tuple[float, tuple[float, float]]:
    """Where a person stands in a picture of `size` (h, w) with no car: where it stood in its
    own frame, scaled by s and moved to s times its distance below the horizon (nearer, larger)."""
    height, width = size
    s = rng.uniform(*config.scale)
    horizon = config.horizon * height
    bottom = person.feet[0] * height
    if bottom > horizon:
        bottom = horizon + (bottom - horizon) * s
    return person.alpha.shape[0] * s * height / person.frame_height, (bottom, person.feet[1] * width)


def _lay(picture: np.ndarray, mask: np.ndarray, pixels: np.ndarray, alpha: np.ndarray, height: float,
         bottom: float, centre: float) -> None:
    """Composite a person `height` pixels tall, feet at row `bottom`, centred on column
    `centre`, into the float picture and take it out of the car mask (in place); the person is
    kept whole inside the picture."""
    rows, cols = mask.shape
    h = int(np.clip(round(height), 2, rows))
    w = int(np.clip(round(h * alpha.shape[1] / alpha.shape[0]), 1, cols))
    interpolation = cv2.INTER_AREA if h < alpha.shape[0] else cv2.INTER_LINEAR
    pixels = cv2.resize(pixels, (w, h), interpolation=interpolation).astype(np.float32)
    alpha = cv2.resize(np.ascontiguousarray(alpha), (w, h), interpolation=interpolation)
    bottom = int(np.clip(round(bottom), h, rows))
    left = int(np.clip(round(centre - w / 2), 0, cols - w))
    region = (slice(bottom - h, bottom), slice(left, left + w))
    a = alpha[..., None]
    picture[region] = picture[region] * (1 - a) + pixels * a
    mask[region] &= ~(alpha > 0.5)
