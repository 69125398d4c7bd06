"""Model registry: every architecture by name, the way timm and segmentation_models_pytorch do it.

Each architecture is one small builder registered with `@register(...)`; `create_model(name,
**cfg)` builds it. The registry entry also records what the rest of carmask needs to know about
the model: its input size and channels, normalisation, and what its output means.
"""

from __future__ import annotations

import inspect

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from carmask.training.data.dataset import IMAGENET_MEAN, IMAGENET_STD

# What a model's raw output means; see carmask.training.models.outputs.
OUTPUT_KINDS = ("logit", "softmax3", "sigmoid3")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable[..., nn.Module]
    default_size: tuple[int, int]  # (height, width) it trains and predicts at by default
    fixed_size: bool  # True: only default_size works (the seed models' 224x224 / 512x512)
    encoder: str
    pretrained: str  # where ImageNet weights come from, or "none"
    origin: str
    output: str = "logit"
    channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    notes: str = field(default="", compare=False)
    # "segmenter": photo → mask; "refiner": photo tile + coarse logit → logit (carmask.training.refiner),
    # trained by `carmask train-refiner`, not `carmask train`.
    role: str = "segmenter"

    @property
    def takes_pretrained(self) -> bool:
        """Whether the builder loads packaged ImageNet weights (and so accepts `pretrained`)."""
        return "pretrained" in inspect.signature(self.builder).parameters


MODELS: dict[str, ModelInfo] = {}


def register(name: str, **info) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding a builder to MODELS under `name`."""
    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        entry = ModelInfo(name=name, builder=builder, **info)
        if entry.output not in OUTPUT_KINDS:
            raise ValueError(f"{name}: output must be one of {OUTPUT_KINDS}")
        MODELS[name] = entry
        return builder
    return add


class UnknownModelError(KeyError):
    def __str__(self) -> str:
        return f"unknown model {self.args[0]!r}; choose one of: {', '.join(sorted(MODELS))}"


def model_info(name: str) -> ModelInfo:
    _load_builders()
    if name not in MODELS:
        raise UnknownModelError(name)
    return MODELS[name]


def create_model(name: str, **cfg) -> nn.Module:
    """Build a registered model. `cfg` goes to its builder (e.g. pretrained=False)."""
    return model_info(name).builder(**cfg)


def create_bare_model(name: str) -> nn.Module:
    """Build without pretrained weights and without the builders' "from scratch" warnings:
    for loading a trained file over it, counting parameters or timing."""
    import logging

    info = model_info(name)
    kwargs = {"pretrained": False} if info.takes_pretrained else {}
    logger = logging.getLogger("carmask.training.models")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return info.builder(**kwargs)
    finally:
        logger.setLevel(level)


def list_models() -> list[ModelInfo]:
    _load_builders()
    return list(MODELS.values())


def _load_builders() -> None:
    # Imported on first use: the builders pull in smp/timm, which are slow to import.
    from carmask.training.models import production, seeds  # noqa: F401
