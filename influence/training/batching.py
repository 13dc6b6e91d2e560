"""Seeded, length-grouped batches: which examples go into each optimizer step and micro-batch.

An epoch's plan depends only on (seed, epoch, lengths), so a resumed run replays the same
order without any saved sampler state. Each optimizer step draws a random set of examples;
within the step they are sorted by length before being cut into micro-batches, so the
padding inside a micro-batch stays small while the steps remain a random shuffle.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's data order and dropout, derived from the run's seed."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def micro_batch_seed(seed: int, epoch: int, step: int, micro_batch: int) -> int:
    """The dropout seed of one micro-batch: the same whichever process of a distributed job runs it."""
    return int(np.random.SeedSequence([seed, epoch, step, micro_batch]).generate_state(1)[0])


def plan_epoch(lengths: Sequence[int], batch_size: int, micro_batch_size: int, *, seed: int,
               epoch: int) -> list[list[list[int]]]:
    """Steps of micro-batches of example indices for one epoch.

    Args:
        lengths: token count of each example.
        batch_size: examples per optimizer step (the last step may hold fewer).
        micro_batch_size: examples per forward/backward pass.
        seed, epoch: decide the shuffle.

    Returns:
        steps[i][j] = the indices of micro-batch j of step i, each micro-batch length-sorted.
    """
    order = np.random.default_rng(epoch_seed(seed, epoch)).permutation(len(lengths))
    steps = []
    for start in range(0, len(order), batch_size):
        chunk = sorted(order[start: start + batch_size].tolist(), key=lambda i: (-lengths[i], i))
        steps.append([chunk[j: j + micro_batch_size] for j in range(0, len(chunk), micro_batch_size)])
    return steps


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return -(-n_examples // batch_size)
