"""torch.distributed, as `torchrun` or `accelerate launch` set it up: which rank this is, the job's key, a barrier.

`torchrun --nproc_per_node N -m influence.cli featurize ...` (or `accelerate launch`) starts N
processes with RANK/WORLD_SIZE/LOCAL_RANK in the environment; `init_from_env` joins them in
one process group (NCCL on GPUs, gloo on CPUs). A single process without those variables is
rank 0 of 1. The trainer hands the group to accelerate, which wraps the model for DDP or FSDP.
"""

from __future__ import annotations

import datetime
import os
import uuid
from dataclasses import dataclass

_job_key: list = []  # [the process group, the key its rank 0 drew]; the group is kept so it is never mistaken


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
        """A name every rank of this job shares and no other job has (for the datastore lock), None when alone.

        See `job_key`: the first call is a collective, made by every rank.
        """
        return None if self.world_size == 1 else job_key()


def job_key() -> str:
    """A random key drawn by rank 0 and broadcast to the others, once per process group.

    torchrun's run id is "none" for every job started without --rdzv-id, so two such jobs
    on shared storage would take each other for one; a drawn key cannot collide. The first
    call is a collective: every rank of the group makes it at the same point (`init_from_env`
    does, for jobs started from the CLI).
    """
    # heavy: imported on use, not at start-up
    import torch.distributed as dist

    world = dist.group.WORLD
    if not _job_key or _job_key[0] is not world:
        drawn = [f"job-{uuid.uuid4().hex}" if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(drawn, src=0)
        _job_key[:] = [world, drawn[0]]
    return _job_key[1]


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
    job_key()  # drawn now, while every rank is here
    return current()


def barrier() -> None:
    if current().world_size > 1:
        # heavy: imported on use, not at start-up
        import torch.distributed as dist

        dist.barrier()
