"""RLE encode/decode of real 1918x1280 masks against the seed notebook's double loop.

Targets: encode <= 1.5 ms median and >= 500x the seed encoder; decode <= 1 ms.
"""

from __future__ import annotations

import sys

import numpy as np

from common import median_ms, report, require_data

from carmask.kaggle import rle
from carmask.data.io import read_mask


def seed_rle_encode(img):
    """Seed 000's encoder, kept verbatim in behaviour as the baseline (one Python op per pixel)."""
    img_array = np.array(img)
    pixels = []
    for i in range(img_array.shape[0]):
        for j in range(img_array.shape[1]):
            if int(img_array[i][j]) != 0:
                pix = ((i * 1918) + j + 1)
                pixels.append(pix)
    pixel_breaks = [0]
    for i in range(len(pixels) - 1):
        if pixels[i] != (pixels[i + 1]) - 1:
            pixel_breaks.append(i + 1)
    pixel_breaks.append(len(pixels))
    rle_mask = ''
    for i in range(len(pixel_breaks) - 1):
        rle_mask += (str(pixels[pixel_breaks[i]]) + ' ')
        rle_mask += (str(pixel_breaks[i + 1] - pixel_breaks[i]) + ' ')
    return rle_mask[:-1]


def seed_rle_decode(rle_img):
    """Seed 000's decoder (note its off-by-one: it never subtracts the 1-based start)."""
    rle_img = [int(s) for s in rle_img.split(' ')]
    img = np.zeros((1280, 1918), dtype=int)
    for k in range(0, len(rle_img), 2):
        pixel, run = rle_img[k], rle_img[k + 1]
        row, col = pixel // 1918, pixel % 1918
        for i in range(run):
            img[row][col + i] = 1
    return img


def main(masks: int = 200, seed_masks: int = 3) -> dict:
    """Median times over `masks` real masks (each 3 times); the seed runs on `seed_masks`."""
    data = require_data()
    paths = sorted((data / "train_masks").glob("*_mask.gif"))[:: max(1, 1600 // masks)][:masks]
    arrays = [read_mask(p) for p in paths]
    encodings = [rle.encode(m) for m in arrays]
    assert seed_rle_encode(arrays[0]) == encodings[0], "seed and carmask encoders disagree"
    encode = median_ms(rle.encode, arrays, repeat=3)
    decode = median_ms(lambda e: rle.decode(e), encodings, repeat=3)
    seed_encode = median_ms(seed_rle_encode, arrays[:seed_masks])
    seed_decode = median_ms(seed_rle_decode, encodings[:seed_masks])
    return report(
        "rle", masks=len(arrays), encode_ms=round(encode, 3), decode_ms=round(decode, 3),
        seed_encode_ms=round(seed_encode, 1), seed_decode_ms=round(seed_decode, 1),
        encode_speedup=round(seed_encode / encode), decode_speedup=round(seed_decode / decode),
        target_met=encode <= 1.5 and seed_encode / encode >= 500 and decode <= 1.0,
    )


if __name__ == "__main__":
    sys.exit(0 if main()["target_met"] else 1)
