"""int8 for a U-Net's decoder (onnxruntime static quantization, QDQ), its encoder left in fp32.

On a CPU with int8 dot products (AVX-512 VNNI, AMX) the decoder in int8 runs the whole network
about 1.4 times faster and costs the studio model 0.00003 of Dice at 640x960, nothing measurable
at 768x1152; the encoder in int8 as well runs 1.8 times faster but costs 0.0008
(docs/benchmarks.md), so it stays in fp32. The activation ranges are calibrated on training
photos the model did not hold out.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from carmask.inference.model_check import seal_onnx
from carmask.inference.model_files import METADATA_KEY, ModelFileError
from carmask.util.atomic import atomic_path

log = logging.getLogger(__name__)

# the module paths torch gives the ONNX nodes of a segmentation_models_pytorch network
DECODER_PREFIXES = ("/decoder/", "/segmentation_head/")
CALIBRATION_PHOTOS = 24


def calibration_photos(data: str | Path, config: dict, count: int = CALIBRATION_PHOTOS) -> list[Path]:
    """`count` training photos of `data`, none of them held out (so the held-out figure stays
    honest): of a Kaggle-layout folder, spread over its cars and views outside the cars the
    model's config records as held out; of an outdoor folder (cars_in_the_wild), spread over its
    training split's street frames and product photos. DataError naming the folder when it has
    too few."""
    from carmask.data import index_dataset
    from carmask.data.io import DataError
    from carmask.data.wild import is_wild_folder, read_wild, split_wild

    if is_wild_folder(data):
        paths = sorted(p.image_path for p in split_wild(read_wild(data))[0])
    else:
        held_out = set((config.get("training") or {}).get("val_car_ids") or [])
        paths = [r.image_path for r in sorted(index_dataset(data, check_pixels=False).train,
                                              key=lambda r: r.image_id) if r.car_id not in held_out]
    if len(paths) < count:
        raise DataError(data, f"{len(paths)} training photos outside the model's held-out ones; "
                              f"calibrating the int8 decoder needs {count}")
    # a stride coprime with the count of photos never comes back to a photo, and an odd one is
    # coprime with a car's 16 views too, so the walk spreads over cars and views alike
    stride = max(1, len(paths) // count) | 1
    while math.gcd(stride, len(paths)) != 1:
        stride += 2
    return [paths[(i * stride) % len(paths)] for i in range(count)]


def quantize_decoder(source: str | Path, out: str | Path, photos: Sequence[str | Path],
                     size: tuple[int, int] | None = None) -> Path:
    """Write `out`: the carmask ONNX file `source` (fp32 weights) with its decoder and
    segmentation head in int8, calibrated on `photos` decoded and resized as the model runs them
    (at `size`, default the model's). The config goes along, with "int8": "decoder"; the file is
    sealed with its checksum and written atomically."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from carmask.inference.predictor import Predictor

    source, out = Path(source), Path(out)
    predictor = Predictor(source, size=size)

    class Photos(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = _inputs(predictor, photos)

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {"image": batch}

    with tempfile.TemporaryDirectory(prefix="carmask-int8-") as folder:
        prepared, quantized = Path(folder) / "prepared.onnx", Path(folder) / "int8.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        nodes = [node.name for node in onnx.load(str(prepared)).graph.node
                 if node.name.startswith(DECODER_PREFIXES)]
        if not nodes:
            raise ModelFileError(f"{source}: no decoder nodes ({', '.join(DECODER_PREFIXES)}) to "
                                 "put in int8; only a U-Net exported by carmask has them")
        log.info("int8: calibrating %d decoder nodes on %d photos", len(nodes), len(photos))
        quantize_static(str(prepared), str(quantized), Photos(), quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QUInt8, nodes_to_quantize=nodes)
        model = onnx.load(str(quantized))
    config = dict(predictor.config, int8="decoder")
    del model.metadata_props[:]  # the quantizer's own entries and the fp32 file's checksum go
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(config)
    with atomic_path(out, suffix=".onnx") as tmp:
        tmp.write_bytes(seal_onnx(out, model.SerializeToString()))
    return out


def _inputs(predictor, photos: Sequence[str | Path]) -> Iterator[np.ndarray]:
    for path in photos:
        pixels, size = predictor.load(path)
        yield predictor.preprocess(pixels, size)[None]
