"""The full prediction pipeline (decode → model → upsample → threshold → RLE → CSV) with the
shipped model on the 45 real test photos, for the torch and onnx backends and several input sizes.

Target (CPU, 2 cores): >= 4 images/s with onnx at the model's default size (issue 13; it was 1).
Also: peak RSS of a long run (2,000 photos: the real ones repeated) within 10% of a short one
(200), in separate processes.
On a GPU: >= 335 images/s over 2,000 photos (issue 13; it was 115), the 100,064-image test set
in under 5 minutes.

    python benchmarks/bench_predict.py [--sizes 320x480 640x960] [--memory-size 160x240]
    python benchmarks/bench_predict.py --device cuda --sizes --throughput-count 2000 --batch 16 --skip-memory

`--fast` makes the throughput stage time both ways of writing a submission on the torch backend,
in separate processes, one after the other: the plain path (masks copied to the host and
encoded there: the baseline) and the fast path (`Predictor.predict_runs`: runs found on the
device, only they copied back). It prints each one's photos/s, the ratio fast/plain, and whether
the two CSVs are byte-identical (the CPU test proves it; this checks it on the GPU):

    python benchmarks/bench_predict.py --device cuda --sizes --throughput-count 2000 --batch 16 --skip-memory --fast

`--quality` instead times `--quality best` (flip TTA and the outline refiner, where the release
has one) against the default, fast, on onnxruntime, and prints the ratio:

    python benchmarks/bench_predict.py --quality

`--baseline MODEL` instead times the model against another file end to end, each at its own
input size, taking turns (the default's speed may not drop by more than 10%, issue 24):

    python benchmarks/bench_predict.py --baseline old-studio.onnx

`--profile` instead times each stage of the pipeline per photo, in this process, to show where a
photo's time goes (on a GPU: whether the model, the upsampling, the copy back or the RLE):

    python benchmarks/bench_predict.py --profile --batch 1
    python benchmarks/bench_predict.py --profile --device cuda --batch 16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import OUTPUT, report, require_data

from carmask.training.models.io import load_model_config

RUN = """
import json, resource, sys, time
from pathlib import Path
from carmask.inference.predictor import Predictor
from carmask.inference.job import run_prediction
photos = json.loads(Path(sys.argv[1]).read_text()); backend = sys.argv[2]; size = tuple(json.loads(sys.argv[3]) or ()) or None
device, model, batch, workers = sys.argv[5], sys.argv[6] or None, int(sys.argv[7]), int(sys.argv[8]) or None
fast = {"auto": None, "plain": False, "fast": True}[sys.argv[9]]
predictor = Predictor(model, backend=backend, size=size, batch=batch, device=device, quality=sys.argv[10])
names = list(photos)
start = time.perf_counter()
summary = run_prediction(predictor, {n: Path(p) for n, p in photos.items()}, names, submission=Path(sys.argv[4]),
                         workers=workers, fast=fast)
print(json.dumps({"seconds": time.perf_counter() - start, "images": summary.predicted,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


OPTIONS = argparse.Namespace(device="cpu", model="", batch=4, workers=0)


def run(photos: dict[str, str], backend: str, size, out: Path, path: str = "auto",
        quality: str = "fast", model: str | None = None) -> dict:
    """One prediction job in a fresh process (so its peak RSS is its own). `path`: "plain",
    "fast" (Predictor.predict_runs) or "auto" (run_prediction's choice: fast on torch);
    `quality`: the predictor's ("best": flip TTA and the outline refiner); `model`: default
    --model's."""
    listing = out.with_suffix(".photos.json")  # 2,000 paths do not fit on a command line
    listing.write_text(json.dumps(photos))
    result = subprocess.run([sys.executable, "-c", RUN, str(listing), backend, json.dumps(size),
                             str(out), OPTIONS.device, OPTIONS.model if model is None else model,
                             str(OPTIONS.batch),
                             str(OPTIONS.workers), path, quality], capture_output=True, text=True,
                            check=False)
    if result.returncode:
        raise SystemExit(f"prediction failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


TEST_SET = 100_064  # photos in Kaggle's test set
GPU_TARGET, CPU_TARGET = 335, 4  # photos/s end to end (issue 13)


def repeated(photos: list[Path], count: int) -> dict[str, str]:
    """`count` distinct names cycling over the real photos (names must be unique in a submission)."""
    return {f"{i:06d}_{p.name}": str(p) for i, p in zip(range(count), photos * (count // len(photos) + 1))}


STAGES = ("read+decode", "resize+normalise", "host→device", "model forward",
          "upsample+threshold", "device→host", "RLE", "CSV write")


def profile(photos: list[Path], out: Path) -> None:
    """Time each stage per photo on `photos` (one untimed batch first, to warm up), and report
    each stage's median and mean ms per photo and its share of the total. A stage that runs on a
    batch counts its time divided among the batch's photos. Onnxruntime on the CPU, torch on a
    GPU; on a GPU, also the alternative to the copy back and `encode`: the runs found on the
    device (`device_rle.device_runs`) and only they copied back."""
    import io
    import statistics
    import time

    import numpy as np
    import torch

    from carmask.kaggle import rle
    from carmask.training import device_rle
    from carmask.data.io import read_photo
    from carmask.training.models.outputs import car_mask, upsample
    from carmask.inference.predictor import Predictor

    args = OPTIONS
    backend = "onnx" if args.device == "cpu" else "torch"
    predictor = Predictor(args.model or None, backend=backend, device=args.device, batch=args.batch)
    on_torch, cuda = predictor.backend == "torch", str(predictor.device).startswith("cuda")
    times: dict[str, list[float]] = {stage: [] for stage in (*STAGES, "device RLE")}

    def timed(stage: str, share: int, fn, *inputs, **options):  # split over `share` photos
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn(*inputs, **options)
        if cuda:
            torch.cuda.synchronize()
        times[stage].extend([(time.perf_counter() - start) / share] * share)
        return result

    def forward(inputs):  # on torch, without the copy to the device: a stage of its own
        return predictor._forward(inputs) if on_torch else predictor.raw_outputs(inputs)

    def on_device(outputs, sizes):  # Predictor.to_masks, stopped before the copy back
        return [car_mask(upsample(o[None], s), predictor.kind, predictor.threshold)[0]
                for o, s in zip(outputs, sizes)]

    def rle_on_device(masks):
        return [device_rle.encode_runs(*runs) for runs in device_rle.device_runs(torch.stack(masks))]

    def pipeline(chunk: list[Path], csv) -> None:
        n = len(chunk)
        read = [timed("read+decode", 1, read_photo, p, cover=predictor.size) for p in chunk]
        inputs = timed("resize+normalise", n, lambda: np.stack([predictor.preprocess(p.pixels) for p in read]))
        sizes = [p.size for p in read]
        if on_torch:
            inputs = timed("host→device", n, lambda x: torch.from_numpy(x).to(predictor.device), inputs)
        else:
            times["host→device"].extend([0.0] * n)
        outputs = timed("model forward", n, forward, inputs)
        if on_torch:
            device_masks = timed("upsample+threshold", n, on_device, outputs, sizes)
            masks = timed("device→host", n, lambda ms: [m.cpu().numpy() for m in ms], device_masks)
            alternative = timed("device RLE", n, rle_on_device, device_masks)
        else:
            masks = timed("upsample+threshold", n, predictor.to_masks, outputs, sizes)
            times["device→host"].extend([0.0] * n)
        encodings = [timed("RLE", 1, rle.encode, m) for m in masks]
        if on_torch:
            assert alternative == encodings, "device_runs disagrees with encode"
        for path, encoding in zip(chunk, encodings):
            timed("CSV write", 1, csv.write, f"{path.name},{encoding}\n")

    batches = [photos[i:i + args.batch] for i in range(0, len(photos), args.batch)]
    pipeline(batches[0], io.StringIO())  # warm-up: first calls allocate and compile
    for stage_times in times.values():
        stage_times.clear()
    with open(out, "w") as csv:
        csv.write("img,rle_mask\n")
        for chunk in batches:
            pipeline(chunk, csv)
    total = sum(statistics.fmean(times[stage]) for stage in STAGES)
    common = dict(device=args.device, backend=predictor.backend, batch=args.batch, images=len(photos),
                  size="x".join(map(str, predictor.size)))
    for stage in STAGES:
        report("predict_profile", stage=stage, **common,
               median_ms=round(statistics.median(times[stage]) * 1e3, 2),
               mean_ms=round(statistics.fmean(times[stage]) * 1e3, 2),
               share_percent=round(100 * statistics.fmean(times[stage]) / total, 1))
    report("predict_profile", stage="total", **common, mean_ms=round(total * 1e3, 2),
           images_per_s=round(1 / total, 2))
    if on_torch:  # what the copy back and RLE would cost if only the runs came back
        replaced = sum(statistics.fmean(times[stage]) for stage in ("device→host", "RLE"))
        report("predict_profile_device_rle", **common,
               median_ms=round(statistics.median(times["device RLE"]) * 1e3, 2),
               mean_ms=round(statistics.fmean(times["device RLE"]) * 1e3, 2),
               replaces_mean_ms=round(replaced * 1e3, 2))


def throughput(photos: list[Path], real: dict[str, str]) -> None:
    """`--throughput-count` photos end to end at the model's default size; with `--fast`, the
    plain path first (the baseline), then the fast path, each in its own process."""
    args = OPTIONS
    # the fast path is torch's; on the CPU the plain default is onnxruntime
    backend = "torch" if args.fast or args.device != "cpu" else "onnx"
    run(dict(list(real.items())[:8]), backend, None, OUTPUT / "warm.csv")
    listing = repeated(photos, args.throughput_count)
    rates = {}
    for path in ("plain", "fast") if args.fast else ("auto",):
        figures = run(listing, backend, None, OUTPUT / f"throughput-{path}.csv", path)
        rate = rates[path] = figures["images"] / figures["seconds"]
        report("predict_throughput", device=args.device, backend=backend, batch=args.batch,
               model=args.model or "shipped", path=path, images=figures["images"],
               images_per_s=round(rate, 2), projected_test_set_minutes=round(TEST_SET / rate / 60, 1),
               peak_rss_mb=round(figures["peak_rss_mb"]),
               target_met=_met(rate, args.device, backend))
    if args.fast:
        same = (OUTPUT / "throughput-fast.csv").read_bytes() == (OUTPUT / "throughput-plain.csv").read_bytes()
        report("predict_fast_path", device=args.device, backend=backend, batch=args.batch,
               model=args.model or "shipped", images=len(listing),
               plain_images_per_s=round(rates["plain"], 2), fast_images_per_s=round(rates["fast"], 2),
               ratio=round(rates["fast"] / rates["plain"], 3), byte_identical=same,
               projected_test_set_minutes=round(TEST_SET / rates["fast"] / 60, 1),
               target_met=same and _met(rates["fast"], args.device, backend) is not False)


def _met(rate: float, device: str, backend: str) -> bool | None:
    """Issue 13's targets: ≥ 335 photos/s on a GPU, ≥ 4 on 2 CPU cores with onnxruntime (the CPU
    default); torch on a CPU has none."""
    if device != "cpu":
        return rate >= GPU_TARGET
    return rate >= CPU_TARGET if backend == "onnx" else None


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
    parser.add_argument("--quality", action="store_true",
                        help="only time --quality best against fast (the baseline) at the model's "
                             "size on onnxruntime, and report the ratio")
    parser.add_argument("--baseline", default="", metavar="MODEL",
                        help="only time the model (--model, default the shipped one) against this "
                             "model file, each at its own input size on onnxruntime, taking turns "
                             "3 times, and report the ratio (the default's speed may not drop by "
                             "over 10%%)")
    parser.add_argument("--profile", action="store_true",
                        help="only time each stage per photo (decode ... CSV) at the model's size")
    parser.add_argument("--fast", action="store_true",
                        help="throughput stage: time the plain path (baseline) and the fast path "
                             "(runs found on the device) on torch, report the ratio and whether "
                             "the CSVs are byte-identical")
    args = parser.parse_args(namespace=OPTIONS)
    data = require_data()
    photos = sorted((data / "test").glob("*.jpg"))
    OUTPUT.mkdir(exist_ok=True)
    if args.profile:
        return profile(photos, OUTPUT / "profile.csv")
    real = {p.name: str(p) for p in photos}
    if args.quality:
        return qualities(real)
    if args.baseline:
        return against(real, args.baseline)
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
                   target_met=_met(figures["images"] / figures["seconds"], args.device, backend)
                   if size_text == default_size else None)
    if args.throughput_count:
        throughput(photos, real)
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


def qualities(real: dict[str, str]) -> None:
    """--quality best (flip TTA and the outline refiner) against fast, on the real test photos."""
    run(dict(list(real.items())[:4]), "onnx", None, OUTPUT / "warm.csv")
    speed = {}
    for quality in ("fast", "best"):
        figures = run(real, "onnx", None, OUTPUT / f"predict-{quality}.csv", quality=quality)
        speed[quality] = figures["images"] / figures["seconds"]
        report("predict_quality", quality=quality, images=figures["images"],
               images_per_s=round(speed[quality], 2), peak_rss_mb=round(figures["peak_rss_mb"]),
               ratio_to_fast=round(speed[quality] / speed["fast"], 2))


def against(real: dict[str, str], baseline: str, rounds: int = 3) -> None:
    """--model against `baseline` end to end, each at its own size on onnxruntime, in turns so
    both see the same load: the median photos/s of each and their ratio."""
    import statistics

    run(dict(list(real.items())[:4]), "onnx", None, OUTPUT / "warm.csv")
    rates: dict[str, list[float]] = {"model": [], "baseline": []}
    for _ in range(rounds):
        for name, model in (("baseline", baseline), ("model", OPTIONS.model)):
            figures = run(real, "onnx", None, OUTPUT / f"against-{name}.csv", model=model)
            rates[name].append(figures["images"] / figures["seconds"])
    speed = {name: statistics.median(values) for name, values in rates.items()}
    ratio = speed["model"] / speed["baseline"]
    report("predict_against", model=OPTIONS.model or "shipped", baseline=baseline, images=len(real),
           rounds=rounds, images_per_s=round(speed["model"], 2),
           baseline_images_per_s=round(speed["baseline"], 2), ratio=round(ratio, 3),
           target_met=ratio >= 0.9)


if __name__ == "__main__":
    main()
