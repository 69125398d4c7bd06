"""The light install and start-up (issue 25).

- Start-up: `carmask cutout one.jpg --out one.png`, warm (the files in the page cache), minus
  the photo's own work (decode, predict, compose, encode, timed in-process the same way): target
  under 1.5 s. Baseline in the same run: the same command with torch imported first, which is
  what every CLI call paid before the inference path left torch.
- The install: a fresh venv with the wheel and no extras: target at most 700 MB, no torch.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, report, require_data

CLI = "from carmask.cli import main; import sys; sys.argv = ['carmask', *sys.argv[1:]]; main()"


def wall(args: list[str], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def photo_work(photo: Path, out: Path) -> float:
    """The photo's own work in one process, models already loaded: what start-up is not."""
    from carmask.apps.batch import cutout_files
    from carmask.inference.route import create_predictor

    predictor = create_predictor()
    cutout_files(predictor, [photo], out, overwrite=True, single_file=True)  # warm
    times = []
    for _ in range(5):
        start = time.perf_counter()
        cutout_files(predictor, [photo], out, overwrite=True, single_file=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def install_size() -> tuple[float, bool, int]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(tmp / "wheel"), str(ROOT)], check=True, capture_output=True)
        subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], check=True)
        wheel = next((tmp / "wheel").glob("*.whl"))
        subprocess.run([str(tmp / "venv/bin/pip"), "install", "-q", str(wheel)], check=True,
                       capture_output=True)
        size = sum(p.stat().st_size for p in (tmp / "venv").rglob("*") if p.is_file() and not p.is_symlink())
        listing = subprocess.run([str(tmp / "venv/bin/pip"), "list", "--format=freeze"],
                                 capture_output=True, text=True).stdout.split()
        print("packages: " + " ".join(listing), file=sys.stderr)
        torch = any(line.lower().startswith("torch==") for line in listing)
        return size / 2**20, torch, len(listing)


def main() -> None:
    data = require_data()
    photo = sorted((data / "test").glob("*.jpg"))[0]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "one.png"
        command = ["cutout", str(photo), "--out", str(out), "--overwrite"]
        total = wall([sys.executable, "-c", CLI, *command])
        before = wall([sys.executable, "-c", "import torch; " + CLI, *command])
        work = photo_work(photo, out)
    startup, old_startup = total - work, before - work
    report("cli_startup", seconds=round(startup, 3), baseline_with_torch=round(old_startup, 3),
           ratio_to_baseline=round(startup / old_startup, 3), photo_work_s=round(work, 3),
           target="<= 1.5 s", target_met=startup <= 1.5)
    size, torch, packages = install_size()
    report("plain_install", megabytes=round(size), packages=packages, torch=torch,
           target="<= 700 MB, no torch", target_met=size <= 700 and not torch)


if __name__ == "__main__":
    main()
