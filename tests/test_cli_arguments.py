"""Every command, every option, bad values (issue 27, class 3).

Each option of each command has a kind (count, size, output folder, ...) and each kind a list of
values that are wrong for it. A command given one of them, the rest of its arguments valid, must
refuse it before any work: exit 1 or 2, one line `error: ...` that names the option (or the path
given), no traceback, nothing written. `test_the_valid_invocation_reaches_the_work` proves each
base invocation is valid, so a refusal can only come from the bad value.

The work itself never runs here: training, inference, the server, EDA, export, averaging, the
demo and the download are replaced by a tripwire that raises WorkStarted.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from carmask.cli import app
from conftest import make_kaggle_folder

pytestmark = pytest.mark.filterwarnings("ignore")

HUGE_INT = "100000000000000000000"

# What is wrong for each kind of option. Paths are written with a {world} placeholder.
MISSING, DANGLING, A_FILE, A_FOLDER = "{world}/nothing-here", "{world}/dangling", "{world}/notes.txt", "{world}/folder"
UNDER_A_FILE, UNWRITABLE = "{world}/notes.txt/out", "/proc/carmask-test/out"
BAD_VALUES: dict[str, list[str]] = {
    "flag": [],
    "count": ["abc", "1.5", "", "-1", "0", HUGE_INT],
    "index": ["abc", "1.5", "", "-1", HUGE_INT],
    "seed": ["abc", "", "-1", HUGE_INT],
    "port": ["abc", "0", "70000"],
    "positive": ["abc", "", "nan", "inf", "-1", "0"],
    "fraction": ["abc", "", "nan", "inf", "-1", "2"],
    "size": ["abc", "", "0x0", "-5x3", "480x", "100000x100000"],
    "canvas": ["abc", "0x0", "-5x3", "100000x100000"],
    "second-look": ["abc", "0x0", "100000x100000"],
    "data folder": ["", MISSING, DANGLING, A_FILE],
    "input file": ["", MISSING, DANGLING, A_FOLDER],
    "photos": [MISSING, DANGLING],
    "output file": ["", A_FOLDER, UNDER_A_FILE, UNWRITABLE],
    "output folder": ["", A_FILE, UNDER_A_FILE, UNWRITABLE],
    "output": ["", UNDER_A_FILE, UNWRITABLE],  # a folder, or one file when given one photo
    "model": ["", "bogus", MISSING + ".onnx", A_FILE, DANGLING],
    "architecture": ["", "bogus"],
    "choice": ["", "bogus"],
    "devices": ["", "abc", "-3", "0"],
    "duration": ["", "garbage", "-1", "00:00:00:00"],
    "shard": ["", "x", "3/2", "2/2", "-1/2", "1/0"],
    "cars": ["", "bogus", "val,bogus"],
    "colour": ["", "notacolour", "#12345", "rgba(0,0,0,2)"],
    "host": ["", "not a host!", "192.0.2.1"],
    "rle": ["-1 2", "abc", "1", "5 -2", "0 1", "1 2 3"],
    "competition file": ["", "bogus.zip", "../notes.txt"],
}

# Every option of every command, by kind: a new option must be given one here.
KINDS: dict[str, dict[str, str]] = {
    "demo": {"--data": "data folder", "--out": "output folder", "--seed": "seed"},
    "eda": {"--data": "data folder", "--out": "output folder", "--overwrite": "flag"},
    "models": {},
    "train": {"--data": "data folder", "--model": "architecture", "--out": "output folder",
              "--size": "size", "--epochs": "count", "--batch": "count", "--lr": "positive",
              "--fold": "index", "--folds": "count", "--seed": "seed", "--patience": "count",
              "--devices": "devices", "--num-nodes": "count", "--accelerator": "choice",
              "--precision": "choice", "--workers": "index", "--max-time": "duration",
              "--val-every": "positive", "--limit-train-batches": "positive", "--max-cars": "count",
              "--pretrained": "flag", "--encoder-weights": "input file", "--init": "model",
              "--val-cars": "cars", "--vflip": "flag", "--half": "flag", "--resume": "flag",
              "--cache": "output folder"},
    "train-refiner": {"--data": "data folder", "--out": "output folder", "--coarse": "model",
                      "--train-cars": "cars", "--epochs": "count", "--steps-per-epoch": "count",
                      "--crops": "count", "--lr": "positive", "--val-photos": "count",
                      "--val-every": "positive", "--max-time": "duration", "--workers": "index",
                      "--precision": "choice", "--resume": "flag"},
    "train-general": {"--data": "data folder", "--wild": "data folder", "--out": "output folder",
                      "--init": "model", "--size": "size", "--predict-size": "size",
                      "--second-look": "second-look", "--outdoor-share": "fraction",
                      "--street-cars": "fraction", "--people-share": "fraction",
                      "--shadow-share": "fraction", "--camera-share": "fraction", "--camera-changes": "choice",
                      "--small-car-boost": "positive",
                      "--epochs": "count", "--samples": "count", "--batch": "count",
                      "--lr": "positive", "--seed": "seed", "--workers": "index",
                      "--precision": "choice", "--max-time": "duration", "--resume": "flag"},
    "predict": {"inputs": "photos", "--data": "data folder", "--images": "photos",
                "--model": "model", "--out": "output file", "--masks-dir": "output folder",
                "--size": "size", "--quality": "choice", "--tta": "flag", "--batch": "count",
                "--workers": "count", "--device": "choice", "--backend": "choice",
                "--shard": "shard", "--resume": "flag", "--overwrite": "flag"},
    "evaluate": {"--data": "data folder", "--model": "model", "--out": "output folder",
                 "--quality": "choice", "--tta": "flag", "--size": "size", "--backend": "choice",
                 "--device": "choice", "--cars": "cars", "--json": "flag", "--overwrite": "flag"},
    "export": {"--out": "output file", "--model": "model", "--size": "size", "--fp16": "flag",
               "--overwrite": "flag", "--refines": "model", "--int8-decoder": "data folder"},
    "average": {"models": "input file", "--out": "output file", "--size": "size",
                "--min-car-area": "fraction", "--second-look": "second-look", "--half": "flag",
                "--overwrite": "flag"},
    "cutout": {"inputs": "photos", "--out": "output", "--background": "colour",
               "--feather": "fraction", "--shadow": "flag", "--hard-edges": "flag",
               "--canvas": "canvas", "--margin": "fraction", "--align": "choice",
               "--largest": "flag", "--model": "model", "--quality": "choice", "--format": "choice",
               "--overwrite": "flag", "--resume": "flag", "--backend": "choice",
               "--device": "choice", "--batch": "count"},
    "serve": {"--host": "host", "--port": "port", "--model": "model", "--quality": "choice",
              "--backend": "choice", "--workers": "count", "--max-queue": "index",
              "--max-megabytes": "positive", "--max-megapixels": "positive"},
    "data index": {"--data": "data folder", "--deep": "flag", "--json": "flag"},
    "data synth": {"--out": "output folder", "--cars": "count", "--test-cars": "index",
                   "--size": "size", "--seed": "seed", "--sign": "flag", "--overwrite": "flag"},
    "data download": {"--out": "output folder", "--file": "competition file"},
    "rle encode": {"mask": "input file"},
    "rle decode": {"encoding": "rle", "--out": "output file", "--shape": "size",
                   "--overwrite": "flag"},
    "submission check": {"file": "input file", "--sample": "input file", "--shape": "size"},
    "submission merge": {"shards": "input file", "--sample": "input file", "--out": "output file",
                         "--shape": "size", "--overwrite": "flag"},
}

# Values of a kind that are right for one option (e.g. an empty --canvas means no canvas).
ALLOWED = {("cutout", "--feather"): {"2"},  # pixels, 0 to 64
           ("cutout", "--format"): {""}}  # the default: from --out's suffix, else png

# A valid invocation of each command inside the world; {world} and {out} are filled in.
BASE: dict[str, list[str]] = {
    "demo": ["--data", "{world}/data", "--out", "{out}/demo"],
    "eda": ["--data", "{world}/data", "--out", "{out}/eda"],
    "models": [],
    "train": ["--data", "{world}/data", "--out", "{out}/run", "--size", "64x96", "--epochs", "1",
              "--folds", "2", "--no-pretrained"],
    "train-refiner": ["--data", "{world}/data", "--out", "{out}/refiner", "--epochs", "1"],
    "train-general": ["--data", "{world}/data", "--wild", "{world}/wild", "--out", "{out}/general",
                      "--epochs", "1"],
    "predict": ["{world}/data/test", "--out", "{out}/submission.csv"],
    "evaluate": ["--data", "{world}/data", "--out", "{out}/report"],
    "export": ["--out", "{out}/model.onnx"],
    "average": ["{world}/a.safetensors", "{world}/b.safetensors", "--out", "{out}/soup.safetensors"],
    "cutout": ["{world}/photo.jpg", "--out", "{out}/cutouts"],
    "serve": ["--port", "8765"],
    "data index": ["--data", "{world}/data"],
    "data synth": ["--out", "{out}/synth", "--cars", "1", "--test-cars", "1", "--size", "96x64"],
    "data download": ["--out", "{out}/kaggle"],
    "rle encode": ["{world}/mask.gif"],
    "rle decode": ["1 10", "--out", "{out}/mask.png"],
    "submission check": ["{world}/submission.csv", "--sample", "{world}/sample.csv"],
    "submission merge": ["{world}/shard1.csv", "{world}/shard2.csv", "--sample", "{world}/sample.csv",
                         "--out", "{out}/merged.csv"],
}
# Positional arguments: where each sits in BASE (index) and how many values it takes there.
POSITIONAL = {("predict", "inputs"): (0, 1), ("average", "models"): (0, 2), ("cutout", "inputs"): (0, 1),
              ("rle encode", "mask"): (0, 1), ("rle decode", "encoding"): (0, 1),
              ("submission check", "file"): (0, 1), ("submission merge", "shards"): (0, 2)}

# A positional argument is named by its value (a path) or by one of these words.
POSITIONAL_WORDS = {"encoding": ["RLE"]}


class WorkStarted(BaseException):
    """Raised where a command's real work would start (BaseException: no `except` swallows it)."""


TRIPWIRES = ["lightning.pytorch.Trainer.fit", "onnxruntime.InferenceSession.run",
             "carmask.apps.serve.serve", "carmask.apps.eda.write_eda_report",
             "carmask.apps.demo.run_demo", "carmask.training.export.export_model_file",
             "carmask.training.models.io.average_models",
             "carmask.data.download.download_competition", "carmask.data.synth.synthesize"]


def _tripwire(*args, **kwargs):
    raise WorkStarted()


@pytest.fixture
def world(carvana, wild, tmp_path, monkeypatch) -> Path:
    """A folder holding everything the base invocations read, an empty `out/`, and the bad paths'
    targets; the current folder is `cwd/` inside it, so an empty path writes nowhere else."""
    root = tmp_path / "world"
    data = make_kaggle_folder(carvana, root / "data", cars=2, test_images=2)
    for car in shipped_validation_cars():  # the refiner and the general model validate on them
        for photo in (carvana / "train").glob(f"{car}_*.jpg"):
            (data / "train" / photo.name).symlink_to(photo)
            mask = f"{photo.stem}_mask.gif"
            (data / "train_masks" / mask).symlink_to(carvana / "train_masks" / mask)
    (root / "wild").symlink_to(wild)
    photo = sorted((data / "test").iterdir())[0]
    (root / "photo.jpg").symlink_to(photo.resolve())
    (root / "mask.gif").symlink_to(next((data / "train_masks").iterdir()).resolve())
    shipped = Path(__file__).parents[1] / "src/carmask/weights/carvana-unet-mnv2.safetensors"
    for name in ("a", "b"):
        (root / f"{name}.safetensors").symlink_to(shipped)
    names = sorted(p.name for p in (data / "test").iterdir())
    (root / "sample.csv").write_text("img,rle_mask\n" + "".join(f"{n},1 1\n" for n in names))
    (root / "submission.csv").write_text("img,rle_mask\n" + "".join(f"{n},1 10\n" for n in names))
    (root / "shard1.csv").write_text(f"img,rle_mask\n{names[0]},1 10\n")
    (root / "shard2.csv").write_text(f"img,rle_mask\n{names[1]},1 10\n")
    (root / "notes.txt").write_text("not what was asked for\n")
    (root / "folder").mkdir()
    (root / "dangling").symlink_to(root / "gone")
    for where in ("out", "cwd"):
        (root / where).mkdir()
    monkeypatch.chdir(root / "cwd")
    for target in TRIPWIRES:
        monkeypatch.setattr(target, _tripwire)
    return root


def shipped_validation_cars() -> list[str]:
    from carmask.inference.model_files import read_config, resolve_model_path

    return read_config(resolve_model_path("studio", suffix=".safetensors"))["training"]["val_car_ids"]


def invocation(command: str, world: Path, replace: tuple[str, str] | None = None) -> list[str]:
    """The base invocation of `command`, with one option (or positional) given `value`."""
    args = list(BASE[command])
    if replace:
        name, value = replace
        if (command, name) in POSITIONAL:
            start, count = POSITIONAL[command, name]
            args[start:start + count] = [value]
        elif name in args:
            args[args.index(name) + 1] = value
        else:
            args += [name, value]
    fill = {"world": str(world), "out": str(world / "out")}
    return [*command.split(), *(arg.format(**fill) for arg in args)]


def run(args: list[str]):
    """The CliRunner result, or WorkStarted when the command got as far as its work."""
    try:
        return CliRunner().invoke(app, args, env={"COLUMNS": "200", "NO_COLOR": "1"})
    except WorkStarted as started:
        return started


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def cases():
    for command, options in KINDS.items():
        for name, kind in options.items():
            if BAD_VALUES[kind]:
                yield pytest.param(command, name, kind, id=f"{command} {name}")


def test_every_option_of_every_command_has_a_kind():
    import typer

    def commands(group, prefix=()):
        for name, command in getattr(group, "commands", {}).items():
            if getattr(command, "commands", None):
                yield from commands(command, (*prefix, name))
            else:
                yield " ".join((*prefix, name)), command

    found = {name: {param.opts[0] if param.opts[0].startswith("-") else param.name
                    for param in command.params if param.name != "help"}
             for name, command in commands(typer.main.get_command(app))}
    assert {name: set(options) for name, options in KINDS.items()} == found


@pytest.mark.parametrize("command", sorted(BASE))
def test_the_valid_invocation_reaches_the_work(command, world):
    result = run(invocation(command, world))
    assert isinstance(result, WorkStarted) or result.exit_code == 0, (
        f"carmask {command} (valid) exit {result.exit_code}: {result.output[-600:]}")


@pytest.mark.parametrize(("command", "name", "kind"), list(cases()))
def test_a_bad_value_is_refused_in_one_line_before_any_work(command, name, kind, world):
    problems = []
    for template in BAD_VALUES[kind]:
        if template in ALLOWED.get((command, name), ()):
            continue
        value = template.format(world=world)
        args = invocation(command, world, (name, value))
        before = snapshot(world)
        result = run(args)
        problem = _problem(result, name, value)
        if problem is None and snapshot(world) != before:
            problem = f"left {sorted(snapshot(world) - before)[:3]} behind"
        if problem:
            problems.append(f"{name} {value!r}: {problem}")
    assert not problems, f"carmask {command}:\n" + "\n".join(problems)


def _problem(result, name: str, value: str) -> str | None:
    """What is wrong with how a command refused a bad value, or None."""
    if isinstance(result, WorkStarted):
        return "accepted: the work started"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return f"traceback: {type(result.exception).__name__}: {result.exception}"
    if result.exit_code not in (1, 2):
        return f"exit {result.exit_code}: {result.output[-300:]!r}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [i for i, line in enumerate(lines) if line.startswith("error:")]
    if not errors or errors[0] != len(lines) - 1:
        return f"not a one-line error at the end: {result.stderr[-400:]!r}"
    words = [name.lstrip("-")] if name.startswith("-") else [name, *POSITIONAL_WORDS.get(name, [])]
    named = any(re.search(rf"(?<![\w/]){re.escape(word)}(?![\w/])", lines[-1]) for word in words)
    return None if named or (len(value) > 3 and value in lines[-1]) else (
        f"the error names neither {name} nor the value: {lines[-1]!r}")
