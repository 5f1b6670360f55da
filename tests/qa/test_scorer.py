"""The scorer against hand-computed values and tricky predictions; the eval command on real files."""
from __future__ import annotations

import json

import pytest

from pipeline.cli import main
from qa_templates.scorer import first_token, mean_relative_accuracy, score, score_files, score_record

VSI_MC = {"id": 0, "question_type": "object_rel_direction_easy", "options": ["A. left", "B. right"], "ground_truth": "A"}
VSTI_MC = {"id": 1, "question_type": "obj_obj_relative_pos_lr", "options": ["A. Right", "B. Left"],
           "ground_truth": "Left", "mc_answer": "B"}
NA_100 = {"id": 2, "question_type": "object_size_estimation", "options": None, "ground_truth": "100"}


@pytest.mark.parametrize("prediction, expected", [
    ("10", 1.0), ("8.5", 0.8), ("11.5", 0.8), ("12.6", 0.5), ("7.2", 0.5), ("3", 0.0), ("25", 0.0), ("-10", 0.0),
])
def test_mean_relative_accuracy_hand_values(prediction, expected):
    # |y^ - y| / y = 0.15 passes theta = .50 ... .85 (8 of 10); 0.26 and 0.28 pass .50 ... .70 (5 of 10).
    record = {"question_type": "object_abs_distance", "options": None, "ground_truth": "10"}
    assert score_record(record, prediction) == pytest.approx(expected)


def test_mra_thresholds_are_the_ten_published_ones():
    from qa_templates.scorer import MRA_THRESHOLDS
    assert len(MRA_THRESHOLDS) == 10
    assert MRA_THRESHOLDS[0] == 0.5 and MRA_THRESHOLDS[-1] == pytest.approx(0.95)
    assert mean_relative_accuracy(1.0, 2.0) == pytest.approx(0.1)        # error 0.5 passes theta = 0.5 only


@pytest.mark.parametrize("prediction, expected", [
    ("A", 1.0), ("A.", 1.0), ("a", 1.0), ("A. left", 1.0), ("a..", 1.0), ("(A)", 0.0), ("", 0.0), (" A", 0.0),
    ("B", 0.0), ("A)", 0.0), ("left", 0.0),
])
def test_multiple_choice_tricky_predictions(prediction, expected):
    assert score_record(VSI_MC, prediction) == expected


def test_vsti_multiple_choice_uses_mc_answer():
    assert score_record(VSTI_MC, "B") == 1.0
    assert score_record(VSTI_MC, "Left") == 0.0        # the option text is not the letter
    assert score_record(VSTI_MC, "b.") == 1.0


# VLM-3R's VSTI-Bench numeric records carry generated options (plain numbers) and an mc_answer; the evaluator decides
# by question type, so they are scored with MRA on ground_truth and prompted without options.
VSTI_NA_WITH_OPTIONS = {"id": 3, "question_type": "camera_displacement", "options": [1.2, 2.0, 0.7, 1.6],
                        "ground_truth": 2.0, "mc_answer": "B",
                        "question": "Approximately how far (in meters) did the camera move between frame 3 of 32 and "
                                    "frame 20 of 32?"}


def test_vsti_numeric_record_with_options_is_scored_by_question_type():
    assert score_record(VSTI_NA_WITH_OPTIONS, "2.0") == 1.0
    assert score_record(VSTI_NA_WITH_OPTIONS, "1.75") == pytest.approx(0.8)
    assert score_record(VSTI_NA_WITH_OPTIONS, "B") == 0.0       # the letter is not a number
    from pipeline.core.qa_records import build_prompt
    assert build_prompt(VSTI_NA_WITH_OPTIONS) == ("These are frames of a video.\n" + VSTI_NA_WITH_OPTIONS["question"]
                                                  + "\nPlease answer the question using a single word or phrase.")


def test_vsti_numeric_record_with_options_loads_and_scores_from_files(tmp_path):
    q = tmp_path / "q.jsonl"
    _write_jsonl(q, [VSTI_NA_WITH_OPTIONS, VSTI_MC])
    p = tmp_path / "p.jsonl"
    _write_jsonl(p, [{"id": 3, "prediction": "2.0 meters"}, {"id": 1, "prediction": "B."}])
    report = score_files(q, p)
    assert report.scores["camera_displacement"] == pytest.approx(100.0)
    assert report.scores["overall"] == pytest.approx(100.0)
    bad = dict(VSTI_NA_WITH_OPTIONS, ground_truth=0)
    _write_jsonl(q, [bad])
    from pipeline.core.errors import InputError
    with pytest.raises(InputError, match="numeric ground_truth must be a positive number"):
        score_files(q, p)


def test_detect_bench_prefers_question_types_over_mc_answer():
    from qa_templates.scorer import detect_bench
    # VLM-3R's VSI-Bench-style records carry mc_answer too; their question types say VSI-Bench.
    vsi_like = {"id": 0, "question_type": "object_rel_direction_easy", "options": ["A. left", "B. right"],
                "ground_truth": "left", "mc_answer": "A"}
    assert detect_bench([vsi_like]) == "vsibench"
    assert detect_bench([VSTI_NA_WITH_OPTIONS]) == "vstibench"


@pytest.mark.parametrize("prediction, expected", [
    ("1e2", 1.0), ("100.", 1.0), ("100 cm", 1.0), ("3.5m", 0.0), ("", 0.0), ("nan", 0.0), ("inf", 0.0),
    ("about 100", 0.0), ("90", 0.9),
])
def test_numeric_tricky_predictions(prediction, expected):
    assert score_record(NA_100, prediction) == pytest.approx(expected)


def test_first_token():
    assert first_token("B. sofa is closest") == "B"
    assert first_token("2.5 meters") == "2.5"
    assert first_token("") == ""


def test_vsi_overall_averages_direction_levels_first():
    qs = [{"id": 1, "question_type": "object_counting", "options": None, "ground_truth": "4"},
          {"id": 2, "question_type": "object_rel_direction_easy", "options": ["A. left", "B. right"], "ground_truth": "A"},
          {"id": 3, "question_type": "object_rel_direction_medium", "options": ["A. left", "B. right", "C. back"],
           "ground_truth": "C"},
          {"id": 4, "question_type": "object_rel_direction_hard", "options": ["A. front-left", "B. front-right",
                                                                             "C. back-left", "D. back-right"],
           "ground_truth": "D"}]
    report = score(qs, {"1": "4", "2": "A", "3": "A", "4": "A"}, "vsibench")
    assert report.scores["object_rel_direction"] == pytest.approx(100 / 3)
    assert report.scores["overall"] == pytest.approx((100 + 100 / 3) / 2)    # not the flat mean (50)
    flat = score(qs, {"1": "4", "2": "A", "3": "A", "4": "A"}, "vstibench")
    assert flat.scores["overall"] == pytest.approx(50.0)


def test_missing_predictions_count_as_wrong_and_are_reported():
    qs = [dict(VSI_MC), dict(NA_100)]
    report = score(qs, {"0": "A", "99": "B"}, "vsibench")
    assert report.missing == 1 and report.unknown_ids == 1
    assert report.scores["object_size_estimation"] == 0.0 and report.scores["overall"] == pytest.approx(50.0)


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_ground_truth_as_predictions_scores_100_on_generated_questions(tmp_path):
    from qa_factories import look_pose, make_graph
    from qa_templates.config import QAConfig
    from qa_templates.generate import generate_scene
    from pipeline.core.qa_records import answer_for_training, dumps_record
    from qa_templates.tasks import tasks_for

    g = make_graph([(1, "chair", (0, 0, 0.5), (0.5, 0.5, 1.0)), (2, "table", (2.5, 0, 0.5), (1, 1, 1)),
                    (3, "sofa", (0, 3, 0.5), (2, 1, 1)), (4, "lamp", (3, 3, 0.5), (0.3, 0.3, 1)),
                    (5, "cup", (1, 1, 1), (0.1, 0.1, 0.1)), (6, "cup", (1.2, 1, 1), (0.1, 0.1, 0.1))],
                   poses=[look_pose((0, -3 + 0.1 * k, 1.5), (0, 1, 0)) for k in range(32)],
                   visibility=[(k, i) for k in range(32) for i in range(1, 7)], room={"floor_area_m2": 20.04})
    for bench in ("vsibench", "vstibench"):
        records = generate_scene(g, bench, tasks_for(bench), 0, QAConfig()).records
        for i, r in enumerate(records):
            r["id"] = i
        assert len({r["question_type"] for r in records}) >= 8
        q = tmp_path / f"{bench}.jsonl"
        q.write_text("".join(dumps_record(r) + "\n" for r in records))
        p = tmp_path / f"{bench}_pred.jsonl"
        _write_jsonl(p, [{"id": r["id"], "prediction": answer_for_training(r)} for r in records])
        report = score_files(q, p)
        assert report.scores["overall"] == pytest.approx(100.0)
        assert all(v == pytest.approx(100.0) for v in report.scores.values())
        assert report.missing == 0


def test_eval_is_strict_about_malformed_duplicate_unknown_and_missing_predictions(tmp_path, capsys):
    q = tmp_path / "q.jsonl"
    _write_jsonl(q, [VSI_MC, NA_100, {"id": 3, "question_type": "object_counting", "options": None, "ground_truth": "2"}])
    out = tmp_path / "scores.json"
    p = tmp_path / "p.jsonl"

    def run(rows, *extra):
        _write_jsonl(p, rows)
        capsys.readouterr()
        status = main(["eval", "--questions", str(q), "--predictions", str(p), "--out", str(out), *extra])
        return status, capsys.readouterr()

    good = [{"id": 0, "prediction": "A."}, {"id": 2, "prediction": "90"}, {"id": 3, "prediction": "1"}]
    # Every kind of bad line is counted in one refusal, with exit 1 and no scores written.
    status, printed = run(good + ["{not json", {"id": 7, "prediction": "1"}, {"id": 0, "prediction": "B"}, {"id": 5},
                                  "[1, 2]"])
    assert status == 1 and not out.exists()
    assert "3 malformed line(s)" in printed.err and "1 duplicate id(s) ('0')" in printed.err
    assert "1 id(s) that are no question" in printed.err and "Traceback" not in printed.err + printed.out
    # A duplicate id alone is refused, even with --allow-missing: the first one never silently wins.
    status, printed = run(good + [{"id": 2, "prediction": "40"}], "--allow-missing")
    assert status == 1 and "1 duplicate id(s) ('2')" in printed.err
    # An unknown id alone, a malformed line alone.
    assert run(good + [{"id": 99, "prediction": "A"}])[0] == 1
    assert run(good + ["oops"])[0] == 1
    # Missing predictions: refused by default, scored as wrong with --allow-missing; an empty file is all missing.
    status, printed = run(good[:2])
    assert status == 1 and "1 question(s) without a prediction" in printed.err and not out.exists()
    status, printed = run(good[:2], "--allow-missing")
    assert status == 0
    scores = json.loads(out.read_text())
    assert scores["object_rel_direction_easy"] == 100.0 and scores["object_size_estimation"] == pytest.approx(90.0)
    assert scores["object_counting"] == 0.0 and scores["missing"] == 1
    assert scores["overall"] == pytest.approx((100 + 90 + 0) / 3)
    assert "missing predictions: 1 (scored as wrong)" in printed.out
    status, printed = run([])
    assert status == 1 and "3 question(s) without a prediction" in printed.err
    assert run([], "--allow-missing")[0] == 0 and json.loads(out.read_text())["overall"] == 0.0
    # All good: exit 0.
    assert run(good)[0] == 0 and json.loads(out.read_text())["missing"] == 0


def test_eval_command_rejects_bad_question_files(tmp_path, capsys):
    q = tmp_path / "q.jsonl"
    _write_jsonl(q, [{"id": 1, "question_type": "object_counting", "options": None, "ground_truth": "0"}])
    p = tmp_path / "p.jsonl"
    _write_jsonl(p, [{"id": 1, "prediction": "1"}])
    assert main(["eval", "--questions", str(q), "--predictions", str(p)]) == 2
    assert "numeric ground_truth must be a positive number" in capsys.readouterr().err
    assert main(["eval", "--questions", str(tmp_path / "nope.jsonl"), "--predictions", str(p)]) == 2


def _qa_file_made_by_the_qa_stage(root, bench: str, split: str, rows) -> None:
    from pipeline.core.atomic import sha256_file
    from pipeline.core.layout import DatasetRoot
    from pipeline.core.markers import Marker
    from pipeline.stages.qa import QAStage

    path = DatasetRoot(root).qa_file(bench, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_jsonl(path, rows)
    QAStage().ledger().write(DatasetRoot(root), Marker("qa", "qa", f"{bench}/{split}", "fp", 1, {}, {},
                                                       sha256_file(path), {}, {"questions": len(rows)}))


def test_eval_root_scores_every_predictions_file_into_root_eval(tmp_path, capsys):
    root = tmp_path / "root"
    _qa_file_made_by_the_qa_stage(root, "vsibench", "val", [VSI_MC, NA_100])
    (root / "train" / "predictions").mkdir(parents=True)
    _write_jsonl(root / "train" / "predictions" / "vsibench_val.jsonl",
                 [{"id": 0, "prediction": "A."}, {"id": 2, "prediction": "90"}])
    assert main(["eval", "--root", str(root)]) == 0
    scores = json.loads((root / "eval" / "vsibench_val.json").read_text())
    assert scores["object_size_estimation"] == pytest.approx(90.0) and scores["missing"] == 0
    # Predictions from outside the predict stage: their digest is the input; a changed file is refused until
    # --rebuild (the scores would no longer match them).
    _write_jsonl(root / "train" / "predictions" / "vsibench_val.jsonl",
                 [{"id": 0, "prediction": "B"}, {"id": 2, "prediction": "90"}])
    capsys.readouterr()
    assert main(["eval", "--root", str(root)]) == 2
    assert "vsibench/val" in capsys.readouterr().err
    assert main(["eval", "--root", str(root), "--rebuild"]) == 0
    assert json.loads((root / "eval" / "vsibench_val.json").read_text())["object_rel_direction_easy"] == 0.0
    assert main(["eval", "--root", str(root), "--questions", str(root / "x.jsonl")]) == 2
    assert main(["eval", "--root", str(tmp_path / "empty")]) == 2
    assert "dataset root not found" in capsys.readouterr().err
    (tmp_path / "bare").mkdir()
    assert main(["eval", "--root", str(tmp_path / "bare")]) == 2
    assert "no <bench>_<split>.jsonl predictions" in capsys.readouterr().err
    assert main(["eval"]) == 2
