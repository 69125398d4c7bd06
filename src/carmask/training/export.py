"""ONNX export: the files the torch-free inference runs (onnxruntime, about 2x torch on a CPU).

An export takes any input size (the height and width axes are dynamic: the networks are fully
convolutional, sides multiples of 32) and carries the model's carmask config in its metadata,
so one `.onnx` file is a complete model for `carmask.inference`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from carmask.inference.model_check import refuse_nonfinite, seal_onnx
from carmask.inference.model_files import CACHE, METADATA_KEY, ModelFileError
from carmask.inference.refine import REFINER_ROLE, RefinerGeometry
from carmask.util.atomic import atomic_path

log = logging.getLogger(__name__)


def export_onnx(model: nn.Module, path: str | Path, size: tuple[int, int], channels: int = 3,
                fp16: bool = False, config: dict | None = None, dynamic_size: bool = True) -> Path:
    """Export with dynamic batch (and, unless `dynamic_size` is False, height and width) axes,
    traced at `size`; `config` goes into the metadata, with a checksum of the file; written
    atomically. ModelFileError, before anything is written, for NaN or infinite weights.

    With `fp16` nothing is folded at export: folding a batch norm into its convolution makes
    weights that fp16 cannot hold (the general model's logits moved by up to 0.8); unfolded,
    the stored weights are the model's own fp16 ones and onnxruntime folds them in fp32 at load."""
    model = model.eval().float()
    # named as the model names its weights (folding renames them), before any tracing
    weights = model.state_dict().items()
    refuse_nonfinite(Path(path), ((name, tensor.cpu().numpy()) for name, tensor in weights
                                  if tensor.is_floating_point()))
    example = torch.zeros(1, channels, *size)
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
    with atomic_path(path, suffix=".onnx") as tmp:
        torch.onnx.export(model, (example,), str(tmp), input_names=["image"], output_names=["output"],
                          dynamic_axes={"image": axes, "output": axes}, opset_version=17, dynamo=False,
                          do_constant_folding=not fp16)
        _finish(tmp, Path(path), fp16, config)
    return Path(path)


def export_model_file(model_file: str | Path, out: str | Path, fp16: bool = False,
                      size: tuple[int, int] | None = None, refines: str | None = None,
                      int8_photos: Sequence[str | Path] | None = None) -> Path:
    """The ONNX file of a carmask `.safetensors` model, config included. An outline refiner
    (`carmask train-refiner`'s refiner.safetensors) becomes a refiner ONNX file (see
    `refiner_export_config`; `refines` names the coarse model it refines). With `int8_photos`,
    the decoder is put in int8, calibrated on those photos (`carmask.training.quantize`)."""
    from carmask.training.models.io import load_model

    network, config = load_model(model_file)
    if is_refiner(config):
        if int8_photos:
            raise ModelFileError(f"{model_file}: an outline refiner; only a segmentation model's "
                                 "decoder is put in int8")
        config = refiner_export_config(config, refines, model_file)
        tile = tuple(config["input_size"])
        if size is not None and tuple(size) != tile:
            raise ModelFileError(f"{model_file}: an outline refiner runs on its {tile[0]}x{tile[1]} "
                                 "tiles; leave --size out")
        log.info("exporting the refiner %s to ONNX (%s)", Path(model_file).name, out)
        # fixed at the tile, as the attached refiner's cached export is
        return export_onnx(network, out, tile, 4, fp16=fp16, config=config, dynamic_size=False)
    if config.get("refiner"):
        config = {k: v for k, v in config.items() if k != "refiner"}
        log.warning("%s: its outline refiner is not exported; export the refiner.safetensors it "
                    "was attached from (carmask export --model RUN/refiner.safetensors)", model_file)
    if int8_photos and fp16:
        raise ModelFileError(f"{out}: an int8 decoder leaves the encoder's weights in fp32; "
                             "leave --fp16 out")
    size = tuple(size or config["input_size"])
    log.info("exporting %s to ONNX (%s)", Path(model_file).name, out)
    if not int8_photos:
        return export_onnx(network, out, size, config["channels"], fp16=fp16, config=config)
    from carmask.training.quantize import quantize_decoder

    with tempfile.TemporaryDirectory(prefix="carmask-export-") as folder:
        fp32 = export_onnx(network, Path(folder) / "fp32.onnx", size, config["channels"], config=config)
        return quantize_decoder(fp32, out, int8_photos, size)


def is_refiner(config: dict) -> bool:
    """Whether a model file's config is an outline refiner's (`carmask train-refiner`)."""
    from carmask.training.models import model_info

    return "geometry" in config and model_info(config["architecture"]).role == REFINER_ROLE


def refiner_export_config(config: dict, refines: str | None, source: str | Path) -> dict:
    """A refiner's ONNX config: its own (architecture, geometry, training record), role
    "refiner", its tile as the input size, and "refines": the model id (stem@sha256 prefix) of
    the coarse model it refines, `refines` or else its training record's `coarse`.
    ModelFileError when neither names one."""
    refines = refines or (config.get("training") or {}).get("coarse")
    if not refines:
        raise ModelFileError(f"{source}: its training record does not name the coarse model it "
                             "refines; say which with --refines (e.g. --refines studio)")
    tile = RefinerGeometry(**config["geometry"]).tile
    return dict(config, role=REFINER_ROLE, input_size=[tile, tile], channels=4, output="logit",
                refines=refines)


def cached_export(model_file: Path, build: Callable[[], nn.Module], size: tuple[int, int],
                  channels: int, part: str) -> Path:
    """A second network stored in a model file (`part`, the outline refiner), exported once at
    a fixed size into the cache."""
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()[:16]
    path = CACHE / "onnx" / f"{model_file.stem}-{part}-{digest}-{size[0]}x{size[1]}.onnx"
    if not path.exists():
        export_onnx(build(), path, size, channels, dynamic_size=False)
    return path


def _finish(tmp: Path, path: Path, fp16: bool, config: dict | None) -> None:
    """Store the config in the metadata, with `fp16` the weights in half precision, and a
    checksum of the whole (which `seal_onnx` checks for NaN and infinite weights: fp16 turns
    weights beyond 65504 into infinities). `path` is the file's final name, for errors."""
    import onnx

    graph_model = onnx.load(str(tmp))
    if fp16:
        _store_weights_in_fp16(graph_model)
    if config is not None:
        del graph_model.metadata_props[:]
        entry = graph_model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(config)
    tmp.write_bytes(seal_onnx(path, graph_model.SerializeToString()))


def _store_weights_in_fp16(graph_model) -> None:
    """Halve the file: float32 weights become float16 initializers cast back to float32 by a
    Cast node at load, so onnxruntime still computes in fp32 (its fast path on CPUs)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = graph_model.graph
    casts = []
    for initializer in list(graph.initializer):
        if initializer.data_type != TensorProto.FLOAT or len(initializer.dims) == 0:
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(initializer).astype(np.float16),
                                       initializer.name + "_fp16")
        graph.initializer.remove(initializer)
        graph.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [initializer.name], to=TensorProto.FLOAT))
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
