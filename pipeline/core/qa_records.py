"""The QA record format, declared once: benchmark JSON lines, their prompt, the LLaVA training conversation, and the
predictions that answer them.

Benchmark fields are exactly the public files': ``id, dataset, scene_name, question_type, question, options,
ground_truth`` (VSI-Bench: the letter for multiple choice, the number as text otherwise), plus ``mc_answer`` for
VSTI-Bench multiple choice (whose ``ground_truth`` is the option text and whose numeric answers are numbers).
Our extra fields: bench, task, qa_key, scene_key, object_ids, frame_ranks, categories, answer_value (exact, before
rounding), answer_text, template_version, seed, video_path.

Region questions (regionbench, SR-3D style; VSI-Bench's field conventions) also carry ``regions``: in order of
mention (Region [0], Region [1], ...), ``{"instance_id", "category", "frame_rank", "bbox_xyxy", "rle"}`` with
``bbox_xyxy`` the mask's box in inclusive pixels of the stored frame ([x0, y0, x1, y1]: columns x0..x1, rows y0..y1)
and ``rle`` pycocotools' compressed RLE ``{"size": [h, w], "counts": str}`` at the stored frame's resolution; and
``max_regions_per_frame``, the largest number of its instances that one manifest frame shows together (below the
number of regions: its instances are never all visible in the same frame). Their prompt introduces
the regions after the pre-prompt, one ``Region [i]: <mask>`` line each in mention order (the Open Spatial Dataset
convention: the n-th ``<mask>`` is the n-th region), and their LLaVA conversation carries the ``regions`` list.

Predictions are JSON lines ``{"id": ..., "prediction": "..."}``. Ids may be ints in one file and strings in the
other (``12`` vs ``"12"``): they are compared as text.

Question files as published (lmms-eval's VSI-Bench / VSTI-Bench tasks): JSON lines, one JSON array, or parquet, with
``id, dataset, scene_name, question_type, question, options, ground_truth`` (VSTI-Bench adds ``mc_answer`` and
``video_path``). lmms-eval's ``doc_to_text`` with its default ``lmms_eval_specific_kwargs`` (empty pre-prompt, the
two post-prompts above) is :func:`build_prompt` for every question type it knows, so that is the prompt used;
:func:`load_benchmark_questions` refuses the types it does not know (lmms-eval raises on them) as error rows.
A question's video is ``video_path`` without its suffix when given (VSTI-Bench's ``doc_to_visual``), else
``<dataset>/<scene_name>`` (VSI-Bench's).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pipeline.core.errors import ErrorRow, InputError

PRE_PROMPT = "These are frames of a video."
MASK_TAG = "<mask>"                      # one per region prompt, in mention order
NA_POST_PROMPT = "Please answer the question using a single word or phrase."
MCA_POST_PROMPT = "Answer with the option's letter from the given choices directly."

# The evaluators choose the prompt and the metric by question type, never by the presence of ``options``: VLM-3R's
# VSTI-Bench numeric records carry generated ``options`` and an ``mc_answer`` that the evaluator ignores.
MCA_QUESTION_TYPES = frozenset({
    "object_rel_direction_easy", "object_rel_direction_medium", "object_rel_direction_hard", "object_rel_distance",
    "route_planning", "obj_appearance_order",
    "obj_obj_relative_pos_nf", "obj_obj_relative_pos_ud", "obj_obj_relative_pos_lr", "camera_obj_rel_dist_v1",
    "camera_obj_rel_dist_v2", "camera_obj_rel_dist_v3", "camera_movement_direction",
    "region_closest", "region_direction", "region_vertical",
})
NA_QUESTION_TYPES = frozenset({
    "object_abs_distance", "object_counting", "object_size_estimation", "room_size_estimation",
    "camera_obj_abs_dist", "camera_displacement", "camera_obj_dist_change",
    "region_distance", "region_size", "region_same_kind_count", "region_camera_distance",
})
REQUIRED_FIELDS = ("id", "question_type", "ground_truth")
# Columns of the published question files, and the extra fields of our own records (all others are unknown).
BENCHMARK_COLUMNS = ("id", "dataset", "scene_name", "question_type", "question", "options", "ground_truth")
BENCHMARK_OPTIONAL_COLUMNS = ("mc_answer", "video_path")
OUR_COLUMNS = ("bench", "task", "qa_key", "scene_key", "object_ids", "frame_ranks", "categories", "answer_value",
               "answer_text", "template_version", "seed")


# ---- one record --------------------------------------------------------------------------------------------------

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


def region_lines(record: dict[str, Any]) -> list[str]:
    """One ``Region [i]: <mask>`` line per region prompt of a record, in mention order (none for other records)."""
    return [f"Region [{i}]: {MASK_TAG}" for i in range(len(record.get("regions") or ()))]


def build_prompt(record: dict[str, Any]) -> str:
    """The prompt exactly as the benchmarks' evaluators build it (doc_to_text with the default pre/post prompts);
    region questions introduce their regions right after the pre-prompt."""
    head = [PRE_PROMPT, *region_lines(record), record["question"]]
    if is_multiple_choice(record):
        options = "Options:\n" + "\n".join(record["options"])
        return "\n".join([*head, options, MCA_POST_PROMPT])
    return "\n".join([*head, NA_POST_PROMPT])


def answer_for_training(record: dict[str, Any]) -> str:
    """What the assistant says: the option letter for multiple choice, the number for numeric questions."""
    if is_multiple_choice(record):
        return correct_letter(record)
    return str(record["answer_text"] if "answer_text" in record else record["ground_truth"])


def llava_conversation(record: dict[str, Any]) -> dict[str, Any]:
    """One LLaVA-style training sample; the prompt is the evaluation prompt, so training and evaluation agree.
    A region question's sample also carries its ``regions`` (mention order: the n-th ``<mask>`` of the human turn is
    the n-th region; each names its frame by ``frame_rank``, the index of the frame in the sampled video)."""
    sample = {
        "id": record["qa_key"], "data_source": record["dataset"], "scene_name": record["scene_name"],
        "scene_key": record["scene_key"], "question_type": record["question_type"], "video": record["video_path"],
        "frame_ranks": record["frame_ranks"],
        "conversations": [
            {"from": "human", "value": "<image>\n" + build_prompt(record)},
            {"from": "gpt", "value": answer_for_training(record)},
        ],
    }
    if record.get("regions"):
        sample["regions"] = record["regions"]
    return sample


def dumps_record(record: dict[str, Any]) -> str:
    """One canonical JSON line (sorted keys, no NaN): identical records give identical bytes."""
    return json.dumps(record, sort_keys=True, ensure_ascii=False, allow_nan=False, separators=(", ", ": "))


def id_key(value: Any) -> str:
    """A question or prediction id as compared between files (``12`` and ``"12"`` are the same id)."""
    return str(value)


def to_float(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError, OverflowError):
        return None


# ---- files -------------------------------------------------------------------------------------------------------

def _json_lines(path: str | Path) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, value, None) for each non-blank line of a JSON-lines file, or (line number, None, problem)
    where the line is not JSON."""
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, None, f"{path}:{number}: not valid JSON ({exc.msg})"
                continue
            yield number, value, None


def read_jsonl(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Objects of a JSON-lines file and the problems of the lines that are not JSON objects ("path:line: ...")."""
    rows, problems = [], []
    for number, obj, problem in _json_lines(path):
        if problem is None and not isinstance(obj, dict):
            problem = f"{path}:{number}: expected a JSON object, got {type(obj).__name__}"
        if problem is not None:
            problems.append(problem)
        else:
            rows.append(obj)
    return rows, problems


def iter_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """The records of one of our QA files (``ROOT/qa/<bench>/<split>.jsonl``); a line that is not a record raises
    InputError naming the file and line."""
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise InputError(path, f"line {number}: not JSON ({exc})") from None
            if not isinstance(record, dict) or "scene_key" not in record or "task" not in record:
                raise InputError(path, f"line {number}: not a QA record (needs scene_key and task)")
            yield record


def read_question_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a question file: JSON lines, one JSON array, or parquet. A file that cannot be read as one of them
    raises InputError naming it (and up to five bad lines)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "question file not found")
    if path.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(path, f"not a readable parquet file: {exc}") from None
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(path, f"not valid JSON ({exc.msg} at line {exc.lineno})") from exc
        problems = [] if isinstance(rows, list) and all(isinstance(r, dict) for r in rows) else ["not a list of objects"]
    else:
        rows, problems = read_jsonl(path)
    if problems:
        raise InputError(path, "; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""))
    return rows


def load_questions(path: str | Path) -> list[dict[str, Any]]:
    """Benchmark records (JSON lines, one JSON array, or parquet), validated: every question has an id, a type and a
    ground truth that its kind can score, and ids are unique. A malformed question file is an error, never a count."""
    path = Path(path)
    rows = read_question_rows(path)
    seen: set[str] = set()
    for i, q in enumerate(rows):
        lacking = [k for k in REQUIRED_FIELDS if k not in q]
        if lacking:
            raise InputError(path, f"question {i + 1} lacks {lacking}")
        problem = ground_truth_problem(q)
        if problem:
            raise InputError(path, f"question id {q['id']}: {problem}")
        key = id_key(q["id"])
        if key in seen:
            raise InputError(path, f"duplicate question id {q['id']}")
        seen.add(key)
    return rows


def ground_truth_problem(record: dict[str, Any]) -> str | None:
    """Why a record's ground truth cannot be scored (None when it can): multiple choice needs a letter, numeric
    questions a positive number (MRA divides by it)."""
    if is_multiple_choice(record):
        if "mc_answer" not in record and not isinstance(record["ground_truth"], str):
            return "multiple-choice ground_truth must be a letter"
        return None
    target = to_float(str(record["ground_truth"]))
    if target is None or not target > 0:
        return f"numeric ground_truth must be a positive number, got {record['ground_truth']!r}"
    return None


def video_name(record: dict[str, Any]) -> str:
    """The video a benchmark question is about: ``video_path`` without its suffix when the record has one, else
    ``<dataset>/<scene_name>`` (how lmms-eval's VSTI-Bench and VSI-Bench tasks find the video file)."""
    video_path = record.get("video_path")
    if isinstance(video_path, str) and video_path:
        return str(Path(video_path).with_suffix("").as_posix())
    return f"{record.get('dataset')}/{record.get('scene_name')}"


def load_benchmark_questions(path: str | Path, stage: str = "predict") -> tuple[list[dict[str, Any]], list[ErrorRow]]:
    """The questions of a published question file that can be answered and scored, and one error row per problem:
    columns outside the benchmarks' and ours (reported once; the questions go on), and per question a missing field,
    a question type lmms-eval does not know, options that are not a list of text, an unscorable ground truth, or a
    repeated id (those questions are left out). A file that cannot be read at all raises InputError."""
    path = Path(path)
    rows = read_question_rows(path)
    problems: list[ErrorRow] = []
    known_columns = set(BENCHMARK_COLUMNS) | set(BENCHMARK_OPTIONAL_COLUMNS) | set(OUR_COLUMNS)
    unknown = sorted({k for row in rows for k in row} - known_columns)
    if unknown:
        problems.append(ErrorRow(stage, "", "", "UnknownColumns", f"{path}: columns {unknown} are not in "
                                 f"lmms-eval's question layout {list(BENCHMARK_COLUMNS)}; they are ignored", str(path)))
    known_types = MCA_QUESTION_TYPES | NA_QUESTION_TYPES
    required = [c for c in BENCHMARK_COLUMNS if c != "options"]
    questions, seen = [], set()
    for number, q in enumerate(rows, start=1):
        where = f"question {number}" + (f" (id {q['id']})" if "id" in q else "")

        def problem(kind: str, message: str) -> None:
            problems.append(ErrorRow(stage, str(q.get("dataset", "")), str(q.get("scene_name", "")), kind,
                                     f"{path}: {where}: {message}", str(path)))

        lacking = [k for k in required if q.get(k) is None]
        if lacking:
            problem("MissingField", f"lacks {lacking}")
            continue
        if q["question_type"] not in known_types:
            problem("UnknownQuestionType", f"question type {q['question_type']!r} is not one of lmms-eval's "
                                           "VSI-Bench / VSTI-Bench types")
            continue
        if is_multiple_choice(q):
            options = q.get("options")
            if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
                problem("BadOptions", f"multiple choice needs a list of option texts, got {options!r}")
                continue
        bad_truth = ground_truth_problem(q)
        if bad_truth:
            problem("BadGroundTruth", bad_truth)
            continue
        if id_key(q["id"]) in seen:
            problem("DuplicateId", "repeats an earlier question's id")
            continue
        seen.add(id_key(q["id"]))
        questions.append(q)
    return questions, problems


def benchmark_record(record: dict[str, Any]) -> dict[str, Any]:
    """A record as the published question files have it: the benchmark columns (and ``mc_answer`` / ``video_path``
    when present), none of our extra fields."""
    return {k: record[k] for k in BENCHMARK_COLUMNS + BENCHMARK_OPTIONAL_COLUMNS if k in record}


def write_benchmark_questions(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Write records in lmms-eval's layout (:func:`benchmark_record`), atomically: parquet for a ``.parquet`` path
    (VSI-Bench's published form; every ground truth must then be text), JSON lines otherwise."""
    from pipeline.core.atomic import atomic_path

    path = Path(path)
    rows = [benchmark_record(r) for r in records]
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            if any(not isinstance(r.get("ground_truth"), str) for r in rows):
                raise ValueError(f"{path}: parquet question files hold text ground truths (VSI-Bench); write "
                                 "VSTI-Bench's numbers as JSON lines")
            pq.write_table(pa.Table.from_pylist(rows), tmp)
        else:
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@dataclass
class Predictions:
    """A predictions file as read: id -> text, and every problem found on the way."""

    path: str
    by_id: dict[str, str] = field(default_factory=dict)
    malformed: list[str] = field(default_factory=list)     # "path:line: problem"
    duplicates: list[str] = field(default_factory=list)    # ids given more than once (every repeat)


def load_predictions(path: str | Path) -> Predictions:
    """A predictions JSON-lines file (``{"id": ..., "prediction": "..."}`` per line). Malformed lines and repeated
    ids are collected, never silently resolved: the caller decides (``eval`` refuses them)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "prediction file not found")
    out = Predictions(str(path))
    for number, row, problem in _json_lines(path):
        if problem is None and (not isinstance(row, dict) or "id" not in row
                                or not isinstance(row.get("prediction"), str)):
            problem = f"{path}:{number}: needs an 'id' and a string 'prediction'"
        if problem is not None:
            out.malformed.append(problem)
            continue
        key = id_key(row["id"])
        if key in out.by_id:
            out.duplicates.append(key)
            continue
        out.by_id[key] = row["prediction"]
    return out


def dumps_prediction(question_id: Any, prediction: str) -> str:
    return json.dumps({"id": question_id, "prediction": prediction}, sort_keys=True, ensure_ascii=False)
