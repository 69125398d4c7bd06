"""Hard shadows and bright highlights laid over cars, for training the general model (issue:
holes in car bodies under a carport's shadow or in a sunlit highlight, the lower front cut off).

The general model learnt car bodies from evenly lit studio photos and a few hundred outdoor ones,
so a sharp shadow edge across a black SUV, a blown-out reflection on a red bonnet, or bumpers
and sills in the deep shade near the ground read as "not car". Three effects, on an RGB uint8
picture and its car mask:

- a cast shadow (`cast_shadow_map`): a half-plane from a roof's, a wall's or a carport's straight
  edge, a band (a pole, a beam) or a ragged polygon (a tree, a building's corner), crossing part
  of a car and the ground beside it, sharp or with a narrow penumbra; it multiplies the light by
  0.25-0.6, a little bluer (shade is lit by the sky);
- a specular highlight (`highlight_map`): near-white streaks and blobs on the body, mostly its
  upper part (bonnet, roof, windows), with a saturated core and a soft glow, never off the car;
- a contact shadow (`contact_shadow_map`): the lower part of each car (bumpers, sills, wheels)
  darkening towards the ground, and the ground just below it.

The mask never changes: shadowed or highlighted body is still car, and a shadow on the ground is
still not car. Every function is pure and draws only from the `numpy.random.Generator` it is given.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class ShadowConfig:
    # chances of each effect in one picture (independent; when none is drawn, one is, by weight)
    cast: float = 0.6
    highlight: float = 0.35
    contact: float = 0.35
    # cast shadow: its shape's weights (half-plane from a straight edge, band, polygon)
    shapes: tuple[float, float, float] = (0.45, 0.2, 0.35)
    darkness: tuple[float, float] = (0.25, 0.6)  # what a shadow leaves of the light (x this)
    tint: tuple[float, float] = (0.0, 0.15)  # shade's blue: red x (1 - t), blue x (1 + t)
    soft: float = 0.5  # chance of a soft edge; the rest are sharp (one pixel of anti-aliasing)
    penumbra: tuple[float, float] = (0.005, 0.04)  # a soft edge's width, share of the car's height
    coverage: tuple[float, float] = (0.1, 0.9)  # share of the cars a cast shadow should cover
    # highlight: opacity of its core, how many on a car
    brightness: tuple[float, float] = (0.7, 1.0)
    highlights: tuple[int, int] = (1, 3)
    # contact shadow: the light left at the bottom of the car, how far up the car it reaches and
    # how far below it onto the ground (shares of the car's height)
    contact_darkness: tuple[float, float] = (0.15, 0.45)
    rise: tuple[float, float] = (0.12, 0.35)
    drop: tuple[float, float] = (0.03, 0.12)
    min_car_pixels: int = 64  # smaller pieces of the mask are slivers, not cars


Car = tuple[int, int, int, int, int, int]  # (label, left, top, width, height, area)


def find_cars(mask: np.ndarray, min_pixels: int) -> tuple[np.ndarray, list[Car]]:
    """The connected pieces of the mask of at least `min_pixels`: (label image, pieces)."""
    count, labels, boxes, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    cars = [(k, *(int(v) for v in boxes[k])) for k in range(1, count)
            if boxes[k, cv2.CC_STAT_AREA] >= min_pixels]
    return labels, cars


def _pick(cars: list[Car], rng: np.random.Generator) -> Car:
    """A car, the larger the likelier (a shadow or a highlight on a distant car is a few pixels)."""
    areas = np.array([car[5] for car in cars], np.float64)
    return cars[int(rng.choice(len(cars), p=areas / areas.sum()))]


def _pixel_of(labels: np.ndarray, car: Car, rng: np.random.Generator,
              upper: float = 1.0) -> tuple[float, float]:
    """A random (x, y) of `car`, in the top `upper` share of its box."""
    k, x, y, w, h, _ = car
    rows = max(1, int(np.ceil(h * upper)))
    ys, xs = np.nonzero(labels[y:y + rows, x:x + w] == k)
    if not len(ys):
        ys, xs = np.nonzero(labels[y:y + h, x:x + w] == k)
    i = int(rng.integers(len(ys)))
    return float(x + xs[i]), float(y + ys[i])


def _edge(distance: np.ndarray, width: float) -> np.ndarray:
    """Shadow (0..1) where the signed `distance` is positive: a ramp `width` pixels wide, or a
    sharp step with a pixel of anti-aliasing."""
    return np.clip(0.5 + distance / max(width, 1.0), 0, 1).astype(np.float32)


def cast_shadow_map(mask: np.ndarray, rng: np.random.Generator,
                    config: ShadowConfig = ShadowConfig()) -> np.ndarray:
    """Where a hard cast shadow falls (float32 0..1 at the mask's size): across part of a car and
    the ground around it, so that a shadow's edge, not the car's outline, crosses the body. With
    no car in the mask it falls anywhere (a shadow on the ground is not car either)."""
    height, width = mask.shape
    labels, cars = find_cars(mask, config.min_car_pixels)
    columns = np.arange(width, dtype=np.float32)[None, :]
    rows = np.arange(height, dtype=np.float32)[:, None]
    shadow = np.zeros((height, width), np.float32)
    for _ in range(4):  # a shadow over all or none of the car teaches nothing about its edge
        if cars:
            car = _pick(cars, rng)
            size = float(max(car[3], car[4]))
            ax, ay = _pixel_of(labels, car, rng)
            car_height = car[4]
        else:
            size, car_height = 0.4 * min(height, width), 0.3 * height
            ax, ay = float(rng.uniform(0, width)), float(rng.uniform(0, height))
        penumbra = rng.uniform(*config.penumbra) * car_height if rng.random() < config.soft else 0.0
        shape = rng.choice(3, p=np.asarray(config.shapes) / sum(config.shapes))
        if shape == 2:  # a ragged polygon: a tree's crown, a building's corner
            corners = int(rng.integers(5, 10))
            angles = np.sort(rng.uniform(0, 2 * np.pi, corners))
            radii = rng.uniform(0.25, 0.8, corners) * size
            centre = np.array([ax, ay]) + rng.uniform(-0.3, 0.3, 2) * size
            points = centre + radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
            canvas = np.zeros((height, width), np.uint8)
            cv2.fillPoly(canvas, [np.round(points).astype(np.int32)], 255, cv2.LINE_AA)
            shadow = canvas.astype(np.float32) / 255
            if penumbra:
                shadow = cv2.GaussianBlur(shadow, (0, 0), penumbra / 2)
        else:
            draw = rng.random()
            if shape == 0 and draw < 0.4:  # the upper car under a carport's or a roof's edge
                angle = np.deg2rad(270 + rng.uniform(-35, 35))
            elif shape == 0 and draw < 0.6:  # the lower body in the car's own shade
                angle = np.deg2rad(90 + rng.uniform(-20, 20))
            else:
                angle = rng.uniform(0, 2 * np.pi)
            distance = (columns - ax) * np.cos(angle) + (rows - ay) * np.sin(angle)
            if shape == 0:
                shadow = _edge(distance, penumbra)
            else:  # a band: a pole's, a beam's or a lamp post's shadow
                half = rng.uniform(0.05, 0.25) * size + 1
                shadow = _edge(half - np.abs(distance), penumbra)
        if not cars:
            return shadow
        covered = float(shadow[mask.astype(bool)].mean())
        if config.coverage[0] <= covered <= config.coverage[1]:
            break
    return shadow


def highlight_map(mask: np.ndarray, rng: np.random.Generator,
                  config: ShadowConfig = ShadowConfig()) -> np.ndarray:
    """Where a specular highlight shines (float32 0..1): 1-3 near-horizontal streaks or blobs on
    one car, mostly on its upper part, with a saturated core and a soft glow, cut to the car's
    mask (the sun's reflection is on the paint and the glass, not beside them). Zero without a car."""
    height, width = mask.shape
    labels, cars = find_cars(mask, config.min_car_pixels)
    glare = np.zeros((height, width), np.float32)
    if not cars:
        return glare
    car = _pick(cars, rng)
    _, car_left, car_top, car_width, car_height, _ = car
    pad = int(0.15 * car_width) + 2  # drawn and blurred around this car only: a glow reaches no further
    left, top = max(0, car_left - pad), max(0, car_top - pad)
    right, bottom = min(width, car_left + car_width + pad), min(height, car_top + car_height + pad)
    local = np.zeros((bottom - top, right - left), np.float32)
    for _ in range(int(rng.integers(config.highlights[0], config.highlights[1] + 1))):
        x, y = _pixel_of(labels, car, rng, upper=0.65 if rng.random() < 0.75 else 1.0)
        if rng.random() < 0.6:  # a streak: the sky along a bonnet's or a roof's curve, a window
            axes = (rng.uniform(0.12, 0.4) * car_width, rng.uniform(0.008, 0.03) * car_height)
            angle = rng.uniform(-25, 25)
        else:  # a blob: the sun itself
            radius = rng.uniform(0.03, 0.12) * car_width
            axes = (radius, radius * rng.uniform(0.4, 1.0))
            angle = rng.uniform(0, 180)
        blob = np.zeros_like(local)
        cv2.ellipse(blob, (round(x) - left, round(y) - top), (max(1, round(axes[0])), max(1, round(axes[1]))),
                    angle, 0, 360, 1.0, -1, cv2.LINE_AA)
        glow = cv2.GaussianBlur(blob, (0, 0), max(0.5, rng.uniform(0.4, 1.0) * min(axes)),
                                borderType=cv2.BORDER_CONSTANT)
        core = np.clip(glow * rng.uniform(1.3, 2.0), 0, 1)  # saturated in the middle
        local = np.maximum(local, core * rng.uniform(*config.brightness))
    glare[top:bottom, left:right] = local * mask[top:bottom, left:right]
    return glare


def contact_shadow_map(mask: np.ndarray, rng: np.random.Generator,
                       config: ShadowConfig = ShadowConfig()) -> np.ndarray:
    """The shade near the ground (float32 0..1): each car's lowest pixels (bumpers, sills, tyres)
    darkest, fading up its body over `rise` of its height, and the ground below it for `drop`;
    each column measured from the car's own lower edge there. Zero without a car."""
    height, width = mask.shape
    labels, cars = find_cars(mask, config.min_car_pixels)
    shade = np.zeros((height, width), np.float32)
    for k, x, y, w, h, _ in sorted(cars, key=lambda car: -car[5])[:4]:
        if h < 8:
            continue
        rise = max(2.0, rng.uniform(*config.rise) * h)
        drop = max(1.0, rng.uniform(*config.drop) * h)
        hardness = rng.uniform(1.0, 3.0)  # above 1, a flat dark band before the fade
        margin = max(1, round(0.04 * w))
        left, right = max(0, x - margin), min(width, x + w + margin)
        bottom_row = min(height, y + h + int(np.ceil(drop)) + 1)
        piece = labels[y:y + h, left:right] == k
        found = piece.any(axis=0)
        lowest = (h - 1 - np.argmax(piece[::-1], axis=0)).astype(np.float32)
        cols = np.arange(right - left, dtype=np.float32)
        lowest = np.interp(cols, cols[found], lowest[found]).astype(np.float32)
        window = max(3, w // 10) | 1  # the lower edge along the wheels and between them
        lowest = cv2.dilate(lowest[None], np.ones((1, window), np.uint8))[0]
        lowest = cv2.blur(lowest[None], (window, 1), borderType=cv2.BORDER_REPLICATE)[0] + y
        rows = np.arange(y, bottom_row, dtype=np.float32)[:, None]
        above = (lowest[None] - rows) / rise  # 0 at the lower edge, 1 at the top of the fade
        # above the lower edge, only the car and what it covers (the ground seen under its sills):
        # not the air beside its bumpers
        under = np.zeros((len(rows), right - left), np.float32)
        under[:h] = np.maximum.accumulate(piece, axis=0)
        under[h:] = 1
        under = cv2.GaussianBlur(under, (0, 0), 1.0)
        local = np.where(above >= 0, np.clip((1 - above) * hardness, 0, 1) * under,
                         np.clip(1 + above * rise / drop, 0, 1))
        outside = np.maximum(x - (cols + left), (cols + left) - (x + w - 1)).clip(min=0)
        local *= np.clip(1 - outside / margin, 0, 1)[None]
        region = (slice(y, bottom_row), slice(left, right))
        shade[region] = np.maximum(shade[region], local)
    return shade


def shade(picture: np.ndarray, shadow: np.ndarray, darkness: float, tint: float) -> np.ndarray:
    """`picture` (float32) with its light multiplied by `darkness` where `shadow` is 1, a little
    bluer by `tint`, and blended in between; untouched where `shadow` is 0."""
    light = np.clip(darkness * np.array([1 - tint, 1 - tint / 3, 1 + tint], np.float32), 0, 1)
    return picture * (1 - shadow[..., None] * (1 - light))


def shine(picture: np.ndarray, highlight: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """`picture` (float32) blended towards a near-white `colour` by `highlight`, never darker: a
    reflection adds light, even to a white car a little brighter than `colour`."""
    a = highlight[..., None]
    return np.maximum(picture, picture * (1 - a) + colour.astype(np.float32) * a)


def _done(picture: np.ndarray) -> np.ndarray:
    return np.clip(picture + 0.5, 0, 255).astype(np.uint8)


def cast_shadow(picture: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                config: ShadowConfig = ShadowConfig()) -> np.ndarray:
    """`picture` (RGB uint8) with a hard cast shadow over part of its car (`cast_shadow_map`)."""
    shadow = cast_shadow_map(mask, rng, config)
    return _done(shade(picture.astype(np.float32), shadow, rng.uniform(*config.darkness),
                       rng.uniform(*config.tint)))


def specular_highlight(picture: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                       config: ShadowConfig = ShadowConfig()) -> np.ndarray:
    """`picture` (RGB uint8) with a specular highlight on its car (`highlight_map`)."""
    highlight = highlight_map(mask, rng, config)
    return _done(shine(picture.astype(np.float32), highlight, _white(rng)))


def contact_shadow(picture: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                   config: ShadowConfig = ShadowConfig()) -> np.ndarray:
    """`picture` (RGB uint8) with its cars' lower parts and the ground below them in shade."""
    shadow = contact_shadow_map(mask, rng, config)
    return _done(shade(picture.astype(np.float32), shadow, rng.uniform(*config.contact_darkness),
                       rng.uniform(*config.tint)))


def _white(rng: np.random.Generator) -> np.ndarray:
    """A highlight's colour: near-white, a little warm or cool."""
    return np.clip(rng.uniform(235, 255) + rng.uniform(-8, 8, 3), 0, 255)


def shadows_and_highlights(picture: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                           config: ShadowConfig = ShadowConfig()) -> np.ndarray:
    """`picture` (RGB uint8) under outdoor light: a contact shadow, a cast shadow and a highlight,
    each with its chance in `config`, at least one. The car `mask` (bool or 0/1, the picture's
    size) is read, never changed: shaded or shining body is still car. A highlight is direct
    sunlight, so none shines inside the cast shadow."""
    chances = np.array([config.contact, config.cast, config.highlight], np.float64)
    drawn = rng.random(3) < chances
    if not drawn.any() and chances.sum() > 0:
        drawn[rng.choice(3, p=chances / chances.sum())] = True
    out = picture.astype(np.float32)
    if drawn[0]:
        out = shade(out, contact_shadow_map(mask, rng, config), rng.uniform(*config.contact_darkness),
                    rng.uniform(*config.tint))
    cast = np.zeros(mask.shape, np.float32)
    if drawn[1]:
        cast = cast_shadow_map(mask, rng, config)
        out = shade(out, cast, rng.uniform(*config.darkness), rng.uniform(*config.tint))
    if drawn[2]:
        out = shine(out, highlight_map(mask, rng, config) * (1 - cast), _white(rng))
    return _done(out)
