"""Checking a model file before it runs, and sealing one as it is written.

A shipped file must match the SHA-256 recorded in weights/models.json; a file carmask wrote, the
checksum it stored in its own metadata (key "carmask.sha256", of everything but the config, so
the config may be edited); and every file must hold finite weights: a damaged or diverged model
masks nothing, silently, so it is refused naming the file (issue 27). Files written before
checksums existed get the last check only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from carmask.inference import model_files
from carmask.inference.model_files import CHECKSUM_KEY, ModelFileError
from carmask.inference.protobuf import length_delimited, metadata_entry, scan


def verify_model_file(path: str | Path) -> bytes:
    """Read a model file and check it (see `check_model_bytes`); return its bytes, so a loader
    runs exactly what was checked."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ModelFileError(f"{path}: cannot read the model file ({error.strerror})") from None
    check_model_bytes(path, data)
    return data


def check_model_bytes(path: Path, data: bytes) -> None:
    """Raise ModelFileError naming `path` unless its bytes `data` are a sound model file: a
    shipped file as recorded at release, a carmask file as its stored checksum says, and no
    weight NaN or infinite (such a model masks nothing, silently)."""
    shipped = _shipped_checksum(path)
    if shipped is not None:
        if hashlib.sha256(data).hexdigest() != shipped:
            raise ModelFileError(f"{path}: checksum mismatch: this shipped model file was changed "
                                 "or damaged since carmask was installed; reinstall carmask "
                                 "(pip install --force-reinstall carmask)")
        return  # byte for byte the released file, whose weights the tests check
    view = memoryview(data)
    if path.suffix == ".onnx":
        recorded, actual = _onnx_checksum(path, view) or (None, None)
        weights = _onnx_weights(path, view)
    else:
        header, body = _safetensors_parts(path, view)
        recorded = (header.get("__metadata__") or {}).get(CHECKSUM_KEY)
        actual = _tensor_digest(header, body) if recorded is not None else None
        weights = _safetensors_weights(header, body)
    if recorded != actual:  # both None for a file saved before checksums
        raise ModelFileError(f"{path}: checksum mismatch: the file was changed or damaged since it "
                             "was saved")
    found = first_nonfinite(weights)  # checked after the checksum: damage explains a NaN best
    if found:
        raise ModelFileError(f"{path}: weight {found[0]!r} holds {found[1]}; this model cannot mask "
                             "anything (did its training diverge?)")


def seal_safetensors(path: Path, data: bytes) -> bytes:
    """The bytes of a safetensors file about to be written to `path`, with the checksum of its
    tensors added to its metadata; ModelFileError if a weight is NaN or infinite."""
    view = memoryview(data)
    header, body = _safetensors_parts(path, view)
    refuse_nonfinite(path, _safetensors_weights(header, body))
    header.setdefault("__metadata__", {})[CHECKSUM_KEY] = _tensor_digest(header, body)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the tensors stay 8-byte aligned, as safetensors writes them
    return len(text).to_bytes(8, "little") + text + bytes(body)


def seal_onnx(path: Path, data: bytes) -> bytes:
    """The bytes of a serialized ONNX model about to be written to `path`, with a metadata entry
    holding the checksum of the rest but the config (`_onnx_digest`; protobuf takes fields in any
    order, so it is appended); ModelFileError if a weight is NaN or infinite."""
    view = memoryview(data)
    refuse_nonfinite(path, _onnx_weights(path, view))
    old = metadata_entry(view, CHECKSUM_KEY)
    if old is not None:  # a file sealed before: its old entry goes
        data = bytes(view[:old[1]]) + bytes(view[old[2]:])
    entry = length_delimited(1, CHECKSUM_KEY.encode()) + length_delimited(
        2, _onnx_digest(memoryview(data)).encode())
    return bytes(data) + length_delimited(14, entry)


def first_nonfinite(weights) -> tuple[str, str] | None:
    """(name, "NaN" or "an infinite value") of the first float array in (name, array) pairs that
    is not all finite, or None."""
    import numpy as np

    for name, values in weights:
        if values is not None and not np.isfinite(values).all():
            return name, "NaN" if np.isnan(values).any() else "an infinite value"
    return None


def refuse_nonfinite(path: Path, weights) -> None:
    """ModelFileError saying `path` is not written when a (name, array) pair of `weights` holds
    NaN or infinity."""
    found = first_nonfinite(weights)
    if found:
        raise ModelFileError(f"{path}: not written: weight {found[0]!r} holds {found[1]}; a model "
                             "with such weights masks nothing (did its training diverge?)")


def _shipped_checksum(path: Path) -> str | None:
    """The SHA-256 weights/models.json records for a shipped file (or a link to one), or None
    for any other; ModelFileError for a file an entry names (its "refiner" or its "best") without
    recording one for this suffix."""
    path = path.resolve()
    summaries = model_files.shipped_summaries(path)
    if summaries is None:
        return None
    recorded = summaries.get(path.stem, {}).get("sha256", {}).get(path.suffix.lstrip("."))
    naming = next((key for entry in summaries.values() if isinstance(entry, dict)
                   for key in ("refiner", "best")
                   if isinstance(entry.get(key), str) and Path(entry[key]).stem == path.stem), None)
    if recorded is None and naming:
        # what a shipped model's entry names is run in its place: its release must record it
        role = "refiner" if naming == "refiner" else "--quality best model"
        raise ModelFileError(f"{path}: weights/models.json names it as a shipped {role} but records "
                             f"no SHA-256 for its {path.suffix} file (an entry \"{path.stem}\" with "
                             f"\"sha256\": {{\"{path.suffix.lstrip('.')}\": ...}}); an unchecked "
                             "shipped file is not run")
    return recorded


# safetensors: 8 bytes (little-endian header length), a JSON header naming each tensor's dtype,
# shape and byte range in the body, then the body. Dtypes checked for finite values:
_SAFETENSORS_FLOATS = {"F16": "<f2", "F32": "<f4", "F64": "<f8", "BF16": "bf16"}


def _safetensors_parts(path: Path, data: memoryview) -> tuple[dict, memoryview]:
    """(header, body) of a safetensors file's bytes."""
    try:
        length = int.from_bytes(data[:8], "little")
        if len(data) < 8 or 8 + length > len(data):
            raise ValueError("the header runs past the end")
        header = json.loads(bytes(data[8:8 + length]))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except ValueError as error:
        raise ModelFileError(f"{path}: not a safetensors file ({error})") from None
    return header, data[8 + length:]


def _tensor_digest(header: dict, body: memoryview) -> str:
    """SHA-256 of a safetensors file's tensors: their index (names, dtypes, shapes, byte ranges,
    as canonical JSON) and the body. The config is left out, so it can change under it."""
    index = {name: entry for name, entry in header.items() if name != "__metadata__"}
    digest = hashlib.sha256(json.dumps(index, sort_keys=True, separators=(",", ":")).encode())
    digest.update(body)
    return digest.hexdigest()


def _safetensors_weights(header: dict, body: memoryview):
    """(name, float array) of each floating-point tensor, in the order they lie in the file."""
    entries = []
    for name, entry in header.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(offset, int) for offset in offsets)):
            entries.append((offsets, name, _SAFETENSORS_FLOATS.get(entry.get("dtype"))))
    for (start, end), name, kind in sorted(entries):  # a malformed entry is safetensors' to refuse
        yield name, _floats(body[start:end], kind) if kind else None


def _floats(raw: memoryview, kind: str):
    """Little-endian floats of a numpy dtype, or "bf16" (widened to float32), as an array."""
    import numpy as np

    size = 2 if kind == "bf16" else np.dtype(kind).itemsize
    values = np.frombuffer(raw[:len(raw) - len(raw) % size], "<u2" if kind == "bf16" else kind)
    return (values.astype(np.uint32) << 16).view(np.float32) if kind == "bf16" else values


# ONNX: a ModelProto whose field 7 is the graph, field 14 the metadata entries (key 1, value 2);
# the graph's field 5 holds the weights (TensorProto: data_type 2, name 8, raw_data 9, float_data
# 4 and double_data 10; fp16 kept in int32_data, which exporters do not write, is not read).
# Data types checked for finite values:
_ONNX_FLOATS = {1: "<f4", 10: "<f2", 11: "<f8", 16: "bf16"}


def _onnx_checksum(path: Path, data: memoryview) -> tuple[str, str] | None:
    """(recorded, actual) checksum of an ONNX file, or None when it has none recorded."""
    try:
        found = metadata_entry(data, CHECKSUM_KEY)
        return None if found is None else (found[0].decode("ascii", "replace"), _onnx_digest(data))
    except (IndexError, ValueError):
        raise ModelFileError(f"{path}: not an ONNX file (its protobuf does not parse)") from None


def _onnx_digest(data: memoryview) -> str:
    """SHA-256 of an ONNX file's fields but its metadata entries (the graph and its weights,
    the opsets, ...). The config is left out, as for safetensors, so it can change under it;
    and protobuf writes fields in order, so the checksum entry may sit anywhere."""
    digest = hashlib.sha256()
    for number, wire, _, start, end in scan(data):
        if not (number == 14 and wire == 2):
            digest.update(data[start:end])
    return digest.hexdigest()


def _onnx_weights(path: Path, data: memoryview) -> list:
    """(name, float array) of each floating-point weight (initializer) of an ONNX file."""
    found = []
    try:
        for number, wire, graph, _, _ in scan(data):
            if number == 7 and wire == 2:
                found += [_onnx_tensor(tensor) for key, kind, tensor, _, _ in scan(graph)
                          if key == 5 and kind == 2]
    except (IndexError, ValueError, UnicodeDecodeError):
        raise ModelFileError(f"{path}: not an ONNX file (its protobuf does not parse)") from None
    return found


def _onnx_tensor(tensor: memoryview):
    """(name, float array or None) of a TensorProto."""
    import numpy as np

    name, data_type, parts = "", 0, []
    for number, wire, value, _, _ in scan(tensor):
        if number == 8 and wire == 2:
            name = bytes(value).decode("utf-8")
        elif number == 2 and wire == 0:
            data_type = value
        elif wire == 2 and number in (9, 4, 10):  # raw_data, packed float_data, double_data
            parts.append((number, value))
        elif wire in (1, 5) and number in (4, 10):  # an unpacked float or double
            parts.append((number, value))
    kind = _ONNX_FLOATS.get(data_type)
    if kind is None:
        return name, None
    arrays = [_floats(value, kind if number == 9 else "<f4" if number == 4 else "<f8")
              for number, value in parts]
    return name, np.concatenate(arrays) if arrays else None
