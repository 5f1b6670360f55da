"""Published question files in lmms-eval's VSI-Bench / VSTI-Bench layout: read as JSON lines, JSON arrays or parquet,
prompted exactly as lmms-eval's ``doc_to_text``, bad rows reported one by one while the rest go on."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.errors import InputError
from pipeline.core.qa_records import build_prompt, load_benchmark_questions, load_questions, video_name

VSI_MC = {"id": 7, "dataset": "arkitscenes", "scene_name": "41069025", "question_type": "object_rel_distance",
          "question": "Measuring from the closest point of each object, which of these objects (chair, sofa, bed, "
                      "lamp) is the closest to the tv?",
          "options": ["A. chair", "B. sofa", "C. bed", "D. lamp"], "ground_truth": "B"}
VSI_NA = {"id": 8, "dataset": "scannet", "scene_name": "scene0011_00", "question_type": "room_size_estimation",
          "question": "What is the size of this room (in square meters)?", "options": None, "ground_truth": "23.4"}
VSTI_NA = {"id": 9, "dataset": "scannet", "scene_name": "scene0011_00", "question_type": "camera_displacement",
           "question": "Approximately how far (in meters) did the camera move between frame 3 of 32 and frame 20 of "
                       "32?", "options": ["A. 1.2", "B. 2.4", "C. 0.3", "D. 3.1"], "ground_truth": 2.4,
           "mc_answer": "B", "video_path": "scannet/scene0011_00.mp4"}
VSTI_MC = {"id": 10, "dataset": "scannet", "scene_name": "scene0011_00", "question_type": "camera_movement_direction",
           "question": "Between frame 3 of 32 and frame 20 of 32, which way did the camera move?",
           "options": ["A. forward", "B. backward", "C. left", "D. right"], "ground_truth": "left",
           "mc_answer": "C", "video_path": "videos/scannet/scene0011_00.mp4"}


def test_prompts_are_lmms_evals_doc_to_text():
    """lmms-eval (vsibench/utils.py, VLM-3R's vstibench/utils.py) with its default kwargs: the pre-prompt falls
    back to "These are frames of a video.", options joined by newlines after "Options:", the post-prompt by kind;
    VSTI-Bench numeric records carry options that the numeric branch ignores."""
    assert build_prompt(VSI_MC) == (
        "These are frames of a video.\n" + VSI_MC["question"] + "\nOptions:\nA. chair\nB. sofa\nC. bed\nD. lamp\n"
        "Answer with the option's letter from the given choices directly.")
    for record in (VSI_NA, VSTI_NA):
        assert build_prompt(record) == ("These are frames of a video.\n" + record["question"] +
                                        "\nPlease answer the question using a single word or phrase.")
    assert build_prompt(VSTI_MC).endswith("Options:\nA. forward\nB. backward\nC. left\nD. right\n"
                                          "Answer with the option's letter from the given choices directly.")


def test_video_name_is_dataset_and_scene_or_the_video_path():
    assert video_name(VSI_MC) == "arkitscenes/41069025"
    assert video_name(VSTI_NA) == "scannet/scene0011_00"
    assert video_name(VSTI_MC) == "videos/scannet/scene0011_00"


@pytest.mark.parametrize("form", ["jsonl", "json", "parquet"])
def test_question_files_in_every_form_read_the_same(tmp_path, form):
    rows = [VSI_MC, VSI_NA]
    path = tmp_path / f"questions.{form}"
    if form == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif form == "json":
        path.write_text(json.dumps(rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    questions, problems = load_benchmark_questions(path)
    assert problems == [] and questions == rows
    assert load_questions(path) == rows          # the scorer reads the same file


def test_bad_questions_are_error_rows_and_the_others_go_on(tmp_path):
    rows = [
        {**VSI_MC, "split_hint": "x"},                                          # unknown column: reported once
        {**VSI_NA, "id": 11, "question_type": "object_height"},                 # unknown question type
        {**VSI_MC, "id": 12, "options": None},                                  # multiple choice without options
        {**VSI_NA, "id": 13, "ground_truth": "0"},                              # MRA cannot score 0
        {k: v for k, v in VSI_NA.items() if k != "scene_name"} | {"id": 14},   # missing field
        dict(VSI_NA),
        {**VSI_NA, "question": "again"},                                        # repeated id 8
        VSTI_NA,
    ]
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    questions, problems = load_benchmark_questions(path)
    assert [q["id"] for q in questions] == [7, 8, 9]
    assert [p.error_type for p in problems] == ["UnknownColumns", "UnknownQuestionType", "BadOptions",
                                                "BadGroundTruth", "MissingField", "DuplicateId"]
    assert all(p.stage == "predict" and p.path == str(path) for p in problems)
    assert "['split_hint']" in problems[0].message
    assert "question 2 (id 11)" in problems[1].message and "'object_height'" in problems[1].message
    assert (problems[1].dataset, problems[1].scene_id) == ("scannet", "scene0011_00")


def test_a_file_that_is_not_a_question_file_is_an_input_error(tmp_path):
    bad = tmp_path / "questions.jsonl"
    bad.write_text('{"id": 1}\nnot json\n')
    with pytest.raises(InputError, match=r"questions\.jsonl:2: not valid JSON"):
        load_benchmark_questions(bad)
    broken = tmp_path / "questions.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match=r"questions\.parquet: not a readable parquet"):
        load_benchmark_questions(broken)
    with pytest.raises(InputError, match="not found"):
        load_benchmark_questions(tmp_path / "absent.jsonl")
