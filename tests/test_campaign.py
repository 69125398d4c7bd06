"""The background training campaign (issue 24): benchmarks/campaign.sh resumes a killed run from
its last checkpoint, and says so when the checkpoints are gone; bf16 keeps the masks."""

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
