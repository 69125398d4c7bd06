"""Model files, read without torch: the shipped ONNX files, run folders and `.safetensors` files.

A model's config (architecture, input size, normalisation, threshold, role, training record)
travels inside its file: in the safetensors metadata, and in the ONNX file's `metadata_props`,
both under the key "carmask". The shipped models are ONNX files (fp16 weights, computed in
fp32), so nothing is exported at first use. A `.safetensors` file from training is exported to
ONNX once, into the cache, which needs torch (`pip install carmask[train]`).

Every model file is checked when it is loaded, so that a damaged or diverged one is refused,
naming it, instead of masking nothing with exit 0 (issue 27): a shipped file against the SHA-256
recorded in weights/models.json, a file carmask wrote against the checksum it stored in its own
metadata (key "carmask.sha256"), and every file for NaN or infinite weights. Files written
before checksums existed get the last check only.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

METADATA_KEY = "carmask"
# The checksum carmask stores beside the config, of everything but the config: the tensors of a
# .safetensors file (their index and bytes), the fields of an .onnx file but its metadata.
CHECKSUM_KEY = "carmask.sha256"
WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
SHIPPED = {  # role → the file every command uses for it
    "studio": WEIGHTS / "carvana-unet-mnv2.onnx",  # Carvana's turntable
    "general": WEIGHTS / "general-unet-mnv2.onnx",  # cars on any background
}
ALIASES = {"": "studio", "default": "studio", "shipped": "studio", "studio": "studio",
           "general": "general"}
CACHE = Path(os.environ.get("CARMASK_CACHE", Path.home() / ".cache" / "carmask"))
TRAIN_EXTRA = "pip install 'carmask[train]'"


class ModelFileError(ValueError):
    pass


@dataclass(frozen=True)
class ShippedModel:
    """A model that ships in the package, as `carmask models` lists it (weights/models.json)."""
    role: str
    path: Path
    input: str
    held_out: str
    licence: str
    card: Path

    @property
    def id(self) -> str:
        return model_id(self.path)


def shipped_models() -> list[ShippedModel]:
    """The shipped models, studio first, with their summaries and model cards."""
    summaries = json.loads((WEIGHTS / "models.json").read_text(encoding="utf-8"))
    found = []
    for role, path in SHIPPED.items():
        summary = summaries.get(path.stem, {})
        found.append(ShippedModel(role, path, summary.get("input", "?"), summary.get("held_out", "?"),
                                  summary.get("licence", "see the model card"),
                                  WEIGHTS / summary.get("card", f"{path.stem}.md")))
    return found


def resolve_model_path(spec: str | Path | None = None, suffix: str = ".onnx") -> Path:
    """A model argument → its file: None, "shipped" or "studio" for the shipped studio model,
    "general" for the shipped any-background model, a run folder, or a file. `suffix` picks the
    shipped file and a run folder's: ".onnx" (what inference runs; a run folder's model.onnx,
    else its model.safetensors) or ".safetensors" (what training and the torch backend load)."""
    if spec is None or str(spec) in ALIASES:
        path = SHIPPED[ALIASES[str(spec or "")]].with_suffix(suffix)
        if not path.is_file():
            raise ModelFileError(f"{path}: the shipped model is missing from this install")
        return path
    path = Path(spec)
    if path.is_dir():
        names = ("model.onnx", "model.safetensors") if suffix == ".onnx" else ("model.safetensors",)
        path = next((path / name for name in names if (path / name).is_file()),
                    path / "model.safetensors")
    if not path.is_file():
        raise ModelFileError(f"{spec}: no such model file or run folder (a run folder holds "
                             "model.safetensors)")
    return path


def read_config(path: str | Path) -> dict:
    """The carmask config stored in a `.onnx` or `.safetensors` model file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    text = _onnx_metadata(path) if path.suffix == ".onnx" else _safetensors_metadata(path)
    if text is None:
        raise ModelFileError(f"{path}: no carmask config in the metadata (not a carmask model)")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ModelFileError(f"{path}: its carmask config is damaged (not JSON); the file was "
                             "changed or damaged since it was saved") from None


def load_model_config(spec: str | Path | None = None) -> dict:
    """The config of a model given as a file, a run folder, or None/"shipped"."""
    return read_config(resolve_model_path(spec))


def model_id(path: Path) -> str:
    """A short fingerprint of a model file: its stem and the start of its SHA-256."""
    return f"{path.stem}@{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"


def onnx_file(path: Path) -> Path:
    """The ONNX file to run for a model file: itself, or the cached export of a safetensors file
    (made once, with any input size; exporting needs torch)."""
    if path.suffix == ".onnx":
        return path
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    cached = CACHE / "onnx" / f"{path.stem}-{digest}.onnx"
    if not cached.exists():
        try:  # the one place inference reaches into training, and only for a training file
            from carmask.training.export import export_model_file
        except ImportError:
            raise ModelFileError(
                f"{path}: a training file (.safetensors); running it needs its ONNX file. Make one "
                f"with `carmask export --model {path} --out model.onnx` ({TRAIN_EXTRA}), then pass "
                "the .onnx file") from None
        export_model_file(path, cached)
    return cached


# -- checking a model file before it runs ------------------------------------------------------
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
    old = _metadata_entry(view, CHECKSUM_KEY)
    if old is not None:  # a file sealed before: its old entry goes
        data = bytes(view[:old[1]]) + bytes(view[old[2]:])
    entry = _length_delimited(1, CHECKSUM_KEY.encode()) + _length_delimited(
        2, _onnx_digest(memoryview(data)).encode())
    return bytes(data) + _length_delimited(14, entry)


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
    for any other."""
    try:
        path = path.resolve()
        if path.parent != WEIGHTS.resolve():
            return None
        summaries = json.loads((WEIGHTS / "models.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summaries.get(path.stem, {}).get("sha256", {}).get(path.suffix.lstrip("."))


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
        found = _metadata_entry(data, CHECKSUM_KEY)
        return None if found is None else (found[0].decode("ascii", "replace"), _onnx_digest(data))
    except (IndexError, ValueError):
        raise ModelFileError(f"{path}: not an ONNX file (its protobuf does not parse)") from None


def _onnx_digest(data: memoryview) -> str:
    """SHA-256 of an ONNX file's fields but its metadata entries (the graph and its weights,
    the opsets, ...). The config is left out, as for safetensors, so it can change under it;
    and protobuf writes fields in order, so the checksum entry may sit anywhere."""
    digest = hashlib.sha256()
    for number, wire, _, start, end in _scan(data):
        if not (number == 14 and wire == 2):
            digest.update(data[start:end])
    return digest.hexdigest()


def _metadata_entry(data: memoryview, key: str) -> tuple[bytes, int, int] | None:
    """(value, start, end) of the metadata_props entry `key` of an ONNX file (field 14 at the
    top level, read without loading the graph), its bytes being data[start:end]; None when it
    has none. IndexError or ValueError when the protobuf does not parse."""
    for number, wire, value, start, end in _scan(data):
        if number == 14 and wire == 2:
            entry = {field: bytes(item) for field, kind, item, _, _ in _scan(value) if kind == 2}
            if entry.get(1) == key.encode():
                return entry.get(2, b""), start, end
    return None


def _onnx_weights(path: Path, data: memoryview) -> list:
    """(name, float array) of each floating-point weight (initializer) of an ONNX file."""
    found = []
    try:
        for number, wire, graph, _, _ in _scan(data):
            if number == 7 and wire == 2:
                found += [_onnx_tensor(tensor) for key, kind, tensor, _, _ in _scan(graph)
                          if key == 5 and kind == 2]
    except (IndexError, ValueError, UnicodeDecodeError):
        raise ModelFileError(f"{path}: not an ONNX file (its protobuf does not parse)") from None
    return found


def _onnx_tensor(tensor: memoryview):
    """(name, float array or None) of a TensorProto."""
    import numpy as np

    name, data_type, parts = "", 0, []
    for number, wire, value, _, _ in _scan(tensor):
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


def _length_delimited(number: int, value: bytes) -> bytes:
    return _varint_bytes(number << 3 | 2) + _varint_bytes(len(value)) + value


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _safetensors_metadata(path: Path) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as file:
            metadata = file.metadata() or {}
    except Exception as error:  # safetensors raises its own error types for a bad header
        raise ModelFileError(f"{path}: not a safetensors file ({error})") from None
    return metadata.get(METADATA_KEY)


def _onnx_metadata(path: Path) -> str | None:
    """The "carmask" entry of an ONNX file's metadata_props (onnxruntime offers it only after
    building a session)."""
    try:
        found = _metadata_entry(memoryview(path.read_bytes()), METADATA_KEY)
        return None if found is None else found[0].decode("utf-8")
    except (IndexError, ValueError, UnicodeDecodeError):
        raise ModelFileError(f"{path}: not an ONNX file (its protobuf does not parse)") from None


def _scan(data: memoryview):
    """(field number, wire type, value, start, end) of each field of a protobuf message, its
    bytes being data[start:end]: the value is an int (varint), else a view of its bytes."""
    position = 0
    while position < len(data):
        start = position
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, position = _varint(data, position)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, position = data[position:position + size], position + size
        elif wire == 2:
            length, position = _varint(data, position)
            value, position = data[position:position + length], position + length
        else:
            raise ValueError(f"wire type {wire}")
        if position > len(data):
            raise ValueError("field runs past the end")
        yield number, wire, value, start, position


def _varint(data: memoryview, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
