"""Cut-outs a dealer can publish (issue 26): what soft edges, a canvas and a synthetic shadow
cost on top of today's hard-edged cut-out, on a Carvana photo and on a 24-megapixel one.

Targets: a cut-out with soft edges and a canvas within 1.25x the hard-edged one (the baseline,
measured in the same run); the synthetic shadow under 1 s extra on 24 megapixels.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from common import report, require_data


def seconds(fn, repeat: int = 3) -> float:
    fn()  # warm
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    import carmask
    from carmask.apps.canvas import ground_shadow

    data = require_data()
    photo = sorted((data / "test").glob("*.jpg"))[0]
    session = carmask.load()
    general = carmask.load("general")
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "24mp.jpg"
        cv2.imwrite(str(big), cv2.resize(cv2.imread(str(photo)), (6000, 4000)), [cv2.IMWRITE_JPEG_QUALITY, 92])
        for name, path in (("carvana_1918x1280", photo), ("photo_6000x4000", big)):
            hard = seconds(lambda: session.remove(path, hard_edges=True).tobytes())
            soft = seconds(lambda: session.remove(path).tobytes())
            framed = seconds(lambda: session.remove(path, background="white",
                                                     canvas="1600x1200").tobytes())
            report(f"cutout_{name}", hard_s=round(hard, 3), soft_s=round(soft, 3),
                   soft_canvas_s=round(framed, 3), ratio_soft=round(soft / hard, 3),
                   ratio_soft_canvas=round(framed / hard, 3), target="<= 1.25x hard",
                   target_met=max(soft, framed) <= 1.25 * hard)
        outdoor = np.ascontiguousarray(cv2.imread(str(big))[..., ::-1])
        mask = session.mask(outdoor)
        alone = seconds(lambda: ground_shadow(mask))
        plain = seconds(lambda: general.remove(outdoor, background="white"))
        shaded = seconds(lambda: general.remove(outdoor, background="white", shadow=True))
        report("ground_shadow_24mp", shadow_alone_s=round(alone, 3),
               extra_s=round(shaded - plain, 3), target="< 1 s extra",
               target_met=shaded - plain < 1.0)


if __name__ == "__main__":
    main()
