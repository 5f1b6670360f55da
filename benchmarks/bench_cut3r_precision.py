"""CUT3R in bf16 (bf16 weights and activations, float32 heads, RoPE and norm statistics) against float32: the
full-size architecture with random weights (seed 0) on the demo scenes' frames at 432x432, the same videos batched
in lock-step by both. Writes ``benchmarks/results/cut3r_bf16_vs_fp32.{json,md}``: max and mean abs error, the
tokens' scale, and the cosine similarity of each token, overall and per frame (the recurrence carries errors
forward). ``--save-tokens FILE.npz`` keeps the float32 tokens for ``bench_token_codecs.py``.

    python benchmarks/bench_cut3r_precision.py                     # CPU: 3 videos x 8 frames, about 10 minutes
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from demo_scenes import demo_root, demo_videos  # noqa: E402

from pipeline.core.atomic import atomic_open  # noqa: E402
from results_io import write_results  # noqa: E402
from workers.cut3r import Cut3rEncoder, full_config, random_model  # noqa: E402


def compare(reference: np.ndarray, other: np.ndarray) -> dict:
    """Errors of ``other`` against ``reference`` (both [..., C] float32); cosine per token (last axis)."""
    error = np.abs(other.astype(np.float64) - reference)
    cosine = (other * reference).sum(-1) / (np.linalg.norm(other, axis=-1) * np.linalg.norm(reference, axis=-1))
    return {"max_abs_err": float(error.max()), "mean_abs_err": float(error.mean()),
            "max_abs_value": float(np.abs(reference).max()), "mean_abs_value": float(np.abs(reference).mean()),
            "cosine_min": float(cosine.min()), "cosine_mean": float(cosine.mean())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="cut3r_512_dpt_4_64")
    parser.add_argument("--frames", type=int, default=8, help="frames per video (3 demo videos)")
    parser.add_argument("--size", type=int, default=432)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vlm3r_bench_demo"))
    parser.add_argument("--save-tokens", type=Path, default=None, help="write the float32 tokens here (.npz)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cut3r_bf16_vs_fp32"))
    args = parser.parse_args(argv)

    load_start = round(os.getloadavg()[0], 2)
    videos = demo_videos(demo_root(args.workdir), args.frames, args.size)
    frames = torch.from_numpy(np.stack([pixels for _, pixels in videos]))  # [B,T,3,S,S]
    b, t = frames.shape[:2]
    tokens, seconds = {}, {}
    for precision in ("fp32", "bf16"):
        model = random_model(full_config(args.config), seed=0)
        encoder = Cut3rEncoder(model, device="cpu", precision=precision)
        start = time.perf_counter()
        out = encoder.encode(frames)
        seconds[precision] = round(time.perf_counter() - start, 1)
        tokens[precision] = {"camera": out.camera_tokens.numpy(), "patch": out.patch_tokens.numpy()}
        print(f"{precision}: {b}x{t} frames in {seconds[precision]} s", flush=True)
        del model, encoder, out

    ref, low = tokens["fp32"], tokens["bf16"]
    results = {
        "benchmark": "cut3r_bf16_vs_fp32",
        "model": args.config, "weights": "random (seed 0)", "input_size": [args.size, args.size],
        "inputs": f"{b} demo scenes (synthetic rooms, seed 0, ScanNet format) x {t} manifest frames each",
        "videos": [key for key, _ in videos],
        "bf16": "bf16 weights and activations; float32 RoPE (encoder q/k rounded to float16 around it), "
                "norm statistics, softmax accumulation and heads",
        "device": f"cpu ({platform.processor() or 'unknown'})", "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "load_average_1m_at_start_end": [load_start,
                                                                                   round(os.getloadavg()[0], 2)],
        "seconds": seconds,
        "camera_token": compare(ref["camera"], low["camera"]),
        "patch_tokens": compare(ref["patch"], low["patch"]),
        "patch_tokens_per_frame": [compare(ref["patch"][:, i], low["patch"][:, i]) for i in range(t)],
    }
    if args.save_tokens:
        with atomic_open(args.save_tokens, "wb") as fh:
            np.savez(fh, camera=ref["camera"], patch=ref["patch"], keys=np.array([key for key, _ in videos]))
    out = Path(args.out)
    print(write_results(out, results, render_markdown))
    return 0


def render_markdown(r: dict) -> str:
    def row(name: str, c: dict) -> str:
        return (f"| {name} | {c['max_abs_err']:.4g} | {c['mean_abs_err']:.4g} | {c['max_abs_value']:.4g} | "
                f"{c['mean_abs_value']:.4g} | {c['cosine_min']:.6f} | {c['cosine_mean']:.6f} |")

    return "\n".join([
        f"# CUT3R bf16 vs float32 ({r['model']}, random weights, {r['input_size'][0]}x{r['input_size'][1]})",
        "",
        f"Inputs: {r['inputs']}. bf16: {r['bf16']}. {r['device']}, torch {r['torch']}, {r['torch_threads']} "
        f"threads; seconds {r['seconds']}.",
        "",
        "| tokens | max abs err | mean abs err | max abs value | mean abs value | min cosine | mean cosine |",
        "|---|---|---|---|---|---|---|",
        row("camera", r["camera_token"]),
        row("patch", r["patch_tokens"]),
        *[row(f"patch, frame {i}", c) for i, c in enumerate(r["patch_tokens_per_frame"])],
        "",
        "Cosine similarity per token (one 768-wide vector) between the bf16 and the float32 model's output.",
        "",
    ])


if __name__ == "__main__":
    sys.exit(main())
