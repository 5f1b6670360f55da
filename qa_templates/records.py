"""Turning a task's candidate into a benchmark record (the format itself is :mod:`pipeline.core.qa_records`)."""
from __future__ import annotations

from typing import Any

from pipeline.core.layout import BENCHES
from qa_templates.candidate import Candidate
from qa_templates.config import TEMPLATE_VERSION
from qa_templates.options import LetterBalancer, format_number, lettered

# Decimals of numeric answers in the benchmarks' units (metres 1, centimetres 0, m^2 1, counts 0).
NA_DECIMALS = {
    "object_counting": 0, "object_abs_distance": 1, "object_size_estimation": 0, "room_size_estimation": 1,
    "camera_obj_abs_dist": 1, "camera_displacement": 1, "camera_obj_dist_change": 1,
    "region_distance": 1, "region_size": 0, "region_same_kind_count": 0, "region_camera_distance": 1,
}


def _join_choices(options: list[str], style: str) -> str:
    if style == "sentence":
        return " and ".join(options) if len(options) == 2 else ", ".join(options[:-1]) + ", and " + options[-1]
    return ", ".join(options)


def finalize(candidate: Candidate, balancer: LetterBalancer, *, bench: str, dataset: str, scene_id: str,
             scene_key: str, task: str, index: int, run_seed: int) -> dict[str, Any]:
    """Place the options (balanced letters), fill the question and build the benchmark record (without ``id``)."""
    if bench not in BENCHES:
        raise ValueError(f"unknown bench {bench!r}; expected one of {BENCHES}")
    record: dict[str, Any] = {
        "dataset": dataset, "scene_name": scene_id, "question_type": candidate.question_type,
        "bench": bench, "task": task, "qa_key": f"{scene_key}/{task}/{index:04d}", "scene_key": scene_key,
        "object_ids": [int(i) for i in candidate.object_ids], "frame_ranks": [int(r) for r in candidate.frame_ranks],
        "categories": [str(c) for c in candidate.categories],
        "answer_value": None if candidate.answer_value is None else float(candidate.answer_value),
        "template_version": TEMPLATE_VERSION, "seed": int(run_seed), "video_path": f"{dataset}/{scene_id}.mp4",
    }
    if candidate.regions:   # only region questions carry these fields: the other benches' bytes stay as they were
        record["regions"] = [dict(region) for region in candidate.regions]
        record["max_regions_per_frame"] = int(candidate.max_regions_per_frame)
    if candidate.is_multiple_choice:
        correct = str(candidate.answer)
        distractors = [o for o in candidate.options if o != correct]
        if len(distractors) != len(candidate.options) - 1:
            raise ValueError(f"{record['qa_key']}: the answer must appear exactly once among the options")
        ordered, letter = balancer.place(correct, distractors)
        question = candidate.question
        if "{choices}" in question:
            question = question.replace("{choices}", _join_choices(ordered, candidate.choice_join))
        record.update(question=question, options=lettered(ordered), answer_text=correct)
        if bench == "vstibench":
            record.update(ground_truth=correct, mc_answer=letter)
        else:
            record.update(ground_truth=letter)
    else:
        decimals = NA_DECIMALS[candidate.question_type]
        value = float(candidate.answer)
        if round(value, decimals) <= 0:
            raise ValueError(f"{record['qa_key']}: numeric ground truth must be positive (MRA divides by it)")
        text = format_number(value, decimals)
        # VSTI-Bench stores numbers; VSI-Bench (and regionbench, scored the same way) the number as text.
        record.update(question=candidate.question, options=None, answer_text=text,
                      ground_truth=(int(text) if decimals == 0 else float(text)) if bench == "vstibench" else text)
    return record
