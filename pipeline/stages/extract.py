"""extract: CUT3R geometry tokens of every ingested scene's frame manifest -> WebDataset shards
(``ROOT/tokens/shard-%06d.tar``, ``index.json``).

Units: the ingested scenes; each reads only the frames part of its scene (frame table and manifest). The
configuration is the run identity (model id, checkpoint sha256, architecture, input size, preprocessing, stored
dtype, optional members): every sample of a tokens folder shares it. :mod:`workers.extract` runs the data path (CPU
decode tasks feeding the model actors through a bounded queue); this driver writes the samples in scene order, each
with its unit's marker inside the shard's marker, and rebuilds the index from the complete shards at the end. A
killed run followed by a rerun gives every scene exactly once. Samples cannot be replaced inside a complete shard:
redoing a unit removes its whole shard and redoes the shard's other units too.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from pipeline.core.layout import DATASETS, DatasetRoot, scene_key
from pipeline.stages.contract import Context, OpenShard, Outcome, ShardStage, StageRefused, Unit, Work
from pipeline.stages.ingest import iter_scene_units

DEFAULT_SHARD_BYTES = 1_000_000_000


@dataclass(frozen=True)
class ExtractConfig:
    """The run identity (:func:`workers.extract.run_identity`): what every sample of the tokens folder shares."""

    identity: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.identity)


@dataclass(frozen=True)
class ExtractRun:
    """How to run (not what to make): the model to load, the preprocessing options, scheduling and shard size."""

    model: Any                            # workers.extract.ModelSpec
    options: Any                          # workers.extract.ExtractOptions
    scheduling: Any                       # workers.extract.Scheduling
    shard_bytes: int = DEFAULT_SHARD_BYTES
    encoder_factory: Any = None           # builds the encoder inside the actor (default: the model's)


def sample_marker_stats(sample) -> dict[str, Any]:
    return {"key": sample.key, "frames": sample.num_frames}


class ExtractStage(ShardStage):
    name = "extract"
    reads = ("ingest",)
    version = 1

    def shards_dir(self, root: DatasetRoot) -> Path:
        return root.tokens_dir

    def order(self, work: Work) -> tuple[int, str]:
        """The root's scene order (dataset order, then scene id)."""
        return DATASETS.index(work.unit.dataset), work.unit.scene_id

    def outputs(self, root: DatasetRoot) -> str:
        return str(root.tokens_dir)

    def units(self, ctx: Context) -> list[Unit]:
        from workers.extract import SceneJob

        units, owner = [], {}
        ingested = ctx.ledgers.markers("ingest")
        for dataset, scene_id, unit, upstream in iter_scene_units(ctx, part="frames"):
            key = scene_key(dataset, scene_id)
            if key in owner:
                raise StageRefused(f"extract: scenes {owner[key]} and {unit} share the shard key {key!r}")
            owner[key] = unit
            # The sample's meta names what it was made from: the manifest's sha256, as ingest recorded it.
            manifest_sha = ingested[unit].stats["sha256"]["manifest.parquet"]
            units.append(Unit(unit, upstream, SceneJob(dataset, scene_id, key, str(ctx.root.scene_dir(dataset, scene_id)),
                                                       manifest_sha), dataset=dataset, scene_id=scene_id))
        return units

    def prepare(self, ctx: Context, work: list[Work], done: list[Work], markers) -> tuple[list[Work], list[Work]]:
        """Check the cluster first: a run that cannot start must not remove anything."""
        from workers.extract import ClusterTooSmall, check_cluster

        if work:
            try:
                check_cluster(ctx.extra["run"].scheduling)
            except ClusterTooSmall as exc:
                raise StageRefused(f"extract: {exc}") from None
        return super().prepare(ctx, work, done, markers)

    def execute(self, ctx: Context, work: list[Work]) -> Iterator[Outcome]:
        from tqdm import tqdm

        from pipeline.core.errors import ErrorRow
        from pipeline.core.shards import ShardWriter, recover_shards, sample_digest
        from pipeline.core.tokens import sample_members
        from workers.extract import ExtractionAborted, iter_extracted

        run: ExtractRun = ctx.extra["run"]
        identity = ctx.config.to_dict()
        work = sorted(work, key=self.order)
        by_key = {w.unit.job.key: w for w in work}
        state = recover_shards(ctx.root.tokens_dir)
        writer = ShardWriter(ctx.root.tokens_dir, max_shard_bytes=run.shard_bytes, first_index=state.next_index,
                             identity=identity)
        ctx.extra["writer"] = writer
        frames, t0 = 0, time.perf_counter()
        bar = tqdm(total=len(work), desc="extract", unit=" scenes", disable=not ctx.options.progress or not work,
                   dynamic_ncols=True)
        open_shard = OpenShard(writer)
        try:
            with writer:
                for job, sample, error in iter_extracted([w.unit.job for w in work],
                                                         run.encoder_factory or run.model.build_encoder,
                                                         run.options, identity, run.scheduling):
                    item = by_key[job.key]
                    bar.update(1)
                    if error is not None:
                        yield Outcome(item.unit, errors=[ErrorRow(self.name, job.dataset, job.scene_id,
                                                                  error.error_type, error.message, error.path)])
                        continue
                    members = sample_members(sample)
                    marker = item.marker(self, ctx, sample_digest(members), sample_marker_stats(sample))
                    frames += sample.num_frames
                    bar.set_postfix_str(f"{frames / max(time.perf_counter() - t0, 1e-9):.1f} frames/s")
                    yield from open_shard.write(sample.key, members, Outcome(item.unit, marker=marker))
            yield from open_shard.held()                          # the last shard was completed by close()
        except ExtractionAborted as exc:
            ctx.extra["aborted"] = str(exc)          # said once, in the summary (stages.run.extract)
            for o in open_shard.held():    # the open shard was dropped: these units are not done
                yield Outcome(o.unit, errors=[ErrorRow(self.name, o.unit.dataset, o.unit.scene_id,
                                                       "ExtractionAborted", str(exc), "")])
        finally:
            bar.close()
            ctx.extra["frames"] = frames
            ctx.extra["seconds"] = time.perf_counter() - t0

    def finish(self, ctx: Context, outcomes: list[Outcome], done: list[Work]) -> dict[str, Any]:
        """The index lists every complete shard: those of earlier runs and those this run finished."""
        from pipeline.core.shards import complete_shards, write_index

        index = write_index(ctx.root.tokens_dir, complete_shards(ctx.root.tokens_dir), ctx.config.to_dict())
        seconds = ctx.extra.get("seconds", 0.0)
        frames = ctx.extra.get("frames", 0)
        return {"extracted": sum(1 for o in outcomes if o.marker is not None), "frames": frames,
                "frames_per_s": round(frames / seconds, 2) if seconds else 0.0,
                "shards": index["num_shards"], "samples": index["num_samples"]}


def save_token_samples(root: DatasetRoot, samples, identity: Mapping[str, Any], *,
                       max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> None:
    """Write token samples made elsewhere (tests, other front ends) exactly as the extract stage does: shards in
    order, each sample with its unit's marker (reading its ingested scene's frames), then the index."""
    from pipeline.core.markers import Marker, ref
    from pipeline.core.shards import ShardWriter, complete_shards, sample_digest, write_index
    from pipeline.core.tokens import sample_members
    from pipeline.stages.ingest import IngestStage

    stage = ExtractStage()
    ingested = IngestStage().ledger().read(root)
    config = dict(identity)
    with ShardWriter(root.tokens_dir, max_shard_bytes=max_shard_bytes, identity=config) as writer:
        for sample in samples:
            unit = f"{sample.meta['dataset']}/{sample.meta['scene_id']}"
            upstream = {ref("ingest", unit, "frames"): ingested[unit].identity_of("frames")} if unit in ingested else {}
            members = sample_members(sample)
            marker = Marker.made(stage.name, stage.scope(config), unit, stage.version, config, upstream,
                                 sample_digest(members), stats=sample_marker_stats(sample))
            writer.write_members(sample.key, members, marker.to_json())
    write_index(root.tokens_dir, complete_shards(root.tokens_dir), config)
