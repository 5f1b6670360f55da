"""Pre-computed vision-tower features for training shards: a frozen tower as a function RGB frames -> features."""
from __future__ import annotations

from pathlib import Path

from pipeline.core.errors import InputError
from workers.trainer.model import (SIGLIP_FOLDER_KEY_MAP, _drop_last_vision_layer, _read_config, folder_tower,
                                   load_base_weights)


def vision_encoder(base: str):
    """A frozen vision tower as a function RGB frames -> [T, 729, d] features, and its fingerprint. ``base``: "tiny"
    (the tiny model's tower, built in code), a bare SigLIP folder, or a LLaVA-Video / LLaVA-OneVision folder (its
    tower alone is built and loaded, not its language model)."""
    import numpy as np
    import torch

    from workers.trainer.model import IMAGE_SIZE, ModelConfig, build_model, model_fingerprint

    config = ModelConfig.tiny() if base == "tiny" else ModelConfig(base=base)
    if base == "tiny":
        model = build_model(config, lora=False).eval()
    elif is_siglip(Path(base)):
        model = siglip_tower(Path(base))
    else:
        model = llava_tower(config)

    def encode(images: list) -> np.ndarray:
        from pipeline.core.images import squash_rgb

        batch = np.stack([squash_rgb(im, IMAGE_SIZE) for im in images])
        pixels = (torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5
        with torch.no_grad():
            return model.vision_features(pixels).float().numpy()

    return encode, model_fingerprint(config)


def is_siglip(folder: Path) -> bool:
    return (folder / "config.json").is_file() and \
        _read_config(folder).get("model_type") in ("siglip", "siglip_vision_model")


def _tower_module(tower):
    """A module holding ``tower`` as its ``vision_tower`` (the key layout of the full model), with LLaVA's feature
    read-out: the last kept layer's hidden state."""
    import torch

    class Tower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vision_tower = tower

        def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.vision_tower(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-1]

    return Tower()


def siglip_tower(folder: Path):
    """A bare SigLIP folder (e.g. google/siglip-so400m-patch14-384, the whole SigLIP or its vision model) as LLaVA
    uses it: last layer and head dropped, features = the last kept layer's hidden state."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    raw = _read_config(folder)
    vision = dict(raw.get("vision_config", raw))
    vision.pop("model_type", None)
    vision.pop("architectures", None)
    siglip = SiglipVisionModel(SiglipVisionConfig(**{**vision, "vision_use_head": False}))
    _drop_last_vision_layer(siglip)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise InputError(folder, "no *.safetensors weight files found")
    tower = _tower_module(siglip)
    report = load_base_weights(tower, files, SIGLIP_FOLDER_KEY_MAP)
    if report["missing"]:
        raise InputError(folder, f"SigLIP weights missing {report['missing'][:5]}")
    return tower.eval()


def llava_tower(config):
    """The vision tower of a LLaVA-Video / LLaVA-OneVision folder, loaded alone (the 7B language model beside it in
    the checkpoint is neither built nor read)."""
    siglip, files, key_map = folder_tower(config)
    if not files:
        raise InputError(config.base, "no *.safetensors weight files found")
    tower = _tower_module(siglip)
    report = load_base_weights(tower, files, key_map)
    if report["missing"]:
        raise InputError(config.base, f"vision tower weights missing {report['missing'][:5]}")
    return tower.eval()
