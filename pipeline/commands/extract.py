"""``vlm3r-data extract``: CUT3R geometry tokens of every ingested scene's frame manifest -> WebDataset shards
(the stage is :mod:`pipeline.stages.extract`)."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from pipeline.commands.options import add_ray_options, add_rebuild, config_errors
from pipeline.stages.extract import DEFAULT_SHARD_BYTES

HELP = "run CUT3R over every scene's frame manifest and write geometry-token shards (WebDataset) on Ray"

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
               "t": 10**12, "tb": 10**12, "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20, "gi": 2**30,
               "gib": 2**30, "ti": 2**40, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """``"500MB"``, ``"1GiB"``, ``"2e6"``-free plain integers -> bytes."""
    match = _SIZE_RE.match(str(text))
    unit = (match.group(2) or "").lower() if match else ""
    if not match or unit not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"not a byte size: {text!r} (e.g. 500MB, 1GiB, 1000000)")
    value = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if value <= 0:
        raise argparse.ArgumentTypeError(f"byte size must be positive, got {text!r}")
    return value


def parse_resource(text: str) -> tuple[str, float]:
    """``"model_node=1"`` -> ``("model_node", 1.0)`` (a custom Ray resource and the amount an actor asks for)."""
    from workers.extract import check_actor_resource

    name, sep, amount = text.partition("=")
    try:
        value = float(amount) if sep else None
    except ValueError:
        value = None
    if value is None:
        raise argparse.ArgumentTypeError(f"expected NAME=AMOUNT (e.g. model_node=1), got {text!r}")
    try:
        check_actor_resource(name, value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name, value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, type=Path, help="dataset root written by ingest (ROOT)")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", type=Path, help="official CUT3R checkpoint (.pth)")
    model.add_argument("--weights", type=Path, help="weights (.safetensors or a plain state dict); needs --config")
    model.add_argument("--random-tiny", action="store_true",
                       help="the fixture-size CUT3R architecture with random weights (demo, tests)")
    parser.add_argument("--config", type=Path, help="CUT3R config JSON for --weights")
    parser.add_argument("--seed", type=int, default=0, help="weights seed of --random-tiny")
    parser.add_argument("--size", type=int, default=432, help="CUT3R input side (432 -> 27x27 = 729 patches)")
    parser.add_argument("--squash-size", type=int, default=384, help="SigLIP squash side before the resize")
    parser.add_argument("--batch-videos", type=int, default=4, help="videos encoded together in lock-step")
    parser.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per model actor (0 = run it on CPU)")
    parser.add_argument("--actors", type=int, default=1, help="model actors (e.g. one per GPU)")
    parser.add_argument("--actor-cpus", type=int, default=1,
                        help="CPUs (torch threads) per model actor; the same value gives the same bytes")
    parser.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto",
                        help="compute precision of the model (bf16: bf16 weights and activations, float32 heads); "
                             "auto = bf16 on GPU, fp32 on CPU")
    parser.add_argument("--token-dtype", choices=("auto", "fp32", "bf16", "fp16", "fp8_e4m3", "int8"), default="auto",
                        help="storage codec of the tokens: fp32, bf16, fp16 store the computed values (bf16/fp16 "
                             "round them); fp8_e4m3 and int8 take one byte per value with per-frame, per-channel "
                             "float32 scales. Part of the shards' identity. auto = the compute precision (--dtype)")
    parser.add_argument("--compile", choices=("none", "default", "reduce-overhead"), default="none",
                        help="torch.compile the encoder and the recurrent step (reduce-overhead: with CUDA graphs)")
    parser.add_argument("--with-frames", action="store_true", help="also store the squashed frames as JPEG")
    parser.add_argument("--points", choices=("none", "depth", "cut3r"), default="none",
                        help="also store a 3D point per patch (world and first-camera frames, with validity): from "
                             "sensor depth and poses, or from CUT3R's point head (which also adds the model's "
                             "estimated camera poses to frames.json; for videos without poses the first frame's "
                             "camera is the world)")
    parser.add_argument("--shard-bytes", type=parse_bytes, default=DEFAULT_SHARD_BYTES,
                        help="start a new shard before one would grow past this size (e.g. 500MB, 1GiB)")
    parser.add_argument("--retries", type=int, default=2, help="Ray retries of dead decode workers / model actors")
    add_rebuild(parser, "--overwrite", "scenes (all of them: needed to change the model or its configuration)")
    add_ray_options(parser, "CPU decode workers (local Ray cluster size)")
    parser.add_argument("--actor-resource", type=parse_resource, action="extend", nargs="+", default=[],
                        metavar="NAME=AMOUNT",
                        help="a custom Ray resource each model actor asks for, so that it runs only on nodes started "
                             "with it (ray start --resources='{\"model_node\": 1}' and --actor-resource model_node=1); "
                             "repeatable; placement only, the shards' bytes do not change")
    parser.add_argument("--node-wait", type=float, default=300.0, metavar="SECONDS",
                        help="when the cluster has lost the GPUs or custom resources the model actors need (their "
                             "node died), wait this long for a node that has them before aborting (exit 1; a rerun "
                             "resumes)")


def run(args: argparse.Namespace) -> int:
    from pipeline.stages.contract import StageRefused
    from pipeline.stages.run import extract_root
    from workers.cut3r import Cut3rCheckpointError, Cut3rConfigError
    from workers.extract import ExtractOptions, ModelSpec, Scheduling

    if args.weights and not args.config:
        raise StageRefused("extract: --weights needs --config")
    if args.random_tiny:
        model = ModelSpec("random_tiny", seed=args.seed)
    elif args.checkpoint:
        model = ModelSpec("checkpoint", path=str(args.checkpoint))
    else:
        model = ModelSpec("weights", path=str(args.weights), config_path=str(args.config))
    precision = {"auto": "bf16" if args.num_gpus > 0 else "fp32"}.get(args.dtype, args.dtype)
    token_dtype = precision if args.token_dtype == "auto" else args.token_dtype
    names = [name for name, _ in args.actor_resource]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise StageRefused(f"extract: --actor-resource gives {', '.join(repeated)} more than once")
    with config_errors("extract"):
        options = ExtractOptions(input_size=args.size, squash_size=args.squash_size, token_dtype=token_dtype,
                                 precision=precision, compile=args.compile,
                                 device="cuda" if args.num_gpus > 0 else "cpu", points=args.points,
                                 with_frames=args.with_frames)
        scheduling = Scheduling(batch_videos=args.batch_videos, local=args.local, workers=args.workers,
                                num_gpus=args.num_gpus, actors=args.actors, actor_cpus=args.actor_cpus,
                                retries=args.retries, ray_address=args.ray_address,
                                actor_resources=dict(args.actor_resource), node_wait_s=args.node_wait)
    try:
        summary = extract_root(args.root, model, options, scheduling, shard_bytes=args.shard_bytes,
                               rebuild=args.rebuild, command=tuple(getattr(args, "argv", ())))
    except (Cut3rCheckpointError, Cut3rConfigError) as exc:     # a bad checkpoint or config names the file
        raise StageRefused(f"extract: {exc}") from None
    fps = summary.frames / summary.seconds if summary.seconds > 0 else 0.0
    print(f"extract: {summary.frames} frames at {fps:.1f} frames/s; {summary.shards} shards, {summary.samples} "
          f"samples in index.json")
    return 1 if summary.aborted or summary.failed else 0
