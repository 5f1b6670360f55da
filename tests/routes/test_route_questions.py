"""VSI-Bench route_planning questions from stored routes: exact form, options, letters, reproducibility."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from pipeline.core.schemas import ROUTES_SCHEMA, read_table, write_table
from pipeline.core.qa_records import build_prompt
from qa_templates.route_planning import route_question, route_records, turn_options
from scene_graph.navigation import build_navigator, scenes
from scene_graph.routes import TURNS, RouteSettings, routes_table, sample_routes

# The example of ../shared/docs/qa_tasks.md (VSI-Bench's route_planning form), character for character.
DOC_EXAMPLE = ("You are a robot beginning at the bed facing the tv. You want to navigate to the toilet. You will "
               "perform the following actions (Note: for each [please fill in], choose either 'turn back,' 'turn "
               "left,' or 'turn right.'): 1. Go forward until the tv 2. [please fill in] 3. Go forward until the "
               "toilet. You have reached the final destination.")


def test_question_matches_the_benchmark_form():
    assert route_question("bed", "tv", "toilet", ["tv", "toilet"], starts_with_turn=False) == DOC_EXAMPLE
    q = route_question("tv", "bed", "trash bin", ["cabinet", "trash bin"], starts_with_turn=True)
    assert q.endswith("1. [please fill in] 2. Go forward until the cabinet 3. [please fill in] "
                      "4. Go forward until the trash bin. You have reached the final destination.")


def test_options_use_only_the_turn_vocabulary_and_never_repeat():
    rng = np.random.default_rng(0)
    one = turn_options(["Turn Back"], rng)
    assert one[0] == "Turn Back" and sorted(one) == sorted(TURNS)
    for n in (2, 3, 4):
        truth = [TURNS[k % 3] for k in range(n)]
        opts = turn_options(truth, rng)
        assert len(opts) == 4 and len(set(opts)) == 4 and opts[0] == ", ".join(truth)
        for o in opts:
            parts = o.split(", ")
            assert len(parts) == n and set(parts) <= set(TURNS)


@pytest.fixture(scope="module")
def stored_routes(tmp_path_factory):
    lay = scenes.multi_room(4)
    nav = build_navigator(lay.vertices, lay.faces, backend="grid")
    routes, _ = sample_routes(nav, lay.objects, RouteSettings(max_routes=10, reversed=True, partial=True, seed=5))
    path = tmp_path_factory.mktemp("routes") / "synth0004.parquet"
    write_table(path, routes_table(routes, "synthetic", "synth0004", "grid"), ROUTES_SCHEMA)
    return read_table(path, ROUTES_SCHEMA)


def test_records_follow_the_stored_routes_with_balanced_letters(stored_routes):
    records = route_records(stored_routes, dataset="synthetic", scene_id="synth0004",
                            scene_key="synthetic_synth0004", run_seed=7)
    rows = stored_routes.to_pylist()
    assert len(records) == len(rows) >= 8
    for rec, row in zip(records, rows):
        assert rec["question_type"] == "route_planning"
        letter = rec["ground_truth"]
        chosen = [o for o in rec["options"] if o.startswith(letter + ". ")]
        assert chosen == [f"{letter}. {', '.join(row['turns'])}"]
        assert rec["question"].count("[please fill in]") == len(row["turns"]) + 1   # + the note
        assert rec["question"].startswith(f"You are a robot beginning at the {row['start_label']} facing the "
                                          f"{row['facing_label']}. You want to navigate to the {row['goal_label']}.")
        assert len(rec["options"]) == (3 if len(row["turns"]) == 1 else 4)
        assert "Options:" in build_prompt(rec)
    for n_options in (3, 4):
        letters = Counter(r["ground_truth"] for r in records if len(r["options"]) == n_options)
        if sum(letters.values()) >= n_options:
            assert max(letters.values()) - min(letters.get(x, 0) for x in "ABCD"[:n_options]) <= 1


def test_records_are_byte_identical_across_reruns(stored_routes):
    def dump(table):
        recs = route_records(table, dataset="synthetic", scene_id="synth0004", scene_key="synthetic_synth0004",
                             run_seed=7)
        return "\n".join(json.dumps(r, sort_keys=True) for r in recs)

    assert dump(stored_routes) == dump(stored_routes)
    shuffled = stored_routes.take(np.arange(stored_routes.num_rows)[::-1])   # row order on disk does not matter
    assert dump(shuffled) == dump(stored_routes)
    other = route_records(stored_routes, dataset="synthetic", scene_id="synth0004",
                          scene_key="synthetic_synth0004", run_seed=8)
    assert [r["options"] for r in other] != [json.loads(x)["options"] for x in dump(stored_routes).split("\n")]
