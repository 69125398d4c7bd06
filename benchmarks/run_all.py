"""`make bench`: run every benchmark, print each figure and whether its target is met."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import OUTPUT, machine  # noqa: E402

import bench_index  # noqa: E402
import bench_rle  # noqa: E402
import bench_submission  # noqa: E402


def main() -> int:
    print(f"machine: {machine()}", flush=True)
    results = [bench_rle.main(), bench_index.main(), bench_submission.main()]
    OUTPUT.mkdir(exist_ok=True)
    (OUTPUT / "results.json").write_text(json.dumps({"machine": machine(), "results": results},
                                                    indent=2))
    missed = [r["benchmark"] for r in results if not r["target_met"]]
    print("all targets met" if not missed else f"targets missed: {', '.join(missed)}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
