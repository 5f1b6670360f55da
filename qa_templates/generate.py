"""The pure core of the qa stage: one scene graph in, its finished benchmark records and statistics out (no I/O)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qa_templates.config import QAConfig
from qa_templates.options import LetterBalancer
from qa_templates.records import finalize
from qa_templates.scene_view import SceneView, as_view
from qa_templates.seeding import task_rng
from qa_templates.tasks import TaskSpec
from scene_graph.graph import SceneGraph


@dataclass
class SceneQA:
    scene_key: str
    records: list[dict[str, Any]] = field(default_factory=list)
    # task name -> {"candidates": n, "kept": n, "rejections": {reason: n}}
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def generate_scene(graph: SceneGraph | SceneView, bench: str, tasks: list[TaskSpec], run_seed: int,
                   cfg: QAConfig) -> SceneQA:
    """Every task's questions for one scene. Each (scene, task) draws from its own seeded generator, so the result
    depends only on the graph, the seed and the config. Raises pipeline.core.errors.InputError on a corrupt graph.

    Tasks examine candidates in random order and stop once they hold ``max_per_scene_task``, so the rejection counts
    in the stats cover the candidates examined, not every conceivable one."""
    view = as_view(graph, cfg.min_visible_pixels)
    out = SceneQA(view.key)
    if len(view.instance_id) == 0:
        out.notes.append("scene has no objects")
    if view.num_frames == 0:
        out.notes.append("scene has no frames")
    elif not view.visible:
        out.notes.append("scene has no visibility rows")
    for spec in tasks:
        if spec.bench != bench:
            raise ValueError(f"task {spec.name} belongs to {spec.bench}, not {bench}")
        rng = task_rng(run_seed, view.key, spec.name)
        rejected: Counter = Counter()
        candidates = spec.generate(view, rng, cfg, rejected)
        kept = candidates
        if cfg.max_per_scene_task and len(candidates) > cfg.max_per_scene_task:
            picks = np.sort(rng.choice(len(candidates), size=cfg.max_per_scene_task, replace=False))
            kept = [candidates[i] for i in picks]
        balancer = LetterBalancer(rng)
        for index, cand in enumerate(kept):
            out.records.append(finalize(cand, balancer, bench=bench, dataset=view.dataset, scene_id=view.scene_id,
                                        scene_key=view.key, task=spec.name, index=index, run_seed=run_seed))
        out.stats[spec.name] = {"candidates": len(candidates), "kept": len(kept),
                                "capped_per_scene": len(candidates) - len(kept),
                                "rejections": dict(sorted(rejected.items()))}
    return out
