"""Training data: the qwen_1_5 prompt and its labels, and a streaming loader over the packed training shards.

A training-shard sample is one scene (see :mod:`pipeline.core.train_samples`): geometry tokens, frames (JPEG) or pre-computed
vision features, video timing, and all the scene's QA. The loader gives each rank and each loader worker its own
shards (``shards[rank::world][worker::workers]``, what webdataset's ``split_by_node`` and ``split_by_worker`` do,
with the rank passed explicitly so it also holds inside loader worker processes), expands every scene into its
questions, shuffles them through a seeded buffer and yields padded micro-batches of several videos. The stream
never ends (a worker's shards are re-read in a new seeded order each pass), so every rank can take exactly the
same number of steps; its position is the number of micro-batches consumed, from which a resume skips ahead
without decoding tensors.

Region questions (regionbench) come with their region prompts: each batch carries, per example, every region's mask
resized to the 27 x 27 patch grid (the fraction of each patch cell the mask covers, :func:`region_patch_masks`) and
the rank of the frame it is drawn on, so a region extractor can pool that frame's patch features under it.
"""
from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from pipeline.core.errors import InputError
from pipeline.core.masks import decode_rle, mask_patch_coverage
from pipeline.core.patch_points import PATCH_GRID
from pipeline.core.qa_records import answer_for_training, build_prompt
from pipeline.core.train_samples import SceneSample, iter_scene_samples
from workers.trainer.model import IGNORE_INDEX, IMAGE_SIZE, IMAGE_TOKEN_INDEX
from workers.trainer.tokenizer import IM_END, IM_START

SYSTEM_PROMPT = "You are a helpful assistant."
IMAGE_TAG = "<image>"
MASKING = ("answer", "upstream")


# ---- prompt and labels -------------------------------------------------------------------------------------------

def time_instruction(duration_s: float, frame_times_s: Sequence[float]) -> str:
    """LLaVA-Video's time instruction, verbatim (including the missing space before "Please")."""
    times = ",".join(f"{t:.2f}s" for t in frame_times_s)
    return (f"The video lasts for {duration_s:.2f} seconds, and {len(frame_times_s)} frames are uniformly sampled "
            f"from it. These frames are located at {times}.Please answer the following questions related to this "
            "video.")


def user_text(record: Mapping[str, Any], video: Mapping[str, Any] | None = None) -> str:
    """The user turn: ``<image>\\n`` + the evaluation prompt, with the time instruction when ``video`` is given
    (LLaVA-Video puts it as ``<image>\\n{instruction}\\n`` before the question with its ``<image>`` removed)."""
    question = IMAGE_TAG + "\n" + build_prompt(record)
    if video is None:
        return question
    return f"{IMAGE_TAG}\n{time_instruction(video['duration_s'], video['frame_times_s'])}\n" + \
        question.replace(IMAGE_TAG, "")


def _encode_with_image(tok: Any, text: str) -> list[int]:
    parts = text.split(IMAGE_TAG)
    ids: list[int] = []
    for i, part in enumerate(parts):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        if part:
            ids.extend(tok.encode(part))
    return ids


def encode_conversation(tok: Any, user: str, answer: str | None, masking: str = "answer"
                        ) -> tuple[list[int], list[int]]:
    """qwen_1_5 template → (input_ids with one IMAGE_TOKEN_INDEX, labels).

    ``answer=None`` ends with the assistant header (the generation prompt). Labels: ``answer`` learns the
    assistant's answer and its ``<|im_end|>``; ``upstream`` learns the whole assistant turn and additionally
    un-masks every ``\\n``, ``<|im_start|>`` and ``<|im_end|>`` token everywhere, as LLaVA-NeXT's preprocess_qwen.
    """
    if masking not in MASKING:
        raise ValueError(f"masking must be one of {MASKING}, got {masking!r}")
    nl = tok.encode("\n")
    prefix = (tok.encode(f"{IM_START}system\n{SYSTEM_PROMPT}{IM_END}\n")
              + tok.encode(f"{IM_START}user\n") + _encode_with_image(tok, user) + tok.encode(f"{IM_END}\n"))
    head = tok.encode(f"{IM_START}assistant\n")
    ids = prefix + head
    labels = [IGNORE_INDEX] * len(ids)
    if answer is None:
        return ids, labels
    body = tok.encode(answer) + [tok.im_end_id]
    ids += body + nl
    labels += body + ([IGNORE_INDEX] * len(nl) if masking == "answer" else nl)
    if masking == "upstream":
        unmask = {tok.im_start_id, tok.im_end_id, *(nl if len(nl) == 1 else [])}
        labels[len(prefix):len(prefix) + len(head)] = head
        labels = [i if i in unmask else lab for i, lab in zip(ids, labels)]
    return ids, labels


# ---- scene samples from training shards --------------------------------------------------------------------------

def decode_scene(sample: SceneSample) -> dict[str, torch.Tensor]:
    """Geometry tokens [T, 1 + N, C] float32 (camera token first) and pixel values [T, 3, 384, 384] (SigLIP's
    normalisation, mean 0.5 std 0.5) or vision features [T, 729, d] float32."""
    from pipeline.core.shards import load_npy
    from pipeline.core.tokens import decode_tokens

    def load(name: str) -> np.ndarray | None:
        data = sample.members.get(name)
        return None if data is None else load_npy(data, f"{sample.where}:{sample.key}.{name}")

    dtype = sample.meta["dtype"]
    try:  # the scaled codecs (float8_e4m3, int8) carry per-channel scales beside the codes
        camera = decode_tokens(load("camera.npy"), dtype, load("camera_scale.npy"))
        patch = decode_tokens(load("patch.npy"), dtype, load("patch_scale.npy"))
    except ValueError as exc:
        raise InputError(f"{sample.where}:{sample.key}", str(exc)) from None
    if camera.shape[0] != patch.shape[0]:
        raise InputError(f"{sample.where}:{sample.key}", f"camera tokens for {camera.shape[0]} frames, "
                                                         f"patch tokens for {patch.shape[0]}")
    out = {"geometry_tokens": torch.from_numpy(np.concatenate([camera, patch], axis=1))}
    if "points.npy" in sample.members:   # per-patch 3D points (meta points_frame: world, or camera 0) and validity
        out["patch_points"] = torch.from_numpy(load("points.npy"))
        out["patch_points_valid"] = torch.from_numpy(load("points_valid.npy"))
    if "vision.npy" in sample.members:
        stored = load("vision.npy")
        out["vision_features"] = torch.from_numpy(decode_tokens(stored, sample.meta.get("vision_dtype", "bfloat16")))
    else:
        names = sorted(n for n in sample.members if n.startswith("frame_") and n.endswith(".jpg"))
        out["pixel_values"] = torch.from_numpy(pixels_from_jpegs([sample.members[n] for n in names],
                                                                 f"{sample.where}:{sample.key}"))
    frames = out["geometry_tokens"].shape[0]
    visual = out.get("pixel_values", out.get("vision_features"))
    if visual.shape[0] != frames:
        raise InputError(f"{sample.where}:{sample.key}", f"{visual.shape[0]} frames for the vision tower, "
                                                         f"{frames} frames of geometry tokens")
    return out


def pixels_from_jpegs(jpegs: Sequence[bytes], where: str) -> np.ndarray:
    """JPEG frames → [T, 3, 384, 384] float32 in [-1, 1] (squashed to 384x384 with PIL bicubic, as SigLIP's
    processor, when another size)."""
    from pipeline.core.frames import decode_image_bytes
    from pipeline.core.images import squash_rgb

    out = np.empty((len(jpegs), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for i, data in enumerate(jpegs):
        rgb = squash_rgb(decode_image_bytes(data, where, what=f"frame {i}"), IMAGE_SIZE)
        out[i] = (rgb.transpose(2, 0, 1).astype(np.float32) / 255.0 - 0.5) / 0.5
    return out


def region_patch_masks(record: Mapping[str, Any], grid: int = PATCH_GRID) -> tuple[torch.Tensor, torch.Tensor]:
    """A record's region prompts on the patch grid: masks [R, grid, grid] float32 (per cell, the fraction of its
    pixels inside the region's mask) and frame ranks [R] int64, in mention order (the n-th ``<mask>`` of the prompt is
    the n-th region); [0, grid, grid] and [0] for a record without regions."""
    regions = record.get("regions") or []
    masks = np.zeros((len(regions), grid, grid), np.float32)
    for i, region in enumerate(regions):
        masks[i] = mask_patch_coverage(decode_rle(region["rle"]), grid)
    frames = np.asarray([int(region["frame_rank"]) for region in regions], np.int64)
    return torch.from_numpy(masks), torch.from_numpy(frames)


@dataclass(frozen=True)
class Example:
    """One question of one scene, before tensor decoding."""

    scene: SceneSample
    record: dict[str, Any]


def encode_example(example: Example, tok: Any, *, masking: str, with_time: bool) -> tuple[list[int], list[int]]:
    video = example.scene.video if with_time and example.scene.video.get("duration_s") is not None else None
    return encode_conversation(tok, user_text(example.record, video), answer_for_training(example.record), masking)


def collate(items: Sequence[tuple[list[int], list[int], Mapping[str, torch.Tensor]]], pad_id: int,
            ids: Sequence[Any] = (), regions: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None
            ) -> dict[str, Any]:
    """Right-pad token rows; concatenate the videos' frames along the frame axis (each video keeps its count).
    ``regions`` (per item, from :func:`region_patch_masks`) become ``region_masks`` and ``region_frames``: lists
    with one [R_i, 27, 27] / [R_i] tensor per item (frame ranks index the item's own frames)."""
    length = max(len(i) for i, _, _ in items)
    input_ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), length), dtype=torch.long)
    for row, (tokens, labs, _) in enumerate(items):
        input_ids[row, :len(tokens)] = torch.tensor(tokens)
        labels[row, :len(labs)] = torch.tensor(labs)
        mask[row, :len(tokens)] = 1
    batch: dict[str, Any] = {"input_ids": input_ids, "labels": labels, "attention_mask": mask,
                             "frames_per_sample": [int(t["geometry_tokens"].shape[0]) for _, _, t in items],
                             "ids": list(ids)}
    if regions is not None:
        if len(regions) != len(items):
            raise ValueError(f"{len(regions)} region sets for {len(items)} items")
        batch["region_masks"] = [masks for masks, _ in regions]
        batch["region_frames"] = [frames for _, frames in regions]
    for name in ("geometry_tokens", "pixel_values", "vision_features", "patch_points", "patch_points_valid"):
        present = [t[name] for _, _, t in items if name in t]
        if present:
            if len(present) != len(items):
                raise ValueError(f"batch mixes samples with and without {name}")
            batch[name] = torch.cat(present)
    return batch


# ---- the stream --------------------------------------------------------------------------------------------------

def rank_shards(shards: Sequence[str], rank: int, world: int) -> list[str]:
    """A rank's shards (webdataset split_by_node: every world-th shard starting at the rank)."""
    return list(shards[rank::world])


class ShardStream(torch.utils.data.IterableDataset):
    """Endless micro-batches for one rank (see the module docstring). ``skip_batches`` is the number of micro-batches
    this rank already consumed (the resume position); with ``W`` loader workers, batch ``i`` comes from worker
    stream ``i % W`` (the DataLoader's in-order round robin), so each stream skips its share."""

    def __init__(self, shards: Sequence[str], *, tokenizer: Any, rank: int = 0, world: int = 1, micro_batch: int = 1,
                 seed: int = 0, shuffle_buffer: int = 256, masking: str = "answer", time_instruction: bool = False,
                 skip_batches: int = 0, scene_cache: int = 4):
        super().__init__()
        self.shards = rank_shards(list(shards), rank, world)
        if not self.shards:
            raise InputError(str(Path(shards[0]).parent) if shards else "train_shards",
                             f"rank {rank} of {world} gets no shard ({len(shards)} shards); pack smaller shards")
        if masking not in MASKING:
            raise ValueError(f"masking must be one of {MASKING}, got {masking!r}")
        self.tok, self.rank, self.world = tokenizer, rank, world
        self.micro_batch, self.seed, self.buffer = micro_batch, seed, max(1, shuffle_buffer)
        self.masking, self.with_time, self.skip_batches = masking, time_instruction, skip_batches
        self.scene_cache = scene_cache

    def _worker(self) -> tuple[int, int]:
        info = torch.utils.data.get_worker_info()
        return (0, 1) if info is None else (info.id, info.num_workers)

    def examples(self, worker: int, workers: int) -> Iterator[Example]:
        """This worker's questions in buffer-shuffled order, pass after pass over its shards."""
        mine = self.shards[worker::workers]
        if not mine:
            raise InputError(self.shards[0], f"loader worker {worker} of {workers} on rank {self.rank} gets no "
                                             f"shard ({len(self.shards)} on this rank); use fewer loader workers")
        rng = np.random.default_rng([self.seed, self.rank, worker])
        buffer: list[Example] = []
        for epoch_pass in itertools.count():
            order = np.random.default_rng([self.seed, self.rank, worker, epoch_pass]).permutation(len(mine))
            produced = 0
            for shard_index in order:
                for scene in iter_scene_samples(mine[shard_index]):
                    for record in scene.qa:
                        produced += 1
                        example = Example(scene, record)
                        if len(buffer) < self.buffer:
                            buffer.append(example)
                            continue
                        j = int(rng.integers(len(buffer)))
                        buffer[j], example = example, buffer[j]
                        yield example
            if produced == 0:
                raise InputError(mine[0], "these training shards hold no question")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        physical, workers = self._worker()
        # The DataLoader takes batch i from worker i % W and always starts at worker 0; after a resume at batch s
        # loader worker j therefore plays the stream of worker (j + s) % W, skipping what that stream produced.
        worker = (physical + self.skip_batches) % workers
        skip = max(0, math.ceil((self.skip_batches - worker) / workers))
        cache: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        pending: list[Example] = []
        produced = 0
        for example in self.examples(worker, workers):
            pending.append(example)
            if len(pending) < self.micro_batch:
                continue
            group, pending = pending, []
            produced += 1
            if produced <= skip:
                continue  # resume: skipped without decoding any tensor
            items, regions = [], []
            for ex in group:
                if ex.scene.key not in cache:
                    cache[ex.scene.key] = decode_scene(ex.scene)
                    if len(cache) > self.scene_cache:
                        cache.popitem(last=False)
                ids, labels = encode_example(ex, self.tok, masking=self.masking, with_time=self.with_time)
                items.append((ids, labels, cache[ex.scene.key]))
                regions.append(region_patch_masks(ex.record))
            yield collate(items, self.tok.pad_id, [f"{ex.scene.key}/{ex.record.get('id')}" for ex in group], regions)


def make_loader(shards: Sequence[str], *, num_workers: int = 0, **kwargs: Any) -> torch.utils.data.DataLoader:
    """A DataLoader over :class:`ShardStream` (batches are built in the workers: ``batch_size=None``)."""
    stream = ShardStream(shards, **kwargs)
    # Its own generator: creating the iterator draws a seed, which must not shift the global (dropout) RNG stream.
    generator = torch.Generator().manual_seed(int(kwargs.get("seed", 0)))
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers, generator=generator,
                                       persistent_workers=False, in_order=True)


def geometry_token_width(train_dir: str | Path) -> int:
    """Width of the geometry tokens in the training shards (768 for CUT3R's 512 DPT model; the demo's tiny CUT3R
    is narrower), read from the first sample's ``patch.npy`` header without loading the array."""
    import tarfile

    paths, _ = list_train_shards(train_dir)
    for path in paths:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if member.name.endswith(".patch.npy"):
                    fh = tar.extractfile(member)
                    assert fh is not None
                    major, _ = np.lib.format.read_magic(fh)
                    read_header = (np.lib.format.read_array_header_1_0 if major == 1
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, _ = read_header(fh)
                    return int(shape[-1])
    raise InputError(Path(train_dir), "no training sample with geometry tokens (run `vlm3r-data pack`)")


def list_train_shards(train_dir: str | Path) -> tuple[list[str], dict[str, int]]:
    """The training shards listed by the index (paths) and the number of questions in each (``qa_counts.json``)."""
    from pipeline.core.shards import read_index
    from pipeline.core.train_samples import read_qa_counts

    train_dir = Path(train_dir)
    index = read_index(train_dir)
    counts = read_qa_counts(train_dir)
    paths, per_shard = [], {}
    for entry in index["shards"]:
        path = str(train_dir / entry["file"])
        paths.append(path)
        per_shard[path] = int(sum(counts.get(entry["file"], {}).values()))
    return paths, per_shard


def steps_per_epoch(per_shard_questions: Mapping[str, int], shards: Sequence[str], world: int,
                    samples_per_step: int) -> int:
    """Optimizer steps per epoch such that no rank runs past its own questions: the smallest rank's questions
    divided by the samples one rank consumes per step (micro-batch x accumulation)."""
    per_rank = [sum(per_shard_questions[s] for s in rank_shards(list(shards), r, world)) for r in range(world)]
    steps = min(per_rank) // samples_per_step
    if steps < 1:
        raise InputError(str(Path(shards[0]).parent), f"ranks hold {per_rank} questions, fewer than the "
                                                      f"{samples_per_step} samples of one step")
    return steps
