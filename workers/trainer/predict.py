"""Predictions of a trained model for benchmark questions, as JSON lines ``{"id", "prediction"}`` that
``vlm3r-data eval`` scores.

Questions are our own benchmark records (``ROOT/qa/<bench>/<split>.jsonl``, which name their ``scene_key``) or a
published question file in lmms-eval's layout (:func:`pipeline.core.qa_records.load_benchmark_questions`), whose
``<dataset>/<scene_name>`` (or ``video_path``) names a plain video ingested into the root, or a scan ingested under
that dataset and scene id. Inputs come straight from the token shards (geometry tokens and JPEG frames, or the
scene's frames decoded from the raw source when the shard has none): benchmark scenes are never packed into training
shards. A question whose video has no tokens in the root is listed and counted, never dropped silently.

Generation is greedy and short (an option letter or a number), grouped by video: each video's frames are encoded
once and the shared prompt prefix with its video tokens is prefilled once for all its questions
(:meth:`workers.trainer.model.VLM3R.generate_for_video`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from pipeline.core.atomic import atomic_open, read_json
from pipeline.core.errors import ErrorRow, InputError
from pipeline.core.layout import DATASETS, VIDEO_DATASET, DatasetRoot, scene_key
from pipeline.core.qa_records import dumps_prediction, iter_records, video_name
from workers.trainer.data import encode_conversation, pixels_from_jpegs, user_text
from workers.trainer.model import VLM3R

STAGE = "predict"


def read_questions(path: Path) -> list[dict[str, Any]]:
    """Our own benchmark records (``ROOT/qa/<bench>/<split>.jsonl``)."""
    if not Path(path).is_file():
        raise InputError(path, "benchmark questions not found")
    return list(iter_records(path))


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


# ---- which token sample answers a question -----------------------------------------------------------------------

def question_key_resolver(root: DatasetRoot) -> Callable[[dict[str, Any]], str | None]:
    """The shard key a question's inputs are read from: its ``scene_key`` (our records); else the plain video the root
    ingested under the question's video name (:func:`pipeline.core.qa_records.video_name`); else the scan ingested as
    ``<dataset>/<scene_name>``; None when the question names none of these."""
    from pipeline.core.scene import video_name_index

    videos = video_name_index(root)

    def key_of(question: dict[str, Any]) -> str | None:
        if question.get("scene_key"):
            return str(question["scene_key"])
        name = video_name(question)
        if name in videos:
            return videos[name]
        dataset = str(question.get("dataset"))
        if dataset in DATASETS and dataset != VIDEO_DATASET:
            return scene_key(dataset, str(question.get("scene_name")))
        return None

    return key_of


# ---- answering ---------------------------------------------------------------------------------------------------

@dataclass
class PredictSummary:
    """What a prediction run did: every question is answered or listed as missing its video."""

    out_path: str
    questions: int = 0
    answered: int = 0
    videos: int = 0                                   # token samples read
    missing: list[dict[str, Any]] = field(default_factory=list)   # {"id", "video", "key"} without tokens
    seconds: float = 0.0

    @property
    def questions_per_s(self) -> float:
        return self.answered / self.seconds if self.seconds > 0 else 0.0

    def error_rows(self, question_file: str | Path) -> list[ErrorRow]:
        """One ``MissingVideo`` row per video without tokens (listing its question ids)."""
        by_video: dict[str, list[Any]] = {}
        for q in self.missing:
            by_video.setdefault(q["video"], []).append(q["id"])
        rows = []
        for video, ids in sorted(by_video.items()):
            dataset, _, name = video.partition("/")
            rows.append(ErrorRow(STAGE, dataset, name, "MissingVideo",
                                 f"{question_file}: no tokens in the root for video {video!r}: "
                                 f"{len(ids)} question(s) unanswered (ids {ids[:10]}{' ...' if len(ids) > 10 else ''})",
                                 str(question_file)))
        return rows

    def to_json(self) -> dict[str, Any]:
        return {"out": self.out_path, "questions": self.questions, "answered": self.answered, "videos": self.videos,
                "missing": len(self.missing), "missing_videos": sorted({q["video"] for q in self.missing}),
                "seconds": round(self.seconds, 3), "questions_per_s": round(self.questions_per_s, 3)}


def _token_index(root: DatasetRoot) -> tuple[dict[str, str], int | None]:
    """Shard file of every key in ``ROOT/tokens/index.json``, and the geometry-token width the index records."""
    from pipeline.core.shards import read_index

    if not (root.tokens_dir / "index.json").is_file():
        return {}, None
    index = read_index(root.tokens_dir)
    where = {key: entry["file"] for entry in index["shards"] for key in entry["keys"]}
    width = index.get("identity", {}).get("token_width")
    return where, None if width is None else int(width)


@torch.no_grad()
def predict(model: VLM3R, tokenizer: Any, root: DatasetRoot, questions: list[dict[str, Any]], out_path: Path, *,
            max_new_tokens: int = 8, time_instruction: bool = False, device: torch.device | None = None,
            key_of: Callable[[dict[str, Any]], str | None] | None = None, progress: bool = False) -> PredictSummary:
    """Answer every question whose video has tokens in ``root``; write ``{"id", "prediction"}`` lines sorted by id
    (atomically) and return the summary, which lists the questions whose video has none."""
    from tqdm import tqdm

    from pipeline.core.tokens import iter_samples
    from pipeline.core.train_samples import scene_frames

    t0 = time.perf_counter()
    device = device or torch.device("cpu")
    key_of = key_of or question_key_resolver(root)
    model.eval()
    shard_of, width = _token_index(root)
    if width is not None and width != model.config.d_spatial:
        raise InputError(root.tokens_dir / "index.json", f"geometry tokens are {width} wide but the model's fusion "
                                                         f"block expects {model.config.d_spatial}")
    summary = PredictSummary(str(out_path), questions=len(questions))
    by_key: dict[str, list[dict[str, Any]]] = {}
    for q in questions:
        key = key_of(q)
        if key is not None and key in shard_of:
            by_key.setdefault(key, []).append(q)
        else:
            summary.missing.append({"id": q["id"], "video": video_name(q) if "scene_key" not in q else key,
                                    "key": key})
    rows = []
    bar = tqdm(total=sum(len(v) for v in by_key.values()), desc=STAGE, unit="question", disable=not progress,
               dynamic_ncols=True)
    try:
        for sample in iter_samples(root.tokens_dir, verify_sha256=False, shards={shard_of[k] for k in by_key}):
            records = by_key.get(sample.key)
            if not records:
                continue
            inputs = {k: v.to(device) for k, v in scene_inputs(root, sample).items()}
            video = scene_frames(root, sample)[0] if time_instruction else None
            if video is not None and video.get("duration_s") is None:
                video = None
            prompts = [encode_conversation(tokenizer, user_text(record, video), None)[0] for record in records]
            answers = model.generate_for_video(inputs, prompts, max_new_tokens, tokenizer.im_end_id)
            rows += [(r["id"], tokenizer.decode(t).strip()) for r, t in zip(records, answers)]
            summary.videos += 1
            bar.update(len(records))
            bar.set_postfix_str(f"{len(rows) / max(time.perf_counter() - t0, 1e-9):.2f} questions/s")
    finally:
        bar.close()
    rows.sort(key=lambda r: (str(type(r[0])), r[0]))
    with atomic_open(out_path, "w") as fh:
        for question_id, text in rows:
            fh.write(dumps_prediction(question_id, text) + "\n")
    summary.answered = len(rows)
    summary.seconds = time.perf_counter() - t0
    return summary


def predict_files(model: VLM3R, tokenizer: Any, root: DatasetRoot, question_files: Iterable[Path], out_dir: Path,
                  **kwargs: Any) -> list[Path]:
    """Predictions for each ``qa/<bench>/<split>.jsonl`` into ``out_dir/<bench>_<split>.jsonl``."""
    written = []
    for path in question_files:
        out = Path(out_dir) / f"{path.parent.name}_{path.stem}.jsonl"
        predict(model, tokenizer, root, read_questions(path), out, **kwargs)
        written.append(out)
    return written


# ---- a trained adapter -------------------------------------------------------------------------------------------

def adapter_checkpoint(folder: str | Path) -> Path:
    """The checkpoint folder of ``folder``: itself when it holds a checkpoint (``config.json`` and the trainables),
    else the newest complete checkpoint of a training run folder."""
    from workers.trainer.model import NON_LORA_WEIGHTS
    from workers.trainer.train import newest_checkpoint

    folder = Path(folder)
    if (folder / "config.json").is_file() and (folder / NON_LORA_WEIGHTS).is_file():
        return folder
    newest = newest_checkpoint(folder) if folder.is_dir() else None
    if newest is None:
        raise InputError(folder, "not a trained adapter: expected a checkpoint folder (config.json and "
                                 f"{NON_LORA_WEIGHTS}) or a training run folder with checkpoints/step_*")
    return newest


def load_adapter(folder: str | Path, device: torch.device | None = None) -> tuple[VLM3R, Any, dict[str, Any], Path]:
    """The model a checkpoint was trained with (its base built from its own config, the trained fusion block,
    projector and LoRA loaded strictly), its tokenizer, its training config and the checkpoint folder."""
    from workers.trainer.model import ModelConfig, build_model, load_trainables
    from workers.trainer.tokenizer import load_tokenizer

    checkpoint = adapter_checkpoint(folder)
    config = read_json(checkpoint / "config.json")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise InputError(checkpoint / "config.json", "checkpoint config has no model section")
    try:
        model_config = ModelConfig.from_dict(config["model"])
    except ValueError as exc:
        raise InputError(checkpoint / "config.json", str(exc)) from None
    model = build_model(model_config)
    load_trainables(model, checkpoint)
    return model.to(device or torch.device("cpu")), load_tokenizer(model_config.base), config, checkpoint
