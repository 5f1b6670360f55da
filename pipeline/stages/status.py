"""Where a dataset root stands: per stage, how many units are done, stale, failed and still to do.

Read-only: everything comes from what the stages leave behind (their done-markers, through the same ledgers the
driver uses, the ``errors.parquet`` rows and the ``info.json`` counts); nothing is repaired or deleted here, so
``status`` can run while a stage is writing. A unit is ``stale`` when what it was made from has been rebuilt since
(its recorded upstream fingerprint no longer matches), or when an upstream unit it read is stale itself.

``done + failed + pending == total``; ``stale`` counts among ``done`` (the outputs exist, but are out of date).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from pipeline.core.errors import ErrorRow, InputError, read_errors
from pipeline.core.layout import BENCHES, BENCHMARK_SPLITS, DATASETS, DatasetRoot
from pipeline.core.scene import POSES_DATASET, POSES_NONE
from pipeline.core.schemas import SchemaError
from pipeline.stages.contract import Ledgers


@dataclass(frozen=True)
class StageStatus:
    """One row of the status table."""

    stage: str
    state: str                             # "done", "stale", "partial", "with failures", "not run"
    done: int                              # units with complete outputs (stale ones included)
    total: int                             # units the stage should cover
    failed: int                            # units whose last attempt failed and that have no output
    stale: int = 0                         # done units made from outputs that were rebuilt since
    unit: str = "scenes"
    outputs: str = ""
    errors_by_type: dict[str, int] = field(default_factory=dict)   # error_type -> error rows of this stage
    warnings: int = 0                                              # warning rows of this stage
    stale_units: dict[str, str] = field(default_factory=dict)      # unit -> why it is stale
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
    warning_rows: int = 0

    def stage(self, name: str) -> StageStatus:
        for s in self.stages:
            if s.stage == name:
                return s
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {"root": self.root, "code_version": self.code_version, "errors_path": self.errors_path,
                "error_rows": self.error_rows, "warning_rows": self.warning_rows,
                "stages": [s.to_json() for s in self.stages]}


def load_errors(root: DatasetRoot) -> list[ErrorRow]:
    try:
        return read_errors(root.errors_path)
    except SchemaError as exc:
        raise InputError(root.errors_path, str(exc)) from None


def _unit_of(row: ErrorRow) -> str:
    return f"{row.dataset}/{row.scene_id}" if row.dataset else row.scene_id


def _state(done: int, total: int, failed: int, stale: int, ran: bool) -> str:
    if not ran and done == 0 and failed == 0:
        return "not run"
    if stale:
        return "stale"
    if total and done >= total:
        return "done"
    if failed and done + failed >= total:
        return "with failures"   # nothing pending, but some units failed
    return "partial"


def _recorded_units(info: dict[str, Any], scopes: Iterable[str]) -> int:
    stages = info.get("stages", {})
    return sum(int(stages.get(scope, {}).get("counts", {}).get("units", 0) or 0) for scope in scopes)


def _expected(name: str, ledgers: Ledgers, info: dict[str, Any], done: int, failed: int, markers) -> int:
    """How many units the stage should cover, from its inputs where that is cheap, else from its last run."""
    root = ledgers.root
    ingested = ledgers.markers("ingest")
    if name == "extract":
        return max(len(ingested), done + failed)
    if name in ("graph", "routes"):     # scenes with poses and a mesh (plain videos have neither)
        posed = sum(1 for m in ingested.values() if m.stats.get("poses", POSES_DATASET) != POSES_NONE)
        return max(posed, done + failed)
    if name == "qa":
        splits = {str(m.stats.get("split")) for m in ledgers.markers("graph").values()}
        return max(len(BENCHES) * len(splits), done + failed)
    if name == "train":
        return max(1 if ledgers.markers("pack") else 0, done + failed)
    if name == "predict":
        files = [u for u in ledgers.markers("qa") if u.split("/")[1] in BENCHMARK_SPLITS]
        return max(len(files) if ledgers.markers("train") else 0, done + failed)
    if name == "eval":
        return max(len(ledgers.markers("predict")), done + failed)
    if name == "stats":
        return max(1 if root.report_dir.is_dir() else 0, done)
    scopes = {m.scope for m in markers.values()} | {k for k in info.get("stages", {}) if k.split(":")[0] == name}
    return max(_recorded_units(info, scopes), done + failed)


def _details(name: str, root: DatasetRoot, ledgers: Ledgers, markers) -> dict[str, Any]:
    if name == "ingest":
        per = Counter(u.split("/", 1)[0] for u in markers)
        return {"datasets": {ds: per[ds] for ds in DATASETS if per[ds]}}
    if name in ("extract", "pack"):
        from pipeline.core.shards import complete_shards

        records = complete_shards(root.tokens_dir if name == "extract" else root.train_shards_dir)
        return {"shards": len(records), "bytes": sum(r.size_bytes for r in records)}
    if name == "routes":
        return {"routes": sum(int(m.stats.get("routes", 0)) for m in markers.values())}
    if name == "qa":
        return {"files": {u: {"questions": m.stats.get("questions", 0), "scenes": m.stats.get("scenes", 0),
                              "path": str(root.qa_file(*u.split("/")))} for u, m in sorted(markers.items())}}
    if name == "train":
        fit = markers.get("fit")
        return {"step": fit.stats.get("step"), "checkpoint": fit.stats.get("checkpoint")} if fit else {}
    if name == "eval":
        return {"overall": {u: round(float(m.stats.get("overall", 0.0)), 2) for u, m in sorted(markers.items())}}
    return {}


def root_status(ledgers: Ledgers, errors: list[ErrorRow] | None = None) -> RootStatus:
    """The status of every stage of the ledgers' root (``ledgers.registry``: the stages to report, in order);
    ``errors``: the root's error rows when the caller has read them already."""
    root = ledgers.root
    info = root.check()
    if errors is None:
        errors = load_errors(root)
    rows = []
    for name, stage in ledgers.registry.items():
        markers = {u: m for u, m in ledgers.markers(name).items() if m.stage == name}
        stale = {u: why for u, why in ledgers.stale(name).items() if u in markers}
        rows_of_stage = [e for e in errors if e.stage == name]
        # Error rows name a scene ("<dataset>/<scene_id>") or, for stages whose units are files, the unit itself;
        # rows of scenes inside such a unit (a QA file) are failures within a done unit, not failed units.
        failed = {_unit_of(e) for e in rows_of_stage if e.is_error and bool(e.dataset) == (stage.noun == "scenes")}
        failed -= set(markers)
        total = _expected(name, ledgers, info, len(markers), len(failed), markers)
        ran = bool(markers) or any(k.split(":")[0] == name for k in info.get("stages", {}))
        if name == "import-meta" and not ran:
            continue                        # a root without imported metadata has no such row
        rows.append(StageStatus(
            name, _state(len(markers), total, len(failed), len(stale), ran), len(markers), total, len(failed),
            len(stale), stage.noun, stage.outputs(root) if ran else "",
            dict(sorted(Counter(e.error_type for e in rows_of_stage if e.is_error).items())),
            sum(1 for e in rows_of_stage if not e.is_error), dict(sorted(stale.items())),
            _details(name, root, ledgers, markers) if ran else {}))
    return RootStatus(str(root.path), str(info.get("code_version", "")), tuple(rows), str(root.errors_path),
                      sum(1 for e in errors if e.is_error), sum(1 for e in errors if not e.is_error))


def format_table(status: RootStatus) -> str:
    """The human-readable status table (fixed-width columns)."""
    header = ("stage", "state", "done", "total", "stale", "failed", "pending", "unit", "outputs")
    rows = [header] + [(s.stage, s.state, str(s.done), str(s.total), str(s.stale), str(s.failed), str(s.pending),
                        s.unit, s.outputs) for s in status.stages]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    right = {2, 3, 4, 5, 6}
    lines = []
    for r in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells + [r[-1]]).rstrip())
    extra = []
    for s in status.stages:
        if s.errors_by_type:
            causes = ", ".join(f"{t} x{n}" for t, n in s.errors_by_type.items())
            extra.append(f"  {s.stage} failures by cause: {causes}")
        if s.stale_units:
            shown = list(s.stale_units.items())[:3]
            more = f" (+{len(s.stale_units) - 3} more)" if len(s.stale_units) > 3 else ""
            extra.append(f"  {s.stage} stale: " + "; ".join(f"{u}: {why}" for u, why in shown) + more)
        if s.stage == "qa":
            for name, f in s.details.get("files", {}).items():
                extra.append(f"  qa {name}: {f['questions']} questions, {f['scenes']} scenes")
    tail = []
    if status.error_rows or status.warning_rows:
        tail.append(f"errors: {status.error_rows} rows, warnings: {status.warning_rows} rows in {status.errors_path}")
    return "\n".join([f"dataset root: {status.root}", *lines, *extra, *tail]) + "\n"
