"""The pure core the extraction stage calls: preprocessed frames of B videos in, geometry tokens out."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from workers.cut3r.config import Cut3rConfig
from workers.cut3r.model import Cut3rModel


@dataclass
class EncodedBatch:
    """Per video b, frames t < lengths[b] are valid; later frames are zeros."""

    camera_tokens: torch.Tensor  # [B,T,1,C] float32 (or the compute dtype when keep_dtype=True)
    patch_tokens: torch.Tensor  # [B,T,N,C]
    lengths: torch.Tensor  # [B] int64
    points: torch.Tensor | None = None  # [B,T,N,3] metres-ish, first frame's camera (OpenCV axes), float32
    points_conf: torch.Tensor | None = None  # [B,T,N] mean confidence of each patch's pixels


def patch_points(points: torch.Tensor, conf: torch.Tensor, patch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel points [B,H,W,3] and confidences [B,H,W] -> per-patch means [B,N,3], [B,N] (row-major patches)."""
    pts = F.avg_pool2d(points.permute(0, 3, 1, 2), patch_size)  # [B,3,h,w]
    cf = F.avg_pool2d(conf[:, None], patch_size)
    return pts.flatten(2).transpose(1, 2), cf.flatten(1)


def random_model(config: Cut3rConfig, seed: int = 0) -> Cut3rModel:
    """A randomly initialised model (for the demo, tests and benchmarks): deterministic for a given seed.

    Linear weights are Xavier-uniform, convolutions get torch's default bound, vectors small Gaussian noise around the
    LayerNorm/bias defaults, the learned tokens and memory N(0, 0.02^2)/N(0, 0.2^2), as in the official init, so that
    activations and head outputs stay well scaled.
    """
    gen = torch.Generator().manual_seed(seed)
    model = Cut3rModel(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in ("pose_retriever.mem", "pose_retriever.masked_token"):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
            elif name in ("pose_token", "masked_img_token", "masked_ray_map_token"):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
            elif name == "register_tokens.weight":
                param.copy_(torch.randn(param.shape, generator=gen))
            elif param.ndim == 2:  # linear layers: Xavier-uniform, as croco initialises them
                bound = (6.0 / (param.shape[0] + param.shape[1])) ** 0.5
                param.copy_(torch.rand(param.shape, generator=gen) * (2 * bound) - bound)
            elif param.ndim > 2:  # convolutions: torch's default bound 1/sqrt(fan_in)
                bound = 1.0 / param[0].numel() ** 0.5
                param.copy_(torch.rand(param.shape, generator=gen) * (2 * bound) - bound)
            elif name.endswith(".weight") and "norm" in name:  # LayerNorm scale
                param.copy_(1.0 + 0.02 * torch.randn(param.shape, generator=gen))
            else:
                param.copy_(0.02 * torch.randn(param.shape, generator=gen))
    model.requires_grad_(False)
    return model.eval()


class Cut3rEncoder:
    """Runs a :class:`Cut3rModel` for token extraction.

    ``precision="auto"``: bf16 autocast on CUDA, float32 on CPU; ``"fp32"`` forces float32, ``"bf16"`` forces autocast.
    ``attention``: ``"fused"`` (scaled_dot_product_attention) or ``"eager"``; it is set on the model itself.
    ``compile=True`` replaces the model's per-frame ``step`` by a ``torch.compile``d one and turns on inductor's
    ``emulate_precision_casts`` (process-wide) so the encoder's float16 q/k rounding survives kernel fusion (without
    it, compiled tokens move by about 4e-4; with it, about 1e-5 from eager on the tiny model). Each new number of
    active videos compiles again.
    """

    def __init__(self, model: Cut3rModel, *, device: torch.device | str | None = None, precision: str = "auto",
                 attention: str = "fused", compile: bool = False):
        if precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval().set_attention(attention)
        self.precision = precision
        self.attention = attention
        if compile:
            import torch._inductor.config as inductor_config

            # Keep the encoder's float16 rounding of q/k: inductor drops casts inside fused kernels by default.
            inductor_config.emulate_precision_casts = True
            self.model.step = torch.compile(self.model.step, dynamic=False)  # type: ignore[method-assign]

    @property
    def config(self) -> Cut3rConfig:
        return self.model.cfg

    @property
    def compute_dtype(self) -> torch.dtype:
        if self.precision == "bf16" or (self.precision == "auto" and self.device.type == "cuda"):
            return torch.bfloat16
        return torch.float32

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.compute_dtype == torch.bfloat16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def encode(self, frames: torch.Tensor | list[torch.Tensor], lengths: torch.Tensor | list[int] | None = None,
               *, points: bool = False, keep_dtype: bool = False) -> EncodedBatch:
        """Encode B videos advancing in lock-step.

        ``frames``: preprocessed float [B,T,3,S,S] (see :func:`workers.cut3r.preprocess.preprocess_frames`) with
        ``lengths`` [B], or a list of B tensors [T_b,3,S,S] (padded here). ``points=True`` also runs the point head
        (``dpt_cross`` + pose-conditioned blocks) and returns per-patch 3D points in the first frame's camera.
        """
        if isinstance(frames, (list, tuple)):
            if lengths is not None:
                raise ValueError("lengths come from the list of videos; do not pass both")
            lengths = [int(f.shape[0]) for f in frames]
            t_max = max(lengths) if lengths else 0
            frames = torch.stack([F.pad(f, (0, 0, 0, 0, 0, 0, 0, t_max - f.shape[0])) for f in frames])
        frames = frames.to(self.device, non_blocking=True)
        if frames.ndim != 5:
            raise ValueError(f"expected frames [B,T,3,S,S], got {tuple(frames.shape)}")
        b, t = frames.shape[:2]
        lengths_t = (torch.full((b,), t, dtype=torch.long) if lengths is None
                     else torch.as_tensor(lengths, dtype=torch.long)).to(self.device)
        with self.autocast():
            out = self.model(frames, lengths_t, heads=("cross",) if points else False)
        cast = (lambda x: x) if keep_dtype else (lambda x: x.float())
        result = EncodedBatch(cast(out.camera_token), cast(out.patch_tokens), lengths_t)
        if points:
            pts = out.heads["pts3d_in_other_view"].flatten(0, 1).float()
            conf = out.heads["conf"].flatten(0, 1).float()
            p, c = patch_points(pts, conf, self.config.patch_size)  # padded frames stay zeros
            result.points, result.points_conf = p.unflatten(0, (b, t)), c.unflatten(0, (b, t))
        return result


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
