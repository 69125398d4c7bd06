"""Index and validate the real folder (1600 photos + masks, 45 test photos).

Target: <= 10 s including the validation (every mask decoded, every photo's header and end
checked). The deep check (every photo decoded too) is reported beside it.
"""

from __future__ import annotations

import sys
import time

from common import report, require_data

from carmask.data.layout import index_dataset


def main() -> dict:
    data = require_data()
    timings = {}
    for label, kwargs in (("header_only", {"check_pixels": False}), ("default", {}),
                          ("deep", {"deep": True})):
        start = time.perf_counter()
        index = index_dataset(data, **kwargs)
        timings[label] = time.perf_counter() - start
        assert not index.problems, index.problems[:3]
    return report(
        "index", images=len(index.records), header_only_s=round(timings["header_only"], 2),
        default_s=round(timings["default"], 2), deep_s=round(timings["deep"], 2),
        target_met=timings["default"] <= 10,
    )


if __name__ == "__main__":
    sys.exit(0 if main()["target_met"] else 1)
