"""Joint image + mask augmentation with torchvision.transforms.v2.

The photo is a `tv_tensors.Image` and the mask a `tv_tensors.Mask`, so geometric transforms move
both identically (the mask with nearest-neighbour sampling) and colour transforms touch only the
photo.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
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


CAMERA_CHANGES = ("white_balance", "jpeg", "blur", "noise")


@dataclass(frozen=True)
class CameraConfig:
    """How far a photo's look is moved from its camera's, each change drawn on its own (issue 24:
    on the held-out street frames, all from one camera, the shipped model lost 0.07-0.12 Dice to a
    JPEG re-save at quality 40, a blur of 1 px or a warm white balance)."""
    white_balance: float = 0.25  # red and blue gains drawn from 1 ± this; green stays
    jpeg: tuple[int, int] = (20, 85)  # quality of a re-save
    blur: tuple[float, float] = (0.3, 1.5)  # Gaussian sigma, px
    noise: float = 0.03  # sensor noise sigma, at most, on the 0-1 scale
    each: float = 0.5  # chance of each change
    changes: tuple[str, ...] = CAMERA_CHANGES  # which of them are drawn at all

    def __post_init__(self) -> None:
        unknown = set(self.changes) - set(CAMERA_CHANGES)
        if unknown or not self.changes:
            raise ValueError(f"camera changes must be some of {', '.join(CAMERA_CHANGES)}, "
                             f"not {', '.join(sorted(unknown)) or 'none'}")


def camera_transforms(config: CameraConfig = CameraConfig()) -> v2.Transform:
    """Another camera's look for a uint8 Image (a Mask passes through): white balance, a JPEG
    re-save, blur and noise (those in `config.changes`), each with probability `config.each`,
    in that order."""
    def each(*steps: v2.Transform) -> v2.Transform:
        return v2.RandomApply(list(steps), p=config.each)

    steps = {
        "white_balance": each(v2.Lambda(lambda image: _white_balance(image, config.white_balance),
                                        tv_tensors.Image)),
        "jpeg": each(v2.Lambda(lambda image: _jpeg(image, config.jpeg), tv_tensors.Image)),
        "blur": each(v2.GaussianBlur(kernel_size=2 * round(3 * config.blur[1]) + 1, sigma=config.blur)),
        "noise": each(v2.ToDtype(torch.float32, scale=True),
                      v2.Lambda(lambda image: v2.functional.gaussian_noise(
                          image, sigma=float(torch.empty(()).uniform_(0, config.noise))), tv_tensors.Image),
                      v2.ToDtype(torch.uint8, scale=True)),
    }
    return v2.Compose([steps[name] for name in CAMERA_CHANGES if name in config.changes])


def _jpeg(image: torch.Tensor, quality: tuple[int, int]) -> torch.Tensor:
    # with OpenCV: torchvision's own JPEG codec (v2.JPEG) is deprecated since 0.29
    level = int(torch.randint(quality[0], quality[1] + 1, ()))
    bgr = np.ascontiguousarray(image.flip(0).permute(1, 2, 0).numpy())  # OpenCV's channel order
    _, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, level])
    decoded = torch.from_numpy(cv2.imdecode(encoded, cv2.IMREAD_COLOR))
    return tv_tensors.wrap(decoded.permute(2, 0, 1).flip(0).contiguous(), like=image)


def _white_balance(image: torch.Tensor, strength: float) -> torch.Tensor:
    gains = 1 + (torch.rand(3) * 2 - 1) * strength
    gains[1] = 1.0
    return tv_tensors.wrap((image.float() * gains[:, None, None]).clamp_(0, 255).to(torch.uint8), like=image)


def normalize(image: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (C, H, W) → float32 normalised with the model's mean and std (0-1 scale)."""
    return v2.functional.normalize(image.float().div_(255.0), list(mean), list(std))
