"""``vlm3r-data train``: tune the fusion block, projector and LoRA from the training shards; predict benchmark QA."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands.options import add_allow_stale, add_rebuild, config_errors, run_options
from pipeline.core.layout import DatasetRoot

HELP = "train fusion + projector + LoRA from the training shards (single process or Ray Train), then predict val QA"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, type=Path, help="dataset root (reads ROOT/train_shards)")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default ROOT/train)")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--tiny", action="store_true", help="a tiny random model built in code (CPU demo, tests)")
    model.add_argument("--base", default="", help="local LLaVA-Video-Qwen2 / LLaVA-OneVision / Qwen2 folder")
    parser.add_argument("--vision-tower", default="", help="local SigLIP folder (overrides the base's tower)")
    parser.add_argument("--steps", type=int, default=0, help="optimizer steps (0 = --epochs over the shards)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--micro-batch", type=int, default=1, help="videos per rank per micro-step")
    parser.add_argument("--grad-accum", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--warmup-ratio", type=float, default=0.03)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lora-r", type=int, default=None, help="LoRA rank (default 128; tiny: 8)")
    parser.add_argument("--lora-alpha", type=int, default=None, help="LoRA alpha (default 256; tiny: 16)")
    parser.add_argument("--masking", choices=("answer", "upstream"), default="answer")
    parser.add_argument("--time-instruction", action="store_true", help="add LLaVA-Video's time instruction")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--save-every", type=int, default=500)
    parser.add_argument("--keep-checkpoints", type=int, default=0)
    parser.add_argument("--loader-workers", type=int, default=0)
    parser.add_argument("--shuffle-buffer", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0, help="Ray Train workers (0 = a single process)")
    parser.add_argument("--gpus", action="store_true", help="one GPU per Ray Train worker")
    parser.add_argument("--fsdp", action="store_true", help="shard the model across workers (FSDP2) instead of DDP")
    parser.add_argument("--ray-address", default=None, help="join an existing Ray cluster")
    parser.add_argument("--export", type=Path, default=None, help="also write VLM-3R's release naming here")
    parser.add_argument("--predict", action="store_true",
                        help="after training, predict the benchmark-split QA (ROOT/qa/<bench>/{val,test}.jsonl)")
    parser.add_argument("--predict-only", action="store_true", help="skip training; predict with the newest checkpoint")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    add_rebuild(parser, what="run (start over: the checkpoints are removed)")
    add_allow_stale(parser)


def _config(args: argparse.Namespace):
    from workers.trainer.model import ModelConfig
    from workers.trainer.train import TrainConfig

    lora = {k: v for k, v in (("lora_r", args.lora_r), ("lora_alpha", args.lora_alpha)) if v is not None}
    common = dict(vision_tower=args.vision_tower, gradient_checkpointing=args.gradient_checkpointing, **lora)
    from workers.trainer.data import geometry_token_width

    # The tiny model adopts the shards' geometry-token width; a real base's fusion block must match it.
    root = DatasetRoot(args.root)
    width = geometry_token_width(root.train_shards_dir)
    model = ModelConfig.tiny(d_spatial=width, **common) if args.tiny else ModelConfig(base=args.base, **common)
    if model.d_spatial != width:
        raise ValueError(f"{root.train_shards_dir}: geometry tokens are {width} wide but the model's fusion block "
                         f"expects {model.d_spatial} (extract with the CUT3R checkpoint the model was trained with)")
    out = args.out or root.train_dir
    return TrainConfig(train_dir=str(root.train_shards_dir), out_dir=str(out), model=model, steps=args.steps,
                       epochs=args.epochs, micro_batch=args.micro_batch, grad_accum=args.grad_accum, lr=args.lr,
                       warmup_ratio=args.warmup_ratio, seed=args.seed, masking=args.masking,
                       time_instruction=args.time_instruction, save_every=args.save_every,
                       keep_checkpoints=args.keep_checkpoints, loader_workers=args.loader_workers,
                       shuffle_buffer=args.shuffle_buffer, parallel="fsdp" if args.fsdp else "ddp")


def run(args: argparse.Namespace) -> int:
    from pipeline.stages.contract import StageRefused
    from pipeline.stages.run import run_stage
    from pipeline.stages.train import PredictConfig, PredictStage, TrainStage, TrainStageConfig

    root = DatasetRoot(args.root)
    with config_errors("train"):
        config = _config(args)
    options = run_options(args)
    status = 0
    if not args.predict_only:
        result = run_stage(TrainStage(), root, TrainStageConfig(config), options,
                           extra={"ray_workers": args.workers, "use_gpu": args.gpus})
        status = result.exit_status
    if status == 0 and args.export:
        from workers.trainer import train as loop

        checkpoint = loop.newest_checkpoint(config.out_dir)
        if checkpoint is None:
            raise StageRefused(f"train: no complete checkpoint in {config.out_dir} to export")
        files = loop.export(config, checkpoint, args.export)
        print(f"export: {', '.join(str(f) for f in files)}")
    if status == 0 and (args.predict or args.predict_only):
        result = run_stage(PredictStage(), root, PredictConfig(args.max_new_tokens, config.time_instruction),
                           options, extra={"train_config": config})
        status = result.exit_status
    return status
