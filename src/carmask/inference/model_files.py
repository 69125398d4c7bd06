"""Model files, read without torch: the shipped ONNX files, run folders and `.safetensors` files.

A model's config (architecture, input size, normalisation, threshold, role, training record)
travels inside its file: in the safetensors metadata, and in the ONNX file's `metadata_props`,
both under the key "carmask". The shipped models are ONNX files (fp16 weights, computed in
fp32), so nothing is exported at first use. A `.safetensors` file from training is exported to
ONNX once, into the cache, which needs torch (`pip install carmask[train]`).

Every model file is checked when it is loaded (checksum, finite weights): `model_check`.
"""

from __future__ import annotations

import hashlib
import logging
import json
import os
from dataclasses import dataclass
from pathlib import Path

from carmask.inference.protobuf import metadata_entry

log = logging.getLogger(__name__)

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
# How an encoder pretrained on ImageNet wants its photos normalised (0-1 scale): what training
# uses by default, and what the refiner uses; a segmenter's file records its own.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
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
    """The shipped models, studio first, each followed by the larger-input file `--quality best`
    runs instead where its entry names one ("best"), then the outline refiners best adds, with
    their summaries and model cards (weights/models.json)."""
    summaries = _read_models_json()
    # found as --quality best finds them: through a model's entry ("best", then "refiner")
    models = []
    for path in SHIPPED.values():
        best = summaries.get(path.stem, {}).get("best")
        models += [path, WEIGHTS / best] if best else [path]
    refiners = list(dict.fromkeys(WEIGHTS / summaries[path.stem]["refiner"] for path in models
                                  if summaries.get(path.stem, {}).get("refiner")))
    roles = {path: role for role, path in SHIPPED.items()}
    found = []
    for path in models + refiners:
        summary = summaries.get(path.stem, {})
        found.append(ShippedModel(summary.get("role", roles.get(path, "refiner")), path,
                                  summary.get("input", "?"), summary.get("held_out", "?"),
                                  summary.get("licence", "see the model card"),
                                  WEIGHTS / summary.get("card", f"{path.stem}.md")))
    return found


def _read_models_json() -> dict:
    """weights/models.json: every shipped file's entry by stem (OSError, ValueError where the
    release has no readable one)."""
    return json.loads((WEIGHTS / "models.json").read_text(encoding="utf-8"))


def shipped_summaries(model: Path) -> dict | None:
    """weights/models.json, every shipped file's entry by stem, for a file in the weights folder;
    None for any other file, or where the release has no readable models.json."""
    try:
        if model.resolve().parent != WEIGHTS.resolve():
            return None
        return _read_models_json()
    except (OSError, ValueError):
        return None


def shipped_entry(model: Path) -> dict:
    """A shipped model file's entry in weights/models.json ({} for any other file, or where the
    release has no models.json)."""
    return (shipped_summaries(model) or {}).get(model.stem, {})


def shipped_best(model: Path) -> Path | None:
    """The file `--quality best` runs for a shipped model, where its entry names one ("best": a
    larger-input model of the same role), with `model`'s suffix, whether or not it is in this
    install; None for any other model."""
    name = shipped_entry(model).get("best")
    return (WEIGHTS / name).with_suffix(model.suffix) if name else None


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
    if cached.exists() and not _sound(cached):  # a damaged cache is ours to make again
        cached.unlink()
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


def _sound(path: Path) -> bool:
    from carmask.inference.model_check import verify_model_file

    try:
        verify_model_file(path)
        return True
    except ModelFileError as error:
        log.warning("%s; exporting it again", error)
        return False


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
        found = metadata_entry(memoryview(path.read_bytes()), METADATA_KEY)
        return None if found is None else found[0].decode("utf-8")
    except (IndexError, ValueError, UnicodeDecodeError):
        raise ModelFileError(f"{path}: not an ONNX file (its protobuf does not parse)") from None
