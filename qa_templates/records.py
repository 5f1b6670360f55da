"""Record formats: the benchmark JSON lines and the LLaVA training conversations.

Benchmark fields are exactly the public files': ``id, dataset, scene_name, question_type, question, options,
ground_truth`` (VSI-Bench: the letter for multiple choice, the number as text otherwise), plus ``mc_answer`` for
VSTI-Bench multiple choice (whose ``ground_truth`` is the option text and whose numeric answers are numbers).
Our extra fields: bench, task, qa_key, scene_key, object_ids, frame_ranks, categories, answer_value (exact, before
rounding), answer_text, template_version, seed, video_path.
"""
from __future__ import annotations

import json
from typing import Any

from qa_templates.candidate import Candidate
from qa_templates.config import TEMPLATE_VERSION
from qa_templates.options import LetterBalancer, format_number, lettered

BENCHES = ("vsibench", "vstibench")
PRE_PROMPT = "These are frames of a video."
NA_POST_PROMPT = "Please answer the question using a single word or phrase."
MCA_POST_PROMPT = "Answer with the option's letter from the given choices directly."

# The evaluators choose the prompt and the metric by question type, never by the presence of ``options``: VLM-3R's
# VSTI-Bench numeric records carry generated ``options`` and an ``mc_answer`` that the evaluator ignores.
MCA_QUESTION_TYPES = frozenset({
    "object_rel_direction_easy", "object_rel_direction_medium", "object_rel_direction_hard", "object_rel_distance",
    "route_planning", "obj_appearance_order",
    "obj_obj_relative_pos_nf", "obj_obj_relative_pos_ud", "obj_obj_relative_pos_lr", "camera_obj_rel_dist_v1",
    "camera_obj_rel_dist_v2", "camera_obj_rel_dist_v3", "camera_movement_direction",
})
NA_QUESTION_TYPES = frozenset({
    "object_abs_distance", "object_counting", "object_size_estimation", "room_size_estimation",
    "camera_obj_abs_dist", "camera_displacement", "camera_obj_dist_change",
})

# Decimals of numeric answers in the benchmarks' units (metres 1, centimetres 0, m^2 1, counts 0).
NA_DECIMALS = {
    "object_counting": 0, "object_abs_distance": 1, "object_size_estimation": 0, "room_size_estimation": 1,
    "camera_obj_abs_dist": 1, "camera_displacement": 1, "camera_obj_dist_change": 1,
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
        record.update(question=candidate.question, options=None, answer_text=text,
                      ground_truth=text if bench == "vsibench" else (int(text) if decimals == 0 else float(text)))
    return record


def is_multiple_choice(record: dict[str, Any]) -> bool:
    """Whether a record is scored and prompted as multiple choice: by its question type for the benchmarks' own types
    (as the evaluators do), by the presence of options for our extra training forms (``*_mc``, ``*_v2``, ...)."""
    qtype = record.get("question_type")
    if qtype in NA_QUESTION_TYPES:
        return False
    if qtype in MCA_QUESTION_TYPES:
        return True
    return bool(record.get("options"))


def correct_letter(record: dict[str, Any]) -> str:
    """The letter a multiple-choice record expects (VSTI-Bench: mc_answer; VSI-Bench: ground_truth)."""
    return str(record["mc_answer"] if "mc_answer" in record else record["ground_truth"])


def build_prompt(record: dict[str, Any]) -> str:
    """The prompt exactly as the benchmarks' evaluators build it (doc_to_text with the default pre/post prompts)."""
    if is_multiple_choice(record):
        options = "Options:\n" + "\n".join(record["options"])
        return "\n".join([PRE_PROMPT, record["question"], options, MCA_POST_PROMPT])
    return PRE_PROMPT + "\n" + record["question"] + "\n" + NA_POST_PROMPT


def answer_for_training(record: dict[str, Any]) -> str:
    """What the assistant says: the option letter for multiple choice, the number for numeric questions."""
    if is_multiple_choice(record):
        return correct_letter(record)
    return str(record["answer_text"] if "answer_text" in record else record["ground_truth"])


def llava_conversation(record: dict[str, Any]) -> dict[str, Any]:
    """One LLaVA-style training sample; the prompt is the evaluation prompt, so training and evaluation agree."""
    return {
        "id": record["qa_key"], "data_source": record["dataset"], "scene_name": record["scene_name"],
        "scene_key": record["scene_key"], "question_type": record["question_type"], "video": record["video_path"],
        "frame_ranks": record["frame_ranks"],
        "conversations": [
            {"from": "human", "value": "<image>\n" + build_prompt(record)},
            {"from": "gpt", "value": answer_for_training(record)},
        ],
    }


def dumps_record(record: dict[str, Any]) -> str:
    """One canonical JSON line (sorted keys, no NaN): identical records give identical bytes."""
    return json.dumps(record, sort_keys=True, ensure_ascii=False, allow_nan=False, separators=(", ", ": "))
