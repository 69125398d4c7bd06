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


def train_transforms(config: AugmentConfig = AugmentConfig(), soft_masks: bool = False) -> v2.Transform:
    """Random flips, scale/shift and colour jitter, applied jointly to (Image, Mask).

    With `soft_masks` (uint8 masks holding the share of car under each pixel) the photo and its
    mask are moved as one 4-channel image, both resampled bilinearly: a nearest-neighbour mask
    would move the outline up to half a pixel away from the photo's, the very detail a soft mask
    is there to teach."""
    geometric: list[v2.Transform] = []
    if config.hflip:
        geometric.append(v2.RandomHorizontalFlip())
    if config.vflip:
        geometric.append(v2.RandomVerticalFlip())
    if config.scale != (1.0, 1.0) or config.shift:
        fill = [STUDIO_GREY] * 3 + [0] if soft_masks else {tv_tensors.Image: STUDIO_GREY, tv_tensors.Mask: 0}
        geometric.append(v2.RandomAffine(
            degrees=0, translate=(config.shift, config.shift), scale=config.scale, fill=fill,
            interpolation=v2.InterpolationMode.BILINEAR if soft_masks else v2.InterpolationMode.NEAREST,
        ))
    colour: list[v2.Transform] = []
    if config.color_jitter:
        strength = config.color_jitter
        colour.append(v2.ColorJitter(brightness=strength, contrast=strength,
                                     saturation=strength, hue=min(0.05, strength / 4)))
    if soft_masks:
        return MovedAsOne(v2.Compose(geometric or [v2.Identity()]), v2.Compose(colour or [v2.Identity()]))
    steps = geometric + colour
    return v2.Compose(steps) if steps else v2.Identity()


class MovedAsOne:
    """(Image, Mask) → the geometric transform on both stacked as one image, then the colour
    transform on the photo alone."""

    def __init__(self, geometric: v2.Transform, colour: v2.Transform) -> None:
        self.geometric, self.colour = geometric, colour

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        channels = image.shape[0]
        plain = [image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).to(image.dtype)]
        stacked = self.geometric(tv_tensors.Image(torch.cat(plain))).as_subclass(torch.Tensor)
        photo = self.colour(tv_tensors.Image(stacked[:channels]))
        return photo, tv_tensors.Mask(stacked[channels:])


def normalize(image: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (C, H, W) → float32 normalised with the model's mean and std (0-1 scale)."""
    return v2.functional.normalize(image.float().div_(255.0), list(mean), list(std))
