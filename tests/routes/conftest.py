"""Factories for the route tests: generated layouts written as real ingested scenes (PLY + parquet + markers)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.core.layout import DatasetRoot
from pipeline.core.scene import CanonicalScene, frames_columns
from pipeline.core.schemas import FRAMES_SCHEMA, table_from_columns


def write_layout_scene(root: Path, dataset: str, scene_id: str, vertices: np.ndarray, faces: np.ndarray,
                       objects) -> Path:
    """Write a canonical scene (one valid frame, the layout's mesh and objects) under ROOT/scenes/."""
    cols = frames_columns(1)
    cols["camera_to_world"] = np.eye(4).reshape(1, 16)
    cols["valid"] = np.ones(1, bool)
    cols["timestamp"] = np.zeros(1)
    scene = CanonicalScene(dataset=dataset, scene_id=scene_id, split="train",
                           frames=table_from_columns(FRAMES_SCHEMA, cols), objects=objects,
                           mesh_vertices=np.asarray(vertices, np.float64), mesh_faces=np.asarray(faces, np.int64))
    from pipeline.stages.ingest import write_ingested_scene

    write_ingested_scene(DatasetRoot(root), scene)
    return DatasetRoot(root).scene_dir(dataset, scene_id)


@pytest.fixture
def layout_scene_writer():
    return write_layout_scene
