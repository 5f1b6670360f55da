"""CUT3R frames per second at 432x432 on one device: the reference configuration, the default configuration of the
extraction stage and the best one found, side by side in one run.

* ``reference``: float32, eager attention, batch 1, every head (what VLM-3R's extraction runs: the official code, one
  frame after the other); ``reference_tf32`` is the same with TF32 matmuls allowed, in case a run enables them.
* ``default``: what ``vlm3r-data extract --num-gpus 1`` runs: bf16 weights and activations (float32 heads, RoPE,
  norm statistics), fused attention, ``--batch-videos`` 4 videos in lock-step, the encoder over all frames of the
  batch before the recurrent decoder (64 frames per call), tokens only, host frames copied in pinned chunks
  overlapped with the encoder, tokens back to host memory.
* candidates for the best, in this order and each only if the time budget allows it: 16, 32 and 64 videos per
  batch; two model processes sharing the device at the best batch (two actors per GPU); ``torch.compile`` of the
  encoder and the recurrent step at the best batch, then the same with CUDA graphs (``reduce-overhead``).

Each configuration is warmed up on the shapes it is timed on (compilation happens there), then timed on B videos x T
frames; a failure (out of memory, a compiler error) is recorded and the run goes on. Results are written after every
configuration, so a run cut short keeps what it measured. The default configuration's tokens of the first video are
compared with the reference's float32 tokens of the same frames (max abs error, cosine).

    python benchmarks/bench_cut3r.py --device cuda            # -> benchmarks/results/cut3r_gpu.{json,md}, ~5 min
    python benchmarks/bench_cut3r.py --device cpu --quick     # the same code paths with the tiny model, seconds
    python benchmarks/bench_cut3r.py --device cpu             # full size on CPU -> cut3r.{json,md} (slow)
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from results_io import write_results  # noqa: E402
from workers.cut3r import Cut3rEncoder, full_config, random_model, tiny_config  # noqa: E402
from workers.cut3r.checkpoint import meta_model  # noqa: E402

TARGET_FRAMES_PER_S = 300.0   # per GPU, H200, 432x432
TARGET_SPEEDUP = 15.0         # over the reference in the same run
EXTRACT_DEFAULT_BATCH = 4     # vlm3r-data extract --batch-videos default


class Bench:
    """The run's settings, frames, reference tokens and results (written after every configuration)."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = torch.device(args.device)
        self.start = time.perf_counter()
        self.config = tiny_config() if args.quick else full_config(args.config)
        self.results: dict = {"configs": {}}
        gen = torch.Generator().manual_seed(0)
        # Host frames, as the model actor receives them from the decode workers.
        self.frames = torch.rand(max(args.batches + [EXTRACT_DEFAULT_BATCH]), args.frames, 3, args.size, args.size,
                                 generator=gen) * 2 - 1
        self.reference_tokens: torch.Tensor | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.args.budget_s - self.elapsed()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)

    def record(self, name: str, result: dict) -> None:
        result["finished_at_s"] = round(self.elapsed(), 1)
        self.results["configs"][name] = result
        ref = self.results["configs"].get("reference", {}).get("frames_per_s")
        for row in self.results["configs"].values():
            if ref and row.get("frames_per_s"):
                row["speedup_vs_reference"] = round(row["frames_per_s"] / ref, 2)
        summarise(self.results)
        out = Path(self.args.out)
        write_results(out, self.results, render_markdown)
        shown = {k: v for k, v in result.items() if k not in ("traceback", "workers")}
        print(f"[{self.elapsed():6.1f}s] {name}: {shown}", flush=True)


def fail(exc: BaseException) -> dict:
    return {"error": f"{type(exc).__name__}: {exc}"[:1500], "traceback": traceback.format_exc()[-4000:]}


def flops_per_frame(config, size: int, heads: bool) -> float:
    """Model FLOPs of one frame (a video's second frame, so the pose-memory read is included), counted on meta."""
    from torch.utils.flop_counter import FlopCounterMode

    model = meta_model(config)
    images = torch.zeros(1, 3, size, size, device="meta")
    state = model.initial_state(1, "meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.step(state, images, heads=heads, first_frame=False)
    return float(counter.get_total_flops())


def run_reference(bench: Bench, model, tf32: bool) -> dict:
    """float32, eager attention, batch 1, every head, frames already on the device (the official per-frame loop)."""
    args = bench.args
    frames = bench.frames[:1, :args.ref_frames].to(bench.device)
    encoder = Cut3rEncoder(model, device=bench.device, precision="fp32", attention="eager")
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        with torch.inference_mode():
            encoder.model(frames[:, :2], heads=True)  # warm-up
            bench.sync()
            bench.reset_peak()
            start = time.perf_counter()
            out = encoder.model(frames, heads=True)
            bench.sync()
            seconds = time.perf_counter() - start
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    if not tf32:
        bench.reference_tokens = out.patch_tokens[0].float().cpu()
    return {"precision": "fp32" + (" (TF32 matmuls)" if tf32 else ""), "attention": "eager", "heads": "all",
            "batch_videos": 1, "frames_per_video": args.ref_frames, "compile": "none", "encoder_chunk": 1,
            "seconds": round(seconds, 3), "frames_per_s": round(args.ref_frames / seconds, 3),
            "peak_gpu_memory_gib": bench.peak_gib(), "finite": bool(torch.isfinite(out.patch_tokens).all())}


def run_fast(bench: Bench, model, batch: int, compile_mode: str = "none") -> dict:
    """bf16 (or what ``--precision`` says), fused attention, ``batch`` videos in lock-step, tokens only, encoder first,
    host frames in and host tokens out, as the extraction actor runs it."""
    args = bench.args
    frames = bench.frames[:batch]
    encoder = Cut3rEncoder(model, device=bench.device, precision=args.precision, attention="fused",
                           compile=compile_mode)
    # Warm up on the shapes that are timed: the encoder chunks and the number of rows per step.
    chunk = encoder.encoder_chunk or batch
    warm_frames = min(args.frames, max(2, math.ceil(chunk / batch)))
    start = time.perf_counter()
    encoder.encode(frames[:, :warm_frames], keep_dtype=True).to_host()
    bench.sync()
    warmup_s = time.perf_counter() - start
    bench.reset_peak()
    start = time.perf_counter()
    out = encoder.encode(frames, keep_dtype=True).to_host()
    seconds = time.perf_counter() - start
    n = batch * args.frames
    result = {"precision": str(encoder.compute_dtype).replace("torch.", ""), "attention": "fused", "heads": "none",
              "batch_videos": batch, "frames_per_video": args.frames, "compile": compile_mode,
              "encoder_chunk": chunk, "warmup_s": round(warmup_s, 1), "seconds": round(seconds, 3),
              "frames_per_s": round(n / seconds, 3), "peak_gpu_memory_gib": bench.peak_gib(),
              "finite": bool(torch.isfinite(out.patch_tokens).all())}
    if bench.reference_tokens is not None and compile_mode == "none":
        ref = bench.reference_tokens  # [T_ref, N, C] float32 of video 0
        ours = out.patch_tokens[0, :ref.shape[0]].float()
        cosine = torch.nn.functional.cosine_similarity(ours, ref, dim=-1)
        result["vs_reference_tokens"] = {"max_abs_err": round(float((ours - ref).abs().max()), 5),
                                         "max_abs_value": round(float(ref.abs().max()), 4),
                                         "cosine_min": round(float(cosine.min()), 6)}
    return result


def actor_process(rank: int, args: argparse.Namespace, batch: int, barrier, queue) -> None:
    """One of two model processes sharing the device: its own model and frames, timed from a common start."""
    try:
        torch.manual_seed(rank)
        device = torch.device(args.device)
        config = tiny_config() if args.quick else full_config(args.config)
        encoder = Cut3rEncoder(random_model(config, seed=0), device=device, precision=args.precision)
        gen = torch.Generator().manual_seed(rank)
        frames = torch.rand(batch, args.frames, 3, args.size, args.size, generator=gen) * 2 - 1
        chunk = encoder.encoder_chunk or batch
        encoder.encode(frames[:, :min(args.frames, max(2, math.ceil(chunk / batch)))], keep_dtype=True).to_host()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        barrier.wait(timeout=600)
        start = time.perf_counter()
        encoder.encode(frames, keep_dtype=True).to_host()
        seconds = time.perf_counter() - start
        peak = round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None
        queue.put({"rank": rank, "seconds": seconds, "peak_gpu_memory_gib": peak})
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which records it
        barrier.abort()
        queue.put({"rank": rank, "error": f"{type(exc).__name__}: {exc}"[:1500]})


def run_two_actors(bench: Bench, batch: int) -> dict:
    import multiprocessing as mp

    args = bench.args
    context = mp.get_context("spawn")
    barrier, queue = context.Barrier(2), context.Queue()
    procs = [context.Process(target=actor_process, args=(rank, args, batch, barrier, queue)) for rank in range(2)]
    for proc in procs:
        proc.start()
    workers = []
    try:
        for _ in procs:
            workers.append(queue.get(timeout=max(60.0, bench.left())))
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    errors = [w["error"] for w in workers if "error" in w]
    if errors:
        return {"error": "; ".join(errors), "workers": workers}
    seconds = max(w["seconds"] for w in workers)  # both started at the barrier
    n = 2 * batch * args.frames
    return {"precision": args.precision, "attention": "fused", "heads": "none", "batch_videos": batch,
            "frames_per_video": args.frames, "compile": "none", "processes": 2, "seconds": round(seconds, 3),
            "frames_per_s": round(n / seconds, 3),
            "peak_gpu_memory_gib": max((w["peak_gpu_memory_gib"] or 0) for w in workers) or None,
            "workers": workers}


def best_name(results: dict) -> str | None:
    rows = {k: v for k, v in results["configs"].items() if not k.startswith("reference") and v.get("frames_per_s")}
    return max(rows, key=lambda k: rows[k]["frames_per_s"]) if rows else None


def summarise(results: dict) -> None:
    configs = results["configs"]
    best = best_name(results)
    ref = configs.get("reference", {}).get("frames_per_s")
    summary = {"best": best}
    if best:
        fps = configs[best]["frames_per_s"]
        summary.update({"best_frames_per_s": fps, "best_speedup_vs_reference": round(fps / ref, 2) if ref else None,
                        "target_frames_per_s": TARGET_FRAMES_PER_S, "target_speedup": TARGET_SPEEDUP})
        if results.get("device_type") == "cuda" and not results.get("quick"):
            summary["meets_frames_per_s_target"] = fps >= TARGET_FRAMES_PER_S
            summary["meets_speedup_target"] = bool(ref) and fps / ref >= TARGET_SPEEDUP
    results["summary"] = summary


def environment(bench: Bench) -> dict:
    args, device = bench.args, bench.device
    env = {"device_type": device.type, "quick": args.quick, "torch": torch.__version__,
           "model": "tiny (fixture architecture)" if args.quick else args.config, "weights": "random (seed 0)",
           "input_size": [args.size, args.size], "patch_tokens_per_frame": (args.size // 16) ** 2,
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "budget_s": args.budget_s,
           "host": platform.node()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update({"device": torch.cuda.get_device_name(device), "cuda": torch.version.cuda,
                    "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                    "flash_sdp": torch.backends.cuda.flash_sdp_enabled(),
                    "cudnn_sdp": torch.backends.cuda.cudnn_sdp_enabled(),
                    "tf32_matmul_default": torch.backends.cuda.matmul.allow_tf32})
    else:
        env.update({"device": f"cpu ({platform.processor() or 'unknown'})",
                    "load_average_1m_at_start": round(os.getloadavg()[0], 2)})
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--config", default="cut3r_512_dpt_4_64", choices=("cut3r_512_dpt_4_64", "cut3r_224_linear_4"))
    parser.add_argument("--quick", action="store_true", help="tiny model, tiny frames: exercise every code path fast")
    parser.add_argument("--size", type=int, default=None, help="input side (432; 64 with --quick)")
    parser.add_argument("--frames", type=int, default=None, help="frames per video (16 on GPU, 4 with --quick, 2 CPU)")
    parser.add_argument("--ref-frames", type=int, default=None, help="frames of the reference run (default --frames)")
    parser.add_argument("--batches", type=int, nargs="+", default=None,
                        help="videos per batch to try after the default 4 (16 32 64 on GPU; 2 on CPU)")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"), help="of the fast configurations")
    parser.add_argument("--budget-s", type=float, default=300.0, help="stop trying candidates past this (seconds)")
    parser.add_argument("--no-actors", action="store_true", help="do not try two model processes per device")
    parser.add_argument("--no-compile", action="store_true", help="do not try torch.compile (never tried on CPU)")
    parser.add_argument("--out", default=None, help="results path without suffix (default by device, see above)")
    args = parser.parse_args(argv)

    on_gpu = args.device.startswith("cuda")
    args.size = args.size or (64 if args.quick else 432)
    args.frames = args.frames or (4 if args.quick else 16 if on_gpu else 2)
    args.ref_frames = args.ref_frames or args.frames
    args.batches = args.batches or ([16, 32, 64] if on_gpu and not args.quick else [2])
    if args.out is None:
        args.out = (str(Path(tempfile.gettempdir()) / "cut3r_quick") if args.quick
                    else str(REPO / "benchmarks" / "results" / ("cut3r_gpu" if on_gpu else "cut3r")))

    bench = Bench(args)
    bench.results.update(environment(bench))
    print(f"CUT3R benchmark on {bench.results['device']}: results -> {args.out}.{{json,md}}", flush=True)
    start = time.perf_counter()
    model = random_model(bench.config, seed=0)
    bench.results["parameters"] = sum(p.numel() for p in model.parameters())
    bench.results["model_init_s"] = round(time.perf_counter() - start, 1)
    bench.results["tflop_per_frame"] = {
        "with_heads": float(f"{flops_per_frame(bench.config, args.size, heads=True) / 1e12:.4g}"),
        "tokens_only": float(f"{flops_per_frame(bench.config, args.size, heads=False) / 1e12:.4g}")}

    for name, tf32 in (("reference", False), ("reference_tf32", True)):
        if tf32 and not on_gpu:
            continue
        try:
            bench.record(name, run_reference(bench, model, tf32))
        except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
            bench.record(name, fail(exc))
    # The fast configurations cast the model to bf16 in place: the float32 reference runs are done.
    for batch in [EXTRACT_DEFAULT_BATCH] + [b for b in args.batches if b != EXTRACT_DEFAULT_BATCH]:
        name = "default" if batch == EXTRACT_DEFAULT_BATCH else f"batch{batch}"
        best = bench.results["configs"].get(best_name(bench.results) or "", {})
        estimate = 3 * batch * args.frames / best["frames_per_s"] if best.get("frames_per_s") else 0.0
        if name != "default" and estimate > bench.left():
            bench.record(name, {"skipped": f"time budget (about {estimate:.0f} s needed, {bench.left():.0f} s left)"})
            continue
        try:
            bench.record(name, run_fast(bench, model, batch))
        except Exception as exc:  # noqa: BLE001
            bench.record(name, fail(exc))
    best = best_name(bench.results)
    best_batch = bench.results["configs"][best]["batch_videos"] if best else EXTRACT_DEFAULT_BATCH

    candidates = []
    if not args.no_actors:
        candidates.append((f"two_processes_batch{best_batch}", 90.0, lambda: run_two_actors(bench, best_batch)))
    if not args.no_compile and on_gpu:
        for mode in ("default", "reduce-overhead"):
            candidates.append((f"compile_{mode}_batch{best_batch}", 180.0,
                               lambda mode=mode: run_fast(bench, model, best_batch, mode)))
    elif not on_gpu:
        bench.results["compile_on_cpu"] = ("not tried: inductor's C++ compilation of the encoder and step takes "
                                           "minutes on a small CPU")
    for name, needs_s, run in candidates:
        if bench.left() < needs_s:
            bench.record(name, {"skipped": f"time budget (needs about {needs_s:.0f} s, {bench.left():.0f} s left)"})
            continue
        try:
            bench.record(name, run())
        except Exception as exc:  # noqa: BLE001
            bench.record(name, fail(exc))
        finally:
            if name.startswith("compile"):
                Cut3rEncoder(model, device=bench.device, precision=args.precision)  # back to the eager model
    bench.results["total_s"] = round(bench.elapsed(), 1)
    print(write_results(args.out, bench.results, render_markdown), flush=True)
    return 0


def render_markdown(r: dict) -> str:
    rows = []
    for name, c in r["configs"].items():
        if "frames_per_s" not in c:
            rows.append(f"| {name} | {c.get('skipped') or 'failed: ' + c.get('error', '?')[:200]} |" + " |" * 8)
            continue
        rows.append(f"| {name} | {c['precision']} | {c['attention']} | {c['heads']} | {c['batch_videos']} x "
                    f"{c['frames_per_video']}{' x ' + str(c['processes']) + ' processes' if 'processes' in c else ''}"
                    f" | {c['compile']} | {c['frames_per_s']} | {c.get('speedup_vs_reference', '-')} | "
                    f"{c['seconds']} | {c.get('peak_gpu_memory_gib') or '-'} |")
    s = r.get("summary", {})
    lines = [
        f"# CUT3R benchmark ({r['model']}, {r['weights']}, {r['input_size'][0]}x{r['input_size'][1]})", "",
        f"Device: {r['device']}; torch {r['torch']}; {r.get('parameters', 0):,} parameters; "
        f"TFLOP per frame {r.get('tflop_per_frame')}.", "",
        "| config | precision | attention | heads | videos x frames | compile | frames/s | x reference | seconds "
        "| peak GPU GiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows, "",
        f"Best: {s.get('best')} at {s.get('best_frames_per_s')} frames/s, {s.get('best_speedup_vs_reference')}x the "
        f"reference (targets on an H200: {TARGET_FRAMES_PER_S:g} frames/s and {TARGET_SPEEDUP:g}x).",
    ]
    if "meets_frames_per_s_target" in s:
        lines.append(f"Targets met: frames/s {s['meets_frames_per_s_target']}, speedup {s['meets_speedup_target']}.")
    default = r["configs"].get("default", {}).get("vs_reference_tokens")
    if default:
        lines.append(f"Default vs reference tokens (video 0): max abs err {default['max_abs_err']} (values up to "
                     f"{default['max_abs_value']}), min cosine {default['cosine_min']}.")
    if r.get("compile_on_cpu"):
        lines.append(f"torch.compile on CPU: {r['compile_on_cpu']}.")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
