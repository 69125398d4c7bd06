"""The full prediction pipeline (decode → model → upsample → threshold → RLE → CSV) with the
shipped model on the 45 real test photos, for the torch and onnx backends and several input sizes.

Target (CPU): >= 1 image/s with onnx at the model's default size. Also: peak RSS of a long run
(2,000 photos: the real ones repeated) within 10% of a short one (200), in separate processes.
On a GPU: >= 115 images/s over 2,000 photos, the 100,064-image test set in under 15 minutes.

    python benchmarks/bench_predict.py [--sizes 320x480 640x960] [--memory-size 160x240]
    python benchmarks/bench_predict.py --device cuda --sizes --throughput-count 2000 --batch 16 --skip-memory
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import OUTPUT, report, require_data

from carmask.models.io import load_model_config

RUN = """
import json, resource, sys, time
from pathlib import Path
from carmask.predict import Predictor
from carmask.predict_job import run_prediction
photos = json.loads(Path(sys.argv[1]).read_text()); backend = sys.argv[2]; size = tuple(json.loads(sys.argv[3]) or ()) or None
device, model, batch, workers = sys.argv[5], sys.argv[6] or None, int(sys.argv[7]), int(sys.argv[8]) or None
predictor = Predictor(model, backend=backend, size=size, batch=batch, device=device)
names = list(photos)
start = time.perf_counter()
summary = run_prediction(predictor, {n: Path(p) for n, p in photos.items()}, names, submission=Path(sys.argv[4]),
                         workers=workers)
print(json.dumps({"seconds": time.perf_counter() - start, "images": summary.predicted,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


OPTIONS = argparse.Namespace(device="cpu", model="", batch=4, workers=0)


def run(photos: dict[str, str], backend: str, size, out: Path) -> dict:
    """One prediction job in a fresh process (so its peak RSS is its own)."""
    listing = out.with_suffix(".photos.json")  # 2,000 paths do not fit on a command line
    listing.write_text(json.dumps(photos))
    result = subprocess.run([sys.executable, "-c", RUN, str(listing), backend, json.dumps(size),
                             str(out), OPTIONS.device, OPTIONS.model, str(OPTIONS.batch),
                             str(OPTIONS.workers)], capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"prediction failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


TEST_SET = 100_064  # photos in Kaggle's test set


def repeated(photos: list[Path], count: int) -> dict[str, str]:
    """`count` distinct names cycling over the real photos (names must be unique in a submission)."""
    return {f"{i:06d}_{p.name}": str(p) for i, p in zip(range(count), photos * (count // len(photos) + 1))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="*", default=["320x480", "640x960"])
    parser.add_argument("--memory-size", default="160x240", help="input size for the 200 vs 2000 RSS runs")
    parser.add_argument("--memory-counts", nargs=2, type=int, default=[200, 2000])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="", help="model file or run folder (default: the shipped model)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--workers", type=int, default=0, help="decoding threads (0: the predictor's default)")
    parser.add_argument("--skip-memory", action="store_true", help="skip the 200 vs 2,000 photo RSS runs")
    parser.add_argument("--throughput-count", type=int, default=0,
                        help="also time this many photos (the real ones repeated) end to end at the "
                             "model's default size and project the 100,064-image test set; 2000 on a GPU")
    args = parser.parse_args(namespace=OPTIONS)
    data = require_data()
    photos = sorted((data / "test").glob("*.jpg"))
    OUTPUT.mkdir(exist_ok=True)
    real = {p.name: str(p) for p in photos}
    default_size = "x".join(map(str, load_model_config(args.model or None)["input_size"]))
    backends = ["torch"] if args.device != "cpu" else ["torch", "onnx"]
    for size_text in args.sizes:
        size = [int(v) for v in size_text.split("x")]
        for backend in backends:
            run(dict(list(real.items())[:4]), backend, size, OUTPUT / "warm.csv")  # warm caches
            figures = run(real, backend, size, OUTPUT / "predict.csv")
            report("predict", device=args.device, backend=backend, size=size_text, images=figures["images"],
                   images_per_s=round(figures["images"] / figures["seconds"], 2),
                   peak_rss_mb=round(figures["peak_rss_mb"]),
                   default_size=size_text == default_size,
                   target_met=backend != "onnx" or size_text != default_size or figures["images"] / figures["seconds"] >= 1)
    if args.throughput_count:
        backend = "onnx" if args.device == "cpu" else "torch"
        run(dict(list(real.items())[:8]), backend, None, OUTPUT / "warm.csv")
        figures = run(repeated(photos, args.throughput_count), backend, None, OUTPUT / "throughput.csv")
        rate = figures["images"] / figures["seconds"]
        report("predict_throughput", device=args.device, backend=backend, batch=args.batch,
               model=args.model or "shipped", images=figures["images"],
               images_per_s=round(rate, 2), projected_test_set_minutes=round(TEST_SET / rate / 60, 1),
               peak_rss_mb=round(figures["peak_rss_mb"]),
               target_met=rate >= 115 if args.device != "cpu" else rate >= 1)
    if args.skip_memory:
        return
    size = [int(v) for v in args.memory_size.split("x")]
    short, long = (run(repeated(photos, n), "onnx" if args.device == "cpu" else "torch", size,
                       OUTPUT / f"rss{n}.csv") for n in args.memory_counts)
    growth = long["peak_rss_mb"] / short["peak_rss_mb"] - 1
    report("predict_memory", size=args.memory_size, short_images=short["images"], long_images=long["images"],
           short_peak_rss_mb=round(short["peak_rss_mb"]), long_peak_rss_mb=round(long["peak_rss_mb"]),
           growth_percent=round(100 * growth, 1), long_images_per_s=round(long["images"] / long["seconds"], 2),
           target_met=growth <= 0.10)


if __name__ == "__main__":
    main()
