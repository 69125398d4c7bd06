"""`carmask predict` spread over two processes by torchrun (on the CPU): each predicts its shard
into a part file, and rank 0 merges them into the same submission one process writes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import make_kaggle_folder


def predict(args, env=None, timeout=240):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


@pytest.mark.parametrize("processes", [2])
def test_torchrun_spreads_predict_and_merges_the_parts(carvana, tmp_path, processes):
    data = make_kaggle_folder(carvana, tmp_path / "kaggle", cars=1, test_images=5)
    options = ["--data", str(data), "--size", "160x240", "--backend", "onnx"]
    single = predict(["-m", "carmask", "predict", *options, "--out", str(tmp_path / "one.csv")])
    assert single.returncode == 0, single.stderr
    spread = predict(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
                      "-m", "carmask", "predict", *options,
                      "--out", str(tmp_path / "spread.csv")], env={"OMP_NUM_THREADS": "1"})
    assert spread.returncode == 0, spread.stdout + spread.stderr
    assert f"merged {processes} parts into" in spread.stdout
    assert (tmp_path / "spread.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()
    assert sorted(p.name for p in tmp_path.glob("spread*")) == ["spread.csv"]  # parts removed
    # a torchrun job refuses --shard (two ways of splitting) and an existing output
    both = predict(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                    "-m", "carmask", "predict", *options, "--out", str(tmp_path / "spread.csv")])
    assert both.returncode != 0 and "exists; --overwrite replaces it" in both.stdout + both.stderr
