"""Shared option generation and answer-letter balancing.

Letters are balanced per (scene, task): each question puts its correct answer on one of the least-used letters so
far (ties broken by the task's seeded generator), the distractors are shuffled around it. Balancing inside one
(scene, task) keeps the output independent of scheduling; across scenes the letters are then balanced in
expectation and tightly in practice.
"""
from __future__ import annotations

import math

import numpy as np

LETTERS = ("A", "B", "C", "D")


def format_number(value: float, decimals: int) -> str:
    """The benchmarks' answer text: integers for decimals=0, else fixed decimals."""
    return str(int(round(value))) if decimals == 0 else f"{round(float(value), decimals):.{decimals}f}"


def numeric_options(truth: float, rng: np.random.Generator, low: float, high: float, margin_frac: float,
                    decimals: int, max_resamples: int = 30) -> list[float] | None:
    """Three distractors drawn uniformly in [low*truth, high*truth], rounded like the answer, each differing from
    the truth and from each other by at least ``margin_frac * truth`` (rounded up to the answer's precision).
    Returns None when no such set is found within ``max_resamples`` redraws (the caller counts a rejection)."""
    scale = 10 ** decimals
    eps = math.ceil(truth * margin_frac * scale) / scale

    def draw() -> float:
        x = float(rng.uniform(truth * low, truth * high))
        return float(int(round(x))) if decimals == 0 else round(x, decimals)

    def clashes(i: int, values: list[float]) -> bool:
        others = values[:i] + values[i + 1:] + [truth]
        return any(abs(values[i] - o) < eps for o in others)

    values = [draw() for _ in range(3)]
    for _ in range(max_resamples):
        bad = [i for i in range(3) if clashes(i, values)]
        if not bad:
            break
        for i in bad:
            values[i] = draw()
    if any(clashes(i, values) or values[i] <= 0 for i in range(3)):
        return None
    return values


class LetterBalancer:
    """Assigns the correct answer of each question to one of the least-used letters (per scene and task)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.counts: dict[int, np.ndarray] = {}

    def place(self, correct: str, distractors: list[str]) -> tuple[list[str], str]:
        """Return (ordered option texts, letter of the correct one)."""
        n = len(distractors) + 1
        if n > len(LETTERS):
            raise ValueError(f"at most {len(LETTERS)} options, got {n}")
        counts = self.counts.setdefault(n, np.zeros(n, dtype=np.int64))
        least = np.flatnonzero(counts == counts.min())
        target = int(least[self.rng.integers(len(least))])
        others = [distractors[i] for i in self.rng.permutation(len(distractors))]
        ordered = others[:target] + [correct] + others[target:]
        counts[target] += 1
        return ordered, LETTERS[target]


def lettered(options: list[str]) -> list[str]:
    """["chair", "sofa"] -> ["A. chair", "B. sofa"] (the benchmark files' option strings)."""
    return [f"{LETTERS[i]}. {text}" for i, text in enumerate(options)]

