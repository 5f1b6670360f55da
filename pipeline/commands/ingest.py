"""``vlm3r-data ingest``: raw dataset release -> canonical scenes and frame manifests."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pipeline.core.atomic import read_json
from pipeline.core.errors import ErrorRow, InputError, record_errors
from pipeline.core.layout import DATASETS, DONE_MARKER, VIDEO_DATASET, DatasetRoot
from pipeline.core.parallel import map_units
from pipeline.core.scene import DEFAULT_NUM_FRAMES

HELP = "read a raw ScanNet / ScanNet++ / ARKitScenes release or a video folder into canonical scenes + frame manifests"
STAGE = "ingest"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, choices=DATASETS, help="raw format of --raw")
    parser.add_argument("--raw", required=True, type=Path, help="root of the raw release")
    parser.add_argument("--out", required=True, type=Path, help="dataset root to write (ROOT)")
    parser.add_argument("--split", default=None, help="only scenes of this split (e.g. train, val)")
    parser.add_argument("--scenes", default=None, help="comma-separated scene ids; all scenes of the split when omitted")
    parser.add_argument("--stream", default=None, choices=("iphone", "dslr"),
                        help="ScanNet++ only: which capture to use as the video (default iphone)")
    parser.add_argument("--num-frames", type=int, default=DEFAULT_NUM_FRAMES,
                        help="frames per scene in the frame manifest (uniform among valid frames)")
    parser.add_argument("--no-verify-frames", action="store_true",
                        help="skip decoding the manifest frames at ingest (corrupt frames then surface in extract)")
    parser.add_argument("--force", action="store_true", help="re-ingest scenes that are already complete")
    parser.add_argument("--local", action="store_true", help="run in-process instead of on Ray")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers (local Ray cluster size)")
    parser.add_argument("--ray-address", default=None, help="join an existing Ray cluster")


def ingest_scene(job: dict[str, Any]) -> dict[str, Any]:
    """Read one scene with the dataset's reader and write it canonically. Runs inside a Ray task."""
    from pipeline.core.frames import decode_colors
    from pipeline.core.scene import manifest_frames, read_manifest, write_scene
    from pipeline.sources import get_reader

    reader = get_reader(job["dataset"], **job["reader_options"])
    scene = reader.read_scene(Path(job["raw"]), job["scene_id"], job["split"])
    out_dir = Path(job["scene_dir"])
    stats = write_scene(out_dir, scene, job["num_frames"], marker={"config": job["config"]})
    if job["verify_frames"]:
        try:
            decode_colors(manifest_frames(scene.frames, read_manifest(out_dir)))
        except InputError:
            (out_dir / DONE_MARKER).unlink(missing_ok=True)
            raise
    if scene.dataset == VIDEO_DATASET:  # what the video reader recorded, reported as warning rows
        from pipeline.sources.video import ingest_notes

        stats = {**stats, "notes": ingest_notes(scene, stats["manifest_frames"], job["num_frames"])}
    return stats


def run(args: argparse.Namespace) -> int:
    root = DatasetRoot(args.out)
    root.path.mkdir(parents=True, exist_ok=True)
    root.load_info()  # refuses a root of another format version
    from pipeline.sources import get_reader

    reader_options = {"stream": args.stream} if args.stream else {}
    if reader_options and args.dataset != "scannetpp":
        print("error: --stream applies to --dataset scannetpp only", file=sys.stderr)
        return 2
    reader = get_reader(args.dataset, **reader_options)
    if not args.raw.is_dir():
        print(f"error: {args.raw}: raw dataset folder not found", file=sys.stderr)
        return 2
    scenes = reader.list_scenes(args.raw, args.split)
    if args.scenes:
        wanted = [s.strip() for s in args.scenes.split(",") if s.strip()]
        known = dict(scenes)
        unknown = [s for s in wanted if s not in known]
        if unknown:
            print(f"error: scenes not found in {args.raw}: {', '.join(unknown)}", file=sys.stderr)
            return 2
        scenes = [(s, known[s]) for s in wanted]
    config = {"dataset": args.dataset, "raw": str(args.raw.resolve()), "num_frames": args.num_frames,
              "verify_frames": not args.no_verify_frames, "reader_options": reader_options}
    jobs, skipped = [], []
    for scene_id, split in scenes:
        scene_dir = root.scene_dir(args.dataset, scene_id)
        marker = scene_dir / DONE_MARKER
        if not args.force and marker.exists() and read_json(marker).get("config") == config:
            skipped.append(scene_id)
            continue
        jobs.append({"dataset": args.dataset, "raw": str(args.raw), "scene_id": scene_id, "split": split,
                     "scene_dir": str(scene_dir), "num_frames": args.num_frames,
                     "verify_frames": not args.no_verify_frames, "reader_options": reader_options,
                     "config": config})
    errors: list[ErrorRow] = []
    warnings: list[ErrorRow] = []
    done = 0
    for job, stats, exc in map_units(ingest_scene, jobs, local=args.local, workers=args.workers,
                                     ray_address=args.ray_address, desc=f"ingest {args.dataset}"):
        if exc is None:
            done += 1
            for note in stats.get("notes", []):
                warnings.append(ErrorRow(STAGE, args.dataset, job["scene_id"], f"warning:{note['kind']}",
                                         note["message"]))
                print(f"warning: {args.dataset}/{job['scene_id']}: {note['message']}", file=sys.stderr)
        else:
            errors.append(ErrorRow.from_exception(STAGE, args.dataset, job["scene_id"], exc))
            print(f"error: {args.dataset}/{job['scene_id']}: {exc}", file=sys.stderr)
    record_errors(root.errors_path, STAGE, [(args.dataset, j["scene_id"]) for j in jobs], errors + warnings)
    counts = {"scenes": len(scenes), "ingested": done, "skipped": len(skipped), "failed": len(errors)}
    root.record_stage(f"{STAGE}:{args.dataset}", config, counts)
    print(f"ingest {args.dataset}: {done} ingested, {len(skipped)} already complete, {len(errors)} failed "
          f"-> {root.path / 'scenes' / args.dataset}" + (f" (errors: {root.errors_path})" if errors else "")
          + (f" ({len(warnings)} warnings: {root.errors_path})" if warnings else ""))
    return 1 if errors else 0
