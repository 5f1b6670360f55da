"""``vlm3r-data dump-tokens``: one sample's geometry tokens, decoded to float32 whatever the codec, as an ``.npz``.

The file holds ``camera`` [T, 1, C] and ``patch`` [T, N, C] float32 and, when the sample has them, its points
(``points`` and ``points_cam0`` [T, N, 3] float32, ``points_valid`` [T, N] bool); it is written atomically. The sample is found through ``ROOT/tokens/index.json`` and only its shard is read
(its size and sha256 checked against the index).
"""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "write one token sample's decoded camera / patch tokens (and points) as float32 arrays to an .npz"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, type=Path, help="dataset root (ROOT) with tokens/index.json")
    parser.add_argument("--key", required=True, help="sample key, e.g. scannet_scene0000_00")
    parser.add_argument("--out", required=True, type=Path, help="the .npz file to write")


def run(args: argparse.Namespace) -> int:
    from pipeline.core.layout import DatasetRoot
    from pipeline.core.tokens import find_sample, write_decoded_npz

    root = DatasetRoot(args.root)     # bad roots, keys and paths: one line and exit 2 (pipeline.cli)
    root.check()
    sample = find_sample(root.tokens_dir, args.key)
    arrays = write_decoded_npz(sample, args.out)
    shapes = ", ".join(f"{name} {array.dtype} {list(array.shape)}" for name, array in arrays.items())
    print(f"dump-tokens: {args.key} ({sample.meta['dtype']} tokens) -> {args.out}: {shapes}")
    return 0
