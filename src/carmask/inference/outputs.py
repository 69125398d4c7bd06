"""What a model's raw output means, in numpy: probabilities, masks and resizing.

- "logit":    1 channel of logits; P(car) = sigmoid(x).
- "softmax3": 3 channels of raw scores (the seed's model_tl1); P(car) = softmax(x)[1].
- "sigmoid3": 3 channels already through a sigmoid (the seed's model_tl2); the seed took the
              argmax, so P(car) = x[1] / sum(x) keeps argmax == 1 and P > 1/2 close together.
Upsampling is always done on these raw outputs, never on thresholded masks. The resizing matches
torch's `F.interpolate(mode="bilinear", align_corners=False)` (with `antialias=True` when
shrinking), so the torch backend and this one make the same masks (tests/test_inference.py).
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def car_probability(output: np.ndarray, kind: str) -> np.ndarray:
    """(N, C, H, W) raw output → (N, 1, H, W) float32 probability of car."""
    output = output.astype(np.float32, copy=False)
    if kind == "logit":
        return 1.0 / (1.0 + np.exp(-output))
    if kind == "softmax3":
        shifted = np.exp(output - output.max(axis=1, keepdims=True))
        return shifted[:, 1:2] / shifted.sum(axis=1, keepdims=True)
    if kind == "sigmoid3":
        return output[:, 1:2] / np.maximum(output.sum(axis=1, keepdims=True), 1e-6)
    raise ValueError(f"unknown output kind {kind!r}")


def car_mask(output: np.ndarray, kind: str, threshold: float = 0.5) -> np.ndarray:
    """(N, C, H, W) raw output → (N, H, W) bool mask."""
    if kind == "logit":
        # sigmoid(x) > t  ⇔  x > logit(t): no need to compute the sigmoid per pixel
        return output[:, 0] > np.float32(math.log(threshold / (1 - threshold)))
    return output.argmax(axis=1) == 1  # the seed's rule for its 3-channel models


def upsample(output: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resizing of raw outputs (N, C, h, w) to `size` (H, W), half-pixel centres as
    torch's align_corners=False. OpenCV computes it in float32 as torch does."""
    if tuple(output.shape[-2:]) == tuple(size):
        return output
    n, c, h, w = output.shape
    planes = np.ascontiguousarray(output.reshape(n * c, h, w).transpose(1, 2, 0), np.float32)
    resized = cv2.resize(planes, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return resized.reshape(size[0], size[1], n * c).transpose(2, 0, 1).reshape(n, c, *size)


def _triangle_weights(source: int, target: int) -> np.ndarray:
    """(target, source) weights of an antialiased linear resize along one axis: the triangle
    filter widened by the shrink factor, each row normalised (as torch's antialias=True and
    Pillow's BILINEAR compute them)."""
    scale = source / target
    support = max(scale, 1.0)
    weights = np.zeros((target, source), np.float64)
    for i in range(target):
        centre = scale * (i + 0.5)
        low = max(int(centre - support + 0.5), 0)
        high = min(int(centre + support + 0.5), source)
        taps = np.arange(low, high)
        row = np.maximum(0.0, 1.0 - np.abs((taps - centre + 0.5) / support))
        total = row.sum()
        weights[i, low:high] = row / total if total else row
    return weights.astype(np.float32)


def resize_antialiased(output: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, C, h, w) → (N, C, H, W), linear with an antialiasing filter when shrinking: a larger
    look's output brought back to the first look's size."""
    if tuple(output.shape[-2:]) == tuple(size):
        return output
    rows = _triangle_weights(output.shape[-2], size[0])
    columns = _triangle_weights(output.shape[-1], size[1])
    return np.einsum("hi,ncij,wj->nchw", rows, output.astype(np.float32), columns,
                     optimize=True).astype(np.float32)


def drop_specks(mask: np.ndarray, min_share: float) -> np.ndarray:
    """A bool mask without its regions smaller than `min_share` of the picture: specks of false
    car, which cost a photo without a car its whole Dice and no user wants in a cut-out. A share
    of 0 (or under one pixel) keeps the mask as it is."""
    min_area = min_share * mask.size
    if min_area < 1 or not mask.any():
        return mask
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False  # the background
    return mask if keep[1:].all() else keep[labels]


def fit_photo(image: np.ndarray, size: tuple[int, int] | None, channels: int = 3) -> np.ndarray:
    """Resize an RGB photo to `size` (h, w) with area averaging, greyscale when `channels` is 1.

    Training and prediction both go through here, so a model sees photos prepared one way."""
    if size and image.shape[:2] != tuple(size):
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    if channels == 1:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None]
    return image


# A photo narrower than the model's input by more than this factor (a portrait photo) is padded
# at its sides to the input's shape rather than stretched across it. On held-out Carvana photos
# cut to 3:4, stretching cost the studio model 0.009 Dice and the general one 0.002 (9:16: 0.046
# and 0.007); at 1:1 (1.5x and 1.36x) the two ways were level, and a photo wider than the input
# loses more by padding than by being squeezed, so it is stretched (docs/models.md).
PAD_NARROWER_THAN = 1.6


def photo_columns(photo_size: tuple[int, int], size: tuple[int, int]) -> slice:
    """The columns of a model input of `size` (h, w) that show a photo of `photo_size` (H, W):
    all of them, or for a photo narrower by more than PAD_NARROWER_THAN a centred band of the
    photo's own shape, padded evenly on both sides (so a flipped input keeps it in place)."""
    (height, width), (rows, columns) = photo_size, size
    if columns * height <= PAD_NARROWER_THAN * rows * width:
        return slice(0, columns)
    band = max(1, round(rows * width / height))
    band += (columns - band) % 2
    return slice((columns - band) // 2, (columns + band) // 2)


def fit_to_input(image: np.ndarray, size: tuple[int, int], channels: int = 3,
                 photo_size: tuple[int, int] | None = None) -> np.ndarray:
    """A photo as a model input of `size` (h, w): `fit_photo`, or for a portrait photo the photo
    resized into its `photo_columns` and the sides filled with its median colour. `photo_size`
    is the photo's full (H, W) where `image` was decoded reduced."""
    band = photo_columns(photo_size or image.shape[:2], size)
    if band == slice(0, size[1]):
        return fit_photo(image, size, channels)
    inner = fit_photo(image, (size[0], band.stop - band.start), channels)
    canvas = np.empty((size[0], size[1], inner.shape[2]), np.uint8)
    canvas[:] = np.median(inner.reshape(-1, inner.shape[2]), axis=0).astype(np.uint8)
    canvas[:, band] = inner
    return canvas
