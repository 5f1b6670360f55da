"""graph: ingested scenes -> scene graphs (objects, manifest frames, visibility, room measures) in
``ROOT/graph/<dataset>/<scene_id>/``. The core is :func:`scene_graph.graph.build_scene_graph`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pipeline.core.layout import DONE_MARKER, DatasetRoot
from pipeline.core.markers import Marker, digest
from pipeline.stages.contract import WARNINGS, Context, FileLedger, Stage, Unit
from pipeline.stages.ingest import iter_scene_units
from scene_graph.graph import GraphConfig, SceneGraph
from scene_graph.regions import RegionConfig


@dataclass(frozen=True)
class GraphStageConfig:
    graph: GraphConfig = field(default_factory=GraphConfig)
    instance_masks: bool = True           # use the release's 2D instance masks where a scene has them
    regions: RegionConfig | None = field(default_factory=RegionConfig)   # region prompts (None: none)

    def to_dict(self) -> dict[str, Any]:
        return {**self.graph.to_dict(), "instance_masks": self.instance_masks,
                "regions": None if self.regions is None else self.regions.to_dict()}


@dataclass(frozen=True)
class GraphJob:
    scene_dir: str
    graph_dir: str


def graph_ledger() -> FileLedger:
    """Graph markers (written by ``graph`` and by ``import-meta``, each with its own configuration scope)."""
    return FileLedger(lambda root, unit: root.graph_dir(*unit.split("/", 1)) / DONE_MARKER, f"graph/*/*/{DONE_MARKER}")


def graph_output(stats: Mapping[str, Any]) -> str:
    return digest(stats["sha256"])


class GraphStage(Stage):
    name = "graph"
    reads = ("ingest",)
    version = 1

    def ledger(self) -> FileLedger:
        return graph_ledger()

    def outputs(self, root: DatasetRoot) -> str:
        return str(root.graphs_dir)

    def units(self, ctx: Context) -> list[Unit]:
        scenes = iter_scene_units(ctx, ctx.extra.get("dataset"), ctx.extra.get("scenes"), posed_only=True)
        return [Unit(unit, upstream, GraphJob(str(ctx.root.scene_dir(ds, sid)), str(ctx.root.graph_dir(ds, sid))),
                     dataset=ds, scene_id=sid) for ds, sid, unit, upstream in scenes]

    def run_unit(self, job: GraphJob, config: GraphStageConfig) -> tuple[str, dict[str, Any], dict[str, str]]:
        from pipeline.core.frames import decode_depths
        from pipeline.core.scene import manifest_frames, read_manifest, read_scene
        from pipeline.core.schemas import column_as_array
        from scene_graph.graph import build_scene_graph, write_graph

        scene_dir = Path(job.scene_dir)
        scene = read_scene(scene_dir)
        manifest = read_manifest(scene_dir)
        rows = manifest_frames(scene.frames, manifest)
        depths = decode_depths(rows)
        masks, fallbacks = _instance_masks(scene, column_as_array(rows, "frame_index").tolist()) \
            if config.instance_masks else (None, [])
        graph = build_scene_graph(scene, manifest, depths=depths, instance_masks=masks, config=config.graph,
                                  where=str(scene_dir), region_config=config.regions)
        stats = write_graph(job.graph_dir, graph)
        if fallbacks:
            stats["mask_fallbacks"] = len(fallbacks)
            stats[WARNINGS] = [{"type": "InstanceMaskFallback", "path": fallbacks[0]["path"],
                                "message": f"{len(fallbacks)} frame(s) without a usable 2D instance mask were "
                                           f"rasterised instead (first: frame {fallbacks[0]['frame_index']}: "
                                           f"{fallbacks[0]['problem']})"}]
        return graph_output(stats), stats, {}

    def finish(self, ctx: Context, outcomes: list, done: list) -> dict[str, Any]:
        made = [o.marker.stats for o in outcomes if o.marker is not None]
        fallbacks = sum(int(s.get("mask_fallbacks", 0)) for s in made)
        if fallbacks:
            ctx.say(f"graph: {fallbacks} frame(s) in {sum(1 for s in made if s.get('mask_fallbacks'))} scene(s) had no "
                    "usable 2D instance mask and were rasterised instead (warning rows)")
        return {"objects": sum(int(s.get("objects", 0)) for s in made),
                "visibility_rows": sum(int(s.get("visibility_rows", 0)) for s in made),
                "regions": sum(int(s.get("regions", 0)) for s in made), "mask_fallbacks": fallbacks}


def _instance_masks(scene, frame_indices: list[int]) -> tuple[list | None, list[dict[str, Any]]]:
    """Per-frame instance masks when the scene declares them (the release's 2D masks), with the frames whose mask is
    missing or corrupt set to None (rasterised instead) and listed."""
    spec = scene.meta.get("instance_masks")
    if not isinstance(spec, dict) or spec.get("kind") != "zip":   # the ScanNet reader's declaration
        return None, []
    from pipeline.sources.scannet import read_instance_mask
    from scene_graph.regions import instance_masks_with_fallback

    return instance_masks_with_fallback(lambda fi: read_instance_mask(spec["path"], fi), frame_indices)


def save_graph(root: DatasetRoot, graph: SceneGraph, *, scope: str = "graph", config: Mapping[str, Any] | None = None,
               upstream: Mapping[str, str] | None = None, stage: str = "graph", version: int = 1) -> Marker:
    """Write a graph built in memory and its done-marker, as the graph stage (or ``import-meta``, with its scope and
    config) does."""
    from scene_graph.graph import write_graph

    stats = write_graph(root.graph_dir(graph.dataset, graph.scene_id), graph)
    config = dict(config if config is not None else GraphStageConfig().to_dict())
    upstream = dict(upstream or {})
    unit = f"{graph.dataset}/{graph.scene_id}"
    marker = Marker.made(stage, scope, unit, version, config, upstream, graph_output(stats), stats=stats)
    graph_ledger().write(root, marker)
    return marker


def scene_graph_config(depth_tolerance: float, floor_seed: int | None, instance_masks: bool) -> GraphStageConfig:
    return GraphStageConfig(GraphConfig(depth_tolerance=depth_tolerance, floor_seed=floor_seed), instance_masks)
