"""graph: ingested scenes -> scene graphs (objects, manifest frames, visibility, room measures) in
``ROOT/graph/<dataset>/<scene_id>/``. The core is :func:`scene_graph.graph.build_scene_graph`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pipeline.core.layout import DONE_MARKER, DatasetRoot
from pipeline.core.markers import Marker, digest, fingerprint
from pipeline.stages.contract import Context, FileLedger, Stage, Unit
from pipeline.stages.ingest import iter_scene_units
from scene_graph.graph import GraphConfig, SceneGraph


@dataclass(frozen=True)
class GraphStageConfig:
    graph: GraphConfig = field(default_factory=GraphConfig)
    instance_masks: bool = True           # use the release's 2D instance masks where a scene has them

    def to_dict(self) -> dict[str, Any]:
        return {**self.graph.to_dict(), "instance_masks": self.instance_masks}


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
        return [Unit(unit, upstream, GraphJob(str(ctx.root.scene_dir(ds, sid)), str(ctx.root.graph_dir(ds, sid))),
                     dataset=ds, scene_id=sid)
                for ds, sid, unit, upstream in iter_scene_units(ctx, ctx.extra.get("dataset"), ctx.extra.get("scenes"))]

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
        masks = _instance_masks(scene, column_as_array(rows, "frame_index").tolist()) if config.instance_masks \
            else None
        graph = build_scene_graph(scene, manifest, depths=depths, instance_masks=masks, config=config.graph,
                                  where=str(scene_dir))
        stats = write_graph(job.graph_dir, graph)
        return graph_output(stats), stats, {}

    def finish(self, ctx: Context, outcomes: list, done: list) -> dict[str, Any]:
        made = [o.marker.stats for o in outcomes if o.marker is not None]
        return {"objects": sum(int(s.get("objects", 0)) for s in made),
                "visibility_rows": sum(int(s.get("visibility_rows", 0)) for s in made)}


def _instance_masks(scene, frame_indices: list[int]) -> list | None:
    """Per-frame instance masks when the scene declares them and the reader that knows the format is present."""
    spec = scene.meta.get("instance_masks")
    if not isinstance(spec, dict) or spec.get("kind") != "zip":   # the ScanNet reader's declaration
        return None
    from pipeline.sources.scannet import read_instance_mask

    return [read_instance_mask(spec["path"], fi) for fi in frame_indices]


def save_graph(root: DatasetRoot, graph: SceneGraph, *, scope: str = "graph", config: Mapping[str, Any] | None = None,
               upstream: Mapping[str, str] | None = None, stage: str = "graph", version: int = 1) -> Marker:
    """Write a graph built in memory and its done-marker, as the graph stage (or ``import-meta``, with its scope and
    config) does."""
    from scene_graph.graph import write_graph

    stats = write_graph(root.graph_dir(graph.dataset, graph.scene_id), graph)
    config = dict(config if config is not None else GraphStageConfig().to_dict())
    upstream = dict(upstream or {})
    unit = f"{graph.dataset}/{graph.scene_id}"
    marker = Marker(stage, scope, unit, fingerprint(stage, scope, version, config, upstream), version, config,
                    upstream, graph_output(stats), {}, stats)
    graph_ledger().write(root, marker)
    return marker


def scene_graph_config(depth_tolerance: float, floor_seed: int | None, instance_masks: bool) -> GraphStageConfig:
    return GraphStageConfig(GraphConfig(depth_tolerance=depth_tolerance, floor_seed=floor_seed), instance_masks)
