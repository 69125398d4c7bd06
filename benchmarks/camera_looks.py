"""Score a model on the held-out outdoor photos as another camera would have taken them: re-saved
as JPEG, blurred, another white balance, half size, sensor noise (issue 24: "outdoor photos
nobody here has seen"). Writes each photo's Dice under each change to OUT (CSV; pair two runs'
"changed" means photo by photo with --against) and prints the means by kind of photo.

    python benchmarks/camera_looks.py --model general --out runs/looks-shipped.csv
    python benchmarks/camera_looks.py --model runs/campaign/general-camera-r1 \\
        --out runs/looks-camera.csv --against runs/looks-shipped.csv
"""

from __future__ import annotations

import argparse
import io
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

from carmask.apps.evaluate import dice_and_iou
from carmask.data.io import read_mask
from carmask.data.wild import read_wild, split_wild
from carmask.inference.route import create_predictor


def _jpeg(quality: int) -> Callable[[Image.Image], Image.Image]:
    def change(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return change


def _gains(red: float, blue: float) -> Callable[[Image.Image], Image.Image]:
    return lambda image: Image.fromarray(
        np.clip(np.asarray(image) * np.array([red, 1.0, blue]), 0, 255).astype(np.uint8))


def _noise(sigma: float) -> Callable[[Image.Image], Image.Image]:
    def change(image: Image.Image) -> Image.Image:
        pixels = np.asarray(image).astype(np.float32)
        noisy = pixels + np.random.default_rng(0).normal(0, sigma, pixels.shape)
        return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    return change


LOOKS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "as is": lambda image: image,
    "JPEG quality 40": _jpeg(40),
    "blur sigma 1": lambda image: image.filter(ImageFilter.GaussianBlur(1)),
    "warm (red x1.15, blue x0.75)": _gains(1.15, 0.75),
    "cool (red x0.85, blue x1.2)": _gains(0.85, 1.2),
    "half size": lambda image: image.resize((image.width // 2, image.height // 2), Image.BILINEAR),
    "noise sigma 8": _noise(8.0),
}


def score(model: str, wild: Path) -> pd.DataFrame:
    _, held_out = split_wild(read_wild(wild))
    predictor = create_predictor(model)
    rows = []
    for photo in held_out:
        truth = read_mask(photo.mask_path).astype(bool)
        original = Image.open(photo.image_path).convert("RGB")
        for look, change in LOOKS.items():
            mask = predictor.predict([np.asarray(change(original))])[0].astype(bool)
            if mask.shape != truth.shape:  # half size: scored at the photo's own size
                mask = np.asarray(Image.fromarray(mask).resize(truth.shape[::-1], Image.NEAREST))
            rows.append({"image_id": photo.name, "kind": photo.kind, "look": look,
                         "dice": dice_and_iou(mask, truth)[0]})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="general", help="general, studio, auto, or a model file")
    parser.add_argument("--wild", type=Path, default=Path("../shared/data/cars_in_the_wild"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--against", type=Path,
                        help="another run's CSV: the paired difference of the changed looks")
    args = parser.parse_args()
    frame = score(None if args.model == "auto" else args.model, args.wild)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False)
    table = frame.pivot_table(index="look", columns="kind", values="dice", aggfunc="mean")
    print(table.reindex(list(LOOKS)).round(4).to_string())
    changed = frame[frame.look != "as is"].groupby(["image_id", "kind"]).dice.mean()
    print("mean of the changed looks:", round(float(changed.mean()), 4),
          {kind: round(float(values.mean()), 4) for kind, values in changed.groupby(level="kind")})
    if args.against:
        before = pd.read_csv(args.against)
        before = before[before.look != "as is"].groupby(["image_id", "kind"]).dice.mean()
        diff = (changed - before).dropna()
        error = diff.std(ddof=1) / math.sqrt(len(diff))
        print(f"changed looks against {args.against}: {diff.mean():+.4f} (standard error {error:.4f}), "
              f"better on {(diff > 0).sum()}, worse on {(diff < 0).sum()} of {len(diff)} photos")


if __name__ == "__main__":
    main()
