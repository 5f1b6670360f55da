"""The benchmarks' scoring rules, reproduced exactly (thinking-in-space ``vsibench/utils.py`` and VLM-3R's
``vstibench/utils.py``), with the checks they lack: a predictions file with malformed lines, duplicate ids, ids
that are no question or (unless allowed) questions without a prediction is refused with the counts, never scored
with the first duplicate silently winning.

- Multiple choice or numeric is decided by the question type, as the evaluators do (VLM-3R's VSTI-Bench numeric
  records carry ``options`` and an ``mc_answer`` that are ignored); types unknown to both evaluators (our extra
  training forms) are multiple choice when they have options.
- Multiple choice: the prediction's first space-separated token, trailing periods stripped (``str.rstrip('.')``,
  which removes every trailing period, not just one), whitespace stripped, compared case-insensitively with the
  answer letter (``mc_answer`` for VSTI-Bench, ``ground_truth`` for VSI-Bench).
- Numeric: the same token parsed with Python's ``float`` (failure scores 0), then Mean Relative Accuracy over
  θ ∈ np.linspace(0.5, 0.95, 10): the fraction of θ with |ŷ − y| / y ≤ 1 − θ.
- VSI-Bench overall: the unweighted mean of the per-type scores after the three relative-direction levels are
  averaged into one; VSTI-Bench overall: the flat mean of the per-type scores; regionbench (ours, SR-3D style,
  scored with VSI-Bench's rules: MRA for its numeric types, the first token's letter for multiple choice): the flat
  mean of the per-type scores.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from pipeline.core.errors import InputError
from pipeline.core.qa_records import (Predictions, correct_letter, id_key, is_multiple_choice, load_predictions,
                                      load_questions, to_float)

DIRECTION_TYPES = ("object_rel_direction_easy", "object_rel_direction_medium", "object_rel_direction_hard")
DIRECTION_KEY = "object_rel_direction"
# The evaluators compute the thresholds as np.linspace(.5, .95, int((.95 - .5) / .05 + 2)) = 10 points.
MRA_THRESHOLDS = np.linspace(0.5, 0.95, int((0.95 - 0.5) / 0.05 + 2))
VSTI_TYPES = frozenset({
    "camera_obj_abs_dist", "camera_displacement", "camera_obj_dist_change", "camera_obj_rel_dist_v1",
    "camera_obj_rel_dist_v2", "camera_obj_rel_dist_v3", "obj_obj_relative_pos_nf", "obj_obj_relative_pos_lr",
    "obj_obj_relative_pos_ud", "camera_movement_direction",
})
REGION_TYPES = frozenset({
    "region_distance", "region_size", "region_closest", "region_direction", "region_vertical",
    "region_same_kind_count", "region_camera_distance",
})
VSI_TYPES = frozenset({
    "object_counting", "object_abs_distance", "object_size_estimation", "room_size_estimation", "object_rel_distance",
    "route_planning", "obj_appearance_order", *DIRECTION_TYPES,
})


def first_token(prediction: str) -> str:
    """The evaluators' ``fuzzy_matching``: first token by single spaces, trailing periods and whitespace stripped."""
    return prediction.split(" ")[0].rstrip(".").strip()


def mean_relative_accuracy(prediction: float, target: float) -> float:
    """MRA of one numeric prediction (target > 0)."""
    relative_error = abs(prediction - target) / target
    return float((relative_error <= 1 - MRA_THRESHOLDS).mean())


def score_record(record: dict[str, Any], prediction: str) -> float:
    """Score in [0, 1] of one prediction for one benchmark record."""
    token = first_token(prediction)
    if is_multiple_choice(record):
        return 1.0 if token.lower() == correct_letter(record).lower() else 0.0
    value = to_float(token)
    target = to_float(str(record["ground_truth"]))
    if value is None or target is None:
        return 0.0
    return mean_relative_accuracy(value, target)


@dataclass
class ScoreReport:
    scores: dict[str, float]                   # "overall", per question type (and "object_rel_direction"), percent
    counts: dict[str, int]                     # questions per type
    missing: int = 0                           # questions without a prediction (scored 0)
    unknown_ids: int = 0                       # prediction ids that match no question
    duplicate_ids: int = 0                     # repeated prediction ids
    malformed_lines: list[str] = field(default_factory=list)   # "path:line: problem"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.scores)
        out.update(missing=self.missing, unknown_ids=self.unknown_ids, duplicate_ids=self.duplicate_ids,
                   malformed_lines=len(self.malformed_lines), counts=dict(self.counts))
        return out


def aggregate(per_type_mean: dict[str, float], bench: str) -> float:
    """Overall score (same unit as the inputs) by the benchmark's rule."""
    values = dict(per_type_mean)
    if bench == "vsibench":
        levels = [values.pop(t) for t in DIRECTION_TYPES if t in values]
        if levels:
            values[DIRECTION_KEY] = sum(levels) / len(levels)
    return sum(values.values()) / len(values) if values else 0.0


def detect_bench(questions: Iterable[dict[str, Any]]) -> str:
    """The records' ``bench`` field when they have one; else "regionbench" or "vstibench" by their question types,
    else "vsibench"."""
    questions = list(questions)
    for q in questions:
        if q.get("bench") in ("vsibench", "vstibench", "regionbench"):
            return q["bench"]
    if any(q.get("question_type") in REGION_TYPES for q in questions):
        return "regionbench"
    if any(q.get("question_type") in VSTI_TYPES for q in questions):
        return "vstibench"
    if any(q.get("question_type") in VSI_TYPES for q in questions):
        return "vsibench"        # VLM-3R's VSI-Bench-style training files carry mc_answer too
    return "vstibench" if any("mc_answer" in q for q in questions) else "vsibench"


def score(questions: list[dict[str, Any]], predictions: dict[Any, str], bench: str | None = None) -> ScoreReport:
    """Score predictions (id -> text) against benchmark records. Missing predictions score 0 and are counted."""
    bench = bench or detect_bench(questions)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    missing = 0
    for q in questions:
        qtype = q["question_type"]
        pred = predictions.get(id_key(q["id"]))
        if pred is None:
            missing += 1
            value = 0.0
        else:
            value = score_record(q, pred)
        sums[qtype] = sums.get(qtype, 0.0) + value
        counts[qtype] = counts.get(qtype, 0) + 1
    per_type = {t: sums[t] / counts[t] for t in sorted(sums)}
    scores = {t: 100.0 * v for t, v in per_type.items()}
    if bench == "vsibench":
        levels = [per_type[t] for t in DIRECTION_TYPES if t in per_type]
        if levels:
            scores[DIRECTION_KEY] = 100.0 * sum(levels) / len(levels)
    scores["overall"] = 100.0 * aggregate(per_type, bench)
    known = {id_key(q["id"]) for q in questions}
    return ScoreReport(scores=scores, counts=dict(sorted(counts.items())), missing=missing,
                       unknown_ids=sum(1 for k in predictions if k not in known))


class ScoringRefused(InputError):
    """The predictions cannot be scored as they are; the message counts every problem."""


def check_predictions(report: ScoreReport, predictions: Predictions, allow_missing: bool = False) -> list[str]:
    """What refuses a predictions file: malformed lines, duplicate ids (always), ids that are no question, and
    questions without a prediction (unless ``allow_missing``: then they score as wrong, lmms-eval's worst case)."""
    problems = []
    if predictions.malformed:
        problems.append(f"{len(predictions.malformed)} malformed line(s) (first: {predictions.malformed[0]})")
    if predictions.duplicates:
        shown = ", ".join(repr(d) for d in sorted(set(predictions.duplicates))[:5])
        problems.append(f"{len(predictions.duplicates)} duplicate id(s) ({shown})")
    if report.unknown_ids:
        problems.append(f"{report.unknown_ids} id(s) that are no question of the file")
    if report.missing and not allow_missing:
        problems.append(f"{report.missing} question(s) without a prediction (--allow-missing scores them as wrong)")
    return problems


def score_files(questions_path: str | Path, predictions_path: str | Path, bench: str | None = None, *,
                allow_missing: bool = False) -> ScoreReport:
    """Score a predictions file strictly: any problem :func:`check_predictions` finds raises ScoringRefused."""
    questions = load_questions(questions_path)
    predictions = load_predictions(predictions_path)
    report = score(questions, predictions.by_id, bench)
    report.malformed_lines = predictions.malformed
    report.duplicate_ids = len(predictions.duplicates)
    problems = check_predictions(report, predictions, allow_missing)
    if problems:
        raise ScoringRefused(predictions_path, "; ".join(problems))
    return report
