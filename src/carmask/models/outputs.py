"""What a model's raw output means, in one place: probabilities, masks and upsampling.

- "logit":    1 channel of logits; P(car) = sigmoid(x).
- "softmax3": 3 channels of raw scores (the seed's model_tl1); P(car) = softmax(x)[1].
- "sigmoid3": 3 channels already through a sigmoid (the seed's model_tl2); the seed took the
              argmax, so P(car) = x[1] / sum(x) keeps argmax == 1 and P > 1/2 close together.
Upsampling is always done on these raw outputs, never on thresholded masks.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F


def car_probability(output: torch.Tensor, kind: str) -> torch.Tensor:
    """(N, C, H, W) raw output → (N, 1, H, W) probability of car."""
    if kind == "logit":
        return torch.sigmoid(output)
    if kind == "softmax3":
        return torch.softmax(output, dim=1)[:, 1:2]
    if kind == "sigmoid3":
        return output[:, 1:2] / output.sum(dim=1, keepdim=True).clamp_min(1e-6)
    raise ValueError(f"unknown output kind {kind!r}")


def car_mask(output: torch.Tensor, kind: str, threshold: float = 0.5) -> torch.Tensor:
    """(N, C, H, W) raw output → (N, H, W) bool mask."""
    if kind == "logit":
        # sigmoid(x) > t  ⇔  x > logit(t): no need to compute the sigmoid per pixel
        return output[:, 0] > torch.logit(torch.tensor(threshold)).item()
    return output.argmax(dim=1) == 1  # the seed's rule for its 3-channel models


def upsample(output: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of raw outputs to `size` (H, W)."""
    if tuple(output.shape[-2:]) == tuple(size):
        return output
    return F.interpolate(output, size=size, mode="bilinear", align_corners=False)


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
