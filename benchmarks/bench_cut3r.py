"""CUT3R frames per second at 432x432: the reference configuration and the fast one, side by side in one run.

* reference: float32, batch 1, eager attention, every head computed (what VLM-3R's extraction runs);
* fast: token-only (no heads, no ray-map encoder), B videos in lock-step, fused attention, bf16 autocast on GPU
  (float32 on CPU).

Full-size architecture (``cut3r_512_dpt_4_64`` by default) with random weights. Writes
``benchmarks/results/cut3r.json`` and ``cut3r.md``. On CPU keep it short::

    python benchmarks/bench_cut3r.py --frames 2 --batch 2            # CPU, a couple of minutes
    python benchmarks/bench_cut3r.py --device cuda --frames 32 --batch 16
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.core.atomic import write_json, write_text  # noqa: E402
from workers.cut3r import Cut3rEncoder, full_config, random_model  # noqa: E402
from workers.cut3r.checkpoint import meta_model  # noqa: E402


def flops_per_frame(config_name: str, size: int, heads: bool) -> float:
    """Model FLOPs of one frame (second frame of a video, so the pose-memory read is included), counted on meta."""
    from torch.utils.flop_counter import FlopCounterMode

    model = meta_model(full_config(config_name))
    images = torch.zeros(1, 3, size, size, device="meta")
    state = model.initial_state(1, "meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.step(state, images, heads=heads, first_frame=False)
    return float(counter.get_total_flops())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_config(encoder: Cut3rEncoder, frames: torch.Tensor, heads: bool, warmup: bool) -> dict:
    model, device = encoder.model, encoder.device
    b, t = frames.shape[:2]
    if warmup:
        with torch.inference_mode(), encoder.autocast():
            model(frames[:, :2], heads=heads)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode(), encoder.autocast():
        out = model(frames, heads=heads)
    sync(device)
    seconds = time.perf_counter() - start
    assert torch.isfinite(out.patch_tokens).all()
    result = {
        "batch_videos": b, "frames_per_video": t, "frames": b * t, "seconds": round(seconds, 3),
        "frames_per_s": round(b * t / seconds, 4), "heads": heads, "attention": encoder.attention,
        "compute_dtype": str(encoder.compute_dtype).replace("torch.", ""), "warmup": warmup,
    }
    if device.type == "cuda":
        result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="cut3r_512_dpt_4_64", choices=("cut3r_512_dpt_4_64", "cut3r_224_linear_4"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=432)
    parser.add_argument("--frames", type=int, default=None, help="frames per video (default: 2 on CPU, 32 on GPU)")
    parser.add_argument("--batch", type=int, default=None, help="videos per batch, fast config (2 CPU / 16 GPU)")
    parser.add_argument("--ref-frames", type=int, default=None, help="frames of the reference run (default --frames)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the fast configuration's step")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cut3r"))
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    frames_per_video = args.frames or (32 if on_gpu else 2)
    batch = args.batch or (16 if on_gpu else 2)
    ref_frames = args.ref_frames or frames_per_video

    load_start = round(os.getloadavg()[0], 2)  # the CPU figures depend on what else runs on the machine
    t0 = time.perf_counter()
    model = random_model(full_config(args.config), seed=0).to(device)
    init_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    frames = (torch.rand(batch, frames_per_video, 3, args.size, args.size, generator=gen) * 2 - 1).to(device)

    reference = Cut3rEncoder(model, precision="fp32", attention="eager")
    ref = run_config(reference, frames[:1, :ref_frames], heads=True, warmup=on_gpu)
    print("reference:", ref, flush=True)
    fast = Cut3rEncoder(model, precision="auto", attention="fused", compile=args.compile)
    fst = run_config(fast, frames, heads=False, warmup=on_gpu or args.compile)
    print("fast:", fst, flush=True)

    flops_tokens = flops_per_frame(args.config, args.size, heads=False)
    flops_heads = flops_per_frame(args.config, args.size, heads=True)
    ref["tflop_per_frame"] = round(flops_heads / 1e12, 3)
    fst["tflop_per_frame"] = round(flops_tokens / 1e12, 3)
    for r in (ref, fst):
        r["achieved_tflop_per_s"] = round(r["tflop_per_frame"] * r["frames_per_s"], 4)
    results = {
        "benchmark": "cut3r_frames_per_second",
        "model": args.config, "weights": "random (seed 0)", "input_size": [args.size, args.size],
        "patch_tokens_per_frame": (args.size // 16) ** 2,
        "device": torch.cuda.get_device_name(device) if on_gpu else f"cpu ({platform.processor() or 'unknown'})",
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "load_average_1m_at_start_end": [load_start, round(os.getloadavg()[0], 2)],
        "parameters": sum(p.numel() for p in model.parameters()), "model_init_s": round(init_s, 1),
        "reference": ref, "fast": fst,
        "speedup_frames_per_s": round(fst["frames_per_s"] / ref["frames_per_s"], 3),
    }
    out = Path(args.out)
    write_json(out.with_suffix(".json"), results)
    write_text(out.with_suffix(".md"), render_markdown(results))
    print(render_markdown(results))
    return 0


def render_markdown(r: dict) -> str:
    rows = []
    for name in ("reference", "fast"):
        c = r[name]
        rows.append(f"| {name} | {c['batch_videos']} x {c['frames_per_video']} | {c['compute_dtype']} | "
                    f"{c['attention']} | {'yes' if c['heads'] else 'no'} | {c['frames_per_s']} | {c['seconds']} | "
                    f"{c['tflop_per_frame']} | {c.get('peak_gpu_memory_gib', '-')} |")
    return "\n".join([
        f"# CUT3R benchmark ({r['model']}, random weights, {r['input_size'][0]}x{r['input_size'][1]})",
        "",
        f"Device: {r['device']}; torch {r['torch']}, {r['torch_threads']} threads; {r['parameters']:,} parameters; "
        f"1-min load average at start/end {r['load_average_1m_at_start_end']} on {r['cpu_count']} CPUs.",
        "",
        "| config | videos x frames | dtype | attention | heads | frames/s | seconds | TFLOP/frame | peak GPU GiB |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Fast / reference: {r['speedup_frames_per_s']}x frames/s.",
        "",
    ])


if __name__ == "__main__":
    sys.exit(main())
