"""ingest: a raw release -> canonical scenes and their frame manifests (``ROOT/scenes/<dataset>/<scene_id>/``).

Units: the release's scenes (``<dataset>/<scene_id>``). The configuration is kept per dataset (scope
``ingest:<dataset>``), so each dataset of a root has one. A scene's output has the part ``frames`` (its frame table
and manifest: what extraction reads), so re-ingesting a scene whose objects changed leaves its tokens current.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from pipeline.core.errors import InputError
from pipeline.core.layout import DATASETS, DONE_MARKER, VIDEO_DATASET, DatasetRoot
from pipeline.core.markers import Marker, digest
from pipeline.core.scene import DEFAULT_NUM_FRAMES, FRAME_FILES, CanonicalScene, write_scene
from pipeline.stages.contract import WARNINGS, Context, FileLedger, Stage, StageRefused, Unit, config_dict


@dataclass(frozen=True)
class IngestConfig:
    dataset: str
    raw: str                              # absolute path of the raw release (the frame table points into it)
    num_frames: int = DEFAULT_NUM_FRAMES
    verify_frames: bool = True            # decode the manifest frames at ingest (a corrupt frame fails the scene)
    stream: str | None = None             # ScanNet++: iphone (default) or dslr

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose from {', '.join(DATASETS)}")
        if self.num_frames < 1:
            raise ValueError(f"--num-frames must be >= 1, got {self.num_frames}")
        if self.stream is not None and self.dataset != "scannetpp":
            raise ValueError("--stream applies to --dataset scannetpp only")

    @property
    def reader_options(self) -> dict[str, str]:
        return {"stream": self.stream} if self.stream else {}


@dataclass(frozen=True)
class IngestJob:
    dataset: str
    raw: str
    scene_id: str
    split: str
    scene_dir: str


def _unit_id(dataset: str, scene_id: str) -> str:
    return f"{dataset}/{scene_id}"


def scene_outputs(stats: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """(output fingerprint, parts) of an ingested scene from the sha256 of its files."""
    sha = stats["sha256"]
    return digest(sha), {"frames": digest({name: sha[name] for name in FRAME_FILES})}


class IngestStage(Stage):
    name = "ingest"
    version = 1
    creates_root = True

    def ledger(self) -> FileLedger:
        return FileLedger(lambda root, unit: root.scene_dir(*unit.split("/", 1)) / DONE_MARKER,
                          f"scenes/*/*/{DONE_MARKER}")

    def scope(self, config: IngestConfig) -> str:
        return f"ingest:{config.dataset}"

    def outputs(self, root: DatasetRoot) -> str:
        return str(root.scenes_dir)

    def units(self, ctx: Context) -> list[Unit]:
        config: IngestConfig = ctx.config
        scenes = list_release(config, ctx.extra.get("split"))
        wanted = ctx.extra.get("scenes")
        if wanted:
            known = dict(scenes)
            unknown = [s for s in wanted if s not in known]
            if unknown:
                raise StageRefused(f"ingest: scenes not found in {config.raw}: {', '.join(unknown)}")
            scenes = [(s, known[s]) for s in wanted]
        return [Unit(_unit_id(config.dataset, sid), {},
                     IngestJob(config.dataset, config.raw, sid, split, str(ctx.root.scene_dir(config.dataset, sid))),
                     dataset=config.dataset, scene_id=sid)
                for sid, split in scenes]

    def run_unit(self, job: IngestJob, config: IngestConfig) -> tuple[str, dict[str, Any], dict[str, str]]:
        from pipeline.sources import get_reader

        reader = get_reader(job.dataset, **config.reader_options)
        scene = reader.read_scene(Path(job.raw), job.scene_id, job.split)
        stats = write_canonical_scene(Path(job.scene_dir), scene, config.num_frames, config.verify_frames)
        output, parts = scene_outputs(stats)
        if job.dataset == VIDEO_DATASET:    # what the video reader noticed (corrupt tail, variable rate, ...)
            from pipeline.sources.video import ingest_notes

            stats[WARNINGS] = [{"type": note["kind"], "message": note["message"]}
                               for note in ingest_notes(scene, stats["manifest_frames"], config.num_frames)]
        return output, stats, parts


def list_release(config: IngestConfig, split: str | None) -> list[tuple[str, str]]:
    """(scene_id, split) of the release's scenes; StageRefused, saying what layout was expected and which dataset the
    folder looks like, when it holds none."""
    from pipeline.sources import get_reader, recognise

    raw = Path(config.raw)
    if not raw.is_dir():
        raise StageRefused(f"ingest: {raw}: raw dataset folder not found")
    reader = get_reader(config.dataset, **config.reader_options)
    try:
        scenes = reader.list_scenes(raw, split)
    except ValueError as exc:          # an unknown split name
        raise StageRefused(f"ingest: {exc}") from None
    except InputError as exc:          # the layout's top folder is missing: said below with what was expected
        scenes, problem = [], f" ({exc.problem}: {exc.path})"
    else:
        problem = ""
    if scenes:
        return scenes
    if split is not None and not problem:
        everything = reader.list_scenes(raw, None)
        if everything:
            found = ", ".join(sorted({s for _, s in everything}))
            raise StageRefused(f"ingest: {raw}: no {config.dataset} scene of split {split!r} (splits found: {found})")
    looks = [d for d in recognise(raw) if d != config.dataset]
    hint = f"; this folder has the layout of {' / '.join(looks)} (--dataset {looks[0]})" if looks else ""
    if config.dataset != VIDEO_DATASET and reader.looks_like(raw.parent):
        hint = f"; {raw} looks like a folder inside a {config.dataset} release: pass its parent ({raw.parent})"
    raise StageRefused(f"ingest: {raw}: no {config.dataset} scene found{problem}. Expected the {config.dataset} "
                       f"layout: {reader.layout}{hint}")


def write_canonical_scene(scene_dir: Path, scene: CanonicalScene, num_frames: int,
                          verify_frames: bool = True) -> dict[str, Any]:
    """Write one canonical scene (without its marker) and check that its manifest frames decode; the stats."""
    from pipeline.core.frames import decode_colors
    from pipeline.core.scene import manifest_frames, read_manifest

    stats = write_scene(scene_dir, scene, num_frames)
    if verify_frames:
        decode_colors(manifest_frames(scene.frames, read_manifest(scene_dir)))
    return stats


def write_ingested_scene(root: DatasetRoot, scene: CanonicalScene, num_frames: int = DEFAULT_NUM_FRAMES,
                         raw: str = "") -> Marker:
    """Write a scene built in memory (tests, synthetic data, other front ends) exactly as ``ingest`` does: the
    canonical files, then its done-marker (config scope ``ingest:<dataset>``, raw folder ``raw``)."""
    stage = IngestStage()
    config = IngestConfig(scene.dataset, raw, num_frames, verify_frames=False)
    stats = write_canonical_scene(root.scene_dir(scene.dataset, scene.scene_id), scene, num_frames, False)
    output, parts = scene_outputs(stats)
    unit = _unit_id(scene.dataset, scene.scene_id)
    marker = Marker.made(stage.name, stage.scope(config), unit, stage.version, config_dict(config), {}, output,
                         parts, stats)
    stage.ledger().write(root, marker)
    return marker


def iter_scene_units(ctx: Context, dataset: str | None = None, scenes: list[str] | None = None,
                     part: str | None = None, posed_only: bool = False) -> Iterator[tuple[str, str, str, dict[str, str]]]:
    """(dataset, scene_id, unit id, upstream) of the ingested scenes a scene stage runs on: ``dataset`` and
    ``scenes`` (ids or ``<dataset>_<id>`` keys) select; ``posed_only`` leaves out scenes without poses or mesh
    (plain videos); the upstream is the scene's ingest output (or its ``part``). Unknown selections are refused."""
    from pipeline.core.markers import ref
    from pipeline.core.scene import POSES_NONE, scene_poses

    markers = ctx.ledgers.markers("ingest")
    available = [(ds, sid) for ds, sid in ctx.root.scenes(dataset) if _unit_id(ds, sid) in markers]
    if posed_only:
        available = [(ds, sid) for ds, sid in available if scene_poses(ctx.root.scene_dir(ds, sid)) != POSES_NONE]
    if not available:
        which = f"{dataset} " if dataset else ""
        posed = "scans (scenes with poses) " if posed_only else ""
        raise StageRefused(f"no ingested {which}{posed or 'scenes '}under {ctx.root.scenes_dir}; run `vlm3r-data "
                           "ingest` first")
    if scenes:
        wanted = set(scenes)
        chosen = [(ds, sid) for ds, sid in available if sid in wanted or f"{ds}_{sid}" in wanted
                  or _unit_id(ds, sid) in wanted]
        found = {x for ds, sid in chosen for x in (sid, f"{ds}_{sid}", _unit_id(ds, sid))}
        missing = sorted(wanted - found)
        if missing:
            raise StageRefused(f"not ingested under {ctx.root.path}: {', '.join(missing)}")
        available = chosen
    for ds, sid in available:
        unit = _unit_id(ds, sid)
        output = markers[unit].identity_of(part)
        yield ds, sid, unit, {ref("ingest", unit, part): output}
