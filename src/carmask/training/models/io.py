"""One `.safetensors` file per trained model, its config in the metadata: loadable offline."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from torch import nn

from carmask.inference import model_check, model_files
from carmask.inference.model_files import METADATA_KEY, ModelFileError, read_config  # noqa: F401
from carmask.training.models import create_bare_model, model_info
from carmask.util.atomic import atomic_path

log = logging.getLogger(__name__)
REFINER_PREFIX = "refiner."  # the outline refiner's weights in a combined model file
# the training files of the shipped models (the studio model, Carvana's turntable; the general
# model, cars on any background)
SHIPPED_MODEL = model_files.SHIPPED["studio"].with_suffix(".safetensors")
GENERAL_MODEL = model_files.SHIPPED["general"].with_suffix(".safetensors")


def model_config(name: str, size: tuple[int, int], threshold: float = 0.5, **extra) -> dict:
    """The config stored beside the weights: everything needed to predict with them."""
    info = model_info(name)
    return {"architecture": name, "input_size": list(size), "channels": info.channels,
            "mean": list(info.mean), "std": list(info.std), "output": info.output,
            "threshold": threshold, **extra}


def save_model(model: nn.Module, path: str | Path, config: dict, half: bool = False) -> Path:
    """Write weights (fp16 when `half`) and config atomically."""
    return save_state(model.state_dict(), path, config, half)


def save_state(weights: dict[str, torch.Tensor], path: str | Path, config: dict, half: bool = False) -> Path:
    """Write a state dict (fp16 when `half`) and config atomically, with the checksum of the
    tensors in the metadata. ModelFileError, before anything is written, for a NaN or infinite
    weight: a diverged run must not leave a model file that masks nothing."""
    path = Path(path)
    state = {}
    for key, tensor in weights.items():
        tensor = tensor.detach().cpu().contiguous()
        state[key] = tensor.half() if half and tensor.is_floating_point() else tensor
        if half and tensor.is_floating_point() and torch.isfinite(tensor).all() \
                and not torch.isfinite(state[key]).all():
            raise ModelFileError(f"{path}: not written: weight {key!r} holds values beyond fp16's "
                                 "range (65504); save it in fp32 (without --half)")
    data = model_check.seal_safetensors(  # refuses NaN and infinite weights
        path, save_bytes(state, metadata={METADATA_KEY: json.dumps(config)}))
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        os.chmod(tmp, 0o644)  # a model is meant to be shared, whatever the umask
    return path


def resolve_model_path(spec: str | Path | None = None) -> Path:
    """A model argument → its `.safetensors` file (see `model_files.resolve_model_path`)."""
    return model_files.resolve_model_path(spec, suffix=".safetensors")


def load_model_config(spec: str | Path | None = None) -> dict:
    """The config of a model given as a file, a run folder, or None/"shipped"."""
    return read_config(resolve_model_path(spec))


def load_model(path: str | Path | None = None) -> tuple[nn.Module, dict]:
    """Build the architecture named in the file, load its weights strictly, return (model, config).

    `path` may also be a run folder, or None for the shipped model."""
    path = resolve_model_path(path)
    config = read_config(path)
    name = model_info(config["architecture"]).name
    model = create_bare_model(name)
    _load_stage(model, path, name, refiner=False)
    return model.eval(), config


def load_refiner(path: str | Path | None = None) -> tuple[nn.Module, dict] | None:
    """The outline refiner stored in a model file beside its coarse model, as (network, its
    config), or None when the file has none."""
    path = resolve_model_path(path)
    refiner = read_config(path).get("refiner")
    if not refiner:
        return None
    model = create_bare_model(refiner["architecture"])
    _load_stage(model, path, refiner["architecture"], refiner=True)
    return model.eval(), refiner


def _load_stage(model: nn.Module, path: Path, name: str, refiner: bool) -> None:
    """Load one stage of a model file strictly, in float32: the coarse model's weights, or the
    refiner's (stored under REFINER_PREFIX)."""
    data = model_check.verify_model_file(path)  # checksum and finite weights, naming the file
    try:
        tensors = load_bytes(data)
    except Exception as error:  # safetensors raises its own error types for a bad file
        raise ModelFileError(f"{path}: not a safetensors file ({error})") from None
    state = {}
    for key, tensor in tensors.items():
        if key.startswith(REFINER_PREFIX) == refiner:
            name = key[len(REFINER_PREFIX):] if refiner else key
            state[name] = tensor.float() if tensor.is_floating_point() else tensor
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        stage = "refiner weights" if refiner else "weights"
        raise ModelFileError(f"{path}: {stage} do not fit {name}: {error}") from None


def attach_refiner(coarse: str | Path | None, refiner_file: str | Path, out: str | Path,
                   half: bool = True) -> Path:
    """One model file holding a coarse model and the refiner trained on its outlines: the coarse
    weights and config as they are, the refiner's under `refiner.` and config["refiner"]."""
    coarse_net, config = load_model(coarse)
    refiner_net, refiner_config = load_model(refiner_file)
    if model_info(refiner_config["architecture"]).role != "refiner" or "geometry" not in refiner_config:
        raise ModelFileError(f"{refiner_file}: not an outline refiner (see carmask train-refiner)")
    config = dict(config, refiner={"architecture": refiner_config["architecture"],
                                   "geometry": refiner_config["geometry"],
                                   "training": refiner_config.get("training")})
    state = dict(coarse_net.state_dict())
    state.update({REFINER_PREFIX + k: v for k, v in refiner_net.state_dict().items()})
    return save_state(state, out, config, half=half)


def average_models(paths: Sequence[str | Path], out: str | Path, half: bool = True,
                   **config_changes) -> Path:
    """Average the weights of models fine-tuned from one start (a "model soup", Wortsman et al.
    2022): often better than any one of them, at no cost when predicting. The first model's config
    is kept (its training record names the held-out photos), with `config_changes` over it and
    the averaged files listed under "averaged" (an average among them with its own list)."""
    if len(paths) < 2:
        raise ModelFileError("averaging needs at least two model files")
    total: dict[str, torch.Tensor] = {}
    members: list[str | dict] = []
    for index, path in enumerate(paths):
        model, other = load_model(path)
        members.append({"file": str(path), "averaged": other["averaged"]} if other.get("averaged") else str(path))
        if other.get("refiner"):
            raise ModelFileError(f"{path}: holds an outline refiner; average the coarse models, "
                                 "then attach the refiner (carmask.training.models.io.attach_refiner)")
        if index == 0:
            config, dtypes = other, {k: v.dtype for k, v in model.state_dict().items()}
        elif other["architecture"] != config["architecture"]:
            raise ModelFileError(f"{path}: a {other['architecture']}, not a {config['architecture']} "
                                 f"like {paths[0]}: only one architecture can be averaged")
        for key, tensor in model.state_dict().items():
            total[key] = total.get(key, 0) + tensor.double()
    state = {k: (v / len(paths)).to(dtypes[k]) for k, v in total.items()}
    config = {**config, **config_changes, "averaged": members}
    return save_state(state, out, config, half=half)


def state_checksum(model: nn.Module) -> float:
    """A cheap fingerprint of the weights (used to check DDP ranks agree)."""
    with torch.no_grad():
        return float(sum(p.double().abs().sum() for p in model.parameters()))
