"""``vlm3r-data status`` on a root built by the real stages: done / total / failed per stage, error causes, the
JSON and table forms, read-only behaviour, and stages that have not run."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from pipeline.core.atomic import write_json
from pipeline.cli import main
from pipeline.core.errors import read_errors
from pipeline.stages.status import root_status


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _qa_lines(root: Path) -> dict[str, list[dict]]:
    return {f"{p.parent.name}/{p.stem}": [json.loads(line) for line in p.read_text().splitlines()]
            for p in sorted((root / "qa").glob("*/*.jsonl"))}


def test_stages_ran_as_expected(built_root):
    # The broken scene makes ingest exit 1; every later stage sees only the three good scenes.
    assert built_root.exit_codes["ingest"] == 1
    assert built_root.exit_codes["extract"] == 0
    assert built_root.exit_codes["graph"] == 0
    assert built_root.exit_codes["qa"] == 0
    assert built_root.exit_codes["pack"] == 0


def test_status_figures_per_stage(built_root):
    root = built_root.root
    status = root_status(root)
    errors = read_errors(root / "errors.parquet")

    ingest = status.stage("ingest")
    assert (ingest.done, ingest.total, ingest.failed, ingest.pending) == (3, 4, 1, 0)
    assert ingest.state == "with failures"
    ingest_rows = [e for e in errors if e.stage == "ingest"]
    assert [(e.scene_id, e.error_type) for e in ingest_rows] == [(built_root.broken_scene, "InputError")]
    assert ingest.errors_by_type == {"InputError": 1}
    assert ingest.details["datasets"] == {"scannet": {"done": 3, "total": 4, "failed": 1}}

    extract = status.stage("extract")
    assert (extract.done, extract.total, extract.failed, extract.state) == (3, 3, 0, "done")
    index = json.loads((root / "tokens" / "index.json").read_text())
    assert extract.details["shards"] == index["num_shards"]
    assert extract.details["samples"] == index["num_samples"] == 3
    assert extract.details["bytes"] == sum(s["size_bytes"] for s in index["shards"])

    graph = status.stage("graph")
    assert (graph.done, graph.total, graph.failed) == (3, 3, 0)

    routes = status.stage("routes")
    route_rows = [e for e in errors if e.stage == "routes"]
    markers = sorted((root / "routes" / "scannet").glob("*_DONE.json"))
    assert routes.total == 3
    assert routes.done == len(markers)
    assert routes.failed == len(route_rows)
    assert routes.done + routes.failed == 3
    assert routes.details["routes"] == sum(json.loads(m.read_text())["stats"]["routes"] for m in markers)

    qa = status.stage("qa")
    lines = _qa_lines(root)
    assert (qa.done, qa.total, qa.failed) == (3, 3, 0)
    assert qa.details["questions"] == sum(len(v) for v in lines.values()) > 0
    for name, records in lines.items():
        assert qa.details["files"][name]["questions"] == len(records)
        assert qa.details["files"][name]["scenes_with_questions"] == len({r["scene_key"] for r in records})

    # Two training scenes are packed; the val scene is a benchmark scene and never counts.
    pack = status.stage("pack")
    assert (pack.done, pack.total, pack.failed, pack.state) == (2, 2, 0, "done")
    assert pack.details["benchmark_scenes_left_out"] == 1

    # Nothing trained or scored yet; eval has the two benchmark (val) question files to score.
    assert status.stage("train").state == "not run"
    evaluation = status.stage("eval")
    assert (evaluation.done, evaluation.total, evaluation.state) == (0, 2, "not run")
    assert status.error_rows == len(errors)


def test_status_is_read_only(built_root):
    before = _tree_digest(built_root.root)
    root_status(built_root.root)
    assert main(["status", "--root", str(built_root.root)]) == 0
    assert _tree_digest(built_root.root) == before


def test_status_command_table_and_json(built_root, capsys):
    root = built_root.root
    assert main(["status", "--root", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(json.dumps(root_status(root).to_json()))
    by_stage = {s["stage"]: s for s in report["stages"]}
    assert [s["stage"] for s in report["stages"]] == ["ingest", "extract", "graph", "routes", "qa", "pack", "train",
                                                       "eval"]
    assert (by_stage["ingest"]["done"], by_stage["ingest"]["total"], by_stage["ingest"]["failed"]) == (3, 4, 1)

    assert main(["status", "--root", str(root)]) == 0
    table = capsys.readouterr().out
    ingest_line = next(line for line in table.splitlines() if line.startswith("ingest "))
    assert ingest_line.split()[:6] == ["ingest", "with", "failures", "3", "4", "1"]
    assert str(root / "scenes") in ingest_line
    assert "ingest failures by cause: InputError x1" in table


def test_incomplete_shard_is_not_done(built_root, tmp_path):
    # A shard without its done-marker is what a killed extract leaves: its scenes are pending, not done.
    root = built_root.copy(tmp_path / "root")
    for marker in (root / "tokens" / "_done").glob("*.json"):
        marker.unlink()
    extract = root_status(root).stage("extract")
    assert (extract.done, extract.total, extract.pending, extract.state) == (0, 3, 3, "partial")


def test_repaired_scene_clears_the_failure(built_root, tmp_path):
    from pipeline.sources.scannet_writer import write_scannet
    from pipeline.sources.synthetic import generate_scene

    root = built_root.copy(tmp_path / "root")
    raw = tmp_path / "raw"
    shutil.copytree(built_root.raw, raw)
    shutil.rmtree(raw / "scans" / built_root.broken_scene)
    assert write_scannet(generate_scene(13, num_frames=16), raw, split="train") == built_root.broken_scene
    assert main(["ingest", "--dataset", "scannet", "--raw", str(raw), "--out", str(root), "--num-frames", "4",
                 "--local"]) == 0
    status = root_status(root)
    ingest = status.stage("ingest")
    assert (ingest.done, ingest.total, ingest.failed, ingest.state) == (4, 4, 0, "done")
    assert ingest.errors_by_type == {}
    # The new scene is not extracted yet.
    extract = status.stage("extract")
    assert (extract.done, extract.total, extract.pending) == (3, 4, 1)


def test_train_and_eval_outputs(built_root, tmp_path):
    # The layout workers/trainer/train.py writes (complete checkpoints step_XXXXXX/ with progress.json, an
    # incomplete .tmp, the log's setup event) and the score files of `vlm3r-data eval --out ROOT/eval/...`.
    from workers.trainer.train import CHECKPOINT_DIR, PROGRESS, STEP_PREFIX

    root = built_root.copy(tmp_path / "root")
    ckpt = root / "train" / CHECKPOINT_DIR
    write_json(ckpt / f"{STEP_PREFIX}000002" / PROGRESS, {"step": 2})
    (ckpt / f"{STEP_PREFIX}000003.tmp").mkdir()
    (root / "train" / "train_log.jsonl").write_text(
        json.dumps({"event": "setup", "total_steps": 5}) + "\n" + '{"event": "step", "st')   # killed mid-line
    write_json(root / "eval" / "vsibench_val.json", {"scores": {}})
    status = root_status(root)
    train = status.stage("train")
    assert (train.done, train.total, train.unit, train.state) == (2, 5, "steps", "partial")
    assert train.details["checkpoints"] == 1
    evaluation = status.stage("eval")
    assert (evaluation.done, evaluation.total, evaluation.details["scored"]) == (1, 2, ["vsibench/val"])


def test_fresh_missing_and_bad_roots(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    status = root_status(empty)
    assert all(s.state in ("not run", "unavailable") for s in status.stages)
    assert all(s.done == 0 and s.failed == 0 for s in status.stages)

    missing = tmp_path / "missing"
    assert main(["status", "--root", str(missing)]) == 2
    assert f"{missing}: dataset root not found" in capsys.readouterr().err

    (empty / "qa" / "vsibench").mkdir(parents=True)
    (empty / "qa" / "vsibench" / "train.jsonl").write_text('{"scene_key": "a", "task": "t"}\nnot json\n')
    assert main(["status", "--root", str(empty)]) == 2
    err = capsys.readouterr().err
    assert str(empty / "qa" / "vsibench" / "train.jsonl") in err and "line 2" in err


def test_stage_without_command_is_unavailable(tmp_path):
    (tmp_path / "r").mkdir()
    status = root_status(tmp_path / "r", available=["ingest", "extract"])
    assert status.stage("train").state == "unavailable"
    assert status.stage("ingest").state == "not run"
