"""`carmask predict` spread over several processes, GPUs or machines by torchrun.

torchrun ships with torch, which carmask already carries: it starts N processes per node on M
nodes, gives each its RANK, WORLD_SIZE and LOCAL_RANK, restarts failed ones (`--max-restarts`),
and SLURM or Kubernetes start it on each node. carmask schedules nothing itself. Under torchrun,
each process predicts its shard (every WORLD_SIZE-th photo from its RANK) into its own part file,
waits for the others at a barrier, and rank 0 merges the parts into the submission in sample
order:

    torchrun --nproc-per-node 4 -m carmask predict --data ~/kaggle/carvana --out sub.csv --device cuda
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path


@dataclass(frozen=True)
class Rank:
    index: int  # RANK: 0 .. count - 1, across every node
    count: int  # WORLD_SIZE
    local: int  # LOCAL_RANK: this process's GPU on its node

    @property
    def leader(self) -> bool:
        return self.index == 0


def torchrun_rank() -> Rank | None:
    """This process's place when torchrun started several, else None."""
    try:
        count = int(os.environ.get("WORLD_SIZE", "1"))
        if count <= 1 or "RANK" not in os.environ:
            return None
        return Rank(int(os.environ["RANK"]), count, int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun)") from None


def part_path(out: Path, rank: Rank) -> Path:
    """The file one rank writes its share of the submission to, beside `out`."""
    return out.with_name(f"{out.stem}.part{rank.index}of{rank.count}{out.suffix}")


def join(timeout_hours: float = 48) -> None:
    """Join the process group (gloo: a barrier needs no GPU). The timeout covers the longest
    share a rank may take, since the others wait for it at `wait_for_all`."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(hours=timeout_hours))


def wait_for_all() -> None:
    import torch.distributed as dist

    dist.barrier()
    # every rank has passed the barrier before any leaves the group
    dist.destroy_process_group()


def merge_parts(out: Path, rank: Rank, names: list[str]) -> list[str]:
    """Rank 0, after the barrier: join every rank's part into `out` in `names` order, check it,
    remove the parts; returns the names without a mask (their rows are empty)."""
    from carmask.kaggle.submission import merge_submissions

    parts = [part_path(out, Rank(index, rank.count, 0)) for index in range(rank.count)]
    missing = merge_submissions(parts, out, names)
    for part in parts:
        part.unlink()
    return missing
