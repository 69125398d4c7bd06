"""What a model's raw output means, in one place: probabilities, masks and upsampling.

- "logit":    1 channel of logits; P(car) = sigmoid(x).
- "softmax3": 3 channels of raw scores (the seed's model_tl1); P(car) = softmax(x)[1].
- "sigmoid3": 3 channels already through a sigmoid (the seed's model_tl2); the seed took the
              argmax, so P(car) = x[1] / sum(x) keeps argmax == 1 and P > 1/2 close together.
Upsampling is always done on these raw outputs, never on thresholded masks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from carmask.inference.outputs import drop_specks  # noqa: F401  (numpy: masks live on the host)


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
