"""ONNX export and an onnxruntime backend for CPU serving (about 2x faster than torch here)."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from carmask.atomic import atomic_path

log = logging.getLogger(__name__)
CACHE = Path(os.environ.get("CARMASK_CACHE", Path.home() / ".cache" / "carmask"))


def export_onnx(model: nn.Module, path: str | Path, size: tuple[int, int], channels: int = 3,
                fp16: bool = False) -> Path:
    """Export with a dynamic batch axis at a fixed (H, W); written atomically."""
    model = model.eval().float()
    example = torch.zeros(1, channels, *size)
    with atomic_path(path) as tmp:
        torch.onnx.export(model, (example,), str(tmp), input_names=["image"], output_names=["output"],
                          dynamic_axes={"image": {0: "batch"}, "output": {0: "batch"}},
                          opset_version=17, dynamo=False)
        if fp16:
            _store_weights_in_fp16(str(tmp))
    return Path(path)


def _store_weights_in_fp16(path: str) -> None:
    """Halve the file: float32 weights become float16 initializers cast back to float32 by a
    Cast node at load, so onnxruntime still computes in fp32 (its fast path on CPUs)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph_model = onnx.load(path)
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
    onnx.save(graph_model, path)


class OnnxModel:
    """Callable like the torch model on a normalised float32 batch; returns a torch tensor.

    Memory: onnxruntime's arena keeps the largest activations it has seen, and the memory
    pattern plans buffers for each input shape on top; at 640x960 that is about 0.4 GB per photo
    in the batch (2.7 GB peak for a CLI run at batch 4, 1.2 GB at batch 1 with no pattern). The
    pattern brings no measurable speed here (the convolutions dominate), so it is off.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_mem_pattern = False
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path = Path(path)

    def __call__(self, batch: np.ndarray) -> torch.Tensor:
        (output,) = self.session.run(None, {"image": np.ascontiguousarray(batch, np.float32)})
        return torch.from_numpy(output)

    @classmethod
    def from_torch(cls, model: nn.Module, model_file: Path, size: tuple[int, int],
                   channels: int, threads: int | None = None) -> OnnxModel:
        """Export once per (model file, size) into the cache, then load the cached file."""
        return cls.from_model_file(model_file, size, channels, threads, build=lambda: model)

    @classmethod
    def from_model_file(cls, model_file: Path, size: tuple[int, int], channels: int,
                        threads: int | None = None,
                        build: Callable[[], nn.Module] | None = None, part: str = "") -> OnnxModel:
        """Load the cached export of (model file, size), exporting it first if there is none.

        The torch model is built (by `build`, default: from the file) only to export: a cached
        run never holds its weights, about 100 MB less.
        """
        digest = hashlib.sha256(model_file.read_bytes()).hexdigest()[:16]
        # `part` names a second network stored in the same file (the outline refiner)
        path = CACHE / "onnx" / f"{model_file.stem}{'-' + part if part else ''}-{digest}-{size[0]}x{size[1]}.onnx"
        if not path.exists():
            log.info("exporting %s to ONNX at %dx%d (cached in %s)", model_file.name, *size, path)
            if build is None:
                from carmask.models.io import load_model
                model = load_model(model_file)[0]
            else:
                model = build()
            export_onnx(model, path, size, channels)
        return cls(path, threads)
