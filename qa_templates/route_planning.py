"""VSI-Bench route_planning questions from stored routes (``ROOT/routes/<dataset>/<scene_id>.parquet``).

Question form (VSI-Bench): "You are a robot beginning at the bed facing the tv. You want to navigate to the toilet.
You will perform the following actions (Note: for each [please fill in], choose either 'turn back,' 'turn left,' or
'turn right.'): 1. Go forward until the tv 2. [please fill in] 3. Go forward until the toilet. You have reached the
final destination." Options are comma-joined turn sequences of the route's length drawn from the same three turns
(so the vocabulary never gives the answer away): the three single turns for one-turn routes, otherwise the answer and
three other sequences. Letters are balanced by the shared :class:`~qa_templates.options.LetterBalancer`; every draw
comes from the (run seed, scene, task) generator, so records are byte-identical across reruns and worker counts.
"""
from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.core.schemas import ROUTES_SCHEMA, validate
from qa_templates.candidate import Candidate, reject
from qa_templates.options import LetterBalancer
from qa_templates.records import finalize
from qa_templates.seeding import task_rng
from scene_graph.routes import TURNS

TASK = "route_planning"
QUESTION_TYPE = "route_planning"
FILL_IN = "[please fill in]"
NOTE = "(Note: for each [please fill in], choose either 'turn back,' 'turn left,' or 'turn right.')"


def route_question(start: str, facing: str, goal: str, landmarks: list[str], starts_with_turn: bool) -> str:
    """The question text; one "[please fill in]" per turn, one "Go forward until" per landmark (last = goal)."""
    steps: list[str] = []
    for k, landmark in enumerate(landmarks):
        if k > 0 or starts_with_turn:
            steps.append(FILL_IN)
        steps.append(f"Go forward until the {landmark}")
    actions = " ".join(f"{i}. {step}" for i, step in enumerate(steps, start=1))
    return (f"You are a robot beginning at the {start} facing the {facing}. You want to navigate to the {goal}. "
            f"You will perform the following actions {NOTE}: {actions}. You have reached the final destination.")


def turn_options(turns: list[str], rng: np.random.Generator) -> list[str]:
    """Option texts, the correct sequence first: all three turns for one turn, else the answer and three other
    sequences of the same length drawn without replacement."""
    correct = ", ".join(turns)
    if len(turns) == 1:
        return [correct] + [t for t in TURNS if t != turns[0]]
    others = [", ".join(seq) for seq in itertools.product(TURNS, repeat=len(turns))]
    others = [o for o in others if o != correct]
    picks = rng.choice(len(others), size=3, replace=False)
    return [correct] + [others[int(i)] for i in np.sort(picks)]


def route_candidates(routes: pa.Table, rng: np.random.Generator, rejected: Counter | None = None) -> list[Candidate]:
    """One candidate per stored route (in route_index order)."""
    routes = validate(routes, ROUTES_SCHEMA, where="routes table")
    out = []
    for row in routes.sort_by("route_index").to_pylist():
        turns = list(row["turns"])
        if not turns or any(t not in TURNS for t in turns):
            reject(rejected, "no_turn_or_unknown_turn")
            continue
        expected = len(row["landmark_labels"]) - (0 if row["starts_with_turn"] else 1)
        if expected != len(turns):
            reject(rejected, "turns_do_not_match_legs")
            continue
        question = route_question(row["start_label"], row["facing_label"], row["goal_label"],
                                  list(row["landmark_labels"]), bool(row["starts_with_turn"]))
        object_ids = (row["start_instance_id"], row["facing_instance_id"], *row["landmark_instance_ids"])
        out.append(Candidate(question_type=QUESTION_TYPE, question=question, answer=", ".join(turns),
                             answer_value=float(row["geodesic_length_m"]), options=turn_options(turns, rng),
                             object_ids=tuple(int(i) for i in object_ids),
                             categories=(row["start_label"], row["facing_label"], *row["landmark_labels"])))
    return out


def route_records(routes: pa.Table, *, dataset: str, scene_id: str, scene_key: str, run_seed: int,
                  max_per_scene: int = 0, rejected: Counter | None = None) -> list[dict[str, Any]]:
    """The finished VSI-Bench records (without ``id``) of one scene's routes; ``max_per_scene`` > 0 keeps a seeded
    subset of that size."""
    rng = task_rng(run_seed, scene_key, TASK)
    candidates = route_candidates(routes, rng, rejected)
    if max_per_scene and len(candidates) > max_per_scene:
        picks = np.sort(rng.choice(len(candidates), size=max_per_scene, replace=False))
        candidates = [candidates[i] for i in picks]
    balancer = LetterBalancer(rng)
    return [finalize(c, balancer, bench="vsibench", dataset=dataset, scene_id=scene_id, scene_key=scene_key,
                     task=TASK, index=i, run_seed=run_seed) for i, c in enumerate(candidates)]
