"""Frames as VLM-3R's CUT3R saw them: SigLIP's processor output, resized to the CUT3R input size.

1. squash (no aspect-ratio preservation) each uint8 RGB frame to ``squash_size`` x ``squash_size`` with PIL bicubic
   resampling, on uint8, as SigLIP's image processor does;
2. ``x / 255``, then normalise with mean 0.5 / std 0.5 -> [-1, 1];
3. resize bilinearly (``align_corners=False``, no antialiasing) to ``size`` x ``size`` with torch, as VLM-3R's
   ``prepare_input`` does (432 -> a 27 x 27 grid = 729 patch tokens).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PreprocessConfig:
    size: int = 432  # CUT3R input side (multiple of the patch size 16)
    squash_size: int | None = 384  # SigLIP side; None skips the squash and resizes the raw frame directly
    resample: str = "bicubic"  # PIL filter of the squash: "bicubic" (SigLIP) or "bilinear"

    def __post_init__(self) -> None:
        if self.size <= 0 or self.size % 16:
            raise ValueError(f"size must be a positive multiple of 16, got {self.size}")
        if self.squash_size is not None and self.squash_size <= 0:
            raise ValueError(f"squash_size must be positive, got {self.squash_size}")
        if self.resample not in ("bicubic", "bilinear"):
            raise ValueError(f"resample must be 'bicubic' or 'bilinear', got {self.resample!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def squash_uint8(frames: np.ndarray, side: int, resample: str = "bicubic") -> np.ndarray:
    """uint8 [T,H,W,3] -> uint8 [T,side,side,3] with PIL (the filter SigLIP's processor uses)."""
    from PIL import Image

    pil_filter = Image.Resampling.BICUBIC if resample == "bicubic" else Image.Resampling.BILINEAR
    out = np.empty((frames.shape[0], side, side, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        out[i] = np.asarray(Image.fromarray(frame).resize((side, side), resample=pil_filter))
    return out


def preprocess_frames(frames: np.ndarray | torch.Tensor, config: PreprocessConfig = PreprocessConfig(),
                      ) -> torch.Tensor:
    """uint8 RGB frames [T,H,W,3] -> float32 [T,3,size,size] in [-1, 1] (see the module docstring)."""
    if isinstance(frames, torch.Tensor):
        frames = frames.cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [T,H,W,3], got {frames.dtype} {tuple(frames.shape)}")
    if config.squash_size is not None:
        frames = squash_uint8(frames, config.squash_size, config.resample)
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).to(torch.float32)
    x = (x / 255.0 - 0.5) / 0.5
    if x.shape[-2:] != (config.size, config.size):
        x = F.interpolate(x, size=(config.size, config.size), mode="bilinear", align_corners=False)
    return x.contiguous()
