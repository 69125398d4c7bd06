"""How unsure a studio model is of the Carvana photos it never saw: its unsure pixels per car pixel
(carmask.inference.confidence) on the held-out cars' photos and the test photos. The automatic
choice (carmask.inference.route) sends a studio-looking photo to the general model when the
studio mask's share is above STUDIO_UNSURE_LIMIT, so a new studio file ships only if Carvana's
own photos stay well under it (issue 24).

    python benchmarks/unsure_share.py --model shipped --quality best
    python benchmarks/unsure_share.py --model runs/campaign/studio-1280-r2 --tta
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from common import CARVANA

from carmask.apps.evaluate import photos_to_score
from carmask.data import index_dataset
from carmask.inference.predictor import Predictor
from carmask.inference.route import STUDIO_UNSURE_LIMIT

def unsure_shares(predictor: Predictor, data: Path) -> dict[str, float]:
    """Unsure share by photo name: the model's held-out cars, then the test photos."""
    held_out, _ = photos_to_score(data, "val", predictor.config)
    test = index_dataset(data, check_pixels=False).test
    paths = [record.image_path for record in held_out + test]
    return {Path(p.path).stem: p.confidence.unsure_share for p in predictor.predict_paths(paths)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shipped", help="a model file, run folder or 'shipped'")
    parser.add_argument("--quality", default="fast", choices=["fast", "best"])
    parser.add_argument("--tta", action="store_true", help="flip TTA (best has it already)")
    parser.add_argument("--data", type=Path, default=CARVANA,
                        help="a Kaggle-layout Carvana folder (default: $CARMASK_CARVANA or ../shared)")
    args = parser.parse_args()
    predictor = Predictor(args.model, quality=args.quality, tta=True if args.tta else None)
    shares = np.array(list(unsure_shares(predictor, args.data).values()))
    print(json.dumps({"model": str(predictor.path), "photos": int(shares.size),
                      "median": round(float(np.median(shares)), 4), "max": round(float(shares.max()), 4),
                      "limit": STUDIO_UNSURE_LIMIT}, indent=2))


if __name__ == "__main__":
    main()
