"""Joint image + mask augmentation with torchvision.transforms.v2.

The photo is a `tv_tensors.Image` and the mask a `tv_tensors.Mask`, so geometric transforms move
both identically (the mask with nearest-neighbour sampling) and colour transforms touch only the
photo.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

STUDIO_GREY = 215  # fill for pixels shifted in from outside: close to the backdrop, not black


@dataclass(frozen=True)
class AugmentConfig:
    hflip: bool = True
    vflip: bool = False  # the seed flipped up/down; cars are never upside down, so off by default
    color_jitter: float = 0.2  # brightness/contrast/saturation strength; 0 turns it off
    scale: tuple[float, float] = (0.9, 1.1)
    shift: float = 0.05  # fraction of width/height


def train_transforms(config: AugmentConfig = AugmentConfig()) -> v2.Transform:
    """Random flips, scale/shift and colour jitter, applied jointly to (Image, Mask)."""
    steps: list[v2.Transform] = []
    if config.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if config.vflip:
        steps.append(v2.RandomVerticalFlip())
    if config.scale != (1.0, 1.0) or config.shift:
        steps.append(v2.RandomAffine(
            degrees=0, translate=(config.shift, config.shift), scale=config.scale,
            fill={tv_tensors.Image: STUDIO_GREY, tv_tensors.Mask: 0},
        ))
    if config.color_jitter:
        strength = config.color_jitter
        steps.append(v2.ColorJitter(brightness=strength, contrast=strength,
                                    saturation=strength, hue=min(0.05, strength / 4)))
    return v2.Compose(steps) if steps else v2.Identity()


def normalize(image: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (C, H, W) → float32 normalised with the model's mean and std (0-1 scale)."""
    return v2.functional.normalize(image.float().div_(255.0), list(mean), list(std))
