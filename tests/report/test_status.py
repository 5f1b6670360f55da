"""``vlm3r-data status`` on a root built by the real stages: done / total / failed per stage, error causes, the
JSON and table forms, read-only behaviour, and stages that have not run."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from pipeline.cli import main
from pipeline.core.errors import read_errors
from pipeline.stages.run import ledgers_of
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
    status = root_status(ledgers_of(root))
    errors = read_errors(root / "errors.parquet")

    ingest = status.stage("ingest")
    assert (ingest.done, ingest.total, ingest.failed, ingest.pending, ingest.stale) == (3, 4, 1, 0, 0)
    assert ingest.state == "with failures"
    ingest_rows = [e for e in errors if e.stage == "ingest"]
    assert [(e.scene_id, e.error_type) for e in ingest_rows] == [(built_root.broken_scene, "InputError")]
    assert ingest.errors_by_type == {"InputError": 1}
    assert ingest.details["datasets"] == {"scannet": 3}

    extract = status.stage("extract")
    assert (extract.done, extract.total, extract.failed, extract.state) == (3, 3, 0, "done")
    index = json.loads((root / "tokens" / "index.json").read_text())
    assert extract.details["shards"] == index["num_shards"] and index["num_samples"] == 3
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

    # The qa units are its files: 3 benches x (train, val).
    qa = status.stage("qa")
    lines = _qa_lines(root)
    assert (qa.done, qa.total, qa.failed, qa.unit) == (6, 6, 0, "question files")
    for name, records in lines.items():
        assert qa.details["files"][name]["questions"] == len(records) > 0
        assert qa.details["files"][name]["scenes"] == len({r["scene_key"] for r in records})

    # Two training scenes are packed; the val scene is a benchmark scene and never counts.
    pack = status.stage("pack")
    assert (pack.done, pack.total, pack.failed, pack.state) == (2, 2, 0, "done")

    # Nothing trained, predicted or scored yet.
    for name in ("train", "predict", "eval"):
        assert status.stage(name).state == "not run"
    assert status.stage("train").total == 1
    assert status.error_rows == len(errors)


def test_status_is_read_only(built_root):
    before = _tree_digest(built_root.root)
    root_status(ledgers_of(built_root.root))
    assert main(["status", "--root", str(built_root.root)]) == 0
    assert _tree_digest(built_root.root) == before


def test_status_command_table_and_json(built_root, capsys):
    root = built_root.root
    assert main(["status", "--root", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(json.dumps(root_status(ledgers_of(root)).to_json()))
    by_stage = {s["stage"]: s for s in report["stages"]}
    assert [s["stage"] for s in report["stages"]] == ["ingest", "extract", "graph", "routes", "qa", "pack", "train",
                                                       "predict", "eval", "stats"]
    assert (by_stage["ingest"]["done"], by_stage["ingest"]["total"], by_stage["ingest"]["failed"]) == (3, 4, 1)

    assert main(["status", "--root", str(root)]) == 0
    table = capsys.readouterr().out
    ingest_line = next(line for line in table.splitlines() if line.startswith("ingest "))
    # stage, state, done, total, stale, failed, pending
    assert ingest_line.split()[:8] == ["ingest", "with", "failures", "3", "4", "0", "1", "0"]
    assert str(root / "scenes") in ingest_line
    assert "ingest failures by cause: InputError x1" in table


def test_incomplete_shard_is_not_done(built_root, tmp_path):
    # A shard without its done-marker is what a killed extract leaves: its scenes are pending, not done.
    root = built_root.copy(tmp_path / "root")
    for marker in (root / "tokens" / "_done").glob("*.json"):
        marker.unlink()
    extract = root_status(ledgers_of(root)).stage("extract")
    assert (extract.done, extract.total, extract.pending, extract.state) == (0, 3, 3, "partial")


def test_repaired_scene_clears_the_failure(built_root, tmp_path):
    from pipeline.sources.scannet_writer import write_scannet
    from pipeline.sources.synthetic import generate_scene

    root = built_root.copy(tmp_path / "root")
    raw = tmp_path / "raw"
    shutil.copytree(built_root.raw, raw)
    shutil.rmtree(raw / "scans" / built_root.broken_scene)
    assert write_scannet(generate_scene(13, num_frames=16), raw, split="train") == built_root.broken_scene
    # The raw release moved (its copy here): the frame tables point into it, so ingest refuses until --rebuild.
    argv = ["ingest", "--dataset", "scannet", "--raw", str(raw), "--out", str(root), "--num-frames", "4", "--local"]
    assert main(argv) == 2
    assert main(argv + ["--rebuild"]) == 0
    status = root_status(ledgers_of(root))
    ingest = status.stage("ingest")
    assert (ingest.done, ingest.total, ingest.failed, ingest.state) == (4, 4, 0, "done")
    assert ingest.errors_by_type == {}
    # The new scene is not extracted yet; the three others were extracted from frames that were re-ingested.
    extract = status.stage("extract")
    assert (extract.done, extract.total, extract.pending, extract.stale, extract.state) == (3, 4, 1, 3, "stale")
    assert all("ingest:scannet/" in why and "was rebuilt" in why for why in extract.stale_units.values())


def test_fresh_missing_and_bad_roots(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    status = root_status(ledgers_of(empty))
    assert all(s.state == "not run" for s in status.stages)
    assert all(s.done == 0 and s.failed == 0 for s in status.stages)

    missing = tmp_path / "missing"
    assert main(["status", "--root", str(missing)]) == 2
    assert f"{missing}: dataset root not found" in capsys.readouterr().err

    marker = empty / "graph" / "scannet" / "scene0000_00" / "_DONE.json"
    marker.parent.mkdir(parents=True)
    marker.write_text('{"stage": "graph"')
    assert main(["status", "--root", str(empty)]) == 2
    err = capsys.readouterr().err
    assert str(marker) in err and "unreadable done-marker" in err and "Traceback" not in err
