"""A deterministic synthetic studio data set in the exact Kaggle Carvana layout.

It is both the embedded demo data and the fast fixture for training tests, so the pictures are
learnable but not trivial: a light studio backdrop with a wall logo and a turntable ring, a soft
floor shadow that is not car, and a quarter of the cars painted nearly the backdrop colour.

Each car is a small 3-D model (rounded body, greenhouse, wheels) turned on a turntable in 16 views
22.5 degrees apart and projected orthographically from a slightly raised camera. Parts are painted
into a label map back to front; the mask is every labelled pixel, so it is exactly the car.
"""

from __future__ import annotations

import csv
import logging
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from carmask.kaggle import rle
from carmask.data.io import save_mask
from carmask.util.progress import Track, silent_track

log = logging.getLogger(__name__)

VIEWS = 16
MIN_SIZE = (64, 48)  # (width, height)
# Beyond these a set takes hours and gigabytes, or one photo more memory than a machine has:
# 4096 a side is twice Kaggle's 1918x1280; 1000 cars are 16,000 photos (Carvana has 318 cars).
MAX_SIDE = 4096
MAX_CARS = 1000
_SUB = 4  # cv2 sub-pixel bits: polygon edges land between pixels, so small sizes stay smooth
_ONE = 1 << _SUB

# (make, model, trim2 choices, body style): the style ties the metadata to the pictures.
MODELS = [
    ("Acura", "RLX", ("w/Tech", ""), "sedan"), ("Audi", "A4", ("Premium", "Premium Plus"), "sedan"),
    ("BMW", "3 Series", ("328i", "335i"), "sedan"), ("Chevrolet", "Tahoe", ("LT", "LTZ"), "suv"),
    ("Ford", "Escape", ("SE", "Titanium"), "suv"), ("Ford", "Mustang", ("GT", ""), "coupe"),
    ("Honda", "Civic", ("LX", "EX"), "sedan"), ("Honda", "Fit", ("LX", "EX"), "hatch"),
    ("Toyota", "Camry", ("LE", "SE"), "sedan"), ("Toyota", "RAV4", ("XLE", "LE"), "suv"),
    ("Kia", "Soul", ("+", ""), "hatch"), ("Jeep", "Grand Cherokee", ("Laredo", "Limited"), "suv"),
    ("Mazda", "MAZDA3", ("i Touring", "s Touring"), "hatch"), ("Lexus", "RX 350", ("", "F Sport"), "suv"),
    ("Nissan", "Altima", ("2.5 S", "2.5 SV"), "sedan"), ("Dodge", "Challenger", ("R/T", "SXT"), "coupe"),
    ("Volkswagen", "Golf", ("TSI S", ""), "hatch"),
]
# Fractions of the car's length: belt line, roof, ground clearance, wheel radius, cabin front and
# rear ends (x grows forwards), roof set-back at the windscreen and at the back window.
STYLES = {
    "sedan": dict(belt=0.19, roof=0.29, clear=0.040, wheel=0.068, cab=(0.17, -0.30), rake=(0.14, 0.10)),
    "coupe": dict(belt=0.18, roof=0.26, clear=0.035, wheel=0.070, cab=(0.12, -0.30), rake=(0.15, 0.13)),
    "hatch": dict(belt=0.21, roof=0.32, clear=0.042, wheel=0.066, cab=(0.17, -0.46), rake=(0.16, 0.05)),
    "suv": dict(belt=0.24, roof=0.36, clear=0.060, wheel=0.080, cab=(0.18, -0.46), rake=(0.12, 0.03)),
}
# Light paints are the hard case the Kaggle write-ups name: white and silver cars on a white studio.
LIGHT = [(236, 237, 234), (203, 205, 208), (215, 214, 210), (226, 224, 217)]
OTHER = [(20, 21, 25), (68, 70, 75), (150, 22, 26), (28, 48, 112), (38, 72, 48), (92, 62, 42),
         (118, 123, 130), (170, 150, 112), (196, 112, 28), (52, 92, 150)]
LIGHT_SHARE = 0.25
# Car part labels (0 is background); BODY..TOP take the paint colour, the rest a fixed one.
BODY, END, TOP, GLASS, TYRE, RIM, HUB, ARCH, HEAD, TAIL, GRILLE = range(1, 12)
PAINTED = (BODY, END, TOP)
FIXED = {GLASS: (34, 38, 46), TYRE: (26, 26, 28), ARCH: (16, 16, 18), HEAD: (232, 234, 236),
         TAIL: (165, 22, 28), GRILLE: (30, 31, 34)}


@dataclass(frozen=True)
class SynthSummary:
    root: Path
    train_cars: list[str]
    test_cars: list[str]
    images: int  # train + test images written
    size: tuple[int, int]  # (width, height)


@dataclass(frozen=True)
class _Car:
    id: str
    meta: tuple[str, str, str, str]  # year, make, model, trim2
    colour: tuple[int, int, int]
    rim: tuple[int, int, int]
    length: float  # side-view length as a fraction of the picture width (of a 3:2 picture)
    width: float  # half-width; this and `shape` are fractions of the car's length
    shape: dict  # the style's proportions, jittered
    elev: float  # camera elevation, radians
    offset: tuple[float, float]  # ground-centre jitter, fractions of the picture
    horizon: float  # wall/floor line, fraction of the height
    wall: float  # backdrop brightness


def synthesize(out: str | Path, cars: int = 8, size: tuple[int, int] = (480, 320), seed: int = 0,
               test_cars: int = 2, sign: bool = True, track: Track = silent_track) -> SynthSummary:
    """Write `cars` training and `test_cars` test cars, 16 views each, in the Kaggle layout under `out`.

    Same arguments give byte-identical files. Test masks go to `test_masks/` (not part of Kaggle's
    layout) so that a demo can score its predictions. A folder written by an earlier call is
    replaced whole; any other non-empty folder is refused, so real data is never overwritten.
    `sign=False` leaves the studio wall bare (no lettering).
    """
    def whole(x: object) -> bool:
        return isinstance(x, Integral) and not isinstance(x, bool)

    if not whole(cars) or cars < 1:
        raise ValueError(f"cars must be an integer >= 1, got {cars!r}")
    if not whole(test_cars) or test_cars < 0:
        raise ValueError(f"test_cars must be an integer >= 0, got {test_cars!r}")
    if len(size) != 2 or not all(whole(v) for v in size):
        raise ValueError(f"size must be (width, height) in whole pixels, got {size!r}")
    size = (int(size[0]), int(size[1]))
    if size[0] < MIN_SIZE[0] or size[1] < MIN_SIZE[1]:
        raise ValueError(f"size {size[0]}x{size[1]} is below the minimum {MIN_SIZE[0]}x{MIN_SIZE[1]}")
    if max(size) > MAX_SIDE:
        raise ValueError(f"size {size[0]}x{size[1]} is above the maximum of {MAX_SIDE} a side")
    if cars + test_cars > MAX_CARS:
        raise ValueError(f"cars + test_cars is {cars + test_cars}, above the maximum of {MAX_CARS} "
                         f"({MAX_CARS * VIEWS} photos)")
    root = Path(out)
    _claim_folder(root)
    for sub in ("train", "train_masks", "test", "test_masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    fleet = _make_cars(np.random.default_rng(seed), cars + test_cars)
    rows: list[tuple[str, str]] = []
    jobs = [(i, car, "train" if i < cars else "test") for i, car in enumerate(fleet)]
    for index, car, split in track(jobs, total=len(jobs), description="synthesizing cars"):
        stage = _place(car, size), _studio(car, size, sign)  # shared by the car's 16 views
        for view in range(1, VIEWS + 1):
            # A generator per image: its noise does not depend on what was drawn before it.
            image, mask = _render(car, view, size, stage, np.random.default_rng([seed, index, view]))
            name = f"{car.id}_{view:02d}"
            Image.fromarray(image).save(root / split / f"{name}.jpg", quality=90)
            save_mask(mask, root / f"{split}_masks" / f"{name}_mask.gif")  # Kaggle's {0,1} GIF
            if split == "train":
                rows.append((f"{name}.jpg", rle.encode(mask)))
    _write_csvs(root, fleet, sorted(rows), fleet[cars:])
    log.info("wrote %d train and %d test cars at %dx%d to %s", cars, test_cars, *size, root)
    return SynthSummary(root, sorted(c.id for c in fleet[:cars]), sorted(c.id for c in fleet[cars:]),
                        len(fleet) * VIEWS, size)


MARKER = ".carmask-synth"  # marks a folder as ours to replace


def _claim_folder(root: Path) -> None:
    """Empty a folder an earlier synthesize() wrote; refuse any other non-empty folder."""
    if root.exists() and any(root.iterdir()):
        if not (root / MARKER).is_file():
            raise ValueError(f"{root} is not empty and was not written by carmask data synth; "
                             "choose a new folder")
        for sub in ("train", "train_masks", "test", "test_masks"):
            shutil.rmtree(root / sub, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("written by carmask data synth; safe to replace\n")


def _make_cars(rng: np.random.Generator, n: int) -> list[_Car]:
    ids: list[str] = []
    while len(ids) < n:
        car_id = "".join(f"{d:x}" for d in rng.integers(0, 16, 12))
        if car_id not in ids:
            ids.append(car_id)
    # A fixed share of light cars rather than a coin toss, so even a small set holds the hard case.
    light = set(rng.permutation(n)[: max(1 if n >= 3 else 0, int(LIGHT_SHARE * n + 0.5))].tolist())
    fleet = []
    for i, car_id in enumerate(ids):
        make, model, trims, style = MODELS[rng.integers(len(MODELS))]
        paints = LIGHT if i in light else OTHER
        shape = {k: v * float(rng.uniform(0.94, 1.06)) if k in ("belt", "roof", "wheel") else v
                 for k, v in STYLES[style].items()}
        paint = np.clip(np.array(paints[rng.integers(len(paints))]) + rng.integers(-6, 7, 3), 0, 255)
        meta = (str(rng.integers(2010, 2018)), make, model, trims[rng.integers(len(trims))])
        fleet.append(_Car(
            id=car_id, meta=meta, colour=tuple(int(c) for c in paint),
            rim=(172, 174, 178) if rng.random() < 0.8 else (48, 48, 52),
            length=float(rng.uniform(0.74, 0.86)) * (1.06 if style == "suv" else 1.0),
            width=float(rng.uniform(0.19, 0.22)), shape=shape,
            elev=math.radians(float(rng.uniform(11, 17))),
            offset=(float(rng.uniform(-0.02, 0.02)), float(rng.uniform(-0.02, 0.02))),
            horizon=float(rng.uniform(0.40, 0.48)), wall=float(rng.uniform(228.0, 242.0))))
    return fleet


def _rounded(a: float, b: float, k: int = 36, n: float = 5.0) -> np.ndarray:
    """A superellipse (rounded rectangle) of half-sizes a, b: the footprint of a car body."""
    t = np.linspace(0.0, 2 * np.pi, k, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    return np.stack([a * np.sign(c) * np.abs(c) ** (2 / n), b * np.sign(s) * np.abs(s) ** (2 / n)], 1)


def _ring(centre: tuple[float, float, float], r: float, k: int = 24) -> np.ndarray:
    """A circle of radius r in the car's x-z plane (a wheel face)."""
    t = np.linspace(0.0, 2 * np.pi, k, endpoint=False)
    return np.stack([centre[0] + r * np.cos(t), np.full(k, centre[1]), centre[2] + r * np.sin(t)], 1)


def _at(xy: np.ndarray, z: float) -> np.ndarray:
    return np.column_stack([xy, np.full(len(xy), z)])


def _quad(c: tuple | np.ndarray, e1: tuple | np.ndarray, e2: tuple | np.ndarray) -> np.ndarray:
    c, e1, e2 = np.asarray(c), np.asarray(e1), np.asarray(e2)
    return np.stack([c - e1 - e2, c + e1 - e2, c + e1 + e2, c - e1 + e2])


def _fx(pts: np.ndarray | list) -> np.ndarray:
    """Pixel coordinates as cv2's fixed-point vertices."""
    return np.round(np.asarray(pts) * _ONE).astype(np.int32)


class _View:
    """Projects car-frame points (x forward, y left, z up; units of length) onto the picture."""

    def __init__(self, theta: float, elev: float, scale: float, u0: float, v0: float) -> None:
        self.f = (-math.sin(theta), math.cos(theta))  # forward; view 01 faces the camera
        self.l = (-self.f[1], self.f[0])
        self.ce, self.se, self.s, self.u0, self.v0 = math.cos(elev), math.sin(elev), scale, u0, v0

    def uv(self, p: np.ndarray) -> np.ndarray:
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        depth = x * self.f[1] + y * self.l[1]  # towards the camera, so lower in the picture
        u = x * self.f[0] + y * self.l[0]
        return np.stack([self.u0 + self.s * u, self.v0 + self.s * (depth * self.se - z * self.ce)], 1)

    def facing(self, nx: float, ny: float) -> float:
        """How squarely a horizontal car-frame normal faces the camera (> 0: visible)."""
        return (nx * self.f[1] + ny * self.l[1]) * self.ce

    def fill(self, labels: np.ndarray, p: np.ndarray, label: int, hull: bool = True) -> None:
        """Fill the projection of 3-D points: their convex hull, or the polygon they trace."""
        pts = cv2.convexHull(_fx(self.uv(p))) if hull else _fx(self.uv(p))
        cv2.fillPoly(labels, [pts.reshape(-1, 1, 2)], label, cv2.LINE_8, _SUB)


def _paint(labels: np.ndarray, draw: Callable, label: int, over: tuple[int, ...]) -> None:
    """Draw a detail only where it lands on the given parts: details never grow the car."""
    layer = np.zeros_like(labels)
    draw(layer)
    labels[(layer > 0) & np.isin(labels, over)] = label


def _parts(car: _Car) -> dict[str, np.ndarray]:
    """The car's 3-D point sets in units of its length: convex hulls of them are its parts."""
    h, b = car.shape, car.width
    foot = _rounded(0.5, b)
    # The hood slopes down to the nose; the hull of three levels gives the body rounded edges.
    top = h["belt"] - 0.3 * (h["belt"] - h["clear"]) * np.clip((foot[:, 0] - 0.1) / 0.4, 0, 1) ** 2
    belt = np.column_stack([foot * [0.98, 0.93], top])
    waist = h["clear"] + 0.4 * (h["belt"] - h["clear"])
    body = np.concatenate([_at(foot * [0.95, 0.90], h["clear"]), _at(foot, waist), belt])
    (front, rear), (rf, rr) = h["cab"], h["rake"]
    cab = _at(_rounded((front - rear) / 2, b * 0.9, 28, 6.0) + [(front + rear) / 2, 0], h["belt"] * 0.98)
    roof = _rounded((front - rear - rf - rr) / 2, b * 0.74, 28, 6.0) + [(front - rf + rear + rr) / 2, 0]
    roof = _at(roof, h["roof"])
    return {"body": body, "belt": belt, "roof": roof, "cabin": np.concatenate([cab, roof])}


def _place(car: _Car, size: tuple[int, int]) -> tuple[float, float, float]:
    """Scale and ground centre that keep every view of the car inside the picture."""
    w, h = size
    body = _parts(car)["body"]
    pts = np.concatenate([body, _at(body[:, :2], car.shape["roof"])])
    views = [_View(math.radians(22.5 * k), car.elev, 1, 0, 0) for k in range(VIEWS)]
    box = np.concatenate([view.uv(pts) for view in views])
    lo, hi = box.min(0), box.max(0)
    scale = min(min(w, 1.5 * h) * car.length, 0.94 * w / (hi[0] - lo[0]), 0.90 * h / (hi[1] - lo[1]))
    v0 = np.clip(h * (0.70 + car.offset[1]), 0.05 * h - lo[1] * scale, 0.95 * h - hi[1] * scale)
    return scale, w / 2 + car.offset[0] * w, float(v0)


def _render(car: _Car, view: int, size: tuple[int, int], stage: tuple, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
    w, h = size
    (scale, u0, v0), studio = stage
    jitter = rng.normal(0, 0.004, 2) * min(w, 1.5 * h)  # the turntable never stops exactly centred
    v = _View(math.radians(22.5 * (view - 1)), car.elev, scale, u0 + jitter[0], v0 + jitter[1])
    parts, sh, b = _parts(car), car.shape, car.width
    labels = np.zeros((h, w), np.uint8)
    r, tw, wb = sh["wheel"], 0.045, 0.6  # wheel radius, tyre width, wheelbase
    wheels = [(sx * wb / 2, sy * (b - tw / 2 - 0.005)) for sx in (1, -1) for sy in (1, -1)]
    near = [wh for wh in wheels if v.facing(0, np.sign(wh[1])) > 0.05]
    for wx, wy in wheels:  # far wheels first: the body hides all but their lower part
        if (wx, wy) not in near:
            v.fill(labels, np.concatenate([_ring((wx, wy + d, r), r) for d in (-tw / 2, tw / 2)]), TYRE)
    v.fill(labels, parts["body"], BODY)
    for wx, wy in near:
        _near_wheel(labels, v, (wx, wy + np.sign(wy) * tw / 2, r), tw)
    end = 1 if v.facing(1, 0) > 0 else -1  # the end of the car turned towards the camera
    body = parts["body"]
    v.fill(labels, body[body[:, 0] * end > wb / 2 + r * 1.05], BODY)  # its overhang hides wheels
    if abs(v.facing(1, 0)) > 0.05:
        v.fill(labels, body[body[:, 0] * end > 0.47], END)
    v.fill(labels, parts["belt"], TOP, hull=False)
    if abs(v.facing(1, 0)) > 0.15:  # lamps and grille or plate, on the visible end
        zl, zg = (sh["clear"] + f * (sh["belt"] - sh["clear"]) for f in (0.62, 0.35))
        details = [(sy * b * 0.68, 0.14 * b, zl, 0.014, HEAD if end > 0 else TAIL) for sy in (1, -1)]
        details.append((0.0, b * (0.4 if end > 0 else 0.16), zg, 0.02, GRILLE if end > 0 else HEAD))
        for y, dy, z, dz, label in details:
            x = end * 0.5 * (1 - min(1.0, abs(y / b)) ** 5) ** 0.2  # on the rounded nose
            quad = _quad((x, y, z), (0, dy, 0), (0, 0, dz))
            _paint(labels, lambda im: v.fill(im, quad, 1), label, PAINTED)
    v.fill(labels, parts["cabin"], GLASS)
    v.fill(labels, parts["roof"], TOP, hull=False)
    (front, rear), (rf, rr), mid = sh["cab"], sh["rake"], sum(sh["cab"]) / 2 + 0.03
    thick = max(1, round(0.014 * scale))
    for sy in [sy for sy in (1, -1) if v.facing(0, sy) > -0.3]:  # A, B, C pillars split the windows
        for x0, x1 in ((front - 0.02, front - rf + 0.01), (mid, mid - 0.01), (rear + 0.03, rear + rr)):
            seg = _fx(v.uv(np.array([[x0, sy * b * 0.88, sh["belt"]], [x1, sy * b * 0.73, sh["roof"]]])))
            _paint(labels, lambda im: cv2.polylines(im, [seg], False, 1, thick, cv2.LINE_8, _SUB),
                   TOP, (GLASS,))
    mask = labels > 0
    return _compose(car, labels, mask, v, _shadowed(car, studio, v), rng), mask.astype(np.uint8)


def _near_wheel(labels: np.ndarray, v: _View, face: tuple[float, float, float], tw: float) -> None:
    """A wheel on the visible side: dark arch, tyre, five-spoke rim. `face` is its outer centre."""
    x, y, r = face
    _paint(labels, lambda im: v.fill(im, _ring(face, r * 1.14), 1), ARCH, (BODY,))
    v.fill(labels, np.concatenate([_ring((x, y - d, r), r) for d in (0, np.sign(y) * tw)]), TYRE)
    v.fill(labels, _ring(face, 0.64 * r), RIM)
    v.fill(labels, _ring(face, 0.50 * r), TYRE)
    for t in 2 * np.pi * np.arange(5) / 5 + 0.3:  # spokes: thin quads from the hub out
        d = np.array([math.cos(t), 0, math.sin(t)]) * r
        v.fill(labels, _quad(np.array(face) + 0.3 * d, 0.3 * d, np.array([-d[2], 0, d[0]]) * 0.07), RIM)
    v.fill(labels, _ring(face, 0.18 * r), HUB)


def _studio(car: _Car, size: tuple[int, int], sign: bool = True) -> np.ndarray:
    """The empty studio in grey levels: a wall (with a logo when `sign`), a soft cove, a floor."""
    w, h = size
    rows = np.arange(h, dtype=np.float32)[:, None] / h
    blend = np.clip((rows - car.horizon) / 0.04 + 0.5, 0, 1)  # a soft cove, no hard horizon
    wall, floor = car.wall - 18 * rows, car.wall - 38 - 25 * (rows - car.horizon)
    tone = (wall * (1 - blend) + floor * blend) * np.ones((1, w), np.float32)
    if not sign:
        return cv2.GaussianBlur(tone, (0, 0), max(0.6, h / 400))
    # Dark lettering on the wall behind the car: a distractor, like the real studio's sign.
    font = cv2.FONT_HERSHEY_DUPLEX
    fs = 0.8 * w / cv2.getTextSize("CARMASK", font, 1.0, 2)[0][0]
    logo = np.zeros((h, w), np.uint8)
    cv2.putText(logo, "CARMASK", (int(0.1 * w), int(car.horizon * h * 0.62)), font, fs, 255,
                max(1, round(fs * 2.2)), cv2.LINE_AA)
    tone -= (tone - 105) * logo.astype(np.float32) * (0.85 / 255)
    return cv2.GaussianBlur(tone, (0, 0), max(0.6, h / 400))


def _shadowed(car: _Car, studio: np.ndarray, v: _View) -> np.ndarray:
    """The studio in colour with the turntable ring and the car's soft floor shadow (not car)."""
    h, w = studio.shape
    k = 240 / w  # shadows are smooth: draw them small and blur there, then scale up
    shade = np.zeros((max(8, round(240 * h / w)), 240), np.float32)
    floor = _fx(v.uv(_at(_rounded(0.58, car.width * 1.25), 0)) * k)
    cv2.fillPoly(shade, [floor], 0.5, cv2.LINE_AA, _SUB)
    contacts = v.uv(np.array([[sx * 0.3, sy * car.width, 0] for sx in (1, -1) for sy in (1, -1)]))
    for x, y in _fx(contacts * k).tolist():  # darker where the tyres touch the floor
        cv2.circle(shade, (x, y), round(0.045 * v.s * k * _ONE), 0.8, -1, cv2.LINE_AA, _SUB)
    centre, axes = _fx(np.array([[v.u0, v.v0 + 0.02 * v.s], [0.78 * w, 1.25 * w * v.se]]) * k).tolist()
    cv2.ellipse(shade, centre, axes, 0, 0, 360, 0.12, 1, cv2.LINE_AA, _SUB)  # the turntable's edge
    shade = cv2.resize(cv2.GaussianBlur(shade, (0, 0), 3.0), (w, h), interpolation=cv2.INTER_LINEAR)
    return (studio * (1 - shade))[:, :, None] * np.array([1.0, 1.0, 1.015], np.float32)  # cool light


def _compose(car: _Car, labels: np.ndarray, mask: np.ndarray, v: _View, bg: np.ndarray,
             rng: np.random.Generator) -> np.ndarray:
    h, w = labels.shape
    sigma = max(0.5, w / 900)  # silhouette softness
    # Work in the car's bounding box (plus room for the blurs): full-frame float work is slow.
    ys, xs = np.nonzero(mask)
    pad = int(4 * sigma + 0.01 * v.s) + 2
    y0, y1 = max(0, ys.min() - pad), min(h, ys.max() + pad)
    x0, x1 = max(0, xs.min() - pad), min(w, xs.max() + pad)
    lab, m = labels[y0:y1, x0:x1], mask[y0:y1, x0:x1]
    paint = np.array(car.colour, np.float32)
    lut = np.zeros((12, 3), np.float32)
    lut[BODY], lut[END], lut[TOP] = paint, paint * 0.8, np.minimum(paint * 1.12 + 14, 255)
    lut[RIM], lut[HUB] = car.rim, np.array(car.rim) * 0.55
    for label, colour in FIXED.items():
        lut[label] = colour
    img = np.take(lut, lab, axis=0)
    painted = (lab >= BODY) & (lab <= TOP)
    # Sky-lit tops, floor-lit sills: paint darkens downwards.
    t = (np.arange(y0, y1, dtype=np.float32) - ys.min()) / max(1, ys.max() - ys.min())
    img *= np.where(painted, np.clip(1.12 - 0.45 * t, 0.55, 1.12)[:, None], 1.0)[:, :, None]
    # Glass reflects the studio: a few soft diagonal bands.
    diag = (np.arange(x0, x1)[None, :] + 0.6 * np.arange(y0, y1)[:, None]).astype(np.float32) / v.s
    img += ((lab == GLASS) * 30 * np.clip(np.sin(diag * 9 + 1.3), 0, 1) ** 3)[:, :, None]
    # Specular streaks along the shoulders and across hood and roof, kept to the paint.
    streak = np.zeros(lab.shape, np.float32)
    sh, b, line = car.shape, car.width, max(1, round(0.008 * v.s))

    def stroke(p3: list, strength: float, width: int) -> None:
        pts = _fx(v.uv(np.array(p3)) - [x0, y0])
        cv2.polylines(streak, [pts], False, strength, width, cv2.LINE_AA, _SUB)

    for sy in (1, -1):
        if v.facing(0, sy) > 0.05:
            z = sh["belt"] - 0.18 * (sh["belt"] - sh["clear"])
            stroke([[x, sy * b * 0.99, z] for x in np.linspace(-0.42, 0.42, 12)], 1.0, line)
    stroke([[0.36, -b * 0.7, sh["belt"]], [0.44, b * 0.7, sh["belt"]]], 0.7, 2 * line)
    (front, rear), roof = sh["cab"], sh["roof"]
    stroke([[rear + 0.2, -b * 0.6, roof], [front - 0.1, b * 0.6, roof]], 0.5, 2 * line)
    streak = cv2.GaussianBlur(streak, (0, 0), max(0.8, 0.006 * v.s)) * painted
    img += (255 - img) * 0.75 * streak[:, :, None]
    # Premultiplied alpha: a slightly soft silhouette in the photo while the mask stays binary.
    alpha = cv2.GaussianBlur(m.astype(np.float32), (0, 0), sigma)[:, :, None]
    car_layer = cv2.GaussianBlur(img * m[:, :, None], (0, 0), sigma)
    bg[y0:y1, x0:x1] = bg[y0:y1, x0:x1] * (1 - alpha) + car_layer
    noise = rng.standard_normal((h, w, 1), dtype=np.float32)
    bg += noise * 2.2 + 0.5  # luma noise only: JPEG would drop chroma noise; +0.5 rounds below
    return np.clip(bg, 0, 255, out=bg).astype(np.uint8)


def _write_csvs(root: Path, fleet: list[_Car], rows: list[tuple[str, str]], test: list[_Car]) -> None:
    with open(root / "metadata.csv", "w", newline="") as f:  # every value quoted, like Kaggle's
        writer = csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n")
        writer.writerow(["id", "year", "make", "model", "trim1", "trim2"])
        for c in sorted(fleet, key=lambda c: c.id):
            year, make, model, trim2 = c.meta
            writer.writerow([c.id, year, make, model, model, trim2])
    with open(root / "train_masks.csv", "w", newline="") as f:
        f.write("img,rle_mask\n" + "".join(f"{img},{code}\n" for img, code in rows))
    names = sorted(f"{c.id}_{k:02d}.jpg" for c in test for k in range(1, VIEWS + 1))
    with open(root / "sample_submission.csv", "w", newline="") as f:
        f.write("img,rle_mask\n" + "".join(f"{n},1 1\n" for n in names))
