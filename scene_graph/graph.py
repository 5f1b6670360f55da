"""The spatio-temporal scene graph of one scene: objects with metric boxes, the manifest frames with camera poses,
which object is visible in which frame, and room measures. Every QA task is a pure function of a SceneGraph.

On disk (``ROOT/graph/<dataset>/<scene_id>/``): ``objects.parquet`` (GRAPH_OBJECTS_SCHEMA), ``frames.parquet``
(GRAPH_FRAMES_SCHEMA), ``visibility.parquet`` (VISIBILITY_SCHEMA), ``room.json``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa


@dataclass
class SceneGraph:
    dataset: str
    scene_id: str
    split: str
    objects: pa.Table          # GRAPH_OBJECTS_SCHEMA
    frames: pa.Table           # GRAPH_FRAMES_SCHEMA (may have 0 rows when imported from metadata without frames)
    visibility: pa.Table       # VISIBILITY_SCHEMA
    # room.json: {"floor_area_m2": float, "outline": [[x, y], ...], "center": [x, y, z],
    #             "first_appearance_s": {category: seconds}, "video_duration_s": float, "fps": float}
    room: dict[str, Any] = field(default_factory=dict)
