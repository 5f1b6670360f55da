"""routes: the navigable floor of every ingested scene -> sampled routes and a top-down plot per scene.

Per scene: the navigator is built from ``ROOT/scenes/<ds>/<id>/mesh.ply`` (z-up) and the routes are sampled between
the unique objects of ``objects.parquet``; outputs are ``ROOT/routes/<ds>/<id>.parquet`` (ROUTES_SCHEMA),
``ROOT/routes/plots/<ds>/<id>.png`` and the done-marker ``ROOT/routes/<ds>/<id>_DONE.json``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.layout import DONE_MARKER, DatasetRoot, scene_key
from pipeline.stages.contract import Context, FileLedger, Stage, Unit
from pipeline.stages.ingest import iter_scene_units

BACKENDS = ("grid", "habitat")


@dataclass(frozen=True)
class RoutesConfig:
    backend: str = "grid"
    seed: int = 0                         # run seed (each scene derives its own from it)
    max_routes: int = 10                  # forward routes per scene
    reversed: bool = False                # also each route walked backwards
    partial: bool = False                 # also prefixes ending at a landmark
    plots: bool = True                    # a top-down PNG per scene

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown navigation backend {self.backend!r}; choose from {', '.join(BACKENDS)}")
        if self.max_routes < 0:
            raise ValueError("--max-routes must be >= 0")


@dataclass(frozen=True)
class RoutesJob:
    dataset: str
    scene_id: str
    scene_dir: str
    table: str
    plot: str


class RoutesStage(Stage):
    name = "routes"
    reads = ("ingest",)
    version = 1

    def ledger(self) -> FileLedger:
        return FileLedger(lambda root, unit: root.routes_marker(*unit.split("/", 1)), f"routes/*/*{DONE_MARKER}")

    def outputs(self, root: DatasetRoot) -> str:
        return str(root.routes_dir)

    def units(self, ctx: Context) -> list[Unit]:
        root = ctx.root
        scenes = iter_scene_units(ctx, ctx.extra.get("dataset"), ctx.extra.get("scenes"), posed_only=True)
        return [Unit(unit, upstream, RoutesJob(ds, sid, str(root.scene_dir(ds, sid)), str(root.routes_table(ds, sid)),
                                               str(root.routes_plot(ds, sid))), dataset=ds, scene_id=sid)
                for ds, sid, unit, upstream in scenes]

    def run_unit(self, job: RoutesJob, config: RoutesConfig) -> tuple[str, dict[str, Any], dict[str, str]]:
        """Build the navigator, sample and write one scene's routes (+ plot). Raises on bad input."""
        from pipeline.core.atomic import sha256_file
        from pipeline.core.scene import read_scene
        from pipeline.core.schemas import ROUTES_SCHEMA, write_table
        from qa_templates.seeding import derive_seed
        from scene_graph.navigation import NavmeshSettings, build_navigator
        from scene_graph.routes import RouteSettings, routes_table, sample_routes

        scene_dir = Path(job.scene_dir)
        scene = read_scene(scene_dir)
        key = scene_key(job.dataset, job.scene_id)
        navigator = build_navigator(scene.mesh_vertices, scene.mesh_faces, NavmeshSettings(), config.backend,
                                    source=str(scene_dir / "mesh.ply"))
        try:
            settings = RouteSettings(seed=derive_seed(config.seed, key, self.name), max_routes=config.max_routes,
                                     reversed=config.reversed, partial=config.partial)
            routes, rejected = sample_routes(navigator, scene.objects, settings,
                                             source=str(scene_dir / "objects.parquet"))
            write_table(job.table, routes_table(routes, job.dataset, job.scene_id, navigator.backend), ROUTES_SCHEMA)
            if config.plots:
                plot_routes(job.plot, navigator, routes, scene.objects, f"{key}: {len(routes)} routes")
            islands = navigator.islands
            stats = {"routes": len(routes), "turns": int(sum(r.num_turns for r in routes)),
                     "navigable_area_m2": round(navigator.navigable_area_m2, 4),
                     "largest_island_m2": round(islands[0].area_m2, 4), "islands": len(islands),
                     "rejected": rejected, "backend": navigator.backend}
        finally:
            navigator.close()
        return sha256_file(job.table), stats, {}

    def finish(self, ctx: Context, outcomes: list, done: list) -> dict[str, Any]:
        made = [o.marker.stats for o in outcomes if o.marker is not None]
        return {"routes": sum(s["routes"] for s in made), "turns": sum(s["turns"] for s in made),
                "scenes_without_routes": sum(1 for s in made if s["routes"] == 0),
                "scenes_with_several_islands": sum(1 for s in made if s["islands"] > 1)}


def plot_routes(path: str | Path, navigator, routes, objects, title: str) -> None:
    """Top-down PNG: navigable floor (largest island darker), route paths, unique-object landmarks. Atomic."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from pipeline.core.atomic import atomic_path
    from scene_graph.routes import unique_objects

    top = navigator.topdown()
    rows, cols = top.islands.shape
    extent = (top.origin_xy[0], top.origin_xy[0] + cols * top.meters_per_pixel,
              top.origin_xy[1], top.origin_xy[1] + rows * top.meters_per_pixel)
    shade = np.where(top.islands == 0, 0.55, np.where(top.islands > 0, 0.8, 1.0))
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.imshow(shade, origin="lower", extent=extent, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    for k, route in enumerate(routes):
        pts = np.asarray(route.corner_points)
        ax.plot(pts[:, 0], pts[:, 1], "-", lw=1.2, color=plt.cm.tab10(k % 10))
        ax.plot(pts[0, 0], pts[0, 1], "o", ms=3, color=plt.cm.tab10(k % 10))
    uniq = unique_objects(objects)
    ax.scatter(uniq.centroid[:, 0], uniq.centroid[:, 1], marker="s", s=12, color="crimson")
    for label, c in zip(uniq.labels, uniq.centroid):
        ax.annotate(label, (c[0], c[1]), fontsize=6, color="crimson")
    ax.set_title(title, fontsize=8)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)", fontsize=7)
    ax.set_ylabel("y (m)", fontsize=7)
    ax.tick_params(labelsize=6)
    with atomic_path(path) as tmp:
        # No metadata: the bytes depend only on the figure (reproducible across runs).
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)
