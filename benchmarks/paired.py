"""Compare two models photo by photo: the per_image.csv files of two `carmask evaluate` runs on
the same photos. A new model file ships only when it beats the shipped one by more than the noise
(issue 24): the mean paired difference against its standard error, and how many photos each wins.

    python benchmarks/paired.py runs/eval-shipped/per_image.csv runs/eval-new/per_image.csv
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd


def paired(before: Path, after: Path, column: str = "dice") -> dict:
    """after - before on the photos both scored, by photo: mean, standard error, wins."""
    a = pd.read_csv(before, dtype={"image_id": str}).set_index("image_id")
    b = pd.read_csv(after, dtype={"image_id": str}).set_index("image_id")
    common = a.index.intersection(b.index)
    if len(common) < 2:
        raise SystemExit(f"{before} and {after} share {len(common)} scored photos: nothing to compare")
    diff = b.loc[common, column] - a.loc[common, column]
    error = diff.std(ddof=1) / math.sqrt(len(diff))
    result = {"photos": len(common), "before": round(a.loc[common, column].mean(), 6),
              "after": round(b.loc[common, column].mean(), 6), "difference": round(diff.mean(), 6),
              "standard_error": round(error, 6),
              "z": round(diff.mean() / error, 2) if error else None,
              "after_better": int((diff > 0).sum()), "before_better": int((diff < 0).sum())}
    if "make" in a:  # by make, or by kind of photo for an outdoor folder
        by = diff.groupby(a.loc[common, "make"])
        result["by_make"] = {str(k): {"photos": int(v.size), "difference": round(v.mean(), 6)}
                             for k, v in by}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="per_image.csv of the model in use")
    parser.add_argument("after", type=Path, help="per_image.csv of the candidate")
    parser.add_argument("--column", default="dice")
    print(json.dumps(paired(**vars(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
