"""Draw docs/images/outdoor-before-after.png: an outdoor photo the general model never trained on,
its cut-out by the studio model alone (before issue 12) and by `carmask cutout`'s automatic
choice (after), each with its Dice against the hand-traced mask.

    .venv/bin/python docs/images/outdoor_example.py [NAME]

The photo is from cars_in_the_wild (Roboflow Universe, visea/car-segmentation-vacre, CC BY 4.0).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from carmask.apps.cutout import TRANSPARENT, composite
from carmask.apps.evaluate import dice_and_iou
from carmask.data.io import read_mask, read_photo
from carmask.inference.predictor import Predictor
from carmask.inference.route import AutoPredictor

HERE = Path(__file__).parent
WILD = HERE.parents[2] / "shared" / "data" / "cars_in_the_wild"
GAP, LABEL = 8, 26


def checkerboard(height: int, width: int, square: int = 12) -> np.ndarray:
    rows, cols = np.indices((height, width)) // square
    return np.where(((rows + cols) % 2 == 0)[..., None], 235, 200).astype(np.uint8).repeat(3, axis=2)


def on_checkerboard(rgba: np.ndarray) -> np.ndarray:
    alpha = rgba[..., 3:].astype(np.float32) / 255
    board = checkerboard(*rgba.shape[:2]).astype(np.float32)
    return (rgba[..., :3] * alpha + board * (1 - alpha)).astype(np.uint8)


def main(name: str = "Carro_6") -> Path:
    photo = read_photo(WILD / "images" / f"{name}.jpg").pixels
    truth = read_mask(WILD / "masks" / f"{name}.png")
    panels = [(photo, "the photo (never seen in training)")]
    for predictor, title in ((Predictor("studio", backend="onnx"), "before: the studio model alone"),
                             (AutoPredictor(backend="onnx"), "after: carmask cutout, which chose the {} model")):
        prediction = predictor.predict_detailed([photo])[0]
        dice = dice_and_iou(prediction.mask, truth)[0]
        cut = np.asarray(composite(photo, prediction.mask, TRANSPARENT))
        panels.append((on_checkerboard(cut), f"{title.format(prediction.model)}: Dice {dice:.2f}"))
    height, width = photo.shape[:2]
    canvas = Image.new("RGB", (3 * width + 2 * GAP, height + LABEL), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (pixels, title) in enumerate(panels):
        left = i * (width + GAP)
        canvas.paste(Image.fromarray(pixels), (left, LABEL))
        draw.text((left + 4, 6), title, fill=(20, 20, 20))
    out = HERE / "outdoor-before-after.png"
    canvas.save(out, optimize=True)
    return out


if __name__ == "__main__":
    print(main(*sys.argv[1:]))
