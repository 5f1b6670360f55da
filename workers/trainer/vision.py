"""Pre-computed vision-tower features for training shards: a frozen tower as a function RGB frames -> features."""
from __future__ import annotations

from pathlib import Path

from pipeline.core.errors import InputError
from workers.trainer.model import _drop_last_vision_layer, load_base_weights


def vision_encoder(base: str):
    """A frozen vision tower as a function RGB frames -> [T, 729, d] features, and its fingerprint. ``base``: "tiny"
    (the tiny model's tower, built in code), a bare SigLIP folder, or a LLaVA-Video / LLaVA-OneVision folder."""
    import numpy as np
    import torch

    from workers.trainer.model import IMAGE_SIZE, ModelConfig, build_model, model_fingerprint

    config = ModelConfig.tiny() if base == "tiny" else ModelConfig(base=base)
    model = siglip_tower(Path(base)) if base != "tiny" and is_siglip(Path(base)) else \
        build_model(config, lora=False).eval()

    def encode(images: list) -> np.ndarray:
        from pipeline.core.images import squash_rgb

        batch = np.stack([squash_rgb(im, IMAGE_SIZE) for im in images])
        pixels = (torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5
        with torch.no_grad():
            return model.vision_features(pixels).float().numpy()

    return encode, model_fingerprint(config)


def is_siglip(folder: Path) -> bool:
    import json

    path = folder / "config.json"
    return path.is_file() and json.loads(path.read_text()).get("model_type") in ("siglip", "siglip_vision_model")


def siglip_tower(folder: Path):
    """A bare SigLIP folder (e.g. google/siglip-so400m-patch14-384, the whole SigLIP or its vision model) as LLaVA
    uses it: last layer and head dropped, features = the last kept layer's hidden state."""
    import json

    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel

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
