"""The stage contract on real stage runs (a root built by ingest, extract, graph, routes, qa and pack): the rerun
rules, staleness and its refusals, one configuration per root, the writer lock, and metadata whose counts
disagree with its boxes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path


from pipeline.cli import main
from pipeline.core.errors import read_errors
from pipeline.core.layout import DatasetRoot
from pipeline.stages.run import ledgers_of
from pipeline.stages.status import root_status


def _digest(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(argv)
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    return status, out.out, out.err


def test_rerun_rules_on_real_stage_runs(built_root, tmp_path, capsys):
    root = built_root.copy(tmp_path / "root")
    r = str(root)
    graph_before, qa_before = _digest(root / "graph"), _digest(root / "qa")
    scene_ids = [s for s in built_root.scene_ids if s != built_root.broken_scene]

    # Same config, same inputs: every unit is skipped.
    status, out, _ = _run(capsys, ["graph", "--root", r, "--local"])
    assert status == 0 and "0 done, 3 up to date of 3 scenes" in out

    # A changed field is refused with exit 2, naming the stage, the field old -> new and the command that rebuilds.
    status, _, err = _run(capsys, ["graph", "--root", r, "--depth-tolerance", "0.5", "--local"])
    assert status == 2
    assert "graph: the configuration changed" in err and "depth_tolerance: 0.2 -> 0.5" in err
    assert f"vlm3r-data graph --root {r} --depth-tolerance 0.5 --local --rebuild" in err
    qa_cmd = ["qa", "--root", r, "--max-per-scene-task", "2", "--local"]        # as the root was made
    status, _, err = _run(capsys, qa_cmd + ["--seed", "1"])
    assert status == 2 and "seed: 0 -> 1" in err and "max_per_scene_task" not in err
    status, _, err = _run(capsys, ["ingest", "--dataset", "scannet", "--raw", str(built_root.raw), "--out", r,
                                   "--num-frames", "16", "--local"])
    assert status == 2 and "ingest: the configuration changed" in err and "num_frames: 4 -> 16" in err
    # One configuration per stage per root: a subset with another configuration is refused, even with --rebuild.
    status, _, err = _run(capsys, ["graph", "--root", r, "--scenes", scene_ids[0], "--depth-tolerance", "0.5",
                                   "--rebuild", "--local"])
    assert status == 2 and "covers a subset" in err and "2 other scenes keep the old one" in err
    assert f"vlm3r-data graph --root {r} --depth-tolerance 0.5 --rebuild --local" in err   # --scenes dropped
    assert _digest(root / "graph") == graph_before and _digest(root / "qa") == qa_before

    # --rebuild redoes the stage; what downstream read becomes stale, and status says so.
    status, out, _ = _run(capsys, ["graph", "--root", r, "--depth-tolerance", "0.5", "--rebuild", "--local"])
    assert status == 0 and "3 done, 0 up to date of 3 scenes" in out and "now stale downstream: qa" in out
    status_now = root_status(ledgers_of(root))
    qa, pack = status_now.stage("qa"), status_now.stage("pack")
    assert qa.state == "stale" and qa.stale == qa.done == 6
    assert all("graph:scannet/" in why and "was rebuilt" in why for why in qa.stale_units.values())
    assert pack.state == "stale" and pack.stale == 2          # made from stale QA files
    assert all("qa:" in why and "is stale" in why for why in pack.stale_units.values())
    status, table, _ = _run(capsys, ["status", "--root", r])
    qa_line = next(line for line in table.splitlines() if line.startswith("qa "))
    assert qa_line.split()[:7] == ["qa", "stale", "6", "6", "6", "0", "0"]
    assert "qa stale: regionbench/train: graph:scannet/" in table

    # A stage whose inputs were rebuilt refuses to run until --rebuild, naming what changed.
    status, _, err = _run(capsys, qa_cmd)
    assert status == 2 and "upstream rebuilt" in err and "vsibench/train: graph:scannet/" in err
    assert _digest(root / "qa") == qa_before
    # pack refuses stale inputs, naming them, unless --allow-stale.
    status, _, err = _run(capsys, ["pack", "--root", r])
    assert status == 2 and "pack: 6 of its inputs are stale" in err and "qa:vsibench/train (graph:scannet/" in err
    status, out, _ = _run(capsys, ["pack", "--root", r, "--allow-stale"])
    assert status == 0 and "0 done, 2 up to date of 2 scenes" in out

    # Rebuilding QA with the new graphs: pack's input changed (refused), then rebuilt; nothing is stale any more.
    status, out, _ = _run(capsys, qa_cmd + ["--rebuild"])
    assert status == 0 and "now stale downstream: pack (2)" in out
    status, _, err = _run(capsys, ["pack", "--root", r])
    assert status == 2 and "qa:vsibench/train" in err and "--rebuild" in err
    status, out, _ = _run(capsys, ["pack", "--root", r, "--rebuild"])
    assert status == 0 and "2 done" in out
    assert all(s.stale == 0 for s in root_status(ledgers_of(root)).stages)


def test_train_predict_and_eval_refuse_stale_inputs(built_root, tmp_path, capsys):
    """The issue's own scenario: new questions must never be scored against predictions made for the old ones."""
    root = built_root.copy(tmp_path / "root")
    r = str(root)
    train = ["train", "--root", r, "--tiny", "--steps", "1", "--grad-accum", "1", "--max-new-tokens", "2"]
    assert _run(capsys, train + ["--predict"])[0] == 0
    status, out, _ = _run(capsys, ["eval", "--root", r, "--allow-missing"])
    assert status == 0 and "3 done" in out          # vsibench, vstibench and regionbench val
    scores = _digest(root / "eval")

    # New questions: the old predictions (and the scores made from them) are stale.
    assert _run(capsys, ["qa", "--root", r, "--max-per-scene-task", "2", "--seed", "1", "--rebuild", "--local"])[0] == 0
    stale = root_status(ledgers_of(root))
    assert stale.stage("predict").stale == 3 and stale.stage("eval").stale == 3
    assert stale.stage("train").stale == 1       # trained on shards packed from the old questions
    status, _, err = _run(capsys, ["eval", "--root", r, "--allow-missing", "--rebuild"])
    assert status == 2 and "eval: 3 of its inputs are stale" in err and "predict:vsibench/val" in err
    assert _digest(root / "eval") == scores
    status, _, err = _run(capsys, train)
    assert status == 2 and "train: 2 of its inputs are stale" in err and "pack:scannet/" in err
    # Scoring the stale predictions anyway is possible, on request.
    status, out, _ = _run(capsys, ["eval", "--root", r, "--allow-missing", "--rebuild", "--allow-stale"])
    assert status == 0


HOLDER = """
import sys, time
from pipeline.core.lock import RootLock
with RootLock(sys.argv[1], "graph --root (the other writer)"):
    print("holding", flush=True)
    time.sleep(120)
"""


def test_one_writer_per_root_and_a_dead_holder_is_taken_over(built_root, tmp_path, capsys):
    root = built_root.copy(tmp_path / "root")
    lock = DatasetRoot(root).lock_path
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    try:
        assert holder.stdout.readline().strip() == "holding"
        record = json.loads(lock.read_text())
        assert record["pid"] == holder.pid and record["command"] and record["host"] and record["started"]
        # A second writer is refused with exit 2, naming the holder; nothing is written.
        before = _digest(root / "graph")
        status, _, err = _run(capsys, ["graph", "--root", str(root), "--rebuild", "--local"])
        assert status == 2 and f"pid {holder.pid}" in err and "the other writer" in err and "one writer" in err
        assert _digest(root / "graph") == before
        # Reading is not writing: status runs while the lock is held.
        assert _run(capsys, ["status", "--root", str(root)])[0] == 0
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The holder was killed: its lock is left behind and the next writer takes it over, saying so.
    assert lock.exists()
    status, out, err = _run(capsys, ["graph", "--root", str(root), "--local"])
    assert status == 0 and f"taking over the writer lock of a dead process (pid {holder.pid}" in err
    assert not lock.exists()          # released when the command ends


def test_temporary_names_are_unique_per_process(tmp_path):
    from pipeline.core.atomic import unique_tmp_name

    names = {unique_tmp_name("shard-000000.tar") for _ in range(100)}
    assert len(names) == 100 and all(f".{os.getpid()}." in n for n in names)


def test_vsibench_meta_info_with_counts_that_disagree_with_the_boxes(tmp_path, capsys):
    """VSI-Bench's meta_info has categories whose object_counts disagree with the boxes (scene0474_04: chair 3 vs
    4 boxes): such a category is kept out of counting and of every unique-object task, listed in the summary and
    as warning rows."""
    def box(x, y, instance_id):
        return {"centroid": [x, y, 0.5], "axesLengths": [0.5, 0.5, 1.0], "normalizedAxes": [1, 0, 0, 0, 1, 0, 0, 0, 1],
                "instance_id": instance_id}

    meta = {"scene0474_04": {
        "dataset": "scannet", "room_size": 30.0, "room_center": [2.5, 2.5, 1.3],
        # chair: 3 declared, 4 boxes; window: 2 declared, 1 box (it would look unique); the rest agree
        "object_counts": {"chair": 3, "window": 2, "sofa": 1, "tv": 1, "bed": 1, "lamp": 1, "table": 2},
        "object_bbox": {"chair": [box(0.5, 0.5, 1), box(1.5, 0.5, 2), box(2.5, 0.5, 3), box(3.5, 0.5, 4)],
                        "window": [box(0.2, 4.8, 5)], "sofa": [box(4.5, 2.0, 6)], "tv": [box(0.5, 3.0, 7)],
                        "bed": [box(3.0, 4.0, 8)], "lamp": [box(4.5, 4.5, 9)],
                        "table": [box(2.0, 2.0, 10), box(3.5, 2.5, 11)]}}}
    path = tmp_path / "scannet_meta_info_val.json"
    path.write_text(json.dumps(meta))
    root = DatasetRoot(tmp_path / "root")
    status, out, err = _run(capsys, ["import-meta", "--format", "vsibench", "--scene-meta", str(path), "--out",
                                     str(root.path)])
    assert status == 0                                   # warnings, not failures
    assert "2 categories whose object_counts disagree with their boxes" in out
    assert "scannet/scene0474_04 chair" in out and "scannet/scene0474_04 window" in out
    warnings = read_errors(root.errors_path)
    assert [(w.severity, w.error_type, w.scene_id) for w in warnings] == [("warning", "InconsistentCounts",
                                                                           "scene0474_04")] * 2
    assert "chair: object_counts says 3, the file has 4 boxes" in warnings[0].message
    assert root_status(ledgers_of(root)).error_rows == 0 and root_status(ledgers_of(root)).warning_rows == 2

    assert _run(capsys, ["qa", "--root", str(root.path), "--bench", "vsibench", "--local"])[0] == 0
    records = [json.loads(line) for line in root.qa_file("vsibench", "val").read_text().splitlines()]
    counting = [r for r in records if r["question_type"] == "object_counting"]
    assert {r["categories"][0] for r in counting} == {"table"}          # chair (3 or 4?) is never counted
    unique_tasks = ("object_abs_distance", "object_size_estimation", "object_rel_distance",
                    "object_rel_direction_easy", "object_rel_direction_medium", "object_rel_direction_hard")
    asked = [r for r in records if r["question_type"] in unique_tasks]
    assert asked, "the consistent unique objects still get questions"
    for r in asked:
        named = set(r["categories"]) | {o[3:] for o in (r["options"] or [])}
        assert not named & {"chair", "window"}, r["question"]
