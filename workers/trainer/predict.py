"""Predictions of a trained model for benchmark questions, as JSON lines ``{"id", "prediction"}`` that
``vlm3r-data eval`` scores.

Benchmark scenes are never packed into training shards, so their inputs come straight from the token shards
(geometry tokens and JPEG frames, or the scene's frames decoded from the raw source when the shard has none).
Decoding is greedy and short (an option letter or a number).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import torch

from pipeline.core.atomic import atomic_open
from pipeline.core.errors import InputError
from pipeline.core.layout import DatasetRoot
from workers.trainer.data import encode_conversation, pixels_from_jpegs, user_text
from workers.trainer.model import VLM3R


def read_questions(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise InputError(path, "benchmark questions not found")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError as exc:
                raise InputError(path, f"line {n}: not JSON ({exc})") from None
    return out


def scene_inputs(root: DatasetRoot, sample) -> dict[str, torch.Tensor]:
    """Geometry tokens and pixel values of one token-shard sample (the same preprocessing as training)."""
    from pipeline.core.images import jpeg_frames
    from pipeline.core.train_samples import scene_frames

    geometry = torch.cat([torch.from_numpy(sample.camera_tokens()), torch.from_numpy(sample.patch_tokens())], dim=1)
    jpegs = sample.jpegs
    if jpegs is None:
        _, images = scene_frames(root, sample)
        jpegs = jpeg_frames(images, sample.key)
    return {"geometry_tokens": geometry, "pixel_values": torch.from_numpy(pixels_from_jpegs(jpegs, sample.key))}


@torch.no_grad()
def predict(model: VLM3R, tokenizer: Any, root: DatasetRoot, questions: list[dict[str, Any]], out_path: Path, *,
            max_new_tokens: int = 8, time_instruction: bool = False, device: torch.device | None = None) -> int:
    """Answer every question whose scene has tokens; write ``{"id", "prediction"}`` lines sorted by id (atomic).
    Returns the number of predictions (questions without tokens are left to the scorer, which counts them missing)."""
    from pipeline.core.train_samples import scene_frames
    from pipeline.core.tokens import iter_samples

    device = device or torch.device("cpu")
    model.eval()
    by_scene: dict[str, list[dict[str, Any]]] = {}
    for q in questions:
        by_scene.setdefault(q["scene_key"], []).append(q)
    rows = []
    for sample in iter_samples(root.tokens_dir, verify_sha256=False):
        records = by_scene.get(sample.key)
        if not records:
            continue
        inputs = {k: v.to(device) for k, v in scene_inputs(root, sample).items()}
        video = scene_frames(root, sample)[0] if time_instruction else None
        if video is not None and video.get("duration_s") is None:
            video = None
        prompts = [encode_conversation(tokenizer, user_text(record, video), None)[0] for record in records]
        answers = model.generate_for_video(inputs, prompts, max_new_tokens, tokenizer.im_end_id)
        rows += [{"id": r["id"], "prediction": tokenizer.decode(t).strip()} for r, t in zip(records, answers)]
    rows.sort(key=lambda r: (str(type(r["id"])), r["id"]))
    with atomic_open(out_path, "w") as fh:
        for r in rows:
            fh.write(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n")
    return len(rows)


def predict_files(model: VLM3R, tokenizer: Any, root: DatasetRoot, question_files: Iterable[Path], out_dir: Path,
                  **kwargs: Any) -> list[Path]:
    """Predictions for each ``qa/<bench>/<split>.jsonl`` into ``out_dir/<bench>_<split>.jsonl``."""
    written = []
    for path in question_files:
        out = Path(out_dir) / f"{path.parent.name}_{path.stem}.jsonl"
        predict(model, tokenizer, root, read_questions(path), out, **kwargs)
        written.append(out)
    return written
