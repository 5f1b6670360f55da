"""Random enumeration of combinations without materialising huge sets (tasks stop once they have enough)."""
from __future__ import annotations

from itertools import combinations
from math import comb
from typing import Iterator, Sequence, TypeVar

import numpy as np

T = TypeVar("T")
EXHAUSTIVE_LIMIT = 5000      # below this many subsets, visit every one (in random order)


def random_subsets(rng: np.random.Generator, items: Sequence[T], k: int, max_draws: int) -> Iterator[tuple[T, ...]]:
    """Distinct k-subsets of ``items`` (in the items' order) in random order: all of them when there are at most
    EXHAUSTIVE_LIMIT, else up to ``max_draws`` random draws with repeats skipped."""
    n = len(items)
    if k > n or k <= 0:
        return
    total = comb(n, k)
    if total <= EXHAUSTIVE_LIMIT:
        subsets = list(combinations(range(n), k))
        for i in rng.permutation(len(subsets)):
            yield tuple(items[j] for j in subsets[i])
        return
    seen: set[tuple[int, ...]] = set()
    for _ in range(max_draws):
        pick = tuple(sorted(rng.choice(n, size=k, replace=False).tolist()))
        if pick in seen:
            continue
        seen.add(pick)
        yield tuple(items[j] for j in pick)


def draw_budget(limit: int) -> int:
    """How many random draws a task may spend to find ``limit`` acceptable questions (0 = no limit)."""
    return 50 * limit if limit > 0 else 20_000
