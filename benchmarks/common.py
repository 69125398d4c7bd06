"""Shared bits of the benchmarks: where the data is, timing, and the result line format."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARVANA = Path(os.environ.get("CARMASK_CARVANA", ROOT.parent / "shared" / "data" / "carvana"))
OUTPUT = ROOT / "bench-output"


def require_data() -> Path:
    if not (CARVANA / "train_masks").is_dir():
        raise SystemExit(f"benchmarks need the real Carvana data at {CARVANA} (CARMASK_CARVANA)")
    return CARVANA


def machine() -> str:
    cpus = os.cpu_count()
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{cpus} cores, {model}, Python {platform.python_version()}"


def median_ms(fn, items, repeat: int = 1) -> float:
    times = []
    for _ in range(repeat):
        for item in items:
            start = time.perf_counter()
            fn(item)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def report(name: str, **figures) -> dict:
    """Print one benchmark's figures as a JSON line (run_all collects them)."""
    line = {"benchmark": name, **figures}
    print(json.dumps(line), flush=True)
    return line
