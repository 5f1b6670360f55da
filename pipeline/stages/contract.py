"""The stage contract, and the one driver that runs every stage on it.

A stage declares, once: its ``name``, the stages it ``reads``, its ``config`` (a frozen dataclass holding only the
fields that change its outputs), a format/code ``version``, its units of work (:meth:`Stage.units`, each with the
fingerprints of the upstream outputs it reads, as recorded upstream: nothing big is re-read to fingerprint), where
its done-markers live (its :class:`Ledger`) and a pure per-unit function (:meth:`Stage.run_unit`; stages that stream
their units through shared outputs, such as shards, override :meth:`Stage.execute` instead).

:func:`drive` does the rest for all of them: the root's writer lock, the rerun rules, Ray or in-process
execution, progress, done-markers, error rows, ``info.json``, the summary and the exit status.

Rerun rules, the same for every stage (make, DVC and datatrove's completion markers do the same):

- a unit whose marker holds the same fingerprint (config + version + upstream) is skipped (resume);
- a changed config field, format version or upstream output is refused with exit 2, naming the stage, each field
  ``old -> new`` (or the upstream units that changed) and the command that rebuilds;
- ``--rebuild`` redoes the selected units; what downstream read the old outputs is then stale;
- one configuration per stage per root: a subset (``--scenes``) with another configuration is refused;
- stages that consume finished data (``pack``, ``train``, ``eval``) refuse stale inputs unless ``--allow-stale``.

A unit's marker (:class:`Marker`) holds its fingerprint and its ``output`` fingerprint: the digest of what it wrote,
which downstream units record as their upstream. Staleness is therefore exact: a rebuild that writes the same bytes
leaves its readers current.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Mapping, Sequence

from pipeline.core.atomic import dumps_json, write_json
from pipeline.core.errors import WARNING, ErrorRow, record_errors
from pipeline.core.layout import DatasetRoot
from pipeline.core.lock import RootLock
from pipeline.core.markers import Marker, fingerprint, read_marker, split_ref


WARNINGS = "warnings"        # the stats key of a unit's warnings (popped into warning rows, never in the marker)


class StageRefused(RuntimeError):
    """The stage will not run as asked (changed configuration or upstream, stale inputs, nothing to do it on)."""


def config_dict(config: Any) -> dict[str, Any]:
    """The JSON form of a stage config (a frozen dataclass, possibly nested)."""
    if hasattr(config, "to_dict"):
        return config.to_dict()
    return dataclasses.asdict(config)


# ---- units and markers -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Unit:
    """One unit of work: what it is (``id``, unique within the stage), what it reads (``upstream``: reference ->
    the output fingerprint recorded upstream) and what its function needs (``job``, picklable)."""

    id: str
    upstream: Mapping[str, str] = field(default_factory=dict)
    job: Any = None
    dataset: str = ""                     # for error rows
    scene_id: str = ""


class Ledger:
    """Where a stage's done-markers live. One JSON file per unit by default (:class:`FileLedger`); shard stages keep
    their units' markers inside each shard's marker (:class:`ShardLedger`)."""

    def read(self, root: DatasetRoot) -> dict[str, Marker]:
        raise NotImplementedError

    def write(self, root: DatasetRoot, marker: Marker) -> None:
        raise NotImplementedError

    def remove(self, root: DatasetRoot, unit: str) -> None:
        raise NotImplementedError


class FileLedger(Ledger):
    """One marker file per unit: ``path(root, unit)``; ``pattern`` globs them all (relative to the root)."""

    def __init__(self, path: Callable[[DatasetRoot, str], Path], pattern: str):
        self.path = path
        self.pattern = pattern

    def read(self, root: DatasetRoot) -> dict[str, Marker]:
        out = {}
        for path in sorted(root.path.glob(self.pattern)):
            marker = read_marker(path)
            out[marker.unit] = marker
        return out

    def write(self, root: DatasetRoot, marker: Marker) -> None:
        write_json(self.path(root, marker.unit), marker.to_json())

    def remove(self, root: DatasetRoot, unit: str) -> None:
        self.path(root, unit).unlink(missing_ok=True)


# ---- the stage ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunOptions:
    """How a run goes, never what it produces (so none of this is in a fingerprint)."""

    local: bool = False
    workers: int = 2
    ray_address: str | None = None
    rebuild: bool = False
    allow_stale: bool = False
    subset: bool = False                  # the selection is a subset of the stage's units (--scenes, --dataset, ...)
    progress: bool = True
    command: tuple[str, ...] = ()         # the argv of the command, for messages (rebuild hints)
    rebuild_command: tuple[str, ...] = () # the command that rebuilds every unit (the subset flags removed)


@dataclass
class Context:
    """What a stage sees while it plans and runs."""

    root: DatasetRoot
    config: Any                           # the stage's frozen config dataclass
    options: RunOptions
    ledgers: "Ledgers"
    extra: dict[str, Any] = field(default_factory=dict)   # stage-specific run inputs that are not config

    def say(self, text: str) -> None:
        """A line on stderr that does not break a progress bar being drawn there."""
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr)


@dataclass
class Outcome:
    """What became of one unit: its marker when it is done, and the error rows of what failed (the whole unit, with
    no marker; or parts of a unit that is done nonetheless, such as scenes of a QA file)."""

    unit: Unit
    marker: Marker | None = None
    errors: list[ErrorRow] = field(default_factory=list)


@dataclass(frozen=True)
class Work:
    """A unit to run, with the marker skeleton it will get when it succeeds."""

    unit: Unit
    fingerprint: str
    generation: int = 0                   # the unit's rebuild count (its old marker's plus one when redone)

    def marker(self, stage: "Stage", ctx: Context, output: str, stats: Mapping[str, Any],
               parts: Mapping[str, str] | None = None) -> Marker:
        return Marker.made(stage.name, stage.scope(ctx.config), self.unit.id, stage.version, config_dict(ctx.config),
                           self.unit.upstream, output, parts, stats, self.generation)


class Stage:
    """Subclass per stage; see the module docstring."""

    name: ClassVar[str]
    reads: ClassVar[tuple[str, ...]] = ()
    version: ClassVar[int] = 1
    noun: ClassVar[str] = "scenes"        # what its units are, for messages
    refuses_stale_inputs: ClassVar[bool] = False
    creates_root: ClassVar[bool] = False  # ingest and import-meta may start a new root
    always_rebuild: ClassVar[bool] = False

    def ledger(self) -> Ledger:
        raise NotImplementedError

    def scope(self, config: Any) -> str:
        """Which markers share this run's configuration (one configuration per stage and scope per root)."""
        return self.name

    def units(self, ctx: Context) -> list[Unit]:
        """The selected units of work, each with the upstream fingerprints it reads."""
        raise NotImplementedError

    def run_unit(self, job: Any, config: Any) -> tuple[str, dict[str, Any], dict[str, str]]:
        """The per-unit function (runs in a Ray task): write the unit's outputs atomically and return
        ``(output fingerprint, stats, named part fingerprints)``. Bad input raises (InputError names the file);
        input used with a caveat goes into ``stats[WARNINGS]`` as ``{"type", "message", "path"}`` (warning rows)."""
        raise NotImplementedError

    def execute(self, ctx: Context, work: list[Work]) -> Iterator[Outcome]:
        """Run the units; the default maps :meth:`run_unit` over Ray (or in-process) and writes each marker."""
        from pipeline.core.parallel import map_units

        ledger = ctx.ledgers.of(self.name)
        run = _UnitRunner(type(self), ctx.config)
        by_unit = {w.unit.id: w for w in work}
        for unit, result, exc in map_units(run, [w.unit for w in work], local=ctx.options.local,
                                           workers=ctx.options.workers, ray_address=ctx.options.ray_address,
                                           desc=self.name, progress=ctx.options.progress, unit_name=self.noun):
            if exc is not None:
                yield Outcome(unit, errors=[ErrorRow.from_exception(self.name, unit.dataset, unit.scene_id, exc)])
                continue
            output, stats, parts = result
            warnings = [ErrorRow(self.name, unit.dataset, unit.scene_id, w["type"], w["message"], w.get("path", ""),
                                 WARNING) for w in stats.pop(WARNINGS, [])]
            marker = by_unit[unit.id].marker(self, ctx, output, stats, parts)
            ledger.write(ctx.root, marker)
            yield Outcome(unit, marker=marker, errors=warnings)

    def prepare(self, ctx: Context, work: list[Work], done: list[Work],
                markers: Mapping[str, Marker]) -> tuple[list[Work], list[Work]]:
        """Before running: drop the markers of the units that will be redone (so a crash never leaves an old "done").
        Returns (work, done); shard stages also move to ``work`` the other units of the shards they remove."""
        ledger = ctx.ledgers.of(self.name)
        for w in work:
            if w.unit.id in markers:
                ledger.remove(ctx.root, w.unit.id)
        return work, done

    def finish(self, ctx: Context, outcomes: list[Outcome], done: list[Work]) -> dict[str, Any]:
        """After running: stage-wide outputs (an index, ...); returns the counts for info.json and the summary."""
        return {}

    def outputs(self, root: DatasetRoot) -> str:
        """Where the outputs are (for the summary)."""
        return str(root.path)

    def error_keys(self, unit: Unit) -> list[tuple[str, str]]:
        """The (dataset, scene_id) keys of the error rows a run of ``unit`` replaces."""
        return [(unit.dataset, unit.scene_id) if unit.dataset else ("", unit.scene_id or unit.id)]


class _UnitRunner:
    """Picklable ``job -> run_unit(job, config)`` for Ray tasks (a bound method of a stage would do too, but this
    keeps the task's payload to the stage class and its config)."""

    def __init__(self, stage_cls: type[Stage], config: Any):
        self.stage_cls = stage_cls
        self.config = config

    def __call__(self, unit: Unit) -> tuple[str, dict[str, Any], dict[str, str]]:
        return self.stage_cls().run_unit(unit.job, self.config)


# ---- the stages' ledgers, and staleness ---------------------------------------------------------------------------

class ShardLedger(Ledger):
    """The markers of units whose outputs are samples in a shard set: each complete shard's marker holds the markers
    of its samples' units (written with the shard, so they count exactly when the shard is complete)."""

    def __init__(self, folder: Callable[[DatasetRoot], Path]):
        self.folder = folder

    def read(self, root: DatasetRoot) -> dict[str, Marker]:
        from pipeline.core.shards import complete_shards, marker_path

        out = {}
        folder = self.folder(root)
        for record in complete_shards(folder):
            for key, data in sorted(record.units.items()):
                marker = Marker.from_json(data, f"{marker_path(folder, record.file)} [{key}]")
                out[marker.unit] = marker
        return out

    def shards_of(self, root: DatasetRoot) -> dict[str, str]:
        """unit -> the file of the complete shard holding its sample."""
        from pipeline.core.shards import complete_shards

        return {data["unit"]: record.file for record in complete_shards(self.folder(root))
                for data in record.units.values()}

    def remove(self, root: DatasetRoot, unit: str) -> None:
        raise RuntimeError("a sample cannot leave a complete shard: remove the whole shard (ShardStage.prepare)")


class OpenShard:
    """The outcomes of units whose samples sit in the open shard of ``writer``: a unit is done only once the shard
    holding its sample is complete (its marker lives in the shard's marker)."""

    def __init__(self, writer: Any):
        self.writer = writer
        self.completed = len(writer.records)
        self.pending: list[tuple[str, Outcome]] = []

    def write(self, key: str, members: list[tuple[str, bytes]], outcome: Outcome) -> list[Outcome]:
        """Write a done unit's sample; returns the outcomes of the shard this write completed (usually none)."""
        assert outcome.marker is not None
        self.writer.write_members(key, members, outcome.marker.to_json())
        self.pending.append((key, outcome))
        if len(self.writer.records) == self.completed:
            return []
        self.completed = len(self.writer.records)
        finished = set(self.writer.records[-1].keys)
        done = [o for k, o in self.pending if k in finished]
        self.pending = [(k, o) for k, o in self.pending if k not in finished]
        return done

    def held(self) -> list[Outcome]:
        """The outcomes still waiting for their shard (all done once the writer has closed it)."""
        return [o for _, o in self.pending]


class ShardStage(Stage):
    """A stage whose units write samples into a shard set (``shards_dir``), in ``order``; their markers live in the
    shards' markers (:class:`ShardLedger`)."""

    def shards_dir(self, root: DatasetRoot) -> Path:
        raise NotImplementedError

    def order(self, work: Work) -> Any:
        """The sort key of the order samples are written in (it decides which shard holds what)."""
        return work.unit.id

    def ledger(self) -> ShardLedger:
        return ShardLedger(self.shards_dir)

    def prepare(self, ctx: Context, work: list[Work], done: list[Work],
                markers: Mapping[str, Marker]) -> tuple[list[Work], list[Work]]:
        """Clear a killed run's debris; remove the complete shards holding a unit to redo (their other units join the
        work: a sample cannot be replaced inside a complete shard)."""
        from pipeline.core.shards import recover_shards, remove_shards

        folder = self.shards_dir(ctx.root)
        removed = recover_shards(folder).removed
        ctx.extra["removed_debris"] = removed
        if removed:
            ctx.say(f"{self.name}: removed incomplete outputs of an earlier run: {', '.join(removed)}")
        shard_of = ShardLedger(self.shards_dir).shards_of(ctx.root)
        drop = sorted({shard_of[w.unit.id] for w in work if w.unit.id in shard_of})
        if drop:
            remove_shards(folder, drop)
            ctx.say(f"{self.name}: removed {len(drop)} shard(s) holding {self.noun} to redo; the other {self.noun} "
                    "they held are redone too")
        moved = [w for w in done if shard_of.get(w.unit.id) in drop]
        return sorted(work + moved, key=self.order), [w for w in done if w not in moved]


class Ledgers:
    """Every stage's markers in one root, read once per run and cached."""

    def __init__(self, root: DatasetRoot, registry: Mapping[str, Stage]):
        self.root = root
        self.registry = registry
        self._markers: dict[str, dict[str, Marker]] = {}
        self._ledgers: dict[str, Ledger] = {}

    def of(self, stage: str) -> Ledger:
        if stage not in self._ledgers:
            self._ledgers[stage] = self.registry[stage].ledger()
        return self._ledgers[stage]

    def markers(self, stage: str) -> dict[str, Marker]:
        if stage not in self._markers:
            self._markers[stage] = self.of(stage).read(self.root)
        return self._markers[stage]

    def forget(self, stage: str) -> None:
        self._markers.pop(stage, None)

    def output(self, reference: str) -> str | None:
        """The current output fingerprint behind an upstream reference (None when that unit has no marker)."""
        stage, unit, part = split_ref(reference)
        marker = self.markers(stage).get(unit)
        return None if marker is None else marker.identity_of(part)

    def stale(self, stage: str) -> dict[str, str]:
        """unit -> why, for every unit of ``stage`` whose recorded upstream no longer matches what is there (directly,
        or because an upstream unit it read is stale itself)."""
        return stale_units(self, stage)


def stale_units(ledgers: Ledgers, stage: str, _memo: dict[str, dict[str, str]] | None = None) -> dict[str, str]:
    memo = _memo if _memo is not None else {}
    if stage in memo:
        return memo[stage]
    memo[stage] = {}      # a cycle cannot happen (stages read earlier stages), but never recurse forever
    out: dict[str, str] = {}
    for unit, marker in ledgers.markers(stage).items():
        why = ""
        for reference, recorded in sorted(marker.upstream.items()):
            if split_ref(reference)[0] not in ledgers.registry:
                continue  # an input outside the root (a file given on the command line): its digest is the record
            current = ledgers.output(reference)
            if current != recorded:
                why = f"{reference} {'is gone' if current is None else 'was rebuilt'}"
                break
        if not why:
            for reference in sorted(marker.upstream):
                up_stage, up_unit, _ = split_ref(reference)
                if up_stage in ledgers.registry and up_unit in stale_units(ledgers, up_stage, memo):
                    why = f"{up_stage}:{up_unit} is stale"
                    break
        if why:
            out[unit] = why
    memo[stage] = out
    return out


# ---- the driver --------------------------------------------------------------------------------------------------

@dataclass
class StageResult:
    stage: str
    done: int = 0
    skipped: int = 0
    failed: int = 0
    counts: dict[str, Any] = field(default_factory=dict)
    errors: list[ErrorRow] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_status(self) -> int:
        return 1 if any(e.is_error for e in self.errors) else 0


def changed_fields(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``field: old -> new`` for every differing leaf (dotted names for nested configs)."""
    out = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += changed_fields(a, b, f"{prefix}{name}.")
        elif a != b:
            out.append(f"{prefix}{name}: {_show(a)} -> {_show(b)}")
    return out


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else dumps_json(value).strip().replace("\n", " ")
    return text if len(text) <= 80 else text[:77] + "..."


def command_line(argv: Sequence[str]) -> str:
    import shlex

    return "vlm3r-data " + " ".join(shlex.quote(a) for a in argv)


def _rebuild_hint(options: RunOptions, whole: bool) -> str:
    argv = list(options.rebuild_command if whole and options.rebuild_command else options.command)
    if "--rebuild" not in argv:
        argv.append("--rebuild")
    return command_line(argv)


def downstream(registry: Mapping[str, Stage], stage: str) -> list[str]:
    """The stages that read ``stage``, directly or not, in registry (pipeline) order."""
    found: set[str] = set()
    frontier = [stage]
    while frontier:
        current = frontier.pop()
        for name, s in registry.items():
            if current in s.reads and name not in found:
                found.add(name)
                frontier.append(name)
    return [name for name in registry if name in found]


def plan(stage: Stage, ctx: Context) -> tuple[list[Work], list[Work], dict[str, Marker]]:
    """(units to run, units already done, the stage's markers in this scope), by the rerun rules; raises
    StageRefused where they refuse."""
    config = config_dict(ctx.config)
    scope = stage.scope(ctx.config)
    markers = {u: m for u, m in ctx.ledgers.markers(stage.name).items() if m.scope == scope}
    units = stage.units(ctx)
    ids = [u.id for u in units]
    if len(set(ids)) != len(ids):
        raise RuntimeError(f"{stage.name}: duplicate unit ids")
    selected = set(ids)
    rebuild = ctx.options.rebuild or stage.always_rebuild
    # A full run compares with its own units' markers (markers of units that no longer exist are orphans); a subset
    # must agree with every marker of the root.
    relevant = markers if ctx.options.subset else {u: m for u, m in markers.items() if u in selected}

    changed: list[str] = []
    for marker in relevant.values():
        diff = changed_fields(marker.config, config)
        if marker.version != stage.version:
            diff.insert(0, f"format version of the {stage.name} outputs: {marker.version} -> {stage.version}")
        if diff:
            changed = diff
            break
    if changed and not stage.always_rebuild:
        lines = "\n".join(f"  {c}" for c in changed)
        later = downstream(ctx.ledgers.registry, stage.name)
        after = f" (what {', '.join(later)} made from them becomes stale)" if later else ""
        if not ctx.options.rebuild:
            raise StageRefused(f"{stage.name}: the configuration changed since its outputs in {ctx.root.path} were "
                               f"made:\n{lines}\none configuration per stage per root: rebuild every unit with\n  "
                               f"{_rebuild_hint(ctx.options, whole=True)}{after}\nor write to another root")
        outside = sorted(u for u in markers if u not in selected)
        if ctx.options.subset and outside:
            raise StageRefused(f"{stage.name}: the configuration changed:\n{lines}\nbut this run covers a subset: "
                               f"{len(outside)} other {stage.noun} keep the old one, and a root holds one "
                               f"configuration per stage. Rebuild all of them:\n  "
                               f"{_rebuild_hint(ctx.options, whole=True)}")

    work: list[Work] = []
    done: list[Work] = []
    moved: list[str] = []
    for unit in units:
        fp = fingerprint(stage.name, scope, stage.version, config, unit.upstream)
        marker = markers.get(unit.id)
        if marker is not None and marker.fingerprint == fp and not rebuild:
            done.append(Work(unit, fp, marker.generation))
            continue
        item = Work(unit, fp, 0 if marker is None else marker.generation + 1)
        if marker is not None and not rebuild and not changed:
            why = [r for r in sorted(set(marker.upstream) | set(unit.upstream))
                   if marker.upstream.get(r) != unit.upstream.get(r)]
            moved.append(f"{unit.id}: {', '.join(why[:3])}{', ...' if len(why) > 3 else ''}")
        work.append(item)
    if moved:
        shown = "\n".join(f"  {m}" for m in moved[:10]) + (f"\n  ... and {len(moved) - 10} more" if len(moved) > 10
                                                            else "")
        raise StageRefused(f"{stage.name}: what {len(moved)} of its {stage.noun} were made from has changed since "
                           f"(upstream rebuilt):\n{shown}\nredo them with\n  {_rebuild_hint(ctx.options, whole=False)}")
    if stage.refuses_stale_inputs and not ctx.options.allow_stale:
        _refuse_stale_inputs(stage, ctx, units)
    return work, done, markers


def _refuse_stale_inputs(stage: Stage, ctx: Context, units: Sequence[Unit]) -> None:
    stale: dict[str, str] = {}
    memo: dict[str, dict[str, str]] = {}
    for unit in units:
        for reference in sorted(unit.upstream):
            up_stage, up_unit, _ = split_ref(reference)
            if up_stage not in ctx.ledgers.registry:
                continue
            why = stale_units(ctx.ledgers, up_stage, memo).get(up_unit)
            if why:
                stale.setdefault(f"{up_stage}:{up_unit}", why)
    if stale:
        items = [f"{k} ({v})" for k, v in sorted(stale.items())]
        shown = "\n".join(f"  {s}" for s in items[:10]) + (f"\n  ... and {len(items) - 10} more" if len(items) > 10
                                                           else "")
        raise StageRefused(f"{stage.name}: {len(items)} of its inputs are stale (made from outputs that were rebuilt "
                           f"since):\n{shown}\nrebuild them first (`vlm3r-data status --root {ctx.root.path}` shows "
                           "what is stale), or pass --allow-stale to use them as they are")


class BookkeepingFailed(OSError):
    """The units ran, but a root-wide file (errors table, info.json) could not be written; already said in one
    line. The command exits 1."""


def drive(stage: Stage, root: DatasetRoot, config: Any, options: RunOptions, *, registry: Mapping[str, Stage],
              extra: dict[str, Any] | None = None) -> StageResult:
    """Run one stage on a root under the writer lock (see the module docstring); ``registry``: every stage by name
    (whose markers this stage's units read). Raises StageRefused (exit 2), DatasetRootError and LockError; failed
    units become error rows (exit 1)."""
    t0 = time.perf_counter()
    created = False
    if stage.creates_root and not root.path.exists():
        root.path.mkdir(parents=True)
        created = True
    else:
        root.check()
    try:
        return _run_locked(stage, root, config, options, registry, extra, t0)
    except BaseException:
        if created and root.path.is_dir() and not any(root.path.iterdir()):
            root.path.rmdir()       # a refused first run leaves no empty root behind
        raise


def _run_locked(stage: Stage, root: DatasetRoot, config: Any, options: RunOptions, registry: Mapping[str, Stage],
                extra: dict[str, Any] | None, t0: float) -> StageResult:
    root.load_info()    # refuses a root of another format version
    with RootLock(root.lock_path, command_line(options.command)):
        ctx = Context(root, config, options, Ledgers(root, registry), extra if extra is not None else {})
        work, done, markers = plan(stage, ctx)
        work, done = stage.prepare(ctx, work, done, markers)
        outcomes: list[Outcome] = []
        for outcome in stage.execute(ctx, work):
            outcomes.append(outcome)
            for e in outcome.errors:
                where = f"{e.dataset}/{e.scene_id}" if e.dataset else (e.scene_id or outcome.unit.id)
                ctx.say(f"{e.severity}: {stage.name} {where}: {e.error_type}: {e.message}")
        ctx.ledgers.forget(stage.name)
        errors = [e for o in outcomes for e in o.errors]
        result = StageResult(stage.name, done=sum(1 for o in outcomes if o.marker is not None), skipped=len(done),
                             failed=sum(1 for o in outcomes if o.marker is None), errors=errors)
        try:
            _record_errors(ctx, stage, [o.unit for o in outcomes] + [w.unit for w in done], outcomes)
            result.counts = {"units": len(work) + len(done), "done": result.done, "skipped": result.skipped,
                             "failed": result.failed, **stage.finish(ctx, outcomes, done)}
            root.record_stage(stage.scope(config), config_dict(config), result.counts)
        except OSError as exc:
            if not isinstance(exc, BookkeepingFailed):
                where = getattr(exc, "filename", None) or root.path
                ctx.say(f"error: {stage.name}: could not write {where}: {exc.strerror or exc}")
            raise BookkeepingFailed(str(exc)) from None
        result.seconds = time.perf_counter() - t0
        _summary(stage, ctx, result)
    return result


def _record_errors(ctx: Context, stage: Stage, processed: Iterable[Unit], outcomes: list[Outcome]) -> None:
    """Replace the stage's error rows of the processed units (and of the scenes their outcomes name). A failed
    write (full disk, read-only root) is said in one line and does not hide the units' own errors, which were
    printed as they came."""
    keys = {key for u in processed for key in stage.error_keys(u)}
    errors = [e for o in outcomes for e in o.errors]
    keys |= {(e.dataset, e.scene_id) for e in errors}
    try:
        record_errors(ctx.root.errors_path, stage.name, sorted(keys), errors)
    except OSError as exc:
        ctx.say(f"error: {stage.name}: could not write the errors table {ctx.root.errors_path}: "
                f"{exc.strerror or exc} (the failures above are not recorded there)")
        raise BookkeepingFailed(str(exc)) from None


def _summary(stage: Stage, ctx: Context, result: StageResult) -> None:
    failed_units = f", {result.failed} failed" if result.failed else ""
    reached = result.done + result.skipped + result.failed
    total = max(result.counts.get("units", reached), reached)
    # a run that stopped early (extract's lost model actor) did not reach every unit
    not_reached = f", {total - reached} not reached" if total > reached else ""
    print(f"{stage.name}: {result.done} done, {result.skipped} up to date{failed_units}{not_reached} of "
          f"{total} {stage.noun} -> {stage.outputs(ctx.root)} ({result.seconds:.1f}s)")
    if result.errors:
        warnings = sum(1 for e in result.errors if not e.is_error)
        rows = f"{len(result.errors) - warnings} error row(s)" + (f", {warnings} warning row(s)" if warnings else "")
        print(f"  {rows}: {ctx.root.errors_path}", file=sys.stderr)
    if result.done and (ctx.options.rebuild or stage.always_rebuild):
        stale = []
        for name in downstream(ctx.ledgers.registry, stage.name):
            n = len(ctx.ledgers.stale(name))
            if n:
                stale.append(f"{name} ({n})")
        if stale:
            print(f"  now stale downstream: {', '.join(stale)}; `vlm3r-data status --root {ctx.root.path}` lists them")
