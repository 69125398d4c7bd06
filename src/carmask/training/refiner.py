"""The outline refiner's torch side: its network (`ResidualRefiner`, registered as
"refiner-mnv2") and `OutlineRefiner`, the refiner attached inside a combined `.safetensors`
model file, on torch or (exported once) onnxruntime.

The geometry, the tiling and the refinement itself are torch-free and live in
carmask.inference.refine (a refiner's own ONNX file runs there without torch); they are
re-exported here for the training code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from carmask.inference.refine import (LOGIT_CLIP, MEAN, STD, Refiner, RefinerGeometry, crop_mirrored,
                                      outline_band, refine_logit, refiner_input, tiles_on_band)

__all__ = ["LOGIT_CLIP", "MEAN", "STD", "OutlineRefiner", "RefinerGeometry", "ResidualRefiner",
           "crop_mirrored", "outline_band", "refine_logit", "refiner_input", "tiles_on_band"]


class ResidualRefiner(nn.Module):
    """Wraps a 4-channel network (RGB normalised + scaled coarse logit) that returns `fine`
    feature maps at its input's resolution. A small head sees those features beside the input's
    own full-resolution pixels and predicts a correction to the coarse logit; the head's last
    layer starts at zero, so training starts from the coarse answer."""

    def __init__(self, net: nn.Module, fine: int = 8) -> None:
        super().__init__()
        self.net = net
        self.head = nn.Sequential(nn.Conv2d(fine + 4, fine, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(fine, 1, 1))
        nn.init.zeros_(self.head[2].weight)
        nn.init.zeros_(self.head[2].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.net(x))
        # The correction is scaled like the logit: flipping a pixel takes a change of several
        # units, which a head starting at zero would otherwise take hundreds of steps to reach.
        correction = self.head(torch.cat([features, x], dim=1))
        return (x[:, 3:4] + correction) * LOGIT_CLIP


class OutlineRefiner(Refiner):
    """The refiner of a combined model file (its `config["refiner"]`), ready to run on torch (any
    device) or onnxruntime. As for the coarse model, its torch weights are loaded for onnxruntime
    only to export them the first time."""

    def __init__(self, config: dict, *, model_file: Path, backend: str = "torch",
                 device: torch.device | str = "cpu", threads: int | None = None) -> None:
        from carmask.training.models.io import load_refiner

        self.geometry = RefinerGeometry(**config["geometry"])
        self.architecture, self.source = config["architecture"], Path(model_file).name
        self.device = torch.device(device if isinstance(device, (str, torch.device)) else str(device))
        if backend == "onnx":
            from carmask.inference.onnx_model import OnnxModel
            from carmask.training.export import cached_export
            tile = (self.geometry.tile, self.geometry.tile)
            self._run = OnnxModel(cached_export(model_file, lambda: load_refiner(model_file)[0],
                                                tile, 4, part="refiner"), threads)
        else:
            self.network = load_refiner(model_file)[0].to(self.device).eval()
            self._run = self._run_torch

    def _run_torch(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.network(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()
