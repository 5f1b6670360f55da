"""Benchmark-question throughput of ``predict`` with the tiny model: questions per second of
:func:`workers.trainer.predict.predict` (questions grouped by video: frames encoded once, the prompt prefix with the
video tokens prefilled once per video) against answering every question on its own (frames encoded and the whole
prompt prefilled per question, :meth:`VLM3R.generate`), on the same questions in the same run.

The root holds ``--videos`` token samples of ``--frames`` frames (729 patch tokens + 1 camera token of width 768, as
CUT3R at 432x432; 384x384 JPEG frames) written with the real shard writer, and ``--questions-per-video`` VSI-Bench
questions each (half multiple choice, half numeric). Writes ``benchmarks/results/predict.json`` and ``.md``::

    python benchmarks/bench_predict.py --videos 3 --questions-per-video 8
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
from pipeline.core.layout import DatasetRoot, scene_key  # noqa: E402
from pipeline.core.shards import ShardWriter, write_index  # noqa: E402
from pipeline.core.tokens import TokenSample, encode_tokens, iter_samples, write_sample  # noqa: E402
from workers.trainer.data import collate, encode_conversation, user_text  # noqa: E402
from workers.trainer.model import ModelConfig, build_model  # noqa: E402
from workers.trainer.predict import predict, scene_inputs  # noqa: E402
from workers.trainer.tokenizer import ByteTokenizer  # noqa: E402

PATCHES, WIDTH = 729, 768


def build_root(path: Path, videos: int, frames: int, per_video: int) -> tuple[DatasetRoot, list[dict]]:
    import cv2

    rng = np.random.default_rng(0)
    root = DatasetRoot(path)
    questions = []
    with ShardWriter(root.tokens_dir, max_shard_bytes=1 << 32) as writer:
        for v in range(videos):
            name = f"clip{v:03d}"
            key = scene_key("video", name)
            jpegs = [cv2.imencode(".jpg", rng.integers(0, 256, (384, 384, 3), dtype=np.uint8))[1].tobytes()
                     for _ in range(frames)]
            meta = {"key": key, "dataset": "video", "scene_id": name, "model_id": "bench",
                    "checkpoint_sha256": "0" * 64,
                    "dtype": "bfloat16", "storage": "uint16_bits", "num_frames": frames, "num_patches": PATCHES,
                    "token_width": WIDTH, "input_size": 432, "with_points": False, "with_frames": True,
                    "code_version": "bench"}
            rows = [{"rank": r, "frame_index": r, "timestamp": r / 10, "camera_to_world": None, "valid": False}
                    for r in range(frames)]
            write_sample(writer, TokenSample(
                key, encode_tokens(rng.standard_normal((frames, 1, WIDTH), np.float32), "bfloat16"),
                encode_tokens(rng.standard_normal((frames, PATCHES, WIDTH), np.float32), "bfloat16"), rows, meta,
                jpegs=jpegs))
            for q in range(per_video):
                record = {"id": len(questions), "dataset": "bench", "scene_name": name, "scene_key": key}
                if q % 2:
                    record.update(question_type="object_rel_distance", question=f"Which object is closest to the "
                                  f"tv? ({q})", options=["A. chair", "B. sofa", "C. bed", "D. lamp"],
                                  ground_truth="A")
                else:
                    record.update(question_type="object_counting", question=f"How many chair(s) are in this room? "
                                  f"({q})", options=None, ground_truth="2")
                questions.append(record)
    write_index(root.tokens_dir, writer.records)
    return root, questions


def one_by_one(model, tokenizer, root: DatasetRoot, questions: list[dict], max_new_tokens: int) -> list[str]:
    """Every question on its own: its video's inputs read, frames encoded, the whole prompt prefilled."""
    by_key = {}
    for q in questions:
        by_key.setdefault(q["scene_key"], []).append(q)
    answers = []
    for sample in iter_samples(root.tokens_dir, verify_sha256=False):
        for q in by_key.get(sample.key, []):
            inputs = scene_inputs(root, sample)
            ids = encode_conversation(tokenizer, user_text(q), None)[0]
            batch = collate([(ids, ids, inputs)], tokenizer.pad_id)
            (tokens,) = model.generate(batch, max_new_tokens, tokenizer.im_end_id)
            answers.append(tokenizer.decode(tokens).strip())
    return answers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--questions-per-video", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_predict"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "predict")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    root, questions = build_root(args.work / f"root_{os.getpid()}", args.videos, args.frames,
                                 args.questions_per_video)
    torch.manual_seed(0)
    model = build_model(ModelConfig.tiny(d_spatial=WIDTH)).eval()
    tokenizer = ByteTokenizer()
    predict(model, tokenizer, root, questions[:1], args.work / "warmup.jsonl", max_new_tokens=2)   # first-call costs

    t0 = time.perf_counter()
    summary = predict(model, tokenizer, root, questions, args.work / "pred.jsonl", max_new_tokens=args.max_new_tokens)
    grouped_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        alone = one_by_one(model, tokenizer, root, questions, args.max_new_tokens)
    alone_s = time.perf_counter() - t0
    grouped = [json.loads(line)["prediction"] for line in (args.work / "pred.jsonl").read_text().splitlines()]
    same = grouped == alone       # ids are 0..n-1 in video order, so both lists are in question order

    results = {
        "videos": args.videos, "frames": args.frames, "questions": len(questions), "answered": summary.answered,
        "max_new_tokens": args.max_new_tokens, "threads": args.threads,
        "grouped_seconds": grouped_s, "one_by_one_seconds": alone_s,
        "grouped_questions_per_s": len(questions) / grouped_s, "one_by_one_questions_per_s": len(questions) / alone_s,
        "speedup": alone_s / grouped_s, "same_answers": same,
        "host": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        "load": [round(load_start, 2), round(os.getloadavg()[0], 2)],
    }
    md = "\n".join([
        "# predict: benchmark questions per second (tiny model, CPU)", "",
        f"{args.videos} videos x {args.frames} frames (730 x 768 geometry tokens, 384x384 JPEG frames per frame), "
        f"{args.questions_per_video} questions per video, greedy, at most {args.max_new_tokens} new tokens, "
        f"torch on {args.threads} thread(s); {results['host']}; 1-min load average at start/end {results['load']} "
        f"on {os.cpu_count()} CPUs.", "",
        "| path | seconds | questions/s |", "|---|---|---|",
        f"| predict (grouped by video, prefix cached) | {grouped_s:.2f} | {results['grouped_questions_per_s']:.2f} |",
        f"| one question at a time (frames + whole prompt each time) | {alone_s:.2f} | "
        f"{results['one_by_one_questions_per_s']:.2f} |", "",
        f"Grouped / one by one: {results['speedup']:.2f}x questions/s; same answers: {same}.", ""])
    print(write_results(args.out, results, lambda _: md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
