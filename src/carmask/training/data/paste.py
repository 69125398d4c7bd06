"""Cars from the studio pasted onto other backgrounds, for training a model that masks cars on any
photo (issue 12). Carvana's masks are exact, so a studio car cut out by its mask and laid on a
street keeps an exact mask: the paste varies scale, position, flip, colour and blur, and lays a
soft ground shadow under the car, while the returned mask stays aligned with the car's pixels.

The car is composited through its mask resized as a soft alpha; the returned mask is that alpha
above one half, the same rule a mask at the photo's own size follows.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class PasteConfig:
    width: tuple[float, float] = (0.35, 0.9)  # the car's width as a share of the background's
    # Street photos are full of distant cars a few dozen pixels wide, the ones a model misses:
    # this share of pasted cars is drawn that small instead (width log-uniform in `small_width`).
    small: float = 0.0
    small_width: tuple[float, float] = (0.02, 0.2)
    flip: float = 0.5  # chance of a mirrored car
    colour: float = 0.2  # brightness/contrast/saturation jitter of the car, ± this share
    blur: tuple[float, float] = (0.0, 1.0)  # Gaussian sigma of the whole picture, px
    shadow: tuple[float, float] = (0.25, 0.55)  # darkening under the car (0: no shadow)
    ground: tuple[float, float] = (0.55, 0.98)  # where the wheels stand, as a share of the height
    # A panning shot: a sharp car on a background streaked sideways. Streaks are not car (r1-r9
    # took a blurred road for car).
    motion: float = 0.0  # chance of a streaked background
    motion_length: tuple[float, float] = (0.02, 0.15)  # the streak, as a share of the width
    # A showroom's glossy floor or a wet street: the car mirrored below its wheels, faint and
    # fading. A reflection is not car.
    reflection: float = 0.0  # chance of a reflection
    reflection_strength: tuple[float, float] = (0.15, 0.5)  # its opacity next to the wheels


def car_cutout(photo: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The car's bounding box from a photo and its bool mask: (RGB crop, float32 alpha crop)."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if not len(rows):
        raise ValueError("the mask holds no car")
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    return photo[box], mask[box].astype(np.float32)


def motion_blur(picture: np.ndarray, length: int) -> np.ndarray:
    """`picture` smeared sideways over `length` pixels, as a camera panning with a car sees it."""
    if length < 2:
        return picture
    kernel = np.full((1, length), 1 / length, np.float32)
    return cv2.filter2D(picture, -1, kernel, borderType=cv2.BORDER_REFLECT)


def jitter_colour(car: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation each moved by up to ± `amount` (a share)."""
    if amount <= 0:
        return car
    image = car.astype(np.float32)
    image = image * rng.uniform(1 - amount, 1 + amount)  # brightness
    mean = image.mean()
    image = (image - mean) * rng.uniform(1 - amount, 1 + amount) + mean  # contrast
    grey = image.mean(axis=2, keepdims=True)
    image = (image - grey) * rng.uniform(1 - amount, 1 + amount) + grey  # saturation
    return np.clip(image, 0, 255).astype(np.uint8)


def _shadow(shape: tuple[int, int], left: int, bottom: int, width: int, height: int) -> np.ndarray:
    """A soft ellipse of darkness (0..1) under a car whose box is `width` x `height` with its
    lower-left corner at (left, bottom)."""
    darkness = np.zeros(shape, np.float32)
    centre = (int(left + width / 2), int(bottom - height * 0.04))
    axes = (max(1, int(width * 0.52)), max(1, int(height * 0.10)))
    cv2.ellipse(darkness, centre, axes, 0, 0, 360, 1.0, -1)
    sigma = max(1.0, height * 0.05)
    return cv2.GaussianBlur(darkness, (0, 0), sigma)


def _reflect(picture: np.ndarray, car: np.ndarray, alpha: np.ndarray, left: int, bottom: int,
             strength: float) -> None:
    """Lay the car's mirror image on a glossy floor below `bottom` (in place, float32 picture):
    `strength` opaque at the wheels, fading to nothing half a car's height down, a little blurred."""
    rows = min(alpha.shape[0], picture.shape[0] - bottom)
    if rows < 2:
        return
    mirrored = cv2.GaussianBlur(car[::-1][:rows].astype(np.float32), (0, 0), 1.0)
    fade = np.clip(1 - np.arange(rows, dtype=np.float32) / (0.5 * alpha.shape[0]), 0, 1)
    a = (alpha[::-1][:rows] * fade[:, None] * strength)[..., None]
    region = (slice(bottom, bottom + rows), slice(left, left + alpha.shape[1]))
    picture[region] = picture[region] * (1 - a) + mirrored * a


def paste_car(photo: np.ndarray, mask: np.ndarray, background: np.ndarray,
              rng: np.random.Generator, config: PasteConfig = PasteConfig(),
              background_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lay the car of (`photo`, bool `mask`) on `background` (RGB uint8, any size): returns the
    new photo (the background's size) and its bool car mask. A street photo with cars of its
    own comes with their `background_mask`: they stay in the returned mask wherever the pasted
    car does not hide them, so every car in the picture is labelled."""
    car, alpha = car_cutout(photo, mask)
    if config.motion and rng.random() < config.motion:
        if background_mask is not None and background_mask.any():
            # a smeared car is neither clearly car nor not: paint the street's own cars out first
            cars = cv2.dilate(background_mask.astype(np.uint8), np.ones((5, 5), np.uint8))
            background, background_mask = cv2.inpaint(background, cars, 5, cv2.INPAINT_TELEA), None
        background = motion_blur(background, round(rng.uniform(*config.motion_length) * background.shape[1]))
    if rng.random() < config.flip:
        car, alpha = car[:, ::-1], alpha[:, ::-1]
    height, width = background.shape[:2]
    if rng.random() < config.small:
        share = float(np.exp(rng.uniform(*np.log(config.small_width))))
    else:
        share = rng.uniform(*config.width)
    scale = share * width / car.shape[1]
    scale = min(scale, 0.95 * height / car.shape[0])  # the whole car fits
    size = (max(1, round(car.shape[1] * scale)), max(1, round(car.shape[0] * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    car = cv2.resize(np.ascontiguousarray(car), size, interpolation=interpolation)
    alpha = cv2.resize(np.ascontiguousarray(alpha), size, interpolation=interpolation)
    car = jitter_colour(car, config.colour, rng)
    car_h, car_w = alpha.shape
    bottom = int(np.clip(rng.uniform(*config.ground) * height, car_h, height))
    left = int(rng.integers(0, max(1, width - car_w + 1)))
    top = bottom - car_h

    picture = background.astype(np.float32)
    strength = rng.uniform(*config.shadow)
    if strength > 0:
        picture *= 1 - strength * _shadow((height, width), left, bottom, car_w, car_h)[..., None]
    if config.reflection and rng.random() < config.reflection:
        _reflect(picture, car, alpha, left, bottom, rng.uniform(*config.reflection_strength))
    region = (slice(top, bottom), slice(left, left + car_w))
    a = alpha[..., None]
    picture[region] = picture[region] * (1 - a) + car.astype(np.float32) * a
    sigma = rng.uniform(*config.blur)
    if sigma > 0.05:
        picture = cv2.GaussianBlur(picture, (0, 0), sigma)
    out_mask = np.zeros((height, width), bool) if background_mask is None else background_mask.copy()
    out_mask[region] |= alpha > 0.5
    return np.clip(picture + 0.5, 0, 255).astype(np.uint8), out_mask


# generic dealer and stock-site words (none taken from a held-out photo)
CAPTIONS = ("SALE", "FOR SALE", "$24,990", "Low miles!", "www.example-cars.com", "NEW",
            "(c) Stock Photo", "1 OWNER", "Test drive today!", "4x4", "SPORT", "0-60 in 3.2s")
FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
         cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX)


def overlay_caption(picture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A dealer's or a stock site's words over the photo: a caption in a solid colour, often with
    a dark or light outline, or a faint watermark; 4-20% of the height tall, tilted by up to 15
    degrees, anywhere. The mask does not change: letters are not car, and a car under them is
    still car (the held-out "California Legal?" photo had its caption masked as car)."""
    height, width = picture.shape[:2]
    text = CAPTIONS[rng.integers(len(CAPTIONS))]
    font = int(FONTS[rng.integers(len(FONTS))]) | (cv2.FONT_ITALIC if rng.random() < 0.3 else 0)
    scale = rng.uniform(0.04, 0.2) * height / cv2.getTextSize(text, font, 1.0, 1)[0][1]
    thickness = max(1, round(scale * rng.uniform(1, 3)))
    (text_w, text_h), _ = cv2.getTextSize(text, font, scale, thickness)
    origin = (int(rng.integers(-text_w // 4, max(1, width - text_w // 2))),
              int(rng.integers(text_h, height + 1)))
    fill = np.zeros((height, width), np.uint8)
    cv2.putText(fill, text, origin, font, scale, 255, thickness, cv2.LINE_AA)
    watermark, outline = rng.random() < 0.4, np.zeros_like(fill)
    if not watermark and rng.random() < 0.6:
        stroke = max(1, round(text_h * rng.uniform(0.04, 0.1)))
        outline = cv2.dilate(fill, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * stroke + 1,) * 2))
    centre = (origin[0] + text_w / 2, origin[1] - text_h / 2)
    tilt = cv2.getRotationMatrix2D(centre, rng.uniform(-15, 15), 1.0)
    fill, outline = (cv2.warpAffine(layer, tilt, (width, height)) for layer in (fill, outline))
    if watermark:  # faint and light
        colour, opacity = np.full(3, rng.uniform(180, 255)), rng.uniform(0.2, 0.5)
    else:
        colour, opacity = rng.integers(0, 256, 3).astype(np.float64), 1.0
    out = picture.astype(np.float32)
    edge = np.full(3, 0.0 if colour.mean() > 127 else 255.0)  # the outline contrasts with the fill
    for layer, paint in ((outline, edge), (fill, colour)):
        a = (layer.astype(np.float32) / 255 * opacity)[..., None]
        out = out * (1 - a) + paint.astype(np.float32) * a
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class StreetPasteConfig:
    """Cars cut from one street frame and laid into another ("copy-paste", Ghiasi et al. 2021):
    real street cars, dark, dirty, half hidden, in more places than 177 frames show them."""
    cars: tuple[int, int] = (1, 3)  # how many of the donor's cars are taken, at most
    scale: tuple[float, float] = (0.7, 1.4)
    horizon: float = 0.45  # a dashboard camera's horizon, as a share of the frame's height
    min_pixels: int = 24  # smaller pieces are slivers of a hidden car, not cars
    shift: float = 0.2  # sideways move, ± this share of the width: parked cars stay by the kerb
    flip: float = 0.5


def paste_street_cars(picture: np.ndarray, mask: np.ndarray, donor: np.ndarray, donor_mask: np.ndarray,
                      rng: np.random.Generator,
                      config: StreetPasteConfig = StreetPasteConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Lay some of the cars of street frame `donor` (RGB, bool `donor_mask`) into `picture` (bool
    car `mask`, any size): returns the new picture and its mask (the old cars stay car wherever
    they are not covered). Each car moves along the road as a camera sees it: scaled by s, its
    wheels move to s times their distance below the horizon, so a nearer car is larger. The
    donor's mask is the alpha, so the returned mask stays exact; a bollard that hid part of the
    donor's car leaves the same hole in the pasted one, as the label does."""
    count, labels, boxes, _ = cv2.connectedComponentsWithStats(donor_mask.astype(np.uint8), connectivity=8)
    donor_width = donor.shape[1]
    # a car cut off by the frame's edge would bring a straight cut into the middle of a picture
    cars = [k for k in range(1, count) if boxes[k, cv2.CC_STAT_AREA] >= config.min_pixels
            and boxes[k, cv2.CC_STAT_LEFT] > 0 and boxes[k, cv2.CC_STAT_LEFT] + boxes[k, cv2.CC_STAT_WIDTH] < donor_width]
    if not cars:
        return picture, mask
    height, width = picture.shape[:2]
    scale_to_picture = height / donor.shape[0], width / donor_width
    horizon = config.horizon * height
    out, out_mask = picture.astype(np.float32), mask.copy()
    chosen = rng.permutation(cars)[:rng.integers(config.cars[0], config.cars[1] + 1)]
    for k in chosen:
        x, y, w, h = boxes[k, :4]
        car = donor[y:y + h, x:x + w]
        alpha = (labels[y:y + h, x:x + w] == k).astype(np.float32)
        if rng.random() < config.flip:
            car, alpha = car[:, ::-1], alpha[:, ::-1]
        s = rng.uniform(*config.scale)
        size = (max(1, min(width, round(w * s * scale_to_picture[1]))),
                max(1, min(height, round(h * s * scale_to_picture[0]))))
        interpolation = cv2.INTER_AREA if size[0] < w else cv2.INTER_LINEAR
        car = cv2.resize(np.ascontiguousarray(car), size, interpolation=interpolation).astype(np.float32)
        alpha = cv2.resize(np.ascontiguousarray(alpha), size, interpolation=interpolation)
        bottom = (y + h) * scale_to_picture[0]
        if bottom > horizon:
            bottom = horizon + (bottom - horizon) * s
        bottom = int(np.clip(round(bottom), size[1], height))
        centre = (x + w / 2) * scale_to_picture[1] + rng.uniform(-config.shift, config.shift) * width
        left = int(np.clip(round(centre - size[0] / 2), 0, width - size[0]))
        region = (slice(bottom - size[1], bottom), slice(left, left + size[0]))
        a = alpha[..., None]
        out[region] = out[region] * (1 - a) + car * a
        out_mask[region] |= alpha > 0.5
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), out_mask
