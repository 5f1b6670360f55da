"""A validated numpy view of one SceneGraph, shared by every task of a scene (built once, distances cached)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.core.errors import InputError
from pipeline.core.layout import scene_key
from pipeline.core.schemas import column_as_array
from scene_graph.geometry import box_corners, pairwise_box_distances
from scene_graph.graph import INCONSISTENT_KEY, SceneGraph
from scene_graph.regions import region_rle

# Structural "objects" that no benchmark asks about.
EXCLUDED_CATEGORIES = frozenset({"", "wall", "floor", "ceiling"})


@dataclass
class SceneView:
    dataset: str
    scene_id: str
    split: str
    room: dict[str, Any]
    instance_id: np.ndarray        # [N] int64
    category: np.ndarray           # [N] object (str)
    centroid: np.ndarray           # [N, 3] metres
    lengths: np.ndarray            # [N, 3] full edge lengths, metres
    axes: np.ndarray               # [N, 3, 3] rows = box axes
    frame_rank: np.ndarray         # [F] int, the manifest ranks ("frame k of N" = rank k-1)
    timestamp: np.ndarray          # [F] seconds
    camera_to_world: np.ndarray    # [F, 4, 4]
    frame_valid: np.ndarray        # [F] bool: finite pose
    visible: dict[int, np.ndarray] # rank -> sorted object row indices visible in that frame
    # Categories whose declared count disagrees with their boxes (imported metadata): never counted, never a unique
    # object, never a candidate measured to its closest instance (an instance may be missing).
    uncertain: frozenset = frozenset()
    _distances: np.ndarray | None = field(default=None, repr=False)
    # Region prompts (graphs built with regions): object row -> its regions in rank order, each a dict with
    # "frame_rank", "bbox_xyxy", "rle" ({"size": [h, w], "counts": str}), "visible_fraction", "truncated".
    regions: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    _seen_in: dict[int, frozenset[int]] | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return scene_key(self.dataset, self.scene_id)

    @property
    def num_frames(self) -> int:
        return len(self.frame_rank)

    @property
    def category_counts(self) -> Counter:
        """Instances per category, for the categories whose count is certain."""
        return Counter(c for c in self.category.tolist() if c not in self.uncertain)

    def unique_rows(self) -> np.ndarray:
        """Rows of the objects that are the only instance of their category, sorted by category name."""
        counts = self.category_counts
        rows = [i for i, c in enumerate(self.category) if counts.get(c) == 1]
        return np.array(sorted(rows, key=lambda i: self.category[i]), dtype=np.int64)

    def rows_of(self, category: str) -> np.ndarray:
        return np.flatnonzero(self.category == category)

    @property
    def distances(self) -> np.ndarray:
        """[N, N] closest-point box distances (m), computed on first use."""
        if self._distances is None:
            self._distances = pairwise_box_distances(self.centroid, self.lengths, self.axes)
        return self._distances

    def corners(self, row: int) -> np.ndarray:
        return box_corners(self.centroid[row], self.lengths[row], self.axes[row])

    def camera_centre(self, frame: int) -> np.ndarray:
        """Camera centre of frame row ``frame``: the translation of camera_to_world (never -R.T @ t)."""
        return self.camera_to_world[frame, :3, 3]

    def frame_label(self, frame: int) -> str:
        return f"frame {int(self.frame_rank[frame]) + 1} of {self.num_frames}"

    def region_rows(self) -> np.ndarray:
        """Rows of the objects that have at least one region prompt (any category, unique or not), sorted."""
        return np.array(sorted(self.regions), dtype=np.int64)

    def frames_seen(self, row: int) -> frozenset[int]:
        """Manifest ranks in which object ``row`` is visible (the visibility table)."""
        if self._seen_in is None:
            seen: dict[int, set[int]] = {}
            for rank, rows in self.visible.items():
                for r in rows.tolist():
                    seen.setdefault(r, set()).add(int(rank))
            self._seen_in = {r: frozenset(ranks) for r, ranks in seen.items()}
        return self._seen_in.get(int(row), frozenset())

    def max_regions_per_frame(self, rows) -> int:
        """The largest number of the objects ``rows`` that one manifest frame shows together (the visibility
        table): 1 for two objects never seen in the same frame, len(rows) when some frame shows them all."""
        per_frame = Counter(rank for r in rows for rank in self.frames_seen(int(r)))
        return max(per_frame.values(), default=0)

    def first_appearance_s(self, min_pixels: int = 1) -> dict[str, float]:
        """Category -> first time (s) it is visible. room.json's values win (they may use more than the manifest)."""
        given = self.room.get("first_appearance_s") or {}
        if given:
            present = set(self.category.tolist())
            return {str(k): float(v) for k, v in given.items() if str(k) in present}
        out: dict[str, float] = {}
        for frame in np.argsort(self.timestamp, kind="stable"):
            for row in self.visible.get(int(self.frame_rank[frame]), ()):
                out.setdefault(str(self.category[row]), float(self.timestamp[frame]))
        return out


def build_view(graph: SceneGraph, min_visible_pixels: int = 1) -> SceneView:
    """Validate a graph and turn it into arrays. Raises InputError naming the graph file and the problem."""
    where = f"graph/{graph.dataset}/{graph.scene_id}"
    objects = graph.objects
    category = np.asarray(objects.column("category").to_pylist(), dtype=object)
    keep = np.array([str(c).strip().lower() not in EXCLUDED_CATEGORIES for c in category], dtype=bool)
    instance_id = column_as_array(objects, "instance_id").astype(np.int64)
    centroid = column_as_array(objects, "centroid").astype(np.float64)
    lengths = column_as_array(objects, "lengths").astype(np.float64)
    axes = column_as_array(objects, "axes").astype(np.float64).reshape(-1, 3, 3)
    bad = ~(np.isfinite(centroid).all(1) & np.isfinite(lengths).all(1) & np.isfinite(axes).all((1, 2)))
    if bad[keep].any():
        ids = instance_id[keep & bad].tolist()
        raise InputError(f"{where}/objects.parquet", f"non-finite box (centroid, lengths or axes) for instance ids {ids}")
    if (lengths[keep] < 0).any():
        ids = instance_id[keep & (lengths < 0).any(1)].tolist()
        raise InputError(f"{where}/objects.parquet", f"negative box lengths for instance ids {ids}")
    if len(np.unique(instance_id)) != len(instance_id):
        raise InputError(f"{where}/objects.parquet", "duplicate instance ids")

    frames = graph.frames
    rank = column_as_array(frames, "rank").astype(np.int64)
    c2w = column_as_array(frames, "camera_to_world").astype(np.float64).reshape(-1, 4, 4)
    declared_valid = column_as_array(frames, "valid").astype(bool)
    finite = np.isfinite(c2w).all(axis=(1, 2))
    if (declared_valid & ~finite).any():
        raise InputError(f"{where}/frames.parquet",
                         f"frames marked valid with non-finite poses at ranks {rank[declared_valid & ~finite].tolist()}")
    if len(rank) and not np.array_equal(rank, np.arange(len(rank))):
        raise InputError(f"{where}/frames.parquet", "frame ranks must be 0..N-1 in order")

    keep_rows = np.flatnonzero(keep)
    row_of_instance = {int(i): r for r, i in enumerate(instance_id[keep_rows])}
    vis = graph.visibility
    visible: dict[int, list[int]] = {}
    if vis.num_rows:
        v_rank = column_as_array(vis, "rank").astype(np.int64)
        v_inst = column_as_array(vis, "instance_id").astype(np.int64)
        v_pix = column_as_array(vis, "visible_pixels").astype(np.int64)
        for r, inst, pix in zip(v_rank.tolist(), v_inst.tolist(), v_pix.tolist()):
            if pix >= min_visible_pixels and inst in row_of_instance:
                visible.setdefault(r, []).append(row_of_instance[inst])
    regions: dict[int, list[dict[str, Any]]] = {}
    region_table = getattr(graph, "regions", None)
    if region_table is not None:
        for r in region_table.to_pylist():       # sorted by (rank, instance id): each object's list is in rank order
            row = row_of_instance.get(int(r["instance_id"]))
            if row is not None:
                regions.setdefault(row, []).append({
                    "frame_rank": int(r["rank"]), "bbox_xyxy": [int(x) for x in r["bbox_xyxy"]],
                    "rle": region_rle(r),
                    "visible_fraction": float(r["visible_fraction"]), "truncated": bool(r["truncated"])})
    return SceneView(
        dataset=graph.dataset, scene_id=graph.scene_id, split=graph.split, room=dict(graph.room or {}),
        instance_id=instance_id[keep_rows], category=category[keep_rows].astype(str).astype(object),
        centroid=centroid[keep_rows], lengths=lengths[keep_rows], axes=axes[keep_rows],
        frame_rank=rank, timestamp=column_as_array(frames, "timestamp").astype(np.float64),
        camera_to_world=c2w, frame_valid=declared_valid & finite,
        visible={r: np.array(sorted(set(rows)), dtype=np.int64) for r, rows in visible.items()},
        uncertain=frozenset(str(c) for c in (graph.room or {}).get(INCONSISTENT_KEY, {})),
        regions=regions,
    )


def as_view(graph: SceneGraph | SceneView, min_visible_pixels: int = 1) -> SceneView:
    return graph if isinstance(graph, SceneView) else build_view(graph, min_visible_pixels)
