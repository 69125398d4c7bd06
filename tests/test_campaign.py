"""The background training campaign (issue 24): benchmarks/campaign.sh resumes a killed run from
its last checkpoint, and says so when the checkpoints are gone; once a run has finished, `start`
starts the next one of its queue; bf16 keeps the masks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "campaign.sh"


def campaign(command: str, env: dict) -> str:
    result = subprocess.run([str(SCRIPT), command], env=env, capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


@pytest.mark.slow
def test_the_campaign_resumes_a_killed_run_from_its_last_checkpoint(synth_data, tmp_path):
    env = dict(os.environ, CAMPAIGN_DIR=str(tmp_path), CAMPAIGN_RUN="tiny",
               CAMPAIGN_DATA=str(synth_data), CAMPAIGN_INIT="shipped",
               CARMASK=str(Path(sys.executable).parent / "carmask"),
               CAMPAIGN_ARGS="--model unet-mnv2 --size 64x96 --batch 4 --epochs 2 --folds 3 "
                             "--workers 0 --no-pretrained --precision 32")
    run = tmp_path / "tiny"
    latest = run / "checkpoints" / "latest.ckpt"
    assert "starting from shipped" in campaign("start", env)
    try:
        wait_for(latest.exists, 180, "the first checkpoint")
        assert "already running" in campaign("start", env)  # never two trainers on one run
        campaign("stop", env)
        wait_for(lambda: "not running" in campaign("status", env), 30, "the run to stop")
        killed_at = latest.stat().st_mtime
        assert not (run / "model.safetensors").exists()

        assert "resuming from its last checkpoint" in campaign("start", env)
        wait_for((run / "model.safetensors").exists, 300, "the resumed run to finish")
        log = (run / "train.log").read_text()
        assert "Restoring states from the checkpoint" in log or "Restored all states" in log
        assert latest.stat().st_mtime >= killed_at
        wait_for(lambda: "finished" in campaign("status", env), 120, "the trainer to exit")
        assert "val Dice" in campaign("status", env)  # the figures logged as it went

        # the machine lost the checkpoints: the runner says so and starts from the best file
        for path in (run / "checkpoints").glob("*.ckpt"):
            path.unlink()
        (run / "model.safetensors").unlink()
        assert "checkpoints are gone; starting again from shipped" in campaign("start", env)
    finally:
        campaign("stop", env)


def test_once_the_first_run_has_finished_start_starts_the_next(tmp_path):
    """A stand-in for carmask records how it was called and waits: the queue's logic, quickly."""
    calls, stand_in = tmp_path / "calls.txt", tmp_path / "carmask"
    stand_in.write_text(f'#!/usr/bin/env bash\necho "$@" >> {calls}\nexec sleep 60\n')
    stand_in.chmod(0o755)
    runs = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if k not in ("CAMPAIGN_RUN", "CAMPAIGN_ARGS")}
    env.update(CAMPAIGN_DIR=str(runs), CAMPAIGN_DATA="data", CARMASK=str(stand_in),
               CAMPAIGN_QUEUE="first|train|shipped|--size 64x96 --epochs 1\n"
                              "second|train-general|general|--size 64x96\n  --epochs 1 --people-share 0.3\n"
                              "third|train-refiner|runs/first|--crops 4\n")
    (runs / "first").mkdir(parents=True)
    (runs / "first" / "model.safetensors").write_bytes(b"")  # the first run has finished
    started = campaign("start", env)
    try:
        assert "first: finished" in started and "second: starting from general" in started
        wait_for(lambda: calls.exists() and calls.read_text().strip(), 30, "the second run's trainer")
        assert calls.read_text().split() == [
            "train-general", "--data", "data", "--out", f"{runs}/second", "--init", "general", "--resume",
            "--size", "64x96", "--epochs", "1", "--people-share", "0.3"]
        assert "second: already running" in campaign("start", env)  # one trainer at a time
        assert "second: running" in campaign("status", env)
        assert campaign("queue", env).splitlines() == [
            "first: finished: carmask train --init shipped --size 64x96 --epochs 1",
            "second: running: carmask train-general --init general --size 64x96 --epochs 1 "
            "--people-share 0.3",
            "third: waiting: carmask train-refiner --coarse runs/first --crops 4"]
    finally:
        campaign("stop", env)
    wait_for(lambda: "second: not running" in campaign("status", env), 30, "the trainer to stop")


def test_a_run_that_finishes_starts_the_next_by_itself(tmp_path):
    """A stand-in trainer that writes its model and exits: the watcher starts the next run with no
    `start` from anyone (between sessions the cores would otherwise sit idle)."""
    calls, stand_in = tmp_path / "calls.txt", tmp_path / "carmask"
    stand_in.write_text('#!/usr/bin/env bash\nout=$(sed -n "s/.*--out \\([^ ]*\\).*/\\1/p" <<<"$*")\n'
                        f'echo "$@" >> {calls}\n[[ $out == */first ]] && touch "$out/model.safetensors"\n'
                        '[[ $out == */second ]] && touch "$out/refiner.safetensors"\n'
                        '[[ $out == */third ]] || exit 0\nexec sleep 60\n')
    stand_in.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("CAMPAIGN_RUN", "CAMPAIGN_ARGS")}
    env.update(CAMPAIGN_DIR=str(tmp_path / "runs"), CAMPAIGN_DATA="data", CARMASK=str(stand_in),
               CAMPAIGN_POLL="1", CAMPAIGN_QUEUE="first|train|shipped|--epochs 1\n"
                                                 "second|train-refiner|runs/first|--crops 4\n"
                                                 "third|train-general|general|--epochs 1\n")
    assert "first: starting from shipped" in campaign("start", env)
    try:  # a refiner run finishes with its refiner.safetensors
        wait_for(lambda: calls.exists() and "third" in calls.read_text(), 45, "the third run")
        assert "third: running" in campaign("status", env)
        assert "train-refiner --data data --out" in calls.read_text()
        assert "--coarse runs/first --resume --crops 4" in calls.read_text()
    finally:
        campaign("stop", env)
    wait_for(lambda: "third: not running" in campaign("status", env), 30, "the trainer to stop")


def test_a_machine_found_bare_skips_recorded_runs_and_starts_from_the_file_they_shipped(tmp_path):
    """Every run folder gone: a run whose outcome is recorded is not run again, and the next run,
    which fine-tunes that run's model, starts from the file it shipped (the second alternative)."""
    calls, stand_in = tmp_path / "calls.txt", tmp_path / "carmask"
    stand_in.write_text(f'#!/usr/bin/env bash\necho "$@" >> {calls}\nexec sleep 60\n')
    stand_in.chmod(0o755)
    runs, shipped = tmp_path / "runs", tmp_path / "shipped-1024.safetensors"
    shipped.write_bytes(b"")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGN_")}
    env.update(CAMPAIGN_DIR=str(runs), CAMPAIGN_DATA="data", CARMASK=str(stand_in),
               CAMPAIGN_RECORDED="first",
               CAMPAIGN_QUEUE=f"first|train|shipped|--epochs 1\nsecond|train|{runs}/first,{shipped}|--epochs 1\n")
    assert campaign("queue", env).splitlines() == [
        "first: recorded: carmask train --init shipped --epochs 1",
        f"second: waiting: carmask train --init {shipped} --epochs 1"]
    started = campaign("start", env)
    try:
        assert "first: finished (its folder is gone" in started
        assert f"second: starting from {shipped}" in started
        assert f"no model in {runs}/first (its folder is gone); {shipped} stands in" in started
        wait_for(lambda: calls.exists() and calls.read_text().strip(), 30, "the second run's trainer")
        assert f"--init {shipped} --resume" in calls.read_text()
    finally:
        campaign("stop", env)
    # once the first run's folder is back with its model, the second starts from it again
    (runs / "first").mkdir(parents=True)
    (runs / "first" / "model.safetensors").write_bytes(b"")
    assert campaign("queue", env).splitlines()[1].startswith(f"second: waiting: carmask train --init {runs}/first ")


def test_the_default_queue_refines_the_studio_run_fine_tunes_the_general_model_then_a_larger_look(
        synth_data, wild, tmp_path, monkeypatch):
    import shlex

    from typer.testing import CliRunner

    import carmask.training.general as general
    import carmask.training.refiner_train as refiner_train
    from carmask.cli import app

    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGN_")}
    lines = campaign("queue", dict(env, CAMPAIGN_DIR=str(tmp_path))).splitlines()
    assert [line.split(":")[0] for line in lines] == ["studio-all150-640", "refiner-r3", "general-people-shadows-r1",
                                                      "general-people-shadows-r2", "general-people-shadows-r3",
                                                      "general-camera-r1", "studio-1024-r1",
                                                      "general-smallcars-r1", "general-noise-r1",
                                                      "studio-640-from1024-r1", "studio-1280-r1",
                                                      "studio-1280-r2", "refiner-1024-r1", "studio-768-r1",
                                                      "studio-768-r2", "studio-1024-r2", "general-704-r1"]
    # the runs written up in docs/training-history.md are not run again where their folders are gone
    assert lines[0].startswith("studio-all150-640: recorded: carmask train --init shipped --model unet-mnv2")
    assert [line.split(": ")[1] for line in lines] == ["recorded"] * 17
    history = (ROOT / "docs" / "training-history.md").read_text()
    assert all(line.split(":")[0] in history for line in lines if ": recorded: " in line)
    (refiner, people, lighter, again, camera, larger, small, noise, default_again, full, full_half, refiner_1024,
     default_larger, default_larger_again, best_again, general_larger) = (
        shlex.split(line.split(": ", 2)[2]) for line in lines[1:])
    # the general run at the second look's size is the light recipe at 704x960
    assert general_larger[1:4] == ["train-general", "--init", "general"]
    assert general_larger[general_larger.index("--size") + 1] == "704x960"
    assert [a for a in general_larger if a != "704x960"][:-2] == [a for a in lighter if a != "544x736"][:-2]
    # the third general run repeats the second with another seed, to average in
    assert again[:-1] == lighter[:-1] and again[-2] == "--seed" and again[-1] != lighter[-1]
    # the refiner refines the studio run's own model
    assert refiner[1:4] == ["train-refiner", "--coarse", f"{tmp_path}/studio-all150-640"]
    assert people[1:4] == ["train-general", "--init", "general"]
    # their options are the commands' own: a run would not fail hours later on a typo
    configs = []
    monkeypatch.setattr(general, "train_anywhere",
                        lambda config: configs.append(config) or {"best_outdoor_val_dice": 0.5})
    result = CliRunner().invoke(app, [*people[1:], "--data", str(synth_data), "--wild", str(wild),
                                      "--out", str(tmp_path / "general")])
    assert result.exit_code == 0, result.output
    assert configs[0].init == "general" and configs[0].mix.people > 0 and configs[0].mix.shadows > 0
    assert configs[0].precision
    # the second general run is the first made lighter: fewer people and shadows, a shorter run
    assert lighter[1:4] == ["train-general", "--init", "general"]
    result = CliRunner().invoke(app, [*lighter[1:], "--data", str(synth_data), "--wild", str(wild),
                                      "--out", str(tmp_path / "general-light")])
    assert result.exit_code == 0, result.output
    light = configs.pop()
    assert 0 < light.mix.people < configs[0].mix.people and 0 < light.mix.shadows < configs[0].mix.shadows
    assert light.epochs < configs[0].epochs and light.lr < configs[0].lr
    # the small-car run is the light recipe with distant cars weighed more
    result = CliRunner().invoke(app, [*small[1:], "--data", str(synth_data), "--wild", str(wild),
                                      "--out", str(tmp_path / "general-small")])
    assert result.exit_code == 0, result.output
    boosted = configs.pop()
    assert boosted.small_car_boost > light.small_car_boost and boosted.lr == light.lr
    # the camera run is the light recipe with another camera's look on some pictures
    result = CliRunner().invoke(app, [*camera[1:], "--data", str(synth_data), "--wild", str(wild),
                                      "--out", str(tmp_path / "general-camera")])
    assert result.exit_code == 0, result.output
    looked = configs.pop()
    assert looked.mix.camera > light.mix.camera == 0 and looked.lr == light.lr
    result = CliRunner().invoke(app, [*noise[1:], "--data", str(synth_data), "--wild", str(wild),
                                      "--out", str(tmp_path / "general-noise")])
    assert result.exit_code == 0, result.output
    noisy = configs.pop()
    assert noisy.mix.camera == looked.mix.camera and noisy.mix.camera_style.changes == ("noise",)
    monkeypatch.setattr(refiner_train, "train_refiner", lambda config, track=None: configs.append(config)
                        or {"steps": 1, "best_val_refined_wrong": 1.0})
    result = CliRunner().invoke(app, [*refiner[1:4], "--coarse", "studio", *refiner[4:],
                                      "--data", str(synth_data), "--out", str(tmp_path / "refiner")])
    assert result.exit_code == 0, result.output
    assert configs[1].steps_per_epoch >= 1000 and configs[1].precision
    # the larger look fine-tunes the studio run's own model
    assert larger[1:4] == ["train", "--init", f"{tmp_path}/studio-all150-640"]
    import carmask.training.train as training

    monkeypatch.setattr(training, "train", lambda config: configs.append(config) or {})
    result = CliRunner().invoke(app, ["train", "--init", "shipped", *larger[4:], "--data", str(synth_data),
                                      "--out", str(tmp_path / "larger")])
    assert result.exit_code == 0, result.output
    assert configs[2].size == (1024, 1536) and configs[2].val_cars == "shipped" and configs[2].precision
    # the default's size again from the larger look's model, and Carvana's own resolution from
    # it, in one pass without a cache
    assert default_again[1:4] == ["train", "--init", f"{tmp_path}/studio-1024-r1"]
    result = CliRunner().invoke(app, ["train", "--init", "shipped", *default_again[4:], "--data",
                                      str(synth_data), "--out", str(tmp_path / "default-again")])
    assert result.exit_code == 0, result.output
    assert configs.pop().size == (640, 960)
    assert full[1:4] == ["train", "--init", f"{tmp_path}/studio-1024-r1"] and "--cache" not in full
    result = CliRunner().invoke(app, ["train", "--init", "shipped", *full[4:], "--data", str(synth_data),
                                      "--out", str(tmp_path / "full")])
    assert result.exit_code == 0, result.output
    full_size = configs.pop()
    assert full_size.size == (1280, 1920) and full_size.val_cars == "shipped" and full_size.epochs == 1
    # its second try fits a session: half an epoch, from the shipped 1024x1536 file where
    # studio-1024-r1's folder is gone
    assert full_half[1:4] == ["train", "--init", "src/carmask/weights/carvana-unet-mnv2-1024.safetensors"]
    assert (ROOT / full_half[3]).is_file()
    result = CliRunner().invoke(app, ["train", *full_half[2:], "--data", str(synth_data),
                                      "--out", str(tmp_path / "full-half")])
    assert result.exit_code == 0, result.output
    half = configs.pop()
    assert half.size == full_size.size and half.limit_train_batches == 600 and half.lr == full_size.lr
    # the refiner of best's own outlines: refiner-r3's recipe on the shipped 1024x1536 file
    assert refiner_1024[1:4] == ["train-refiner", "--coarse", full_half[3]] and refiner_1024[4:] == refiner[4:]
    # the default fine-tuned at a larger look, which its int8 decoder pays for, in one pass
    assert default_larger[1:4] == ["train", "--init", "shipped"] and "--cache" not in default_larger
    result = CliRunner().invoke(app, ["train", *default_larger[2:], "--data", str(synth_data),
                                      "--out", str(tmp_path / "default-larger")])
    assert result.exit_code == 0, result.output
    larger_default = configs.pop()
    assert larger_default.size == (768, 1152) and larger_default.val_cars == "shipped" and larger_default.epochs == 1
    # its second run, to average in: the same recipe with another seed, from the same file, kept
    # in runs/ (the shipped default stands in where it is gone, as on a fresh checkout)
    kept = "runs/studio-all150-640.safetensors"
    assert default_larger_again[1:4] == ["train", "--init", kept if (ROOT / kept).is_file() else "shipped"]
    assert default_larger_again[4:-2] == default_larger[4:] and default_larger_again[-2:] == ["--seed", "1"]
    # the same for best: its shipped 1024x1536 file again at its own size, another seed, to average in
    assert best_again[1:4] == ["train", "--init", full_half[3]] and "--cache" not in best_again
    result = CliRunner().invoke(app, ["train", *best_again[2:], "--data", str(synth_data),
                                      "--out", str(tmp_path / "best-again")])
    assert result.exit_code == 0, result.output
    best_run = configs.pop()
    assert best_run.size == (1024, 1536) and best_run.limit_train_batches == 600 and best_run.seed == 1
    assert best_run.val_every == 0.5


def test_bf16_autocast_keeps_the_masks_of_fp32_on_real_photos(held_out):
    """The campaign trains in bf16 where the CPU has it: its forward pass must mask a held-out
    car as fp32 does. Tolerance: the masks agree to Dice 0.999, and each scores within 0.001
    of the other against the truth."""
    import torch

    from carmask.data.io import read_mask, read_photo
    from carmask.inference.outputs import upsample
    from carmask.training.models.io import load_model

    network, config = load_model("studio")
    network = network.to(memory_format=torch.channels_last)
    photo = read_photo(held_out[0]).pixels
    from carmask.inference.predictor import Predictor
    inputs = torch.from_numpy(Predictor.preprocess(_Prep(config), photo)[None]).contiguous(
        memory_format=torch.channels_last)
    with torch.inference_mode():
        fp32 = network(inputs).float().numpy()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = network(inputs).float().numpy()
    truth = read_mask(held_out[1])
    masks = [upsample(out, truth.shape)[0, 0] > 0 for out in (fp32, bf16)]
    dice = lambda a, b: 2 * (a & b).sum() / (a.sum() + b.sum())
    assert dice(*masks) > 0.999
    assert abs(dice(masks[0], truth) - dice(masks[1], truth)) < 0.001
    assert dice(masks[1], truth) > 0.99


class _Prep:
    """Just what Predictor.preprocess reads from a predictor."""

    def __init__(self, config: dict) -> None:
        self.size, self.channels = tuple(config["input_size"]), config["channels"]
        self.mean = np.array(config["mean"], np.float32).reshape(1, 1, -1)
        self.std = np.array(config["std"], np.float32).reshape(1, 1, -1)
