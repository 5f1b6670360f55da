"""Training-step throughput and peak memory of the VLM-3R model: samples/s, tokens/s and peak memory per optimizer
step (forward + backward + AdamW on fusion, projector and LoRA), with the real model code on synthetic batches.

- ``--size tiny`` (default): the tiny random model on CPU (what the tests and the demo train).
- ``--size 7b``: a 7B-sized random configuration (SigLIP so400m widths, Qwen2-7B: 28 layers, width 3584, FFN 18944,
  28 heads / 4 KV heads, vocabulary 152064; LoRA r 128 on every Linear but lm_head), frozen weights in bf16 with
  bf16 autocast and gradient checkpointing; meant for a GPU (``--device cuda``), where it also reports model FLOPs
  utilisation against ``--peak-tflops`` (H200 dense bf16: 989).

Writes ``benchmarks/results/train.json`` (or ``--out``)::

    python benchmarks/bench_train.py                       # tiny, CPU
    python benchmarks/bench_train.py --size 7b --device cuda --frames 32 --micro-batch 1
"""
from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.core.atomic import read_json, write_json  # noqa: E402
from workers.trainer.tokenizer import ByteTokenizer
from workers.trainer.data import collate, encode_conversation, user_text  # noqa: E402
from workers.trainer.model import TOKENS_PER_FRAME, ModelConfig, build_model  # noqa: E402

SEVEN_B = dict(tiny_vision_width=1152, tiny_vision_layers=26, tiny_vision_heads=16, tiny_vision_ffn=4304,
               tiny_lm_width=3584, tiny_lm_layers=28, tiny_lm_heads=28, tiny_lm_kv_heads=4, tiny_lm_ffn=18944,
               tiny_vocab=152064, fusion_heads=18, lora_r=128, lora_alpha=256)
RECORD = {"id": 0, "question": "What is the length of the longest dimension (length, width, or height) of the "
                              "table, measured in centimeters?", "options": None, "answer_text": "152"}


def make_batch(micro_batch: int, frames: int, d_clip: int, features: bool, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    tok = ByteTokenizer()
    ids, labels = encode_conversation(tok, user_text(RECORD), "152")
    items = []
    for _ in range(micro_batch):
        visual = {"vision_features": torch.randn(frames, 729, d_clip, generator=g)} if features else \
            {"pixel_values": torch.rand(frames, 3, 384, 384, generator=g) * 2 - 1}
        items.append((ids, labels, {"geometry_tokens": torch.randn(frames, 730, 768, generator=g), **visual}))
    return collate(items, tok.pad_id)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux: KiB


def run(size: str, device: torch.device, frames: int, micro_batch: int, steps: int, warmup: int,
        features: bool, checkpointing: bool, peak_tflops: float) -> dict:
    torch.manual_seed(0)
    overrides = dict(SEVEN_B) if size == "7b" else {}
    config = ModelConfig.tiny(vision_features=features, gradient_checkpointing=checkpointing, **overrides)
    bf16 = device.type == "cuda"
    if bf16:
        # Build directly on the device in bf16 (a 7B model in fp32 on the host is slow to initialise).
        torch.set_default_device(device)
        torch.set_default_dtype(torch.bfloat16)
    model = build_model(config)
    torch.set_default_dtype(torch.float32)
    torch.set_default_device("cpu")
    if bf16:
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()   # trainables in fp32 for AdamW, as train.py does
    model.to(device).train()
    if model.vision_tower is not None:
        model.vision_tower.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-5)
    batch = make_batch(micro_batch, frames, model.d_clip, features, seed=0)
    batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    if bf16:
        batch = {k: (v.to(torch.bfloat16) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                 for k, v in batch.items()}
    seq_tokens = int(batch["attention_mask"].sum()) + micro_batch * (frames * TOKENS_PER_FRAME - 1)
    rss_before = peak_rss_mib()
    times = []
    for step in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
            if step == warmup:
                torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = model(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    step_s = sorted(times)[len(times) // 2]
    total_params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in params)
    result = {
        "size": size, "device": str(device), "bf16": bf16, "frames_per_video": frames, "micro_batch": micro_batch,
        "vision": "pre-computed features" if features else "SigLIP tower on JPEG pixels",
        "gradient_checkpointing": checkpointing, "sequence_tokens_per_step": seq_tokens,
        "parameters": total_params, "trainable_parameters": trainable, "timed_steps": steps,
        "median_step_s": round(step_s, 4), "samples_per_s": round(micro_batch / step_s, 3),
        "tokens_per_s": round(seq_tokens / step_s, 1),
    }
    if device.type == "cuda":
        result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        # Model FLOPs: 6 x parameters x tokens (forward 2, backward 4: the frozen weights still pass gradients to
        # their inputs; checkpointing's recomputation is not counted, as MFU conventionally does).
        flops = 6.0 * total_params * seq_tokens
        result["model_tflops_per_s"] = round(flops / step_s / 1e12, 1)
        result["mfu"] = round(flops / step_s / (peak_tflops * 1e12), 3)
    else:
        result["peak_rss_mib"] = round(peak_rss_mib(), 1)
        result["peak_rss_growth_mib"] = round(peak_rss_mib() - rss_before, 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "7b"), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--features", action="store_true", help="pre-computed vision features (no tower)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="accelerator peak (H200 dense bf16: 989)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "train.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result = run(args.size, device, args.frames, args.micro_batch, args.steps, args.warmup, args.features,
                 args.gradient_checkpointing or args.size == "7b", args.peak_tflops)
    result["machine"] = {"platform": platform.platform(), "python": platform.python_version(),
                         "torch": torch.__version__, "threads": args.threads,
                         "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    runs = read_json(args.out)["runs"] if args.out.is_file() else []
    def same_setup(r: dict) -> tuple:
        return r["size"], r["device"].split(":")[0], r["frames_per_video"], r["micro_batch"], r["vision"]

    runs = [r for r in runs if same_setup(r) != same_setup(result)] + [result]
    write_json(args.out, {"note": "one optimizer step = forward + backward + clip + AdamW; median of the timed "
                                  "steps; CPU memory is the process peak RSS", "runs": runs})
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
