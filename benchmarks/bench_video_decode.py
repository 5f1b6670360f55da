"""Video decoding for the frame contract: N frames (default 32) uniformly spaced over a video, decoded by frame
number, decord against PyAV, side by side in one run.

Per video, the median over ``--repeats`` runs of:

- ``decord``: ``VideoReader`` open + ``get_batch`` of the N frames (what :mod:`pipeline.core.frames` uses for
  videos without a container rotation);
- ``pyav_seek``: :func:`pipeline.core.frames._decode_video_av` (index the packets, seek to the key frame before each
  wanted frame unless decoding on is shorter): the path for rotated phone videos and containers decord refuses;
- ``pyav_sequential``: decoding every frame from the start up to the last wanted one (the fallback before this
  benchmark; one run);
- ``decode_colors``: the whole call extract makes for a frame list (container-rotation check, decoder, rotate_k);
  the rotation check alone (PyAV open + first frame) is reported too;
- ``ingest_probe``: :func:`pipeline.sources.video.probe_video`, the one full decoding pass ingest makes to count the
  decodable frames (frames/s over all frames).

Videos: the demo's ScanNet++ ``iphone/rgb.mp4`` files (``vlm3r-data demo --out DIR`` first; ``--demo DIR``) and a
long 1080p H.264 video generated here (``--seconds`` at 30 fps, a key frame every 30 frames as phones record, moving
gradients plus noise so it does not compress to nothing). Writes ``benchmarks/results/video_decode.json`` and
``.md``::

    python benchmarks/bench_video_decode.py --demo /tmp/demo_v --seconds 60
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from results_io import write_results  # noqa: E402
from pipeline.core.frames import _decode_sequential, _decode_video_av, _stored_rotation, decode_colors  # noqa: E402
from pipeline.core.scene import uniform_ranks  # noqa: E402
from pipeline.sources.video import probe_video, video_frames_table  # noqa: E402


def write_long_video(path: Path, seconds: float, width: int = 1920, height: int = 1080, fps: int = 30) -> Path:
    """1080p H.264 (yuv420p, preset veryfast, key frame every 30 frames): a gradient that moves plus noise."""
    import av

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:2 * width]
    base = np.stack([(x * 255 // (2 * width)), (y * 255 // height), ((x + y) // 8) % 256], -1).astype(np.uint8)
    noise = rng.integers(0, 24, (8, height, width, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = fps
        stream.options = {"preset": "veryfast", "crf": "23"}
        for i in range(int(seconds * fps)):
            shift = (i * 7) % width
            frame = base[:, shift:shift + width] + noise[i % len(noise)]
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_video(path: Path, num_frames: int, repeats: int, sequential: bool) -> dict:
    import av
    import decord

    probe_s = _timed(lambda: probe_video(path), 1)
    probe = probe_video(path)
    total = len(probe.frame_pts)
    wanted = [int(i) for i in uniform_ranks(np.ones(total, bool), num_frames)]
    frames = video_frames_table(probe).take(wanted)

    def run_decord():
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        return vr.get_batch(wanted).asnumpy()

    def run_sequential():
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            return _decode_sequential(str(path), container, stream, wanted)

    # Same pixels from every path (the contract numbers frames the same way for all of them).
    reference = run_decord()
    seek = _decode_video_av(str(path), wanted)
    assert all(np.array_equal(reference[k], seek[n]) for k, n in enumerate(wanted)), f"{path}: decoders disagree"
    results = {
        "video": str(path), "size": [probe.stored_width, probe.stored_height], "frames": total,
        "codec": probe.codec, "file_mib": round(path.stat().st_size / 2**20, 2), "wanted": len(wanted),
        "seconds": {
            "decord": _timed(run_decord, repeats),
            "pyav_seek": _timed(lambda: _decode_video_av(str(path), wanted), repeats),
            "decode_colors": _timed(lambda: decode_colors(frames), repeats),
        },
        "rotation_check_s": _timed(lambda: _stored_rotation(str(path)), repeats),
        "ingest_probe_frames_per_s": total / probe_s,
    }
    if sequential:
        results["seconds"]["pyav_sequential"] = _timed(run_sequential, 1)
    results["frames_per_s"] = {k: len(wanted) / v for k, v in results["seconds"].items()}
    results["vs_decord"] = {k: results["seconds"]["decord"] / v for k, v in results["seconds"].items()}
    return results


def render_markdown(results: dict) -> str:
    lines = [f"# Video decoding for the frame contract ({results['num_frames']} uniformly spaced frames)", "",
             f"Host: {results['host']}; 1-min load average at start/end {results['load']} on {os.cpu_count()} CPUs. "
             "decord and PyAV each on one thread (as pipeline.core.frames uses them: one CPU per decode task). "
             "Median of the repeats; pyav_sequential once.", "",
             "| video | size | frames | decord f/s | pyav_seek f/s | decode_colors f/s | pyav_sequential f/s | "
             "pyav_seek / decord | rotation check ms | ingest probe f/s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["videos"]:
        fps = r["frames_per_s"]
        seq = f"{fps['pyav_sequential']:.1f}" if "pyav_sequential" in fps else "-"
        lines.append(f"| {Path(r['video']).parent.parent.name}/{Path(r['video']).name} | {r['size'][0]}x{r['size'][1]} "
                     f"| {r['frames']} | {fps['decord']:.1f} | {fps['pyav_seek']:.1f} | {fps['decode_colors']:.1f} | "
                     f"{seq} | {r['vs_decord']['pyav_seek']:.2f}x | {1000 * r['rotation_check_s']:.1f} | "
                     f"{r['ingest_probe_frames_per_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, default=Path("/tmp/demo_v"), help="a demo --out folder")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the generated 1080p video")
    parser.add_argument("--num-frames", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_video_decode"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "video_decode")
    args = parser.parse_args()

    load_start = os.getloadavg()[0]
    videos = sorted(args.demo.glob("raw/scannetpp/data/*/iphone/rgb.mp4")) + \
        sorted(args.demo.glob("raw/scannetpp/data/*/iphone/rgb.mkv"))
    args.work.mkdir(parents=True, exist_ok=True)
    long_video = args.work / f"long_1080p_{int(args.seconds)}s.mp4"
    if not long_video.is_file():
        t0 = time.perf_counter()
        write_long_video(long_video, args.seconds)
        print(f"wrote {long_video} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    results = {"num_frames": args.num_frames, "host": f"{platform.processor() or platform.machine()}, "
               f"{platform.python_version()}", "videos": []}
    for path in videos + [long_video]:
        r = bench_video(path, args.num_frames, args.repeats, sequential=True)
        print({k: round(v, 1) for k, v in r["frames_per_s"].items()}, path, file=sys.stderr)
        results["videos"].append(r)
    results["load"] = [round(load_start, 2), round(os.getloadavg()[0], 2)]
    print(write_results(args.out, results, render_markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
