"""pack: each scene's geometry tokens + frames + video timing + all its training QA -> training shards
(``ROOT/train_shards``; one sample per scene and frame list: storing tokens per question would duplicate ~36 MB per
question). The sample format is :mod:`pipeline.core.train_samples`'.

Units: the token samples of scenes that have training questions. Each reads its token sample and every QA file
(its records come from any bench; a file's records are renumbered whenever any scene of it changes). Scenes with QA
in a benchmark split (val, test) never enter; a scene in both is a split leak, refused. Frames: the token shard's
384x384 JPEGs, or when it has none the scene's manifest frames decoded from the raw source and squashed as SigLIP's
processor does; with a vision encoder, its features (``vision.npy``) replace the JPEGs.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from pipeline.core.atomic import sha256_file, write_json
from pipeline.core.errors import ErrorRow, InputError
from pipeline.core.images import FRAME_SIZE, JPEG_QUALITY, jpeg_frames
from pipeline.core.layout import BENCHMARK_SPLITS, QA_COUNTS, DatasetRoot, scene_key
from pipeline.core.markers import ref
from pipeline.core.qa_records import iter_records
from pipeline.core.train_samples import PackError, pack_members, scene_frames, shard_qa_counts
from pipeline.stages.contract import (Context, OpenShard, Outcome, ShardStage, StageRefused, Unit, Work,
                                      config_dict)

DEFAULT_MAX_SHARD_BYTES = 1 << 30

VisionEncoder = Callable[[list[np.ndarray]], np.ndarray]   # RGB uint8 frames -> [T, 729, d] float32


@dataclass(frozen=True)
class PackConfig:
    visual: str = "jpeg"                  # "jpeg", or "vision_features:<vision model fingerprint>"
    frame_size: int = FRAME_SIZE
    frame_resample: str = "pil_bicubic"
    jpeg_quality: int = JPEG_QUALITY


@dataclass
class QaSets:
    train: dict[str, list[dict[str, Any]]]    # scene key -> training records (every bench)
    benchmark_keys: set[str]                  # scene keys with benchmark-split QA
    files: dict[str, str]                     # qa unit ("bench/split") -> sha256 of its file


def load_qa(root: DatasetRoot, recorded: dict[str, str] | None = None) -> QaSets:
    """Every QA file: training records grouped by scene, and the benchmark scenes. ``recorded`` (qa unit -> output
    fingerprint of its marker) restricts to finished files and checks that none was modified since."""
    train: dict[str, list[dict[str, Any]]] = defaultdict(list)
    bench_keys: set[str] = set()
    files: dict[str, str] = {}
    for bench, split, path in root.qa_files():
        unit = f"{bench}/{split}"
        if recorded is not None and unit not in recorded:
            continue
        files[unit] = sha256_file(path)
        if recorded is not None and files[unit] != recorded[unit]:
            raise PackError(path, "modified since the qa stage wrote it; rebuild it (`vlm3r-data qa --rebuild`)")
        for record in iter_records(path):
            if split in BENCHMARK_SPLITS:
                bench_keys.add(record["scene_key"])
            else:
                train[record["scene_key"]].append({**record, "bench": record.get("bench", bench), "split": split})
    leaks = sorted(set(train) & bench_keys)
    if leaks:
        raise PackError(root.qa_dir, f"scenes with both training and benchmark QA (split leak): {leaks[:10]}")
    for records in train.values():
        records.sort(key=lambda r: (r["bench"], str(r.get("qa_key", "")), str(r.get("id", ""))))
    return QaSets(dict(train), bench_keys, files)


class PackStage(ShardStage):
    name = "pack"
    reads = ("extract", "qa")
    version = 1
    refuses_stale_inputs = True

    def shards_dir(self, root: DatasetRoot) -> Path:
        return root.train_shards_dir

    def order(self, work: Work) -> tuple[int, str]:
        """Token index order (the order samples are read in)."""
        return work.unit.job["position"], work.unit.id

    def outputs(self, root: DatasetRoot) -> str:
        return str(root.train_shards_dir)

    def units(self, ctx: Context) -> list[Unit]:
        from pipeline.core.shards import read_index

        tokens = ctx.ledgers.markers("extract")
        if not tokens or not (ctx.root.tokens_dir / "index.json").is_file():
            raise StageRefused(f"pack: {ctx.root.tokens_dir}: no token shards (run `vlm3r-data extract` first)")
        qa_markers = ctx.ledgers.markers("qa")
        if not qa_markers:
            raise StageRefused(f"pack: {ctx.root.qa_dir}: no QA files (run `vlm3r-data qa` first)")
        try:
            qa = load_qa(ctx.root, {u: m.output for u, m in qa_markers.items()})
        except InputError as exc:
            raise StageRefused(f"pack: {exc}") from None
        ctx.extra["qa"] = qa
        qa_upstream = {ref("qa", unit): qa_markers[unit].identity for unit in sorted(qa.files)}
        position = {key: i for i, key in enumerate(k for entry in read_index(ctx.root.tokens_dir)["shards"]
                                                   for k in entry["keys"])}
        units = []
        for unit, marker in sorted(tokens.items()):
            dataset, scene_id = unit.split("/", 1)
            key = scene_key(dataset, scene_id)
            if key in qa.benchmark_keys or not qa.train.get(key) or key not in position:
                continue
            units.append(Unit(unit, {ref("extract", unit): marker.identity, **qa_upstream},
                              {"key": key, "position": position[key]}, dataset=dataset, scene_id=scene_id))
        ctx.extra["counts"] = {
            "benchmark_scenes_left_out": len({k for k in qa.benchmark_keys if k in position}),
            "scenes_without_training_qa": sum(1 for k in position if k not in qa.benchmark_keys and not qa.train.get(k)),
            "qa_scenes_without_tokens": sum(1 for k in qa.train if k not in position)}
        return sorted(units, key=lambda u: u.job["position"])

    def execute(self, ctx: Context, work: list[Work]) -> Iterator[Outcome]:
        from tqdm import tqdm

        from pipeline.core.shards import ShardWriter, recover_shards, sample_digest
        from pipeline.core.tokens import iter_samples

        if not work:
            return
        qa: QaSets = ctx.extra["qa"]
        encoder: VisionEncoder | None = ctx.extra.get("vision_encoder")
        by_key = {w.unit.job["key"]: w for w in work}
        state = recover_shards(self.shards_dir(ctx.root))
        bar = tqdm(total=len(work), desc="pack", unit=" scenes", disable=not ctx.options.progress,
                   dynamic_ncols=True)
        try:
            with ShardWriter(self.shards_dir(ctx.root), max_shard_bytes=ctx.extra.get("max_shard_bytes",
                                                                                      DEFAULT_MAX_SHARD_BYTES),
                             first_index=state.next_index) as writer:
                open_shard = OpenShard(writer)
                for sample in iter_samples(ctx.root.tokens_dir, verify_sha256=ctx.extra.get("verify_sha256", True)):
                    item = by_key.get(sample.key)
                    if item is None:
                        continue
                    bar.update(1)
                    try:
                        members = self._members(ctx, sample, qa.train[sample.key], encoder)
                    except InputError as exc:
                        yield Outcome(item.unit, errors=[ErrorRow.from_exception(self.name, item.unit.dataset,
                                                                                 item.unit.scene_id, exc)])
                        continue
                    marker = item.marker(self, ctx, sample_digest(members), {"key": sample.key,
                                                                             "questions": len(qa.train[sample.key])})
                    yield from open_shard.write(sample.key, members, Outcome(item.unit, marker=marker))
            yield from open_shard.held()                          # the last shard was completed by close()
        finally:
            bar.close()

    def _members(self, ctx: Context, sample, records: list[dict[str, Any]], encoder: VisionEncoder | None):
        config: PackConfig = ctx.config
        timing, images = scene_frames(ctx.root, sample)
        where = str(ctx.root.scene_dir(sample.meta["dataset"], sample.meta["scene_id"]))
        jpegs = sample.jpegs if images is None else jpeg_frames(images, where)
        features = None
        if encoder is not None:
            from pipeline.core.frames import decode_image_bytes

            features = encoder([decode_image_bytes(d, sample.key) for d in jpegs])
            jpegs = None
        vision_model = config.visual.split(":", 1)[1] if config.visual.startswith("vision_features:") else ""
        return pack_members(sample, records, timing, jpegs=jpegs, vision_features=features, vision_model=vision_model)

    def finish(self, ctx: Context, outcomes: list[Outcome], done: list[Work]) -> dict[str, Any]:
        from pipeline.core.shards import complete_shards, write_index

        out_dir = self.shards_dir(ctx.root)
        records = complete_shards(out_dir)
        write_index(out_dir, records, config_dict(ctx.config))
        write_json(out_dir / QA_COUNTS, {r.file: shard_qa_counts(out_dir / r.file) for r in records})
        return {"shards": len(records), "scenes": sum(len(r.keys) for r in records), **ctx.extra.get("counts", {})}
