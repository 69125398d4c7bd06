"""onnxruntime sessions for the CPU (about 2x faster than torch there)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class OnnxModel:
    """Callable on a normalised float32 batch (N, C, h, w) of any size the network takes;
    returns the raw outputs as float32 numpy.

    Memory: onnxruntime's arena keeps the largest activations it has seen, and the memory
    pattern plans buffers for each input shape on top; at 640x960 that is about 0.4 GB per photo
    in the batch. The pattern brings no measurable speed here (the convolutions dominate), so it
    is off.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        from carmask.inference.model_check import verify_model_file

        # a damaged or NaN-holding file is refused, naming it, instead of masking nothing; the
        # session is built from the very bytes checked
        model = verify_model_file(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_mem_pattern = False
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.path = Path(path)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        (output,) = self.session.run(None, {"image": np.ascontiguousarray(batch, np.float32)})
        return output
