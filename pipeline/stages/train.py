"""train and predict: the fusion block, projector and LoRA tuned from the training shards (``ROOT/train/``), and
the trained model's answers to the benchmark questions (``ROOT/train/predictions/<bench>_<split>.jsonl``).

``train`` has one unit, the run (``fit``), reading every packed sample; the loop itself
(:mod:`workers.trainer.train`) resumes from its newest complete checkpoint, so a killed run continues where it
stopped. ``predict`` has one unit per benchmark question file; each reads the trained model, its questions and the
token samples of their scenes.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from pipeline.core.atomic import read_json, sha256_file
from pipeline.core.errors import ErrorRow, InputError
from pipeline.core.layout import BENCHMARK_SPLITS, CHECKPOINTS_DIR, MARKER_DIR, DatasetRoot, bench_file_name, scene_key
from pipeline.core.markers import digest, ref
from pipeline.stages.contract import Context, FileLedger, Outcome, Stage, StageRefused, Unit, Work, changed_fields

FIT = "fit"
# TrainConfig fields that change how a run goes, not what it computes (a resume may change them).
RUN_FIELDS = ("train_dir", "out_dir", "steps_this_run", "loader_workers", "log_every", "save_every",
              "keep_checkpoints")


@dataclass(frozen=True)
class TrainStageConfig:
    train: Any                            # workers.trainer.train.TrainConfig

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.train.to_dict().items() if k not in RUN_FIELDS}


def checkpoint_digest(folder: Path) -> str:
    """The output fingerprint of a checkpoint: the sha256 of its weights and progress (written once, at the end)."""
    return digest({p.name: sha256_file(p) for p in sorted(folder.iterdir())
                   if p.is_file() and (p.suffix == ".safetensors" or p.name == "progress.json")})


class TrainStage(Stage):
    name = "train"
    reads = ("pack",)
    version = 1
    noun = "runs"
    refuses_stale_inputs = True

    def ledger(self) -> FileLedger:
        return FileLedger(lambda root, unit: root.train_dir / MARKER_DIR / f"{unit}.json",
                          f"train/{MARKER_DIR}/*.json")

    def outputs(self, root: DatasetRoot) -> str:
        return str(root.train_dir)

    def units(self, ctx: Context) -> list[Unit]:
        packed = ctx.ledgers.markers("pack")
        if not packed:
            raise StageRefused(f"train: {ctx.root.train_shards_dir}: no training shards (run `vlm3r-data pack`)")
        return [Unit(FIT, {ref("pack", u): m.identity for u, m in sorted(packed.items())}, scene_id=FIT)]

    def prepare(self, ctx: Context, work: list[Work], done: list[Work], markers) -> tuple[list[Work], list[Work]]:
        """A rebuild starts from scratch; a resume (unfinished run, no marker) must have the same settings as the
        checkpoints it continues."""
        work, done = super().prepare(ctx, work, done, markers)
        if not work:
            return work, done
        out_dir = Path(ctx.config.train.out_dir)
        if ctx.options.rebuild:
            for name in (CHECKPOINTS_DIR, "ranks", "ray"):
                shutil.rmtree(out_dir / name, ignore_errors=True)
            (out_dir / "train_log.jsonl").unlink(missing_ok=True)
            return work, done
        from workers.trainer.train import newest_checkpoint

        checkpoint = newest_checkpoint(out_dir)
        if checkpoint is not None:
            saved = {k: v for k, v in read_json(checkpoint / "config.json").items() if k not in RUN_FIELDS}
            changed = changed_fields(saved, ctx.config.to_dict())
            if changed:
                raise StageRefused(f"train: {checkpoint} belongs to an unfinished run with other settings:\n" +
                                   "\n".join(f"  {c}" for c in changed) +
                                   "\nstart over with --rebuild, or train into another folder (--out)")
        return work, done

    def execute(self, ctx: Context, work: list[Work]) -> Iterator[Outcome]:
        from workers.trainer import train as loop

        for item in work:
            config = ctx.config.train
            try:
                if ctx.extra.get("ray_workers", 0) > 0:
                    from pipeline.core.parallel import init_ray

                    init_ray(ctx.extra["ray_workers"], ctx.options.ray_address)
                    result = loop.train_ray(config, workers=ctx.extra["ray_workers"],
                                            use_gpu=ctx.extra.get("use_gpu", False))
                    stats: dict[str, Any] = {"metrics": {k: v for k, v in (result.metrics or {}).items()
                                                         if isinstance(v, (int, float, str))}}
                else:
                    summary = loop.train(config)
                    stats = {"step": summary["step"], "total_steps": summary["total_steps"],
                             "last_loss": summary["losses"][-1] if summary["losses"] else None}
                checkpoint = loop.newest_checkpoint(config.out_dir)
                if checkpoint is None:
                    raise InputError(config.out_dir, "training ended without a complete checkpoint")
                progress = read_json(checkpoint / "progress.json")
                if config.steps_this_run and progress["step"] < stats.get("total_steps", progress["step"] + 1):
                    ctx.say(f"train: stopped at step {progress['step']} (--steps-this-run); rerun to continue")
                    continue
            except InputError as exc:
                yield Outcome(item.unit, errors=[ErrorRow.from_exception(self.name, "", FIT, exc)])
                continue
            stats.update(checkpoint=str(checkpoint), step=int(progress["step"]))
            marker = item.marker(self, ctx, checkpoint_digest(checkpoint), stats)
            ctx.ledgers.of(self.name).write(ctx.root, marker)
            print(f"train: step {stats['step']}, checkpoint {checkpoint}")
            yield Outcome(item.unit, marker=marker)


@dataclass(frozen=True)
class PredictConfig:
    max_new_tokens: int = 8
    time_instruction: bool = False        # as the model was trained (LLaVA-Video's time instruction)


class PredictStage(Stage):
    name = "predict"
    reads = ("train", "qa", "extract")
    version = 1
    noun = "question files"
    refuses_stale_inputs = True

    def ledger(self) -> FileLedger:
        return FileLedger(lambda root, unit: root.predictions_dir / MARKER_DIR /
                          f"{bench_file_name(*unit.split('/'))}.json", f"train/predictions/{MARKER_DIR}/*.json")

    def outputs(self, root: DatasetRoot) -> str:
        return str(root.predictions_dir)

    def units(self, ctx: Context) -> list[Unit]:
        from pipeline.core.qa_records import iter_records

        fit = ctx.ledgers.markers("train").get(FIT)
        if fit is None:
            raise StageRefused(f"predict: no finished training run in {ctx.root.train_dir} (run `vlm3r-data train`)")
        qa = ctx.ledgers.markers("qa")
        tokens = ctx.ledgers.markers("extract")
        units = []
        for unit, marker in sorted(qa.items()):
            bench, split = unit.split("/")
            if split not in BENCHMARK_SPLITS:
                continue
            path = ctx.root.qa_file(bench, split)
            keys = {r["scene_key"] for r in iter_records(path)}
            scenes = sorted(u for u in tokens if scene_key(*u.split("/", 1)) in keys)
            upstream = {ref("train", FIT): fit.identity, ref("qa", unit): marker.identity,
                        **{ref("extract", u): tokens[u].identity for u in scenes}}
            units.append(Unit(unit, upstream, {"questions": str(path), "bench": bench, "split": split},
                              scene_id=unit))
        if not units:
            raise StageRefused(f"predict: no benchmark questions under {ctx.root.qa_dir} (val/test splits)")
        return units

    def execute(self, ctx: Context, work: list[Work]) -> Iterator[Outcome]:
        if not work:
            return
        import torch

        from workers.trainer.model import build_model, load_trainables
        from workers.trainer.predict import predict, read_questions
        from workers.trainer.tokenizer import load_tokenizer

        train_config = ctx.extra["train_config"]
        config: PredictConfig = ctx.config
        checkpoint = Path(ctx.ledgers.markers("train")[FIT].stats["checkpoint"])
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        model = build_model(train_config.model)
        load_trainables(model, checkpoint)
        model.to(device)
        tokenizer = load_tokenizer(train_config.model.base)
        for item in work:
            job = item.unit.job
            out = ctx.root.predictions_dir / f"{bench_file_name(job['bench'], job['split'])}.jsonl"
            try:
                summary = predict(model, tokenizer, ctx.root, read_questions(Path(job["questions"])), out,
                                  max_new_tokens=config.max_new_tokens, time_instruction=config.time_instruction,
                                  device=device, progress=ctx.options.progress)
            except InputError as exc:
                yield Outcome(item.unit, errors=[ErrorRow.from_exception(self.name, "", item.unit.id, exc)])
                continue
            marker = item.marker(self, ctx, sha256_file(out), {**summary.to_json(), "checkpoint": str(checkpoint)})
            ctx.ledgers.of(self.name).write(ctx.root, marker)
            print(f"predictions: {out} ({summary.answered} of {summary.questions} questions)")
            yield Outcome(item.unit, marker=marker, errors=summary.error_rows(job["questions"]))


@dataclass(frozen=True)
class PredictFileConfig:
    """Answering a question file given on the command line (lmms-eval's layout) with a given adapter."""

    questions: str                        # the question file, absolute
    questions_sha256: str
    adapter: str                          # the checkpoint folder, absolute
    out: str                              # the predictions file, absolute
    max_new_tokens: int = 16              # lmms-eval's generation budget
    time_instruction: bool = False


class PredictFileStage(Stage):
    """``predict --questions FILE``: one unit, answered every time it is asked (a one-shot command with its own
    output file; nothing in the root reads that file, so no done-marker). Its inputs are the root's token samples of
    the questions' videos: stale ones are refused unless --allow-stale."""

    name = "predict"
    reads = ("extract",)
    version = 1
    noun = "question files"
    refuses_stale_inputs = True
    always_rebuild = True

    def ledger(self) -> FileLedger:
        return PredictStage().ledger()

    def scope(self, config: PredictFileConfig) -> str:
        return f"predict-file:{config.questions}"

    def outputs(self, root: DatasetRoot) -> str:
        return "the --out file"

    def units(self, ctx: Context) -> list[Unit]:
        from pipeline.core.qa_records import load_benchmark_questions
        from workers.trainer.predict import STAGE, question_key_resolver

        config: PredictFileConfig = ctx.config
        questions, problems = load_benchmark_questions(config.questions, STAGE)
        ctx.extra["questions"], ctx.extra["problems"] = questions, problems
        key_of = question_key_resolver(ctx.root)
        keys = {key_of(q) for q in questions}
        tokens = ctx.ledgers.markers("extract")
        upstream = {ref("extract", u): m.identity for u, m in sorted(tokens.items())
                    if scene_key(*u.split("/", 1)) in keys}
        videos = tuple(sorted({(str(q.get("dataset", "")), str(q.get("scene_name", ""))) for q in questions}))
        return [Unit(Path(config.questions).name, upstream, videos, scene_id=Path(config.questions).name)]

    def execute(self, ctx: Context, work: list[Work]) -> Iterator[Outcome]:
        import torch

        from workers.trainer.predict import load_adapter, predict

        config: PredictFileConfig = ctx.config
        problems = ctx.extra["problems"]
        for item in work:
            device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
            model, tokenizer, _, checkpoint = load_adapter(config.adapter, device)
            summary = predict(model, tokenizer, ctx.root, ctx.extra["questions"], Path(config.out),
                              max_new_tokens=config.max_new_tokens, time_instruction=config.time_instruction,
                              device=device, progress=ctx.options.progress)
            rows = problems + summary.error_rows(config.questions)
            for q in summary.missing[:20]:
                ctx.say(f"  no video: question {q['id']}: {q['video']}")
            if len(summary.missing) > 20:
                ctx.say(f"  ... and {len(summary.missing) - 20} more questions without a video")
            total = summary.questions + sum(1 for r in problems if r.error_type != "UnknownColumns")
            print(f"predict: {summary.answered} of {total} questions answered from {summary.videos} videos "
                  f"({summary.questions_per_s:.2f} questions/s, checkpoint {checkpoint}); {len(summary.missing)} "
                  f"without a video in the root, {len(problems)} problems in the question file -> {config.out}")
            print(f"score: vlm3r-data eval --questions {config.questions} --predictions {config.out}")
            marker = item.marker(self, ctx, sha256_file(config.out), summary.to_json())
            yield Outcome(item.unit, marker=marker, errors=rows)

    def error_keys(self, unit: Unit) -> list[tuple[str, str]]:
        """The rows a rerun replaces: the question file's own, and those of its questions' videos."""
        return [("", unit.id), *unit.job]
