"""The command line end to end, as a user runs it (a subprocess per command)."""

import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image

from carmask.kaggle import rle
from carmask.data.io import read_mask


def carmask(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "carmask", *args], capture_output=True, text=True)


def carmask_in_process(*args: str) -> subprocess.CompletedProcess:
    """`carmask` run in this process, as `carmask()` runs it in a new one: for commands that
    import torch, whose import in each new process would be most of a test's time."""
    from typer.testing import CliRunner

    from carmask.cli import app

    result = CliRunner().invoke(app, list(args))
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def test_demo_runs_end_to_end_without_torch(tmp_path):
    from conftest import run_without_torch

    out = tmp_path / "demo"
    result = run_without_torch("demo", "--out", str(out), cwd=tmp_path)  # the plain install
    assert result.returncode == 0, result.stderr
    assert "192 rows of true masks) OK" in result.stdout
    html = (out / "eda" / "index.html").read_text()
    assert "data:image/png;base64," in html and "<link" not in html
    lines = (out / "truth_submission.csv").read_text().splitlines()
    assert lines[0] == "img,rle_mask" and len(lines) == 193
    name, encoding = lines[1].split(",")
    truth = read_mask(out / "data" / "train_masks" / name.replace(".jpg", "_mask.gif"))
    assert np.array_equal(rle.decode(encoding, truth.shape), truth)
    # The shipped model predicts the synthetic test photos into a checked submission.
    assert "predicted:   " in result.stdout and "32 test photos" in result.stdout
    assert len((out / "submission.csv").read_text().splitlines()) == 33
    assert len(list((out / "masks").glob("*_mask.png"))) == 32
    assert (out / "evaluation" / "index.html").exists() and "mean Dice" in result.stdout
    # The model trained on real photos still finds the toy cars (0.968 measured): they are
    # predicted at their own size, and the studio wall has no made-up sign.
    dice = float(re.search(r"mean Dice ([0-9.]+)", result.stdout).group(1))
    assert dice > 0.93, result.stdout
    # ... and cuts the cars out onto three backgrounds, shown side by side in a page.
    assert "cut-outs:    " in result.stdout and "transparent 32, white 32, scene 32" in result.stdout
    test_photo = (out / "submission.csv").read_text().splitlines()[1].split(",")[0]
    transparent = Image.open(out / "cutouts" / "transparent" / test_photo.replace(".jpg", ".png"))
    scene = Image.open(out / "cutouts" / "scene" / test_photo.replace(".jpg", ".png"))
    assert transparent.mode == "RGBA" and scene.mode == "RGB" and scene.size == transparent.size
    gallery = (out / "cutouts" / "index.html").read_text()
    assert gallery.count("<img") == 24 and "white/" in gallery and str(out) not in gallery.split("<main>")[1]
    # A second run replaces its own synthetic folder and passes again.
    assert carmask("demo", "--out", str(out)).returncode == 0


def test_demo_on_a_real_kaggle_folder(small_real_folder, tmp_path):
    result = carmask("demo", "--data", str(small_real_folder), "--out", str(tmp_path / "d"))
    assert result.returncode == 0, result.stderr
    assert "(2 cars, 32 train and 2 test images, 0 problems)" in result.stdout
    assert "32 rows of true masks) OK" in result.stdout
    assert "(2 test photos," in result.stdout  # predicted with the shipped model; no truth to score


def test_rle_encode_decode_round_trip(carvana, tmp_path):
    source = carvana / "train_masks" / "00087a6bd4dc_03_mask.gif"
    encoded = carmask("rle", "encode", str(source))
    assert encoded.returncode == 0 and encoded.stdout.startswith("864300 9 866217 13")
    out = tmp_path / "mask.png"
    decoded = carmask("rle", "decode", encoded.stdout.strip(), "--out", str(out))
    assert decoded.returncode == 0, decoded.stderr
    assert np.array_equal(read_mask(out), read_mask(source))
    gif = tmp_path / "mask.gif"
    piped = subprocess.run([sys.executable, "-m", "carmask", "rle", "decode", "-", "--out", str(gif)],
                           input=encoded.stdout, capture_output=True, text=True)
    assert piped.returncode == 0 and np.array_equal(read_mask(gif), read_mask(source))


def test_rle_errors_are_clear(tmp_path):
    bad = carmask("rle", "decode", "5 0", "--out", str(tmp_path / "m.png"))
    assert bad.returncode == 1 and "invalid RLE: pair 1: length 0 must be >= 1" in bad.stderr
    missing = carmask("rle", "encode", str(tmp_path / "nope.gif"))
    assert missing.returncode == 1 and "nope.gif: no such file" in missing.stderr
    shape = carmask("rle", "decode", "1 1", "--shape", "big", "--out", str(tmp_path / "m.png"))
    assert shape.returncode == 2 and "HEIGHTxWIDTH" in shape.stderr


def test_rle_decode_refuses_overflowing_numbers_and_huge_shapes(tmp_path):
    out = tmp_path / "m.png"
    huge = carmask("rle", "decode", "99999999999999999999 1", "--out", str(out))
    assert huge.returncode == 1 and "Traceback" not in huge.stderr
    assert huge.stderr.strip() == ("error: invalid RLE: token 1 (99999999999999999999) is too "
                                   "large: the 1280x1918 image has 2455040 pixels")
    big = carmask("rle", "decode", "1 1", "--shape", "11000x10000", "--out", str(out))
    assert big.returncode == 1 and "Traceback" not in big.stderr
    assert big.stderr.strip() == ("error: --shape 11000x10000: mask shape 11000x10000 is "
                                  "110,000,000 pixels, more than the limit of 100 megapixels")
    assert not out.exists()


def test_log_messages_are_shown_as_written(tmp_path):
    """The CLI's log handler reads no markup and shows control characters as escapes."""
    script = ("import logging, sys; from carmask.cli import main_options; main_options(False); "
              "logging.getLogger('carmask').warning('%s: kept', sys.argv[1])")
    name = "car[bold]_01.jpg\x1b[2J"
    result = subprocess.run([sys.executable, "-c", script, name], capture_output=True, text=True)
    assert "car[bold]_01.jpg\\x1b[2J: kept" in result.stderr
    assert "\x1b" not in result.stderr


def test_synth_then_index_is_clean(tmp_path):
    out = tmp_path / "synth"
    made = carmask("data", "synth", "--out", str(out), "--cars", "2", "--test-cars", "1",
                   "--size", "160x96", "--seed", "3")
    assert made.returncode == 0, made.stderr
    assert "wrote 48 images of 2 train and 1 test cars" in made.stdout
    indexed = carmask("data", "index", "--data", str(out), "--deep")
    assert indexed.returncode == 0 and "no problems found" in indexed.stdout
    bad = carmask("data", "synth", "--out", str(tmp_path / "x"), "--size", "10x10")
    assert bad.returncode == 1 and "below the minimum" in bad.stderr


def test_help_explains_every_command():
    top = carmask("--help")
    for command in ("demo", "data", "rle", "submission", "eda", "cutout", "serve"):
        assert command in top.stdout
    for group, commands in (("data", ("index", "synth", "download")), ("rle", ("encode", "decode")),
                            ("submission", ("check",))):
        listing = carmask(group, "--help").stdout
        assert all(command in listing for command in commands)


def test_command_list_gives_each_command_one_sentence():
    """`carmask --help` lists each command by the first sentence of its help, on one line (the
    docstring's line breaks, kept by rich, wrapped the list raggedly)."""
    import typer.main

    from carmask.cli import app

    group = typer.main.get_command(app)
    leaves = [(name, command) for name, command in group.commands.items() if not hasattr(command, "commands")]
    leaves += [(f"{name} {sub}", leaf) for name, command in group.commands.items()
               for sub, leaf in getattr(command, "commands", {}).items()]
    assert len(leaves) > 10
    for name, command in leaves:
        short = command.short_help
        assert short and "\n" not in short and short.endswith("."), (name, short)
        assert command.help.split()[:3] == short.split()[:3], name
    wide = subprocess.run([sys.executable, "-m", "carmask", "--help"], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"})
    listed = next(line for line in wide.stdout.splitlines() if " evaluate " in line)
    assert "per view and make (an outdoor folder: per kind of photo)." in listed


def test_rle_decode_out_paths(tmp_path):
    """A missing folder is made; a folder, a file in the way or a lossy format is refused, in one
    line and with nothing left behind."""
    made = carmask("rle", "decode", "1 3", "--shape", "2x4", "--out", str(tmp_path / "new" / "m.png"))
    assert made.returncode == 0, made.stderr
    assert read_mask(tmp_path / "new" / "m.png").tolist() == [[1, 1, 1, 0], [0, 0, 0, 0]]
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("x")
    refusals = {
        tmp_path / "folder": "the --out mask is a folder",
        tmp_path / "afile" / "m.png": f"{tmp_path / 'afile'} is a file, not a folder",
        tmp_path / "m.jpg": "masks are written as .png or .gif (lossless), not .jpg",
        tmp_path / "m": "not a file without an extension",
    }
    for out, message in refusals.items():
        result = carmask("rle", "decode", "1 3", "--shape", "2x4", "--out", str(out))
        assert result.returncode == 1 and message in result.stderr, (out, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "folder", "new"]
    assert not list((tmp_path / "folder").iterdir())


def test_average_writes_the_mean_of_fine_tuned_models_and_refuses_a_mix(tmp_path):
    import torch

    from carmask.training.models import create_bare_model
    from carmask.training.models.io import load_model, model_config, save_model

    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        path = tmp_path / f"run{seed}.safetensors"
        save_model(create_bare_model("seed-cnn"), path, model_config("seed-cnn", (224, 224), training={"seed": seed}))
        paths.append(path)
    out = tmp_path / "soup.safetensors"
    result = carmask_in_process("average", *map(str, paths), "--out", str(out), "--no-half", "--min-car-area", "0.0002",
                     "--second-look", "288x288")
    assert result.returncode == 0, result.stderr
    soup, config = load_model(out)
    models = [load_model(p)[0].state_dict() for p in paths]
    for key, tensor in soup.state_dict().items():
        if tensor.is_floating_point():
            assert torch.allclose(tensor, sum(m[key] for m in models) / 3, atol=1e-6), key
    # the first model's config and training record, with the change asked for
    assert config["training"] == {"seed": 0} and config["min_car_area"] == 0.0002
    assert config["second_look"] == {"size": [288, 288], "below": 0.05}
    assert config["averaged"] == [str(p) for p in paths]
    # an average of an average keeps the inner one's list: the lineage stays readable
    again = tmp_path / "soup2.safetensors"
    assert carmask_in_process("average", str(out), str(paths[0]), "--out", str(again), "--second-look", "none").returncode == 0
    assert load_model(again)[1].get("second_look") is None
    assert load_model(again)[1]["averaged"] == [{"file": str(out), "averaged": [str(p) for p in paths]}, str(paths[0])]
    other = tmp_path / "other.safetensors"
    save_model(create_bare_model("refiner-mnv2"), other, model_config("refiner-mnv2", (64, 64)))
    mixed = carmask_in_process("average", str(paths[0]), str(other), "--out", str(tmp_path / "mixed.safetensors"))
    assert mixed.returncode != 0 and "other.safetensors" in mixed.stderr and not (tmp_path / "mixed.safetensors").exists()
    alone = carmask_in_process("average", str(paths[0]), "--out", str(tmp_path / "alone.safetensors"))
    assert alone.returncode != 0 and "at least two" in alone.stderr
    # a file with an outline refiner would lose it: refused, with what to do instead
    from carmask.training.models.io import attach_refiner

    save_model(create_bare_model("refiner-mnv2"), other, model_config("refiner-mnv2", (64, 64), geometry={}))
    combined = attach_refiner(paths[1], other, tmp_path / "combined.safetensors")
    refused = carmask_in_process("average", str(paths[0]), str(combined), "--out", str(tmp_path / "r.safetensors"))
    assert refused.returncode != 0 and "refiner" in refused.stderr and not (tmp_path / "r.safetensors").exists()


def test_help_paragraphs_wrap_at_the_terminal_width_and_lists_keep_their_lines():
    from typer.testing import CliRunner

    from carmask.cli import app
    from carmask.cli.arguments import reflowed

    text = """Summary line.

        Exit code 0: all written; 3: some photos
        could not be read.

        - one item
        - another item
        """
    assert reflowed(text).split("\n\n") == [
        "Summary line.", "Exit code 0: all written; 3: some photos could not be read.",
        "- one item\n- another item"]
    # as a user sees it in 80 columns: no line of the cutout help is cut short by the docstring's breaks
    result = CliRunner().invoke(app, ["cutout", "--help"], env={"COLUMNS": "80"})
    prose = result.output.split("Usage:")[1].split("╭")[0].splitlines()[1:]
    paragraphs = [p.strip().splitlines() for p in "\n".join(line.strip() for line in prose).split("\n\n") if p.strip()]
    assert len(paragraphs) >= 2 and all(len(line) > 60 for p in paragraphs for line in p[:-1]), paragraphs
