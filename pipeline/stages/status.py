"""Where a dataset root stands: per stage, how many units are done, how many there are, how many failed.

Read-only: everything comes from what the stages leave behind (done-markers, shard markers, QA files, the
``info.json`` counts and the ``errors.parquet`` rows); nothing is repaired or deleted here, so ``status`` can run
while a stage is writing. A stage that has not run (or whose command does not exist in this build) is reported as
such instead of failing.

Units: scenes for every stage (questions are extra detail of ``qa``); ``done + failed + pending == total``, where a
scene is counted ``failed`` only while it has an error row of that stage and no output.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from pipeline.core.atomic import read_json
from pipeline.core.errors import ErrorRow, InputError, read_errors
from pipeline.core.layout import DATASETS, DONE_MARKER, DatasetRoot, scene_key
from pipeline.core.schemas import SchemaError

STAGES = ("ingest", "extract", "graph", "routes", "qa", "pack", "train", "eval")
# QA splits that are the benchmarks' own scenes (as pipeline/commands/qa.py): they never enter training shards.
BENCHMARK_SPLITS = frozenset({"val", "test"})
TRAIN_SHARDS_DIR = "train_shards"     # pipeline/pack.py TRAIN_DIR
SHARD_MARKER_DIR = "_done"           # pipeline/shards.py MARKER_DIR
TRAIN_DIR = "train"                  # pipeline/commands/train.py default --out (ROOT/train)
_STEP_DIR_RE = re.compile(r"^step_(\d+)$")   # workers/trainer/train.py STEP_PREFIX + zero-padded step
EVAL_DIR = "eval"                    # score files ROOT/eval/<bench>_<split>.json (vlm3r-data eval --out)


@dataclass(frozen=True)
class StageStatus:
    """One row of the status table."""

    stage: str
    state: str                             # "done", "partial", "with failures", "not run", "unavailable"
    done: int                              # units with complete outputs
    total: int                             # units the stage should cover (its inputs)
    failed: int                            # units whose last attempt failed and that have no output
    unit: str = "scenes"
    outputs: str = ""                      # where the outputs are
    errors_by_type: dict[str, int] = field(default_factory=dict)   # error_type -> rows of this stage
    details: dict[str, Any] = field(default_factory=dict)          # stage-specific figures

    @property
    def pending(self) -> int:
        return max(0, self.total - self.done - self.failed)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "pending": self.pending}


@dataclass(frozen=True)
class RootStatus:
    root: str
    code_version: str
    stages: tuple[StageStatus, ...]
    errors_path: str
    error_rows: int

    def stage(self, name: str) -> StageStatus:
        for s in self.stages:
            if s.stage == name:
                return s
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {"root": self.root, "code_version": self.code_version, "errors_path": self.errors_path,
                "error_rows": self.error_rows, "stages": [s.to_json() for s in self.stages]}


# ---- small readers (all tolerate a missing file; a malformed one raises InputError naming it) -------------------

def read_json_or_error(path: Path) -> Any:
    """A JSON file's content; an unreadable one raises InputError naming it."""
    try:
        return read_json(path)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"unreadable JSON ({exc})") from None


def _marked_dirs(base: Path) -> list[tuple[str, str]]:
    """(dataset, scene_id) of every ``base/<dataset>/<scene_id>/_DONE.json``, sorted."""
    out = []
    for ds in DATASETS:
        d = base / ds
        if d.is_dir():
            out += [(ds, p.name) for p in sorted(d.iterdir()) if (p / DONE_MARKER).is_file()]
    return out


def shard_records(shards_dir: Path) -> list[dict[str, Any]]:
    """The complete shards of a shard folder (tokens or training shards), from their done-markers, by file name.

    A marker counts only when its shard exists with the recorded size (as :func:`pipeline.core.shards.recover_shards`
    decides, but without deleting anything). Each record: ``file``, ``keys``, ``size_bytes``, ``sha256``.
    """
    marker_dir = shards_dir / SHARD_MARKER_DIR
    if not marker_dir.is_dir():
        return []
    records = []
    for marker in sorted(marker_dir.glob("*.json")):
        data = read_json_or_error(marker)
        try:
            file, keys, size = str(data["file"]), [str(k) for k in data["keys"]], int(data["size_bytes"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(marker, f"shard done-marker without file/keys/size_bytes ({exc})") from None
        shard = shards_dir / file
        if shard.is_file() and shard.stat().st_size == size:
            records.append({"file": file, "keys": keys, "size_bytes": size, "sha256": str(data.get("sha256", ""))})
    return records


def qa_files(root: DatasetRoot) -> list[tuple[str, str, Path]]:
    """(bench, split, path) of every ``ROOT/qa/<bench>/<split>.jsonl``, sorted."""
    if not root.qa_dir.is_dir():
        return []
    return [(p.parent.name, p.stem, p) for p in sorted(root.qa_dir.glob("*/*.jsonl"))]


def iter_qa_records(path: Path) -> Iterable[dict[str, Any]]:
    """The records of one QA JSON-lines file; a line that is not a JSON object raises InputError (file, line)."""
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


@dataclass(frozen=True)
class QaFileSummary:
    bench: str
    split: str
    path: Path
    questions: int
    scene_keys: frozenset[str]          # scenes with at least one question in the file


def scan_qa(root: DatasetRoot) -> list[QaFileSummary]:
    """One pass over every QA file: questions and scenes per ``<bench>/<split>.jsonl``."""
    out = []
    for bench, split, path in qa_files(root):
        n, keys = 0, set()
        for record in iter_qa_records(path):
            n += 1
            keys.add(record["scene_key"])
        out.append(QaFileSummary(bench, split, path, n, frozenset(keys)))
    return out


def load_errors(root: DatasetRoot) -> list[ErrorRow]:
    try:
        return read_errors(root.errors_path)
    except SchemaError as exc:
        raise InputError(root.errors_path, str(exc)) from None


# ---- per stage ---------------------------------------------------------------------------------------------------

def _state(done: int, total: int, failed: int, ran: bool) -> str:
    if not ran and done == 0 and failed == 0:
        return "not run"
    if total and done >= total:
        return "done"
    if failed and done + failed >= total:
        return "with failures"   # nothing pending, but some units failed
    return "partial"


def _failed_scenes(errors: list[ErrorRow], stage: str, done: set[tuple[str, str]]) -> tuple[set, dict[str, int]]:
    """Scenes with error rows of ``stage`` and no output, and the error_type counts of all its rows."""
    rows = [e for e in errors if e.stage == stage]
    by_type = dict(sorted(Counter(e.error_type for e in rows).items()))
    return {(e.dataset, e.scene_id) for e in rows} - done, by_type


def ingest_status(root: DatasetRoot, info: dict[str, Any], errors: list[ErrorRow]) -> StageStatus:
    """Scenes with a done-marker vs scenes the readers listed (``info.json`` counts of each ``ingest:<dataset>``)."""
    done = set(root.scenes())
    failed, by_type = _failed_scenes(errors, "ingest", done)
    stages = info.get("stages", {})
    per_dataset: dict[str, dict[str, int]] = {}
    total = 0
    for ds in DATASETS:
        counts = stages.get(f"ingest:{ds}", {}).get("counts", {})
        ds_done = sum(1 for d, _ in done if d == ds)
        ds_failed = sum(1 for d, _ in failed if d == ds)
        # The last run's listing may have been a --scenes subset: never report fewer than done + failed.
        ds_total = max(int(counts.get("scenes", 0)), ds_done + ds_failed)
        if ds_total or counts:
            per_dataset[ds] = {"done": ds_done, "total": ds_total, "failed": ds_failed}
        total += ds_total
    ran = any(k.startswith("ingest:") for k in stages)
    return StageStatus("ingest", _state(len(done), total, len(failed), ran), len(done), total, len(failed),
                       outputs=str(root.path / "scenes"), errors_by_type=by_type,
                       details={"datasets": per_dataset})


def extract_status(root: DatasetRoot, info: dict[str, Any], errors: list[ErrorRow],
                   ingested: list[tuple[str, str]]) -> StageStatus:
    """Ingested scenes that are in a complete token shard vs all ingested scenes."""
    records = shard_records(root.tokens_dir)
    in_shards = {k for r in records for k in r["keys"]}
    keys = {scene_key(ds, sid): (ds, sid) for ds, sid in ingested}
    done = {keys[k] for k in in_shards if k in keys}
    failed, by_type = _failed_scenes(errors, "extract", done)
    failed &= set(ingested)
    details = {"shards": len(records), "samples": len(in_shards), "bytes": sum(r["size_bytes"] for r in records),
               "samples_of_scenes_no_longer_ingested": len(in_shards - set(keys))}
    ran = "extract" in info.get("stages", {}) or bool(records)
    return StageStatus("extract", _state(len(done), len(ingested), len(failed), ran), len(done), len(ingested),
                       len(failed), outputs=str(root.tokens_dir), errors_by_type=by_type, details=details)


def graph_status(root: DatasetRoot, info: dict[str, Any], errors: list[ErrorRow],
                 ingested: list[tuple[str, str]]) -> StageStatus:
    graphs = set(_marked_dirs(root.path / "graph"))
    done = graphs & set(ingested)
    failed, by_type = _failed_scenes(errors, "graph", done)
    failed &= set(ingested)
    ran = "graph" in info.get("stages", {}) or bool(graphs)
    return StageStatus("graph", _state(len(done), len(ingested), len(failed), ran), len(done), len(ingested),
                       len(failed), outputs=str(root.path / "graph"), errors_by_type=by_type,
                       details={"graphs_of_scenes_no_longer_ingested": len(graphs - set(ingested))})


def routes_status(root: DatasetRoot, info: dict[str, Any], errors: list[ErrorRow],
                  ingested: list[tuple[str, str]]) -> StageStatus:
    """Scenes whose routes table and done-marker (``ROOT/routes/<ds>/<id>_DONE.json``) exist vs ingested scenes."""
    done, routes = set(), 0
    for ds, sid in ingested:
        marker = root.routes_dir / ds / f"{sid}{DONE_MARKER}"
        if marker.is_file() and (root.routes_dir / ds / f"{sid}.parquet").is_file():
            done.add((ds, sid))
            routes += int(read_json_or_error(marker).get("stats", {}).get("routes", 0))
    failed, by_type = _failed_scenes(errors, "routes", done)
    failed &= set(ingested)
    plots = sorted(str(p.relative_to(root.routes_dir)) for p in (root.routes_dir / "plots").glob("*/*.png")) \
        if (root.routes_dir / "plots").is_dir() else []
    ran = "routes" in info.get("stages", {}) or bool(done)
    return StageStatus("routes", _state(len(done), len(ingested), len(failed), ran), len(done), len(ingested),
                       len(failed), outputs=str(root.routes_dir), errors_by_type=by_type,
                       details={"routes": routes, "plots": len(plots)})


def qa_status(root: DatasetRoot, info: dict[str, Any], errors: list[ErrorRow],
              qa: list[QaFileSummary]) -> StageStatus:
    """Graph scenes the QA covered (listed in ``ROOT/qa/scenes.json``, no error row) vs complete graphs; questions
    and scenes with questions per ``<bench>/<split>.jsonl``."""
    graphs = set(_marked_dirs(root.path / "graph"))
    scenes_path = root.qa_dir / "scenes.json"
    recorded = read_json_or_error(scenes_path) if scenes_path.is_file() else {}
    by_key = {scene_key(ds, sid): (ds, sid) for ds, sid in graphs}
    # scenes.json lists every scene a run planned, failed ones included: a scene is done when it has no error row.
    planned = {by_key[k] for keys in recorded.values() for k in keys if k in by_key}
    failed, by_type = _failed_scenes(errors, "qa", set())
    failed &= graphs
    covered = planned - failed
    files = {f"{f.bench}/{f.split}": {"questions": f.questions, "scenes_with_questions": len(f.scene_keys),
                                      "path": str(f.path)} for f in qa}
    questions = sum(f.questions for f in qa)
    ran = "qa" in info.get("stages", {}) or bool(files)
    return StageStatus("qa", _state(len(covered), len(graphs), len(failed), ran), len(covered), len(graphs),
                       len(failed), outputs=str(root.qa_dir), errors_by_type=by_type,
                       details={"questions": questions, "files": files})


def pack_status(root: DatasetRoot, info: dict[str, Any], errors: list[ErrorRow],
                qa: list[QaFileSummary]) -> StageStatus:
    """Scenes in complete training shards vs token samples that have training QA (benchmark scenes never count)."""
    out_dir = root.path / TRAIN_SHARDS_DIR
    records = shard_records(out_dir)
    packed = {k for r in records for k in r["keys"]}
    train_keys: set[str] = set()
    benchmark_keys: set[str] = set()
    for f in qa:
        (benchmark_keys if f.split in BENCHMARK_SPLITS else train_keys).update(f.scene_keys)
    tokens = {k for r in shard_records(root.tokens_dir) for k in r["keys"]}
    eligible = (train_keys - benchmark_keys) & tokens
    rows = [e for e in errors if e.stage == "pack"]
    failed_keys = {scene_key(e.dataset, e.scene_id) for e in rows} - packed
    total = len(eligible | packed | failed_keys)
    ran = "pack" in info.get("stages", {}) or bool(records)
    return StageStatus("pack", _state(len(packed), total, len(failed_keys), ran), len(packed), total,
                       len(failed_keys), outputs=str(out_dir),
                       errors_by_type=dict(sorted(Counter(e.error_type for e in rows).items())),
                       details={"shards": len(records), "bytes": sum(r["size_bytes"] for r in records),
                                "benchmark_scenes_left_out": len(benchmark_keys & tokens)})


def _train_log_total_steps(log: Path) -> int:
    """``total_steps`` of the last "setup" event in the trainer's ``train_log.jsonl`` (0 when there is none).

    The log is appended line by line, so a killed run may leave a partial last line: that one is ignored, any other
    unreadable line is an error naming the file and line.
    """
    total = 0
    lines = log.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        try:
            event = json.loads(line)
        except ValueError:
            if number == len(lines):
                break
            raise InputError(log, f"line {number}: not JSON") from None
        if isinstance(event, dict) and event.get("event") == "setup":
            total = int(event.get("total_steps", 0))
    return total


def train_status(root: DatasetRoot, info: dict[str, Any], errors: list[ErrorRow]) -> StageStatus:
    """Optimizer steps of the newest complete checkpoint (``<out>/checkpoints/step_XXXXXX/progress.json``, as
    workers/trainer/train.py writes them) vs the run's ``total_steps`` (its log's setup event)."""
    config = info.get("stages", {}).get("train", {}).get("config", {})
    out_dir = Path(config.get("out_dir") or root.path / TRAIN_DIR)
    # step_000500.tmp/ is a checkpoint being written; only renamed folders with their progress.json are complete.
    checkpoints = sorted(d for d in (out_dir / "checkpoints").glob("step_*")
                         if d.is_dir() and _STEP_DIR_RE.match(d.name) and (d / "progress.json").is_file()) \
        if (out_dir / "checkpoints").is_dir() else []
    step = max((int(_STEP_DIR_RE.match(d.name).group(1)) for d in checkpoints), default=0)
    log = out_dir / "train_log.jsonl"
    total = max(_train_log_total_steps(log) if log.is_file() else 0, step)
    rows = [e for e in errors if e.stage == "train"]
    predictions = sorted(p.name for p in (out_dir / "predictions").glob("*.jsonl")) \
        if (out_dir / "predictions").is_dir() else []
    ran = bool(checkpoints) or log.is_file()
    return StageStatus("train", _state(step, total, 0, ran), step, total, 0, unit="steps",
                       outputs=str(out_dir) if ran else "",
                       errors_by_type=dict(sorted(Counter(e.error_type for e in rows).items())),
                       details={"checkpoints": len(checkpoints),
                                "newest_checkpoint": str(checkpoints[-1]) if checkpoints else "",
                                "prediction_files": predictions})


def eval_status(root: DatasetRoot, info: dict[str, Any], errors: list[ErrorRow]) -> StageStatus:
    """Benchmark question files (``qa/<bench>/{val,test}.jsonl``) with a score file ``ROOT/eval/<bench>_<split>.json``
    (``vlm3r-data eval --out`` there) vs all benchmark question files."""
    bench_files = [(b, s) for b, s, _ in qa_files(root) if s in BENCHMARK_SPLITS]
    eval_dir = root.path / EVAL_DIR
    scored = {f"{b}/{s}" for b, s in bench_files if (eval_dir / f"{b}_{s}.json").is_file()}
    rows = [e for e in errors if e.stage == "eval"]
    ran = bool(scored) or "eval" in info.get("stages", {})
    return StageStatus("eval", _state(len(scored), len(bench_files), 0, ran), len(scored), len(bench_files), 0,
                       unit="files", outputs=str(eval_dir) if ran else "",
                       errors_by_type=dict(sorted(Counter(e.error_type for e in rows).items())),
                       details={"scored": sorted(scored)})


def root_status(root: DatasetRoot | str | Path, available: Iterable[str] | None = None) -> RootStatus:
    """The status of every stage of ``root``. ``available``: the stage commands this build has (default: the CLI's);
    a stage without a command and without anything recorded is reported ``unavailable``."""
    root = root if isinstance(root, DatasetRoot) else DatasetRoot(root)
    if not root.path.is_dir():
        raise InputError(root.path, "dataset root not found")
    # Absolute paths: the table says where the outputs are whatever directory the command ran from.
    root = DatasetRoot(root.path.resolve())
    if available is None:
        from pipeline.cli import available_commands

        available = available_commands()
    available = set(available)
    info = root.load_info()
    errors = load_errors(root)
    ingested = root.scenes()
    qa = scan_qa(root)
    stages = [
        ingest_status(root, info, errors),
        extract_status(root, info, errors, ingested),
        graph_status(root, info, errors, ingested),
        routes_status(root, info, errors, ingested),
        qa_status(root, info, errors, qa),
        pack_status(root, info, errors, qa),
        train_status(root, info, errors),
        eval_status(root, info, errors),
    ]
    out = []
    for s in stages:
        if s.state == "not run" and s.stage not in available:
            s = StageStatus(s.stage, "unavailable", 0, 0, 0, unit=s.unit)
        out.append(s)
    return RootStatus(str(root.path), str(info.get("code_version", "")), tuple(out), str(root.errors_path),
                      len(errors))


def format_table(status: RootStatus) -> str:
    """The human-readable status table (fixed-width columns)."""
    header = ("stage", "state", "done", "total", "failed", "pending", "unit", "outputs")
    rows = [header] + [(s.stage, s.state, str(s.done), str(s.total), str(s.failed), str(s.pending), s.unit,
                        s.outputs) for s in status.stages]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    right = {2, 3, 4, 5}
    lines = []
    for r in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells + [r[-1]]).rstrip())
    extra = []
    for s in status.stages:
        if s.errors_by_type:
            causes = ", ".join(f"{t} x{n}" for t, n in s.errors_by_type.items())
            extra.append(f"  {s.stage} failures by cause: {causes}")
        if s.stage == "qa" and s.details.get("files"):
            for name, f in s.details["files"].items():
                extra.append(f"  qa {name}: {f['questions']} questions, {f['scenes_with_questions']} scenes")
    tail = [f"errors: {status.error_rows} rows in {status.errors_path}"] if status.error_rows else []
    return "\n".join([f"dataset root: {status.root}", *lines, *extra, *tail]) + "\n"
