"""The qa stage end to end on graphs written in the real on-disk format: outputs, determinism across workers
(real Ray), the split guard, and bad input becoming error rows."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.core.errors import read_errors
from qa_factories import look_pose, make_graph
from pipeline.core.qa_records import build_prompt
from pipeline.core.layout import DatasetRoot
from pipeline.stages.graph import save_graph

CATS = ["chair", "table", "sofa", "bed", "tv", "lamp", "desk", "plant", "sink", "fan"]


def scene(seed: int, scene_id: str, split: str, dataset: str = "scannet"):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(6, 10))
    cats = list(rng.permutation(CATS)[:n]) + ["cup", "cup"]
    objs = [(k + 1, c, (rng.uniform(0, 6), rng.uniform(0, 6), rng.uniform(0.2, 1.5)), tuple(rng.uniform(0.2, 1.0, 3)),
             float(rng.uniform(0, 180))) for k, c in enumerate(cats)]
    poses = [look_pose((0.2 * k, 0.15 * k, 1.4), (np.cos(0.1 * k), np.sin(0.1 * k) + 1.0, -0.2)) for k in range(16)]
    vis = [(k, i + 1) for k in range(16) for i in range(len(objs)) if (k + i) % 3 != 0]
    return make_graph(objs, poses=poses, visibility=vis, room={"floor_area_m2": float(rng.uniform(15, 50))},
                      dataset=dataset, scene_id=scene_id, split=split, timestamps=np.arange(16) * 1.5)


def write_root(root: Path, scenes) -> Path:
    for g in scenes:
        save_graph(DatasetRoot(root), g)
    return root


@pytest.fixture(scope="module")
def graphs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("graphs")
    scenes = [scene(s, f"scene{s:04d}_00", "val" if s >= 4 else "train") for s in range(6)]
    scenes.append(scene(99, "41069025", "train", dataset="arkitscenes"))
    return write_root(root, scenes)


def qa_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "qa").rglob("*")) if p.is_file()}


def run_qa(src: Path, dst: Path, *extra: str) -> int:
    shutil.copytree(src, dst)
    return main(["qa", "--root", str(dst), "--seed", "3", *extra])


def test_local_run_writes_benchmark_llava_and_stats(graphs_root, tmp_path):
    root = tmp_path / "root"
    assert run_qa(graphs_root, root, "--local") == 0
    for bench in ("vsibench", "vstibench"):
        for split in ("train", "val"):
            lines = (root / "qa" / bench / f"{split}.jsonl").read_text().splitlines()
            records = [json.loads(line) for line in lines]
            assert records and [r["id"] for r in records] == list(range(len(records)))
            assert [r["qa_key"] for r in records] == sorted(r["qa_key"] for r in records)
            for r in records:
                for key in ("id", "dataset", "scene_name", "question_type", "question", "options", "ground_truth",
                            "scene_key", "object_ids", "frame_ranks"):
                    assert key in r
                assert r["scene_key"] == f"{r['dataset']}_{r['scene_name']}"
                if bench == "vstibench" and r["options"]:
                    assert r["mc_answer"] in "ABCD"[:len(r["options"])]
                if bench == "vsibench" and r["options"]:
                    assert r["ground_truth"] in "ABCD"[:len(r["options"])]
            llava = json.loads((root / "qa" / bench / f"{split}_llava.json").read_text())
            assert len(llava) == len(records)
            first, conv = records[0], llava[0]
            assert conv["conversations"][0] == {"from": "human", "value": "<image>\n" + build_prompt(first)}
            assert conv["scene_name"] == first["scene_name"] and conv["question_type"] == first["question_type"]
            stats = json.loads((root / "qa" / bench / f"{split}_stats.json").read_text())
            assert stats["questions"] == len(records)
            assert sum(t["questions"] for t in stats["tasks"].values()) == len(records)
    # Benchmark (val) scenes only get the benchmark's own question forms; train also gets the variants.
    val_types = {json.loads(l)["task"] for l in (root / "qa/vsibench/val.jsonl").read_text().splitlines()}
    train_types = {json.loads(l)["task"] for l in (root / "qa/vsibench/train.jsonl").read_text().splitlines()}
    assert not any(t.endswith("_mc") or t.endswith(("_v2", "_v3")) for t in val_types)
    assert any(t.endswith("_mc") for t in train_types)
    # Split guard: no scene contributes to two splits.
    recorded = json.loads((root / "qa" / "scenes.json").read_text())
    assert set(recorded["train"]).isdisjoint(recorded["val"])
    val_scenes = {json.loads(l)["scene_key"] for l in (root / "qa/vstibench/val.jsonl").read_text().splitlines()}
    assert val_scenes <= set(recorded["val"])
    info = json.loads((root / "info.json").read_text())
    assert info["stages"]["qa"]["counts"]["failed"] == 0


def test_prompt_is_built_exactly_like_the_evaluator():
    mc = {"question": "Q?", "options": ["A. left", "B. right"]}
    assert build_prompt(mc) == ("These are frames of a video.\nQ?\nOptions:\nA. left\nB. right\n"
                                "Answer with the option's letter from the given choices directly.")
    na = {"question": "How many?", "options": None}
    assert build_prompt(na) == "These are frames of a video.\nHow many?\nPlease answer the question using a single word or phrase."


def test_byte_identical_for_local_one_and_two_ray_workers_and_caps(graphs_root, tmp_path, ray_local, monkeypatch):
    assert run_qa(graphs_root, tmp_path / "local", "--local", "--max-per-task", "20") == 0
    assert run_qa(graphs_root, tmp_path / "w1", "--workers", "1", "--max-per-task", "20") == 0
    assert run_qa(graphs_root, tmp_path / "w2", "--workers", "2", "--max-per-task", "20") == 0
    local = qa_files(tmp_path / "local")
    assert local == qa_files(tmp_path / "w1") == qa_files(tmp_path / "w2")
    # Scenes listed in another order give the same bytes.
    from pipeline.stages.contract import FileLedger
    real = FileLedger.read
    monkeypatch.setattr(FileLedger, "read", lambda self, root: dict(reversed(list(real(self, root).items()))))
    assert run_qa(graphs_root, tmp_path / "reversed", "--local", "--max-per-task", "20") == 0
    assert qa_files(tmp_path / "reversed") == local
    stats = json.loads(local["qa/vstibench/train_stats.json"])
    assert all(t["questions"] <= 20 for t in stats["tasks"].values())
    assert any(t["capped_per_task"] > 0 for t in stats["tasks"].values())


def test_split_guard_fails_when_a_scannet_room_is_in_two_splits(tmp_path, capsys):
    root = write_root(tmp_path / "root", [scene(1, "scene0007_00", "train"), scene(2, "scene0007_01", "val")])
    assert main(["qa", "--root", str(root), "--local"]) == 2
    assert "ScanNet room scannet/scene0007 has scans in splits ['train', 'val']" in capsys.readouterr().err
    assert not (root / "qa" / "vsibench").exists()


def test_split_guard_remembers_earlier_runs(tmp_path, capsys):
    root = write_root(tmp_path / "root", [scene(1, "scene0001_00", "train")])
    assert main(["qa", "--root", str(root), "--local", "--bench", "vsibench"]) == 0
    # The same scene later shows up as a benchmark scene: refused.
    (root / "qa" / "scenes.json").write_text(json.dumps({"train": ["scannet_scene0001_00"],
                                                         "val": ["scannet_scene0001_00"]}))
    assert main(["qa", "--root", str(root), "--local", "--bench", "vsibench", "--split", "train"]) == 2
    assert "scene scannet_scene0001_00 appears in splits ['train', 'val']" in capsys.readouterr().err


def test_bad_graph_becomes_an_error_row_and_a_nonzero_exit(tmp_path, capsys):
    bad = scene(5, "scene0005_00", "train")
    good = scene(6, "scene0006_00", "train")
    root = write_root(tmp_path / "root", [bad, good])
    # Corrupt one box on disk after the graph was written (as a broken upstream stage would).
    path = root / "graph/scannet/scene0005_00/objects.parquet"
    table = pq.read_table(path)
    cent = table.column("centroid").to_pylist()
    cent[0] = [float("nan"), 0.0, 0.0]
    table = table.set_column(table.schema.get_field_index("centroid"), "centroid",
                             pa.array(cent, type=table.schema.field("centroid").type))
    pq.write_table(table, path)
    assert main(["qa", "--root", str(root), "--local", "--bench", "vsibench"]) == 1
    rows = read_errors(root / "errors.parquet")
    assert [(r.stage, r.scene_id, r.error_type) for r in rows] == [("qa", "scene0005_00", "InputError")]
    assert "objects.parquet" in rows[0].path and "non-finite box" in rows[0].message
    records = (root / "qa/vsibench/train.jsonl").read_text().splitlines()
    assert records and all(json.loads(l)["scene_name"] == "scene0006_00" for l in records)
    stats = json.loads((root / "qa/vsibench/train_stats.json").read_text())
    assert stats["failed_scenes"] == 1
    assert "error: qa scannet/scene0005_00: InputError" in capsys.readouterr().err
    # The file is written for inspection but not done: a rerun after the fix retries and clears the error row.
    save_graph(DatasetRoot(root), bad)
    assert main(["qa", "--root", str(root), "--local", "--bench", "vsibench"]) == 0
    assert read_errors(root / "errors.parquet") == []


def test_usage_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["qa", "--root", str(empty), "--local"]) == 2
    assert "no complete scene graphs" in capsys.readouterr().err
    root = write_root(tmp_path / "root", [scene(1, "scene0001_00", "train")])
    assert main(["qa", "--root", str(root), "--local", "--tasks", "nonsense"]) == 2
    assert "unknown task names ['nonsense']" in capsys.readouterr().err
    assert main(["qa", "--root", str(root), "--local", "--split", "val"]) == 2
    assert "no graphs of split(s) ['val']" in capsys.readouterr().err


def _routes_table(dataset: str, scene_id: str):
    from pipeline.core.schemas import ROUTES_SCHEMA, table_from_columns

    return table_from_columns(ROUTES_SCHEMA, {
        "dataset": [dataset], "scene_id": [scene_id], "route_index": [0], "kind": ["forward"], "parent_index": [-1],
        "backend": ["grid"], "start_instance_id": [1], "start_label": ["bed"], "facing_instance_id": [2],
        "facing_label": ["tv"], "goal_instance_id": [3], "goal_label": ["toilet"], "start": [[0.0, 0.0, 0.0]],
        "goal": [[2.0, 2.0, 0.0]], "start_heading_deg": [90.0],
        "corner_points": [[[0.0, 0.0, 0.0], [0.0, 2.0, 0.0], [2.0, 2.0, 0.0]]], "starts_with_turn": [False],
        "turns": [["Turn Right"]], "turn_angles_deg": [[-90.0]], "turn_points": [[[0.0, 2.0, 0.0]]],
        "landmark_instance_ids": [[2, 3]], "landmark_labels": [["tv", "toilet"]], "leg_lengths_m": [[2.0, 2.0]],
        "geodesic_length_m": [4.0], "euclidean_length_m": [2.83], "num_turns": [1],
    })


def _write_routes(root: Path, dataset: str, scene_id: str) -> None:
    """A routes table and its done-marker, as the routes stage leaves them."""
    from pipeline.core.atomic import sha256_file
    from pipeline.core.markers import Marker
    from pipeline.core.schemas import ROUTES_SCHEMA, write_table
    from pipeline.stages.routes import RoutesStage

    table = DatasetRoot(root).routes_table(dataset, scene_id)
    write_table(table, _routes_table(dataset, scene_id), ROUTES_SCHEMA)
    RoutesStage().ledger().write(DatasetRoot(root), Marker("routes", "routes", f"{dataset}/{scene_id}", "fp", 1, {},
                                                           {}, sha256_file(table), {}, {"routes": 1}))


def test_route_planning_questions_join_the_vsibench_file_when_routes_exist(tmp_path):

    root = write_root(tmp_path / "root", [scene(1, "scene0001_00", "train"), scene(2, "scene0002_00", "train")])
    _write_routes(root, "scannet", "scene0001_00")
    assert main(["qa", "--root", str(root), "--local", "--bench", "vsibench", "--tasks", "route_planning"]) == 0
    records = [json.loads(l) for l in (root / "qa/vsibench/train.jsonl").read_text().splitlines()]
    assert [r["question_type"] for r in records] == ["route_planning"]
    r = records[0]
    assert r["scene_name"] == "scene0001_00" and r["id"] == 0
    assert r["question"].startswith("You are a robot beginning at the bed facing the tv.")
    assert "Turn Right" in r["options"][ord(r["ground_truth"]) - ord("A")]
    stats = json.loads((root / "qa/vsibench/train_stats.json").read_text())
    assert stats["tasks"]["route_planning"]["questions"] == 1
