"""CPU cost of the automatic model choice (issue 12): every consumer's default now looks at each
photo and runs the studio or the general model. The baseline, measured in the same run, is the
studio model alone on the same photos (the default before).

Target: at most 1.5x the baseline's time per photo, on outdoor photos (480x360) and on Carvana
studio photos (1918x1280). The street frames of distant cars are also timed alone: the general
model looks at them twice (carmask.inference.predictor.SecondLook), so they are its dearest photos.

With --baseline FILE.onnx (an earlier general model file), the shipped general model is also timed
against that file on the outdoor photos, taking turns: its speed may move by at most 10%.

    python benchmarks/bench_general.py [--photos 40] [--baseline OLD-general.onnx]
"""

from __future__ import annotations

import argparse
import time

from common import CARVANA, report, require_data

from carmask.data.wild import read_wild, split_wild
from carmask.inference.predictor import Predictor
from carmask.inference.route import AutoPredictor

TARGET = 1.5
GENERAL_TARGET = 1.1  # the general model against an earlier file of it (issue 24)


def seconds_per_photo(predictor, paths) -> float:
    list(predictor.predict_paths(paths[:2]))  # warm-up: sessions, thread pools, caches
    start = time.perf_counter()
    for prediction in predictor.predict_paths(paths):
        assert prediction.error is None, prediction.error
    return (time.perf_counter() - start) / len(paths)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=40, help="photos of each kind")
    parser.add_argument("--baseline", help="an earlier general model file to time the shipped one against")
    args = parser.parse_args()
    data = require_data()
    wild = CARVANA.parent / "cars_in_the_wild"
    _, held_out = split_wild(read_wild(wild))
    sets = {"outdoor 480x360": [p.image_path for p in held_out][: args.photos],
            "street frames 480x360": [p.image_path for p in held_out if p.kind == "camvid"][: args.photos],
            "studio 1918x1280": sorted((data / "test").glob("*.jpg"))[: args.photos]}
    auto, studio = AutoPredictor(backend="onnx"), Predictor("studio", backend="onnx")
    for name, paths in sets.items():
        before = seconds_per_photo(studio, paths)
        after = seconds_per_photo(auto, paths)
        report("general_auto_choice", photos=name, images=len(paths),
               ms_per_photo=round(after * 1e3, 1), studio_alone_ms_per_photo=round(before * 1e3, 1),
               ratio=round(after / before, 2), target=f"<= {TARGET}x the studio model alone",
               target_met=after <= TARGET * before)
    if args.baseline:
        general, earlier = Predictor("general", backend="onnx"), Predictor(args.baseline, backend="onnx")
        product = [p.image_path for p in held_out if p.kind == "web"][: args.photos]
        for name, paths in {"street frames 480x360": sets["street frames 480x360"],
                            "product photos": product}.items():
            runs = [(seconds_per_photo(earlier, paths), seconds_per_photo(general, paths)) for _ in range(2)]
            before, after = min(r[0] for r in runs), min(r[1] for r in runs)
            report("general_against_earlier_file", photos=name, images=len(paths),
                   ms_per_photo=round(after * 1e3, 1), earlier_ms_per_photo=round(before * 1e3, 1),
                   ratio=round(after / before, 2), target=f"<= {GENERAL_TARGET}x the earlier file",
                   target_met=after <= GENERAL_TARGET * before)


if __name__ == "__main__":
    main()
