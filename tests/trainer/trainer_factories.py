"""Tiny dataset roots for the trainer tests: ingested scenes with PNG frames, real token shards (pipeline.core.shards)
and QA JSON lines, all in the real formats."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.core.layout import DatasetRoot, scene_key
from pipeline.core.scene import CanonicalScene, frames_columns, objects_table, read_manifest
from pipeline.core.schemas import FRAMES_SCHEMA, table_from_columns
from pipeline.core.tokens import TokenSample, token_codec
from pipeline.stages.extract import save_token_samples
from pipeline.stages.ingest import write_ingested_scene
from pipeline.stages.qa import save_qa_file

NUM_PATCHES = 729
TOKEN_WIDTH = 768


@dataclass(frozen=True)
class SceneSpec:
    dataset: str
    scene_id: str
    split: str
    num_questions: int
    with_jpegs: bool = True

    @property
    def key(self) -> str:
        return scene_key(self.dataset, self.scene_id)


def write_spec_scene(root: DatasetRoot, spec: SceneSpec, *, frames: int = 4, sampled: int = 2,
                     seed: int = 0) -> None:
    """A canonical scene with ``frames`` PNG frames (48x64), timestamps 0.5 s apart, identity poses."""
    rng = np.random.default_rng(seed)
    image_dir = root.path / "raw" / spec.key
    image_dir.mkdir(parents=True, exist_ok=True)
    cols = frames_columns(frames)
    paths = []
    for i in range(frames):
        path = image_dir / f"frame_{i:03d}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
        paths.append(str(path))
    cols.update(timestamp=10.0 + 0.5 * np.arange(frames), camera_to_world=np.tile(np.eye(4).ravel(), (frames, 1)),
                valid=np.ones(frames, bool), fx=np.full(frames, 50.0), fy=np.full(frames, 50.0),
                cx=np.full(frames, 32.0), cy=np.full(frames, 24.0), width=np.full(frames, 64, np.int32),
                height=np.full(frames, 48, np.int32), color_path=paths)
    scene = CanonicalScene(
        dataset=spec.dataset, scene_id=spec.scene_id, split=spec.split,
        frames=table_from_columns(FRAMES_SCHEMA, cols),
        objects=objects_table([1], ["chair"], ["chair"], [[0, 0, 0]], [[1, 1, 1]], [np.eye(3)], [0]),
        mesh_vertices=np.eye(3), mesh_faces=np.array([[0, 1, 2]]))
    write_ingested_scene(root, scene, num_frames=sampled)


def token_sample(root: DatasetRoot, spec: SceneSpec, seed: int, token_dtype: str = "bfloat16") -> TokenSample:
    rng = np.random.default_rng(seed)
    frames = read_manifest(root.scene_dir(spec.dataset, spec.scene_id)).to_pylist()
    t = len(frames)
    jpegs = None
    if spec.with_jpegs:
        jpegs = [cv2.imencode(".jpg", rng.integers(0, 256, (384, 384, 3), dtype=np.uint8))[1].tobytes()
                 for _ in range(t)]
    meta = {"key": spec.key, "dataset": spec.dataset, "scene_id": spec.scene_id, "model_id": "cut3r-test",
            "checkpoint_sha256": "0" * 64, "dtype": token_dtype, "storage": token_codec(token_dtype).storage,
            "num_frames": t,
            "num_patches": NUM_PATCHES, "token_width": TOKEN_WIDTH, "input_size": 432, "with_points": False,
            "with_frames": spec.with_jpegs, "code_version": "test"}
    return TokenSample.from_float(spec.key, rng.standard_normal((t, 1, TOKEN_WIDTH), np.float32),
                                  rng.standard_normal((t, NUM_PATCHES, TOKEN_WIDTH), np.float32), frames, meta,
                                  jpegs=jpegs)


def qa_record(spec: SceneSpec, index: int, qid: int) -> dict:
    count = 1 + (index * 7 + len(spec.scene_id)) % 5
    return {"id": qid, "bench": "vsibench", "dataset": spec.dataset, "scene_name": spec.scene_id,
            "scene_key": spec.key, "question_type": "object_counting", "task": "object_counting",
            "qa_key": f"{spec.key}/object_counting/{index:04d}",
            "question": f"How many chair(s) are in this room? ({index})", "options": None,
            "ground_truth": str(count), "answer_text": str(count), "frame_ranks": [0, 1]}


def build_root(path: Path, specs: list[SceneSpec], *, max_shard_bytes: int = 1 << 30,
               token_dtype: str = "bfloat16") -> DatasetRoot:
    """Scenes, token shards (one sample per scene, in key order, tokens stored with ``token_dtype``) and
    qa/vsibench/<split>.jsonl, with the done-markers the stages leave."""
    root = DatasetRoot(path)
    for i, spec in enumerate(specs):
        write_spec_scene(root, spec, seed=i)
    samples = [token_sample(root, spec, seed=100 + i, token_dtype=token_dtype)
               for i, spec in enumerate(sorted(specs, key=lambda s: s.key))]
    save_token_samples(root, samples, {"model_id": "cut3r-test"}, max_shard_bytes=max_shard_bytes)
    by_split: dict[str, list[dict]] = {}
    for spec in specs:
        rows = by_split.setdefault(spec.split, [])
        rows += [qa_record(spec, j, len(rows) + j) for j in range(spec.num_questions)]
    for split, rows in by_split.items():
        save_qa_file(root, "vsibench", split, rows)
    return root
