"""The training loop, in one file: setup, train, save.

Trains VLM-3R's fusion block, projector and LoRA from the packed training shards (``ROOT/train_shards``), single
process or one process per rank under Ray Train (DDP, or FSDP2 with ``parallel="fsdp"``). Recipe defaults are
upstream's: AdamW lr 2e-5, weight decay 0, cosine schedule with 3 % warmup, gradient clipping at 1.0, bf16 autocast
on GPU, gradient accumulation (no gradient sync on the micro-steps but the last), gradient checkpointing.

Checkpoints are complete and atomic: ``OUT/checkpoints/step_000500.tmp/`` is written in full (adapter and
fusion/projector weights via :func:`workers.trainer.model.save_trainables`, optimizer state, RNG states,
``progress.json`` with step / seed / data position / fingerprints, and the resolved ``config.json``) and only then
renamed to ``step_000500/``. A run resumes from the newest complete checkpoint (or Ray Train's, when Ray restarts
it) and refuses one made with another model, other data or another recipe, naming what changed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from pipeline.core.atomic import read_json, sha256_file, write_json
from pipeline.core.errors import InputError
from workers.trainer.data import list_train_shards, make_loader, steps_per_epoch
from workers.trainer.tokenizer import load_tokenizer
from workers.trainer.model import (TOKENS_PER_FRAME, ModelConfig, VLM3R, build_model, check_trainable, export_vlm3r,
                                   load_trainables, model_fingerprint, save_trainables, trainables_as_model_state)

CHECKPOINT_DIR = "checkpoints"
STEP_PREFIX = "step_"
PROGRESS = "progress.json"
# Settings that may change between a run and its resume (they do not change what is computed).
RESUMABLE_CHANGES = ("steps_this_run", "loader_workers", "log_every", "save_every", "keep_checkpoints", "out_dir",
                     "ray_storage")


@dataclass(frozen=True)
class TrainConfig:
    train_dir: str                      # ROOT/train_shards
    out_dir: str                        # checkpoints and logs
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig.tiny)
    steps: int = 0                      # optimizer steps in total; 0 = epochs x steps per epoch
    epochs: float = 1.0
    micro_batch: int = 1                # videos per rank per micro-step
    grad_accum: int = 16
    lr: float = 2e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    grad_clip: float = 1.0
    seed: int = 0
    shuffle_buffer: int = 256
    masking: str = "answer"             # "answer" (default) or "upstream"
    time_instruction: bool = False
    precision: str = "auto"             # auto = bf16 autocast on GPU, fp32 on CPU
    parallel: str = "ddp"               # ddp or fsdp (FSDP2; several ranks only)
    loader_workers: int = 0
    save_every: int = 500
    keep_checkpoints: int = 0           # 0 = keep all
    log_every: int = 1
    steps_this_run: int = 0             # stop after this step (0 = run to the end); a resume continues

    def __post_init__(self) -> None:
        if isinstance(self.model, Mapping):
            object.__setattr__(self, "model", ModelConfig.from_dict(self.model))
        for name in ("micro_batch", "grad_accum", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.masking not in ("answer", "upstream"):
            raise ValueError(f"masking must be 'answer' or 'upstream', got {self.masking!r}")
        if self.parallel not in ("ddp", "fsdp"):
            raise ValueError(f"parallel must be ddp or fsdp, got {self.parallel!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        if not 0 <= self.warmup_ratio < 1 or self.lr <= 0 or self.grad_clip <= 0:
            raise ValueError("need 0 <= warmup_ratio < 1, lr > 0 and grad_clip > 0")
        for name in ("steps", "steps_this_run"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = {'by --epochs' if name == 'steps' else 'to the end'}), "
                                 f"got {getattr(self, name)}")
        if not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["model"] = self.model.to_dict()
        return d


def lr_at(step: int, total_steps: int, peak_lr: float, warmup_ratio: float) -> float:
    """Linear warmup to ``peak_lr`` over ``ceil(warmup_ratio * total)`` steps, then cosine decay to 0."""
    warmup = math.ceil(warmup_ratio * total_steps)
    if step < warmup:
        return peak_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


# ---- checkpoints -------------------------------------------------------------------------------------------------

def step_dir(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR / f"{STEP_PREFIX}{step:06d}"


def newest_checkpoint(out_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step (``.tmp`` folders are incomplete and ignored)."""
    base = Path(out_dir) / CHECKPOINT_DIR
    done = [d for d in base.glob(f"{STEP_PREFIX}*") if d.is_dir() and not d.name.endswith(".tmp")
            and (d / PROGRESS).is_file()]
    return max(done, key=lambda d: int(d.name[len(STEP_PREFIX):]), default=None)


def _optimizer_tensors(state: Mapping[str, Any], names: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Adam state as named tensors (``<param>::exp_avg``) plus the JSON-able rest (hyper-parameters, with parameter
    names in place of indices). ``state`` is ``optimizer.state_dict()`` (keys are indices into ``names``) or FSDP's
    full optimizer state dict (keys are already the names)."""
    def name_of(key: Any) -> str:
        return names[key] if isinstance(key, int) else str(key)

    tensors = {f"{name_of(k)}::{field}": torch.as_tensor(value).detach().cpu().contiguous()
               for k, per_param in state["state"].items() for field, value in per_param.items()}
    groups = [{**g, "params": [name_of(k) for k in g["params"]]} for g in state["param_groups"]]
    return tensors, {"param_groups": groups}


def _rng_name(rank: int) -> str:
    return f"rng_rank_{rank:03d}.safetensors"


def save_checkpoint(model: VLM3R, optimizer: torch.optim.Optimizer, names: list[str], progress: dict[str, Any],
                    config: TrainConfig, *, rank: int = 0, world: int = 1, fsdp: bool = False) -> Path | None:
    """Write ``step_XXXXXX.tmp/`` completely, then rename it to ``step_XXXXXX/`` (progress.json is the last file).

    Called on every rank: each writes its own RNG state (dropout streams differ per rank), rank 0 the rest. The
    trainables and optimizer are replicated under DDP, so rank 0's copy is the state; under FSDP every rank takes
    part in gathering the full trainable and optimizer state first. Returns the folder on rank 0.
    """
    from safetensors.torch import save_file

    full_model = full_optim = None
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
        full_model = get_model_state_dict(model, options=options)
        full_optim = get_optimizer_state_dict(model, optimizer, options=options)

    final = step_dir(Path(config.out_dir), progress["step"])
    tmp = final.with_name(final.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    if world > 1:
        torch.distributed.barrier()
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["torch_cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(tmp / _rng_name(rank)))
    if world > 1:
        torch.distributed.barrier()
    if rank != 0:
        return None
    save_trainables(model, tmp, state=full_model)
    tensors, rest = _optimizer_tensors(full_optim if fsdp else optimizer.state_dict(), names)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    write_json(tmp / "optimizer.json", rest)
    write_json(tmp / "config.json", config.to_dict())
    write_json(tmp / PROGRESS, {**progress, "world": world})
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if config.keep_checkpoints > 0:
        base = final.parent
        old = sorted(d for d in base.glob(f"{STEP_PREFIX}*") if d.is_dir() and not d.name.endswith(".tmp"))
        for d in old[:-config.keep_checkpoints]:
            shutil.rmtree(d)
    return final


def load_checkpoint(folder: Path, model: VLM3R, optimizer: torch.optim.Optimizer, names: list[str],
                    config: TrainConfig, fingerprints: Mapping[str, str], rank: int = 0,
                    world: int = 1, fsdp: bool = False) -> dict[str, Any]:
    """Restore weights, optimizer and RNG from a checkpoint after checking it belongs to this run."""
    from safetensors.torch import load_file

    progress = read_json(folder / PROGRESS)
    for name in ("model_fingerprint", "data_fingerprint"):
        if progress.get(name) != fingerprints[name]:
            raise InputError(folder, f"checkpoint was made with another {name.split('_')[0]} ({name} "
                                     f"{str(progress.get(name))[:12]} != {fingerprints[name][:12]}); use a new --out")
    if int(progress.get("world", 1)) != world:
        # Each rank's data stream and position depend on the number of ranks: resuming with another would not
        # continue the same data order.
        raise InputError(folder, f"checkpoint was made with {progress.get('world', 1)} ranks, this run has {world}")
    saved = read_json(folder / "config.json")
    now = config.to_dict()
    changed = sorted(k for k in set(saved) | set(now) if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k))
    if changed:
        raise InputError(folder, f"checkpoint was made with other settings: {changed}; use a new --out")
    tensors = load_file(str(folder / "optimizer.safetensors"))
    groups = read_json(folder / "optimizer.json")["param_groups"]
    index = {n: i for i, n in enumerate(names)}
    by_name: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name, field = key.split("::")
        if name not in index:
            raise InputError(folder / "optimizer.safetensors", f"state for unknown parameter {name}")
        by_name.setdefault(name, {})[field] = value
    if fsdp:   # every rank reads the full state and keeps its shard
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        options = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(model, trainables_as_model_state(model, folder), options=options)
        set_optimizer_state_dict(model, optimizer, {"state": by_name, "param_groups": groups}, options=options)
    else:
        load_trainables(model, folder)
        optimizer.load_state_dict({"state": {index[n]: s for n, s in by_name.items()},
                                   "param_groups": [{**g, "params": [index[n] for n in g["params"]]}
                                                    for g in groups]})
    # A rank without its own state (the run had fewer ranks) continues from rank 0's, offset by its rank.
    own = folder / _rng_name(rank)
    rng = load_file(str(own if own.is_file() else folder / _rng_name(0)))
    if not own.is_file():
        torch.manual_seed(int(rng["torch_cpu"].sum()) + rank)
        rng = {"torch_cpu": torch.get_rng_state()}
    torch.set_rng_state(rng["torch_cpu"])
    if "torch_cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["torch_cuda"])
    return progress


# ---- setup -------------------------------------------------------------------------------------------------------

def _device(distributed: bool) -> torch.device:
    if distributed:
        import ray.train.torch

        return ray.train.torch.get_device()
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


# The batch's visual inputs, cast to the compute dtype; other tensors (the patch points: metres, where bf16 would
# round a 5 m coordinate to 3 cm) keep theirs.
COMPUTE_DTYPE_INPUTS = ("geometry_tokens", "pixel_values", "vision_features")


def _to_device(batch: Mapping[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
            out[k] = v.to(dtype) if k in COMPUTE_DTYPE_INPUTS and v.is_floating_point() else v
        else:
            out[k] = v
    return out


def _shard(model: VLM3R, bf16: bool) -> None:
    """FSDP2: shard each decoder layer (and tower layer) and the rest of the model across the ranks. Parameters keep
    one original dtype (fp32) as FSDP needs; with bf16 the layers compute in bf16 and reduce gradients in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
        else MixedPrecisionPolicy()
    layers = list(model.causal_lm.model.layers)
    if model.vision_tower is not None:
        layers += list(getattr(model.vision_tower, "vision_model", model.vision_tower).encoder.layers)
    for layer in layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)


def data_fingerprint(train_dir: str | Path) -> str:
    return sha256_file(Path(train_dir) / "index.json")


def _log(out_dir: Path, record: dict[str, Any]) -> None:
    line = json.dumps(record, sort_keys=True)
    print(line, file=sys.stderr, flush=True)
    with open(out_dir / "train_log.jsonl", "a", encoding="utf-8") as fh:
        fh.write(line + "\n")


# ---- train -------------------------------------------------------------------------------------------------------

def train(config: TrainConfig, *, rank: int = 0, world: int = 1, distributed: bool = False) -> dict[str, Any]:
    """Run (or resume) training; returns a summary (losses of the steps this call ran, final step, checkpoint)."""
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = _device(distributed)
    bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")

    fsdp = world > 1 and config.parallel == "fsdp"

    # -- setup: model, optimizer, data, resume point
    torch.manual_seed(config.seed)
    half_base = bf16 and not fsdp and config.model.base != "tiny"
    model = build_model(config.model, dtype=torch.bfloat16 if half_base else torch.float32)
    counts = check_trainable(model)
    if bf16 and not fsdp:  # frozen weights in bf16, trainables stay fp32 (autocast computes in bf16)
        for p in model.parameters():
            if not p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    model.to(device)
    if fsdp:
        _shard(model, bf16)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.999))
    tokenizer = load_tokenizer(config.model.base)
    shards, per_shard = list_train_shards(config.train_dir)
    per_step = config.micro_batch * config.grad_accum
    epoch_steps = steps_per_epoch(per_shard, shards, world, per_step)
    total = config.steps or max(1, int(config.epochs * epoch_steps))
    fingerprints = {"model_fingerprint": model_fingerprint(config.model),
                    "data_fingerprint": data_fingerprint(config.train_dir)}
    progress: dict[str, Any] = {"step": 0, "micro_batches": 0, "samples": 0, "seed": config.seed, **fingerprints}
    resume_from = newest_checkpoint(out_dir)
    if distributed:
        import ray.train

        ray_checkpoint = ray.train.get_checkpoint()  # set when Ray Train restarts the run after a failure
        if ray_checkpoint is not None:
            with ray_checkpoint.as_directory() as folder:
                ray_step = read_json(Path(folder) / PROGRESS)["step"]
                if resume_from is None or read_json(resume_from / PROGRESS)["step"] < ray_step:
                    progress = load_checkpoint(Path(folder), model, optimizer, names, config, fingerprints, rank, world,
                                               fsdp)
                    resume_from = None
    if resume_from is not None:
        progress = load_checkpoint(resume_from, model, optimizer, names, config, fingerprints, rank, world, fsdp)
    start = int(progress["step"])
    if world > 1 and start == 0:   # every rank its own (reproducible) dropout stream
        torch.manual_seed(config.seed * 1000 + rank)

    train_model: torch.nn.Module = model
    if world > 1 and not fsdp:
        # DDP: the trainables (~350M at 7B) are replicated and all-reduced; the frozen base is replicated too,
        # which fits 80 GB+ GPUs in bf16 (see trainer.md).
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    loader = make_loader(shards, num_workers=config.loader_workers, tokenizer=tokenizer, rank=rank, world=world,
                         micro_batch=config.micro_batch, seed=config.seed, shuffle_buffer=config.shuffle_buffer,
                         masking=config.masking, time_instruction=config.time_instruction,
                         skip_batches=int(progress["micro_batches"]))
    batches = iter(loader)
    if rank == 0:
        _log(out_dir, {"event": "setup", "rank_count": world, "device": str(device), "bf16": bf16,
                       "total_steps": total, "steps_per_epoch": epoch_steps, "start_step": start,
                       "resumed_from": str(resume_from) if resume_from else None, "parameters": counts})

    # -- train
    model.train()
    if model.vision_tower is not None:
        model.vision_tower.eval()
    losses: list[float] = []
    seen_ids: list[str] = []
    last_saved: Path | None = None
    stop = min(total, config.steps_this_run) if config.steps_this_run else total
    for step in range(start, stop):
        t0 = time.perf_counter()
        lr = lr_at(step, total, config.lr, config.warmup_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss = torch.zeros((), device=device)
        samples = tokens = 0
        for micro in range(config.grad_accum):
            batch = _to_device(next(batches), device, torch.bfloat16 if bf16 else torch.float32)
            seen_ids.extend(batch["ids"])
            sync = world == 1 or micro == config.grad_accum - 1
            if fsdp:
                model.set_requires_gradient_sync(sync)
            no_sync = contextlib.nullcontext() if sync or fsdp else train_model.no_sync()
            autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and device.type == "cuda" \
                else contextlib.nullcontext()
            with no_sync, autocast:
                loss, _ = train_model(batch)
                (loss / config.grad_accum).backward()
            step_loss += loss.detach() / config.grad_accum
            samples += len(batch["frames_per_sample"])
            # sequence tokens after splicing: each video's placeholder becomes frames x 210 tokens
            frames = batch["frames_per_sample"]
            tokens += int(batch["attention_mask"].sum()) + sum(frames) * TOKENS_PER_FRAME - len(frames)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        if hasattr(grad_norm, "full_tensor"):   # FSDP: a DTensor
            grad_norm = grad_norm.full_tensor()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if world > 1:
            torch.distributed.all_reduce(step_loss, op=torch.distributed.ReduceOp.AVG)
        loss_value = float(step_loss)
        losses.append(loss_value)
        progress = {**progress, "step": step + 1, "micro_batches": progress["micro_batches"] + config.grad_accum,
                    "samples": progress["samples"] + samples * world}
        elapsed = time.perf_counter() - t0
        if rank == 0 and ((step + 1) % config.log_every == 0 or step + 1 == stop):
            _log(out_dir, {"step": step + 1, "loss": round(loss_value, 6), "lr": lr, "grad_norm": float(grad_norm),
                           "samples_per_s": samples * world / elapsed, "tokens_per_s": tokens * world / elapsed})
        if (step + 1) % config.save_every == 0 or step + 1 == total or step + 1 == stop:
            saved = save_checkpoint(model, optimizer, names, progress, config, rank=rank, world=world, fsdp=fsdp)
            last_saved = saved or last_saved
            if distributed:
                import ray.train

                checkpoint = ray.train.Checkpoint.from_directory(str(saved)) if saved else None
                ray.train.report({"step": step + 1, "loss": loss_value}, checkpoint=checkpoint)
    trace = {"rank": rank, "world": world, "shards": loader.dataset.shards, "examples": seen_ids,
             "micro_batches": progress["micro_batches"]}
    (out_dir / "ranks").mkdir(exist_ok=True)
    write_json(out_dir / "ranks" / f"rank_{rank:03d}.json", trace)
    return {"losses": losses, "step": int(progress["step"]), "total_steps": total, "checkpoint": str(last_saved or ""),
            "rank": rank}


def export(config: TrainConfig, checkpoint: Path, folder: Path) -> list[Path]:
    """Write a checkpoint's weights in VLM-3R's release naming (adapter + non_lora_trainables.bin)."""
    model = build_model(config.model)
    load_trainables(model, checkpoint)
    return export_vlm3r(model, folder)


# ---- Ray Train ---------------------------------------------------------------------------------------------------

def _ray_worker(loop_config: dict[str, Any]) -> None:
    import ray.train

    torch.set_num_threads(int(loop_config.get("threads", 1)))
    context = ray.train.get_context()
    config = TrainConfig(**loop_config["config"])
    train(config, rank=context.get_world_rank(), world=context.get_world_size(), distributed=True)


def train_ray(config: TrainConfig, *, workers: int, use_gpu: bool = False, threads_per_worker: int = 1):
    """Run :func:`train` on ``workers`` Ray Train workers (``TorchTrainer``; gloo on CPU, NCCL on GPU)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={"config": config.to_dict(), "threads": threads_per_worker},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(storage_path=str(Path(config.out_dir).resolve() / "ray"), name="train"),
    )
    return trainer.fit()
