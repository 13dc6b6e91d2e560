"""Pools, targets and the one `Example` type."""

from influence.data.example import Example
from influence.data.pools import POOLS, Pool, load_pool
from influence.data.targets import TARGETS, HeldOutItem, Target, load_heldout, load_target

__all__ = ["Example", "POOLS", "Pool", "load_pool", "TARGETS", "HeldOutItem", "Target", "load_heldout",
           "load_target"]
