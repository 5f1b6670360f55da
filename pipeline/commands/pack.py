"""``vlm3r-data pack``: geometry tokens + frames + timing + all training QA of each scene → training shards."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "join token shards with the training QA into training shards (one sample per scene; benchmark scenes never)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, type=Path, help="dataset root")
    parser.add_argument("--max-shard-mb", type=float, default=1024.0, help="start a new shard beyond this size")
    parser.add_argument("--vision-features", default="",
                        help="store pre-computed vision-tower features instead of JPEGs: 'tiny' or a local "
                             "SigLIP / LLaVA model folder")
    parser.add_argument("--overwrite", action="store_true", help="discard existing training shards and repack")
    parser.add_argument("--no-verify", action="store_true", help="skip sha256 checks of existing shards")


def _vision_encoder(base: str):
    """A frozen vision tower as a function RGB frames -> [T, 729, d] features, and its fingerprint."""
    import numpy as np
    import torch

    from workers.trainer.model import IMAGE_SIZE, ModelConfig, build_model, model_fingerprint

    config = ModelConfig.tiny() if base == "tiny" else ModelConfig(base=base)
    model = build_model(config, lora=False).eval()

    def encode(images: list) -> np.ndarray:
        import cv2

        batch = np.stack([cv2.resize(im, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_CUBIC)
                          if im.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE) else im for im in images])
        pixels = (torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5
        with torch.no_grad():
            return model.vision_features(pixels).float().numpy()

    return encode, model_fingerprint(config)


def run(args: argparse.Namespace) -> int:
    from pipeline.errors import InputError
    from pipeline.layout import DatasetRoot
    from pipeline.pack import pack, train_dir

    root = DatasetRoot(args.root)
    encoder, fingerprint = (None, "")
    if args.vision_features:
        encoder, fingerprint = _vision_encoder(args.vision_features)
    try:
        result = pack(root, max_shard_bytes=int(args.max_shard_mb * (1 << 20)), vision_encoder=encoder,
                      vision_model=fingerprint, verify_sha256=not args.no_verify, overwrite=args.overwrite)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    scenes = sum(len(r.keys) for r in result.shards)
    print(f"pack: {len(result.packed)} scenes packed now, {result.skipped_done} already packed, "
          f"{result.skipped_benchmark} benchmark scenes left out, {result.skipped_no_qa} without training QA, "
          f"{len(result.errors)} failed; {scenes} scenes in {len(result.shards)} shards -> {train_dir(root)}")
    for err in result.errors[:10]:
        print(f"  failed {err.dataset}/{err.scene_id}: {err.message}", file=sys.stderr)
    return 1 if result.errors else 0
