"""Reading token shards at disk speed: the project's reader (``pipeline.core.tokens.iter_samples``, tokens decoded
to float32 by ``camera_tokens()`` / ``patch_tokens()``) against a raw sequential read of the same files, per codec,
in the same run.

Shards: ``--samples`` samples of ``--frames`` frames of [730, 768] tokens per codec, values tiled from the full-size
model's float32 demo-scene tokens (``bench_cut3r_precision.py --save-tokens``; Gaussian tokens when absent). Before
every timed pass each file's pages are dropped from the page cache (``posix_fadvise(DONTNEED)`` after an fsync, for
these files only), so both paths read from the disk; passes alternate raw / reader and the best of ``--repeats`` is
kept. A page-cached ("warm") pass of each is reported too: there the reader is bound by its decoding, not the disk.

    python benchmarks/bench_token_read.py
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from results_io import write_results  # noqa: E402
from pipeline.core.shards import ShardWriter, shard_paths, write_index  # noqa: E402
from pipeline.core.tokens import (DECODE_THREADS_ENV, TokenSample, available_cpus, decode_threads,  # noqa: E402
                                  iter_samples, token_codec, write_sample)

# A reading-only process: decode on up to 4 threads unless the caller chose (the library's default is one).
os.environ.setdefault(DECODE_THREADS_ENV, str(min(4, available_cpus())))

CODECS = ("float32", "bfloat16", "float16", "float8_e4m3", "int8")
CHUNK = 16 << 20
TARGET_RATIO = 0.8


def source_tokens(path: Path, frames: int) -> np.ndarray:
    """[frames, 730, 768] float32: the demo-scene tokens tiled over frames, or Gaussian tokens."""
    if path.is_file():
        data = np.load(path)
        tokens = np.concatenate([data["camera"], data["patch"]], axis=2).reshape(-1, 730, data["patch"].shape[-1])
    else:
        tokens = np.random.default_rng(0).standard_normal((8, 730, 768)).astype(np.float32)
    return tokens[np.arange(frames) % len(tokens)]


def write_folder(folder: Path, tokens: np.ndarray, samples: int, codec: str, shard_bytes: int) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    t = tokens.shape[0]
    frames = [{"rank": i, "frame_index": i, "timestamp": float(i), "camera_to_world": list(np.eye(4).ravel()),
               "valid": True} for i in range(t)]
    with ShardWriter(folder, max_shard_bytes=shard_bytes) as writer:
        for i in range(samples):
            key = f"scannet_scene{i:04d}_00"
            meta = {"key": key, "dataset": "scannet", "scene_id": key, "model_id": "bench", "checkpoint_sha256": "0" * 64,
                    "dtype": codec, "storage": token_codec(codec).storage, "num_frames": t,
                    "num_patches": tokens.shape[1] - 1, "token_width": tokens.shape[2], "input_size": 432,
                    "with_points": False, "with_frames": False, "code_version": "bench"}
            # A different roll per sample, so samples differ.
            values = np.roll(tokens, i, axis=0)
            write_sample(writer, TokenSample.from_float(key, values[:, :1], values[:, 1:], frames, meta))
    write_index(folder, writer.records)


def drop_cache(paths: list[str]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def raw_read(paths: list[str]) -> int:
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    total = 0
    for path in paths:
        with open(path, "rb", buffering=0) as fh:
            while True:
                n = fh.readinto(view)
                if not n:
                    break
                total += n
    return total


def reader_read(folder: Path, verify_sha256: bool) -> int:
    values = 0
    for sample in iter_samples(folder, verify_sha256=verify_sha256):
        values += sample.camera_tokens().size + sample.patch_tokens().size
    return values


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=Path, default=Path("/tmp/vlm3r_bench_demo/fp32_tokens.npz"))
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--shard-bytes", type=int, default=200_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vlm3r_bench_read"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "token_read"))
    args = parser.parse_args(argv)

    tokens = source_tokens(args.tokens, args.frames)
    rows = {}
    for codec in CODECS:
        folder = args.workdir / codec
        write_folder(folder, tokens, args.samples, codec, args.shard_bytes)
        paths = shard_paths(folder)
        size = sum(os.path.getsize(p) for p in paths)
        cold = {"raw": [], "reader": [], "reader_sha256": []}
        for _ in range(args.repeats):
            for name, fn in (("raw", lambda: raw_read(paths)), ("reader", lambda: reader_read(folder, False)),
                             ("reader_sha256", lambda: reader_read(folder, True))):
                drop_cache(paths)
                cold[name].append(timed(fn))
        raw_read(paths)  # warm the cache
        warm = {"raw": min(timed(lambda: raw_read(paths)) for _ in range(args.repeats)),
                "reader": min(timed(lambda: reader_read(folder, False)) for _ in range(args.repeats))}
        frames = args.samples * args.frames
        row = {"files": len(paths), "bytes": size, "frames": frames, "mib_per_frame": size / frames / 2**20}
        for name, seconds in cold.items():
            row[f"cold_{name}_mib_per_s"] = size / min(seconds) / 2**20
        for name, seconds in warm.items():
            row[f"warm_{name}_mib_per_s"] = size / seconds / 2**20
        row["cold_ratio"] = row["cold_reader_mib_per_s"] / row["cold_raw_mib_per_s"]
        row["cold_ratio_sha256"] = row["cold_reader_sha256_mib_per_s"] / row["cold_raw_mib_per_s"]
        row["warm_ratio"] = row["warm_reader_mib_per_s"] / row["warm_raw_mib_per_s"]
        row["reader_frames_per_s_cold"] = frames / min(cold["reader"])
        rows[codec] = row
        print(codec, {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
        shutil.rmtree(folder)

    results = {
        "benchmark": "token_read",
        "data": f"{args.samples} samples x {args.frames} frames x [730, 768] tokens per codec, "
                f"{'demo-scene tokens' if args.tokens.is_file() else 'Gaussian tokens'}, shards of at most "
                f"{args.shard_bytes} bytes, in {args.workdir}",
        "reader": "iter_samples(tokens_dir, verify_sha256=False) + camera_tokens() + patch_tokens() (float32), "
                  "the next sample read ahead on a background thread (the default read_ahead_samples=1); "
                  "reader_sha256: the default verify_sha256=True (every shard hashed against index.json first)",
        "decode_threads": decode_threads(),
        "raw": f"sequential readinto of {CHUNK >> 20} MiB chunks, unbuffered",
        "cold": "posix_fadvise(DONTNEED) on every file before each pass; best of the repeats",
        "target_ratio": TARGET_RATIO, "repeats": args.repeats,
        "device": f"{platform.machine()}, {os.cpu_count()} CPUs", "load_average_1m": round(os.getloadavg()[0], 2),
        "codecs": rows,
    }
    out = Path(args.out)
    print(write_results(out, results, render_markdown))
    return 0


def render_markdown(r: dict) -> str:
    lines = [
        "# Token shard reading: the project's reader against a raw read of the same files", "",
        f"Data: {r['data']}. Reader: {r['reader']}; decoding on {r['decode_threads']} thread(s) (VLM3R_DECODE_THREADS). "
        f"Raw: {r['raw']}. Cold: {r['cold']}. Target: reader / raw >= {r['target_ratio']} (cold). Machine: "
        f"{r['device']}, 1-min load {r['load_average_1m']}.", "",
        "| codec | MiB/frame | cold raw MiB/s | cold reader MiB/s | ratio | ratio with sha256 | warm raw MiB/s "
        "| warm reader MiB/s | warm ratio | reader frames/s (cold) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for codec, c in r["codecs"].items():
        lines.append(f"| {codec} | {c['mib_per_frame']:.3f} | {c['cold_raw_mib_per_s']:.0f} | "
                     f"{c['cold_reader_mib_per_s']:.0f} | {c['cold_ratio']:.2f} | {c['cold_ratio_sha256']:.2f} | "
                     f"{c['warm_raw_mib_per_s']:.0f} | {c['warm_reader_mib_per_s']:.0f} | {c['warm_ratio']:.2f} | "
                     f"{c['reader_frames_per_s_cold']:.0f} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
