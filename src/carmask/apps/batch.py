"""`carmask cutout`'s batch job: photos found in folders (mirrored under --out), globs or files,
predicted in the predictor's batches, composed and encoded in a bounded thread pool, and each
recorded in a manifest as it is written, so a killed batch resumes where it stopped and QA can
read what happened to every photo."""

from __future__ import annotations

import glob
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from carmask.apps.cutout import (
    FORMATS,
    PHOTO_SUFFIXES,
    CutoutError,
    CutoutOptions,
    check_encodable,
    encode_image,
    output_size,
    render,
    with_canvas_warning,
)
from carmask.data.io import DataError, read_photo
from carmask.util.atomic import write_bytes
from carmask.util.output_files import output_lock
from carmask.util.parallel import imap_bounded
from carmask.util.progress import Track, silent_track

log = logging.getLogger(__name__)
MANIFEST = "manifest.jsonl"


def expand_inputs(specs: Sequence[str | Path], recursive: bool = False) -> list[Path]:
    """Photo files from file paths, folders (their photos, sorted; with `recursive`, those of
    their subfolders too) and globs, in the order given; a spec that matches nothing is an
    error naming it."""
    return [source.path for source in find_photos(specs, recursive)]


@dataclass(frozen=True)
class Source:
    """A photo to cut out, and where its cut-out goes under --out: its path below the folder it
    was found in (`stock123/1.jpg`), or its name."""
    path: Path
    relative: Path


def find_photos(specs: Sequence[str | Path], recursive: bool = True) -> list[Source]:
    """`expand_inputs`, keeping each photo's place below the folder (or the glob's fixed part)
    it was found in, so the input tree can be mirrored."""
    found: list[Source] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            walk = path.rglob("*") if recursive else path.iterdir()
            # several folders given: each keeps its name under --out, so a/1.jpg and b/1.jpg differ
            prefix = Path(path.resolve().name) if len(specs) > 1 else Path()
            matches = [Source(p, prefix / p.relative_to(path)) for p in sorted(walk)
                       if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file()]
        elif path.is_file():
            matches = [Source(path, Path(path.name))]
        elif glob.has_magic(str(spec)):
            root = _fixed_part(str(spec))
            matches = [Source(Path(p), _below(Path(p), root)) for p in sorted(glob.glob(str(spec), recursive=True))
                       if Path(p).suffix.lower() in PHOTO_SUFFIXES and Path(p).is_file()]
        else:
            raise CutoutError(f"{spec}: no such file, folder or glob")
        if not matches:
            raise CutoutError(f"{spec}: no photos ({', '.join(PHOTO_SUFFIXES)}) found")
        found.extend(matches)
    unique: dict[Path, Source] = {}
    for source in found:
        unique.setdefault(source.path.resolve(), Source(source.path.resolve(), source.relative))
    return list(unique.values())


def _fixed_part(pattern: str) -> Path:
    """The folder a glob starts from: its parts before the first wildcard."""
    parts = Path(pattern).parts
    fixed = [part for part in parts[: next(i for i, p in enumerate(parts) if glob.has_magic(p))]]
    return Path(*fixed) if fixed else Path(".")


def _below(path: Path, root: Path) -> Path:
    try:
        return path.relative_to(root)
    except ValueError:
        return Path(path.name)


def output_names(inputs: Sequence[Source], out_dir: Path, fmt: str) -> list[Path]:
    """Each photo's cut-out under out_dir: its place below its folder (`stock123/1.png`), or
    `<stem>.<fmt>`; two photos that would be written to one file are an error naming both."""
    outputs, seen = [], {}
    for source in inputs:
        target = out_dir / source.relative.with_suffix(f".{fmt}")
        if target in seen:
            raise CutoutError(f"{seen[target]} and {source.path} would both be written to {target}")
        seen[target] = source.path
        outputs.append(target)
    return outputs


@dataclass
class CutoutSummary:
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # outputs there already, or in the manifest
    failed: list[tuple[Path, str]] = field(default_factory=list)
    models: Counter = field(default_factory=Counter)  # cut-outs made by each model
    warnings: list[tuple[Path, str]] = field(default_factory=list)  # masks to check
    manifest: Path | None = None


def plan_outputs(inputs: Sequence[Source], out: Path, fmt: str, overwrite: bool = False,
                 single_file: bool = False, done: frozenset[Path] = frozenset()
                 ) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """(photo, cut-out) pairs still to make and the cut-outs kept: those already there (without
    `overwrite`) and those of the photos in `done` (a manifest's, with --resume). `out` is a
    folder (the input tree mirrored in it) or, with `single_file` and one photo, the file."""
    targets = [out] if single_file else output_names(inputs, out, fmt)
    todo, skipped = [], []
    for source, target in zip((item.path for item in inputs), targets):
        if (target.exists() and not overwrite) or (source in done and target.exists()):
            skipped.append(target)
        else:
            todo.append((source, target))
    return todo, skipped


def format_of(path: Path) -> str | None:
    """The cut-out format a file name asks for (png, webp, jpg), or None for a folder name."""
    suffix = path.suffix.lower().lstrip(".").replace("jpeg", "jpg")
    return suffix if suffix in FORMATS else None


def manifest_done(out_dir: Path) -> frozenset[Path]:
    """The photos a folder's manifest records as written (for --resume); a line cut short by a
    kill is ignored."""
    manifest = out_dir / MANIFEST
    done = set()
    if manifest.is_file():
        for line in manifest.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("status") == "written" and entry.get("input"):
                done.add(Path(entry["input"]))
    return frozenset(done)


def cutout_files(predictor, inputs: Iterable[str | Path | Source], out_dir: str | Path,
                 options: CutoutOptions = CutoutOptions(), *, fmt: str = "png",
                 overwrite: bool = False, single_file: bool = False, resume: bool = False,
                 track: Track = silent_track) -> CutoutSummary:
    """Cut out every photo into `out_dir`, the input tree mirrored there (or, with `single_file`,
    one photo into that file), predicting in the predictor's batches and composing and encoding
    in a bounded thread pool; an unreadable photo is recorded and the job goes on.

    A folder gets `manifest.jsonl`, a line per photo as it is done: input, output, status
    (written or failed), model, warnings, size, seconds, error. With `resume` the photos it
    records as written are skipped. `predictor` may be a callable that makes it: it is called
    only when there is something to do."""
    fmt = fmt.lower().replace("jpeg", "jpg")
    if fmt not in FORMATS:
        raise CutoutError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "jpg" and options.background.transparent:
        raise CutoutError("jpg has no alpha channel: use --format png or webp for a transparent "
                          "cut-out, or give --background white, #RRGGBB or an image")
    out_dir = Path(out_dir)
    inputs = [item if isinstance(item, Source) else Source(Path(item), Path(Path(item).name))
              for item in inputs]
    if single_file and len(inputs) != 1:
        raise CutoutError(f"{out_dir} is a file name, for one photo; {len(inputs)} photos need a folder")
    (out_dir.parent if single_file else out_dir).mkdir(parents=True, exist_ok=True)
    # two batches into one folder would overwrite each other's cut-outs and both report
    # success: the second is refused, naming the first (as `predict` does)
    with output_lock(out_dir):
        return _cutout_locked(predictor, inputs, out_dir, options, fmt, overwrite, single_file,
                              resume, track)


def _cutout_locked(predictor, inputs: list[Source], out_dir: Path, options: CutoutOptions,
                   fmt: str, overwrite: bool, single_file: bool, resume: bool,
                   track: Track) -> CutoutSummary:
    summary = CutoutSummary(manifest=None if single_file else out_dir / MANIFEST)
    done = manifest_done(out_dir) if resume and not single_file else frozenset()
    todo, summary.skipped = plan_outputs(inputs, out_dir, fmt, overwrite, single_file, done)
    targets = dict(todo)
    if not todo:
        return summary
    for target in set(targets.values()):
        target.parent.mkdir(parents=True, exist_ok=True)
    if callable(predictor) and not hasattr(predictor, "predict_paths"):
        predictor = predictor()

    def finish(prediction):
        if prediction.error:
            return prediction, None, prediction.error, None
        try:
            # upright as displayed, like the photo the predictor decoded: the mask fits it
            photo = read_photo(prediction.path).pixels
            # a photo too big for the format (WebP: 16383 a side) fails alone, with the reason
            check_encodable(output_size(photo.shape, options), fmt)
            image = render(photo, prediction, options, predictor)
            prediction = with_canvas_warning(prediction, options)
            target = targets[prediction.path]
            write_bytes(target, encode_image(image, fmt))
            return prediction, target, None, photo.shape[:2]
        except DataError as error:  # names the file itself
            return prediction, None, str(error), None
        except (CutoutError, OSError) as error:
            return prediction, None, f"{prediction.path}: {error}", None

    predictions = predictor.predict_paths(list(targets))
    with _Manifest(summary.manifest) as manifest:
        for prediction, target, error, size in track(imap_bounded(finish, predictions, workers=2),
                                                     total=len(todo), description="cutting out"):
            manifest.add(prediction, targets.get(prediction.path), error, size)
            if error:
                log.info("%s", error)
                summary.failed.append((prediction.path, error))
                continue
            summary.written.append(target)
            summary.models[prediction.model] += 1
            summary.warnings.extend((prediction.path, w) for w in prediction.warnings)
    return summary


def cutout_bytes(predictor, data: bytes, options: CutoutOptions, fmt: str = "png",
                 name: str = "stdin"):
    """One photo's bytes → (the encoded cut-out, its prediction): `carmask cutout - --out -`.
    PhotoError (a DataError) names `name` and what is wrong; EncodeError says why `fmt` cannot
    hold this cut-out."""
    decoded = read_photo(data, cover=predictor.decode_cover, name=name)
    check_encodable(output_size(decoded.size, options), fmt)  # before the model runs
    prediction = predictor.predict_decoded(decoded.pixels, decoded.size)
    photo = read_photo(data, name=name).pixels if decoded.pixels.shape[:2] != tuple(decoded.size) \
        else decoded.pixels
    encoded = encode_image(render(photo, prediction, options, predictor), fmt)
    return encoded, with_canvas_warning(prediction, options)


class _Manifest:
    """Appends one JSON line per photo, flushed as it goes: a kill loses at most the photo in
    hand, and `manifest_done` skips a line it cut short."""

    def __init__(self, path: Path | None) -> None:
        self.path, self.file, self.last = path, None, time.perf_counter()

    def __enter__(self) -> _Manifest:
        if self.path is not None:
            self.file = open(self.path, "a", encoding="utf-8")
        return self

    def add(self, prediction, output: Path | None, error: str | None, size) -> None:
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        if self.file is None:
            return
        entry = {"input": str(prediction.path), "output": str(output) if output else None,
                 "status": "failed" if error else "written", "model": prediction.model or None,
                 "warnings": list(prediction.warnings), "width": size[1] if size else None,
                 "height": size[0] if size else None, "seconds": round(seconds, 3), "error": error}
        # ASCII with escapes: any file name (even bytes that are not UTF-8) stays valid JSON
        self.file.write(json.dumps(entry) + "\n")
        self.file.flush()

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()
