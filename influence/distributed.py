"""torch.distributed, as `torchrun` sets it up: which rank this is, and a barrier.

`torchrun --nproc_per_node N -m influence.cli featurize ...` starts N processes with
RANK/WORLD_SIZE/LOCAL_RANK in the environment; `init_from_env` joins them in one process
group (NCCL on GPUs, gloo on CPUs). A single process without those variables is rank 0 of 1.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Dist:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def group(self) -> str | None:
        """A name every rank of this job shares (for the datastore lock), None when alone."""
        if self.world_size == 1:
            return None
        return f"torch.distributed:{os.environ.get('TORCHELASTIC_RUN_ID', 'job')}:{self.world_size}"


def current() -> Dist:
    """The process group this process belongs to (rank 0 of 1 when there is none)."""
    try:
        # heavy: imported on use, not at start-up
        import torch.distributed as dist
    except ImportError:  # a torch without distributed support
        return Dist()
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size())
    return Dist()


def init_from_env() -> Dist:
    """Join the process group `torchrun` describes in the environment, if any.

    The timeout is long (INFLUENCE_DIST_TIMEOUT_MIN, default 600 minutes) because ranks wait
    at a barrier while rank 0 runs the warmup.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return current()
    # heavy: imported on use, not at start-up
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        timeout = datetime.timedelta(minutes=float(os.environ.get("INFLUENCE_DIST_TIMEOUT_MIN", "600")))
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=timeout)
    return current()


def barrier() -> None:
    if current().world_size > 1:
        # heavy: imported on use, not at start-up
        import torch.distributed as dist

        dist.barrier()
