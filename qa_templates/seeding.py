"""Seeds that do not depend on scheduling: every (scene, task) gets its own generator derived from the run seed and
the names, through a stable hash (BLAKE2b), never Python's salted ``hash()``. Output is therefore byte-identical
whatever the worker count or the order in which scenes are processed.
"""
from __future__ import annotations

import hashlib

import numpy as np


def _digest(run_seed: int, names: tuple, size: int) -> bytes:
    h = hashlib.blake2b(digest_size=size)
    h.update(str(int(run_seed)).encode("ascii"))
    for name in names:
        # Length-prefixed so ("ab", "c") and ("a", "bc") differ.
        data = str(name).encode("utf-8")
        h.update(len(data).to_bytes(4, "little"))
        h.update(data)
    return h.digest()


def derive_seed(run_seed: int, *names: str) -> int:
    """A 64-bit seed from the run seed and any number of names (scene key, task name, ...)."""
    return int.from_bytes(_digest(run_seed, names, 8), "little")


def task_rng(run_seed: int, scene_key: str, task: str) -> np.random.Generator:
    """The random generator of one task on one scene."""
    return np.random.default_rng(derive_seed(run_seed, scene_key, task))


def stable_rank_key(run_seed: int, *names: str) -> str:
    """A hex key that orders items pseudo-randomly but reproducibly (used for global caps)."""
    return _digest(run_seed, names, 12).hex()
