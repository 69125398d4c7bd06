"""Draw docs/images/shadow-augmentation.png: what `carmask train-general --shadow-share` does to a
training picture (carmask.training.data.shadows). Four Carvana photos: a black SUV under a
carport's edge, a red car with a sunlit highlight on its bonnet, a contact shadow over the lower
bodywork and the ground below it, and all three at once. The green line is the car's mask, the
same before and after: shaded and shining body is still car.

    .venv/bin/python docs/images/shadows_example.py [CARVANA_FOLDER]
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

from carmask.data.io import read_mask, read_photo
from carmask.training.data.dataset import fit_mask
from carmask.training.data.shadows import ShadowConfig, shadows_and_highlights

HERE = Path(__file__).parent
CARVANA = HERE.parents[2] / "shared" / "data" / "carvana"
SIZE = (240, 360)  # (h, w) of each panel
GAP, LABEL = 8, 22
ONLY_CAST = ShadowConfig(cast=1.0, highlight=0.0, contact=0.0, shapes=(1.0, 0.0, 0.0))
ONLY_HIGHLIGHT = ShadowConfig(cast=0.0, highlight=1.0, contact=0.0, highlights=(2, 2))
ONLY_CONTACT = ShadowConfig(cast=0.0, highlight=0.0, contact=1.0)
ALL = ShadowConfig(cast=1.0, highlight=1.0, contact=1.0)
# (photo, effect, seed, title): a 2015 Dodge Durango, a 2014 Audi S5, a 2013 Dodge Challenger
# and a 2015 Jaguar F-Type
EXAMPLES = (("6ae670e86620_03", ONLY_CAST, 5, "cast shadow: a carport's edge over a black SUV"),
            ("e05b96cc2b0d_03", ONLY_HIGHLIGHT, 2, "specular highlights on a red bonnet"),
            ("0d53224da2b7_03", ONLY_CONTACT, 4, "contact shadow: lower bodywork and ground"),
            ("0495dcf27283_03", ALL, 1, "all three (a highlight only in the sun)"))


def panel(carvana: Path, name: str, config: ShadowConfig, seed: int) -> np.ndarray:
    """The photo at SIZE with the effect laid over it and its mask's outline in green."""
    photo = read_photo(carvana / "train" / f"{name}.jpg", cover=SIZE).pixels
    photo = cv2.resize(photo, SIZE[::-1], interpolation=cv2.INTER_AREA)
    mask = fit_mask(read_mask(carvana / "train_masks" / f"{name}_mask.gif"), SIZE)
    shaded = shadows_and_highlights(photo, mask, np.random.default_rng(seed), config)
    outline, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return cv2.drawContours(shaded.copy(), outline, -1, (40, 230, 90), 1, cv2.LINE_AA)


def main(carvana: str | Path = CARVANA) -> Path:
    height, width = SIZE
    canvas = Image.new("RGB", (2 * width + GAP, 2 * (height + LABEL) + GAP), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (name, config, seed, title) in enumerate(EXAMPLES):
        left, top = (i % 2) * (width + GAP), (i // 2) * (height + LABEL + GAP)
        pixels = panel(Path(carvana), name, config, seed)
        canvas.paste(Image.fromarray(pixels), (left, top + LABEL))
        draw.text((left + 4, top + 5), title, fill=(20, 20, 20))
    out = HERE / "shadow-augmentation.png"
    canvas.save(out, optimize=True)
    return out


if __name__ == "__main__":
    print(main(*sys.argv[1:]))
