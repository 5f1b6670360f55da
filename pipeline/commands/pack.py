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
    model = _siglip_tower(Path(base)) if base != "tiny" and _is_siglip(Path(base)) else \
        build_model(config, lora=False).eval()

    def encode(images: list) -> np.ndarray:
        from pipeline.core.images import squash_rgb

        batch = np.stack([squash_rgb(im, IMAGE_SIZE) for im in images])
        pixels = (torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5
        with torch.no_grad():
            return model.vision_features(pixels).float().numpy()

    return encode, model_fingerprint(config)


def _is_siglip(folder: Path) -> bool:
    import json

    path = folder / "config.json"
    return path.is_file() and json.loads(path.read_text()).get("model_type") in ("siglip", "siglip_vision_model")


def _siglip_tower(folder: Path):
    """A bare SigLIP folder (e.g. google/siglip-so400m-patch14-384, the whole SigLIP or its vision model) as LLaVA
    uses it: last layer and head dropped, features = the last kept layer's hidden state."""
    import json

    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from pipeline.core.errors import InputError
    from workers.trainer.model import _drop_last_vision_layer, load_base_weights

    raw = json.loads((folder / "config.json").read_text())
    vision = dict(raw.get("vision_config", raw))
    vision.pop("model_type", None)
    vision.pop("architectures", None)

    class Tower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vision_tower = SiglipVisionModel(SiglipVisionConfig(**{**vision, "vision_use_head": False}))
            _drop_last_vision_layer(self.vision_tower)

        def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.vision_tower(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-1]

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise InputError(folder, "no *.safetensors weight files found")
    tower = Tower()
    report = load_base_weights(tower, files, (("vision_model.", "vision_tower.vision_model."), ("", "vision_tower.")))
    if report["missing"]:
        raise InputError(folder, f"SigLIP weights missing {report['missing'][:5]}")
    return tower.eval()


def run(args: argparse.Namespace) -> int:
    from pipeline.core.errors import InputError
    from pipeline.core.layout import DatasetRoot
    from pipeline.stages.pack import pack, train_dir

    root = DatasetRoot(args.root)
    encoder, fingerprint = (None, "")
    try:
        if args.vision_features:
            encoder, fingerprint = _vision_encoder(args.vision_features)
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
