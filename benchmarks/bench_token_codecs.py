"""Token codecs on real tokens: bytes per frame, errors against float32, and what reaches the fusion block.

Tokens: the full-size CUT3R (``cut3r_512_dpt_4_64``, random weights, seed 0, float32) on the demo scenes' frames at
432x432 (``--tokens FILE.npz`` from ``bench_cut3r_precision.py --save-tokens``, or computed here). Each video is
stored as one real token-shard sample per codec (``TokenSample.from_float`` + ``write_sample``) and read back through
the project's reader, so bytes per frame are the shard's own (tar headers, meta and frames JSON included).

Fusion: VLM-3R's fusion block at its real widths (d_clip 1152, d_spatial 768, 18 heads) whose weights are drawn to
match, tensor by tensor, the fusion fixture's statistics (``../shared/fixtures/fusion``: LayerNorm and bias values
with the fixture's mean and std; Linear weights with the fixture's std times sqrt(fixture fan-in / real fan-in), so
each layer keeps the fixture's gain), and visual tokens drawn with the fixture's visual-token mean and std. The
fixture itself is 64/48 wide and cannot take 768-wide tokens. Reported: the relative error of the fused output
``||F(v, g_codec) - F(v, g)|| / ||F(v, g)||`` (the target), and of its geometry branch alone (the output minus the
residual visual tokens, a stricter view since the residual does not depend on the codec).

    python benchmarks/bench_token_codecs.py --tokens /tmp/vlm3r_bench_demo/fp32_tokens.npz
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from results_io import write_results  # noqa: E402
from pipeline.core.shards import ShardWriter, write_index  # noqa: E402
from pipeline.core.tokens import TokenSample, iter_samples, token_codec, write_sample  # noqa: E402
from workers.trainer.fusion import FusionBlock  # noqa: E402

FUSION_FIXTURE = REPO.parent / "shared" / "fixtures" / "fusion"
CODECS = ("float32", "bfloat16", "float16", "float8_e4m3", "int8")
MIB = 2 ** 20
TARGET = {"max_mib_per_frame": 0.55, "min_cosine": 0.999, "max_fusion_rel_err": 1e-2}


def fp32_tokens(path: Path | None, workdir: Path, frames: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """camera [B,T,1,C], patch [B,T,N,C] float32 and the scene keys."""
    if path is not None and path.is_file():
        data = np.load(path)
        return data["camera"], data["patch"], [str(k) for k in data["keys"]]
    from demo_scenes import demo_root, demo_videos
    from workers.cut3r import Cut3rEncoder, full_config, random_model

    videos = demo_videos(demo_root(workdir), frames)
    encoder = Cut3rEncoder(random_model(full_config(), seed=0), device="cpu", precision="fp32")
    out = encoder.encode(torch.from_numpy(np.stack([pixels for _, pixels in videos])))
    return out.camera_tokens.numpy(), out.patch_tokens.numpy(), [key for key, _ in videos]


def fusion_block_like_fixture(seed: int = 0) -> tuple[FusionBlock, dict[str, float]]:
    """The real-width fusion block with weights drawn from the fixture's per-tensor statistics (see the docstring),
    and the fixture's visual-token mean and std."""
    from safetensors.numpy import load_file

    fixture = load_file(FUSION_FIXTURE / "fusion_tiny.safetensors")
    visual = np.load(FUSION_FIXTURE / "fusion_tiny_io.npz")["visual_tokens"]
    block = FusionBlock().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in block.named_parameters():
            ref = fixture[name]
            std = float(ref.std())
            if param.ndim == 2:  # keep the layer's gain: std * sqrt(fan_in) as in the fixture
                std *= (ref.shape[1] / param.shape[1]) ** 0.5
            param.copy_(float(ref.mean()) + std * torch.randn(param.shape, generator=gen))
    return block, {"mean": float(visual.mean()), "std": float(visual.std())}


def token_errors(reference: np.ndarray, decoded: np.ndarray) -> dict:
    error = np.abs(decoded.astype(np.float64) - reference)
    cosine = (decoded * reference).sum(-1) / (np.linalg.norm(decoded, axis=-1) * np.linalg.norm(reference, axis=-1))
    return {"max_abs_err": float(error.max()), "mean_abs_err": float(error.mean()),
            "cosine_min": float(cosine.min()), "cosine_mean": float(cosine.mean())}


def write_codec_shards(folder: Path, camera: np.ndarray, patch: np.ndarray, keys: list[str], codec: str
                       ) -> tuple[float, float]:
    """One sample per video in ``folder``; returns (seconds to encode, bytes of the shard file)."""
    meta_base = {"dataset": "scannet", "model_id": "cut3r_512_dpt_4_64-random-seed0", "checkpoint_sha256": "0" * 64,
                 "dtype": codec, "storage": token_codec(codec).storage, "num_patches": patch.shape[2],
                 "token_width": patch.shape[3], "input_size": 432, "with_points": False, "with_frames": False,
                 "code_version": "bench"}
    seconds = 0.0
    with ShardWriter(folder, max_shard_bytes=1 << 40) as writer:
        for b, key in enumerate(keys):
            t = camera.shape[1]
            frames = [{"rank": i, "frame_index": i, "timestamp": float(i), "camera_to_world": list(np.eye(4).ravel()),
                       "valid": True} for i in range(t)]
            meta = {**meta_base, "key": key, "scene_id": key, "num_frames": t}
            start = time.perf_counter()
            sample = TokenSample.from_float(key, camera[b], patch[b], frames, meta)
            seconds += time.perf_counter() - start
            write_sample(writer, sample)
    write_index(folder, writer.records)
    return seconds, float(sum(r.size_bytes for r in writer.records))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=Path, default=Path("/tmp/vlm3r_bench_demo/fp32_tokens.npz"),
                        help="float32 tokens from bench_cut3r_precision.py --save-tokens (computed when absent)")
    parser.add_argument("--frames", type=int, default=8, help="frames per video when the tokens are computed here")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vlm3r_bench_demo"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "token_codecs"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    camera, patch, keys = fp32_tokens(args.tokens, args.workdir, args.frames)
    b, t = camera.shape[:2]
    geometry = torch.from_numpy(np.concatenate([camera, patch], axis=2).reshape(b * t, -1, camera.shape[-1]))
    block, visual_stats = fusion_block_like_fixture()
    visual = visual_stats["mean"] + visual_stats["std"] * torch.randn(b * t, patch.shape[2], 1152,
                                                                        generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fused_ref = block(visual, geometry)
    branch_ref = fused_ref - visual

    rows = {}
    for codec in CODECS:
        folder = args.workdir / "codec_shards" / codec
        encode_s, shard_bytes = write_codec_shards(folder, camera, patch, keys, codec)
        samples = {s.key: s for s in iter_samples(folder)}
        decoded_camera = np.stack([samples[k].camera_tokens() for k in keys])
        decoded_patch = np.stack([samples[k].patch_tokens() for k in keys])
        decoded = np.concatenate([decoded_camera, decoded_patch], axis=2)
        token_bytes = sum(a.nbytes for s in samples.values() for _, a in s.token_members())
        with torch.no_grad():
            fused = block(visual, torch.from_numpy(decoded.reshape(b * t, -1, decoded.shape[-1])))
        diff = (fused - fused_ref).double()
        row = {
            "storage": token_codec(codec).storage,
            "shard_bytes_per_frame": shard_bytes / (b * t), "shard_mib_per_frame": shard_bytes / (b * t) / MIB,
            "token_bytes_per_frame": token_bytes / (b * t),
            "tokens": token_errors(np.concatenate([camera, patch], axis=2), decoded),
            "camera_token": token_errors(camera, decoded_camera),
            "fusion_output_rel_err": float(diff.norm() / fused_ref.double().norm()),
            "fusion_branch_rel_err": float(diff.norm() / branch_ref.double().norm()),
            "encode_frames_per_s": round(b * t / encode_s, 1),
        }
        if token_codec(codec).scaled:
            row["meets_target"] = bool(row["shard_mib_per_frame"] <= TARGET["max_mib_per_frame"]
                                       and row["tokens"]["cosine_min"] >= TARGET["min_cosine"]
                                       and row["fusion_output_rel_err"] <= TARGET["max_fusion_rel_err"])
        rows[codec] = row
        print(codec, json.dumps({k: v for k, v in row.items() if k in ("shard_mib_per_frame", "tokens",
                                                                         "fusion_output_rel_err")}), flush=True)

    results = {
        "benchmark": "token_codecs",
        "tokens": f"cut3r_512_dpt_4_64, random weights (seed 0), float32, 432x432, on {b} demo scenes x {t} frames "
                  f"({', '.join(keys)})",
        "fusion": "FusionBlock(1152, 768, 1152, 18 heads), eval mode, weights drawn per tensor from the fusion "
                  "fixture's mean/std (Linear std scaled by sqrt(fixture fan-in / real fan-in)); visual tokens "
                  f"N({visual_stats['mean']:.4f}, {visual_stats['std']:.4f}) like the fixture's",
        "frames": b * t, "target_for_one_byte_codecs": TARGET,
        "device": f"cpu ({platform.processor() or 'unknown'})", "torch": torch.__version__, "threads": 1,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "codecs": rows,
    }
    out = Path(args.out)
    print(write_results(out, results, render_markdown))
    return 0


def render_markdown(r: dict) -> str:
    lines = [
        "# Token codecs", "",
        f"Tokens: {r['tokens']}. Fusion: {r['fusion']}. Target for fp8/int8: at most "
        f"{r['target_for_one_byte_codecs']['max_mib_per_frame']} MiB per frame, token cosine >= "
        f"{r['target_for_one_byte_codecs']['min_cosine']}, fusion-output relative error <= "
        f"{r['target_for_one_byte_codecs']['max_fusion_rel_err']}.", "",
        "| codec | MiB/frame (shard) | max abs err | mean abs err | min cosine | mean cosine | fusion out rel err "
        "| fusion branch rel err | encode frames/s | target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for codec, c in r["codecs"].items():
        tok = c["tokens"]
        target = {True: "met", False: "NOT met"}.get(c.get("meets_target"), "-")
        lines.append(f"| {codec} | {c['shard_mib_per_frame']:.4f} | {tok['max_abs_err']:.3g} | "
                     f"{tok['mean_abs_err']:.3g} | {tok['cosine_min']:.6f} | {tok['cosine_mean']:.6f} | "
                     f"{c['fusion_output_rel_err']:.3g} | {c['fusion_branch_rel_err']:.3g} | "
                     f"{c['encode_frames_per_s']} | {target} |")
    lines += ["", "Errors are against the float32 tokens, over camera and patch tokens (730 per frame); cosine per "
              "token. Encode: float32 tokens to the stored sample (`TokenSample.from_float`), one CPU thread, numpy. "
              "Reading speeds: `token_read.md`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
