"""`make bench`: run every benchmark in its own process (so peak memory is its own), print each
figure and whether its target is met, and save the lines to bench-output/results.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from common import OUTPUT, machine  # noqa: E402

BENCHMARKS = ["bench_rle.py", "bench_index.py", "bench_submission.py", "bench_predict.py",
              "bench_serve.py", "bench_general.py", "bench_install.py", "bench_cutout.py"]


def main() -> int:
    print(f"machine: {machine()}", flush=True)
    results = []
    for script in BENCHMARKS:
        run = subprocess.run([sys.executable, script], cwd=HERE, capture_output=True, text=True)
        lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
        for line in lines:
            print(json.dumps(line), flush=True)
        if not lines:
            print(f"{script} failed:\n{run.stderr}", file=sys.stderr)
            lines = [{"benchmark": script, "target_met": False}]
        results.extend(lines)
    OUTPUT.mkdir(exist_ok=True)
    (OUTPUT / "results.json").write_text(json.dumps({"machine": machine(), "results": results},
                                                    indent=2))
    missed = [r["benchmark"] for r in results if not r["target_met"]]
    print("all targets met" if not missed else f"targets missed: {', '.join(missed)}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
