"""The pure core the extraction stage calls: preprocessed frames of B videos in, geometry tokens out."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from workers.cut3r.config import Cut3rConfig
from workers.cut3r.heads import pose_to_matrix
from workers.cut3r.model import Cut3rModel, RecurrentState, StepOutput


@dataclass
class EncodedBatch:
    """Per video b, frames t < lengths[b] are valid; later frames are zeros."""

    camera_tokens: torch.Tensor  # [B,T,1,C] float32 (or the compute dtype when keep_dtype=True)
    patch_tokens: torch.Tensor  # [B,T,N,C]
    lengths: torch.Tensor  # [B] int64
    points: torch.Tensor | None = None  # [B,T,N,3] metres-ish, first frame's camera (OpenCV axes), float32
    points_conf: torch.Tensor | None = None  # [B,T,N] mean confidence of each patch's pixels
    # [B,T,4,4] float32, the pose head's camera-to-world of each frame in the first frame's camera (OpenCV axes, the
    # points' scale); zeros past a video's length. The model's estimate: frame 0 is near identity only when trained.
    camera_poses: torch.Tensor | None = None

    def to_host(self) -> "EncodedBatch":
        """Every tensor in host memory, dtypes kept: from a GPU, copied into pinned memory asynchronously, then one
        synchronisation (a bf16 batch moves half the bytes of a float32 one)."""
        tensors = {f.name: getattr(self, f.name) for f in fields(self)}
        devices = {t.device.type for t in tensors.values() if t is not None}
        if devices <= {"cpu"}:
            return self
        host = {}
        for name, tensor in tensors.items():
            if tensor is None or tensor.device.type != "cuda":
                host[name] = tensor
                continue
            host[name] = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            host[name].copy_(tensor, non_blocking=True)
        torch.cuda.synchronize()
        return EncodedBatch(**host)


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


PRECISIONS = ("auto", "fp32", "bf16")
GPU_ENCODER_CHUNK = 64                   # frames per encoder call on CUDA
COMPILE_MODES = ("none", "default", "reduce-overhead")


class Cut3rEncoder:
    """Runs a :class:`Cut3rModel` for token extraction (the model is moved, cast and configured in place).

    ``precision``: ``"fp32"``; ``"bf16"``: bfloat16 weights and activations with float32 heads, RoPE and norm
    statistics (:meth:`Cut3rModel.set_precision`); ``"auto"``: bf16 on CUDA, fp32 elsewhere.
    ``attention``: ``"fused"`` (scaled_dot_product_attention) or ``"eager"``; it is set on the model itself.
    ``encoder_chunk``: frames per encoder call; the encoder runs over every frame of a batch before the recurrent
    decoder (:meth:`Cut3rModel.encode_frames`). Default: 64 on CUDA (tall matrices fill the GPU), else the number
    of videos, as the recurrent loop would (measured on CPU with the tiny model: 64-frame calls lose about 10% to
    cache misses, 8-frame ones lose nothing).
    ``compile``: ``"none"``, ``"default"`` (``torch.compile`` of the encoder call and of the recurrent step) or
    ``"reduce-overhead"`` (the same with CUDA graphs: the step's outputs are copied out of the graph's memory
    before the next replay). Compiling turns on inductor's ``emulate_precision_casts`` (process-wide) so the
    encoder's float16 q/k rounding survives kernel fusion (without it, compiled tokens move by about 4e-4; with
    it, about 1e-5 from eager on the tiny model). Each new number of active videos or chunk size compiles again.
    """

    def __init__(self, model: Cut3rModel, *, device: torch.device | str | None = None, precision: str = "auto",
                 attention: str = "fused", compile: str = "none", encoder_chunk: int | None = None):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {COMPILE_MODES}, got {compile!r}")
        if encoder_chunk is not None and encoder_chunk < 1:
            raise ValueError(f"encoder_chunk must be >= 1, got {encoder_chunk}")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        self.precision = precision
        self.attention = attention
        self.compile = compile
        self.encoder_chunk = encoder_chunk or (GPU_ENCODER_CHUNK if self.device.type == "cuda" else None)
        self.model = model.to(self.device).eval().set_attention(attention).set_precision(precision)
        _compile_model(self.model, compile)

    @property
    def config(self) -> Cut3rConfig:
        return self.model.cfg

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.model.compute_dtype

    @torch.inference_mode()
    def encode(self, frames: torch.Tensor | list[torch.Tensor], lengths: torch.Tensor | list[int] | None = None,
               *, points: bool = False, keep_dtype: bool = False) -> EncodedBatch:
        """Encode B videos advancing in lock-step.

        ``frames``: preprocessed float [B,T,3,S,S] (see :func:`workers.cut3r.preprocess.preprocess_frames`) with
        ``lengths`` [B], or a list of B tensors [T_b,3,S,S] (padded here), in host or device memory (host frames
        are copied to a GPU chunk by chunk, overlapped with the encoder). ``points=True`` also runs the point head
        (``dpt_cross`` + pose-conditioned blocks) and the pose head, and returns per-patch 3D points and each frame's
        camera-to-world pose, both in the first frame's camera.
        Tokens are float32 unless ``keep_dtype`` (then in the compute dtype); they stay on the model's device.
        """
        if isinstance(frames, (list, tuple)):
            if lengths is not None:
                raise ValueError("lengths come from the list of videos; do not pass both")
            lengths = [int(f.shape[0]) for f in frames]
            t_max = max(lengths) if lengths else 0
            frames = torch.stack([F.pad(f, (0, 0, 0, 0, 0, 0, 0, t_max - f.shape[0])) for f in frames])
        if frames.ndim != 5:
            raise ValueError(f"expected frames [B,T,3,S,S], got {tuple(frames.shape)}")
        b, t = frames.shape[:2]
        lengths_t = (torch.full((b,), t, dtype=torch.long) if lengths is None
                     else torch.as_tensor(lengths, dtype=torch.long)).to(self.device)
        out = self.model(frames, lengths_t, heads=("cross", "pose") if points else False,
                         encoder_chunk=self.encoder_chunk)
        cast = (lambda x: x) if keep_dtype else (lambda x: x.float())
        result = EncodedBatch(cast(out.camera_token), cast(out.patch_tokens), lengths_t)
        if points:
            pts = out.heads["pts3d_in_other_view"].flatten(0, 1).float()
            conf = out.heads["conf"].flatten(0, 1).float()
            p, c = patch_points(pts, conf, self.config.patch_size)  # padded frames stay zeros
            result.points, result.points_conf = p.unflatten(0, (b, t)), c.unflatten(0, (b, t))
            frame_valid = torch.arange(t, device=lengths_t.device)[None] < lengths_t[:, None]  # [B,T]
            poses = pose_to_matrix(out.heads["camera_pose"].float())  # padded frames (zero quaternion): NaN here
            result.camera_poses = torch.where(frame_valid[..., None, None], poses, torch.zeros_like(poses))
        return result


def _compile_model(model: Cut3rModel, mode: str) -> None:
    """Install (or, with ``"none"``, remove) compiled versions of the model's encoder call and recurrent step as
    instance attributes, so that :meth:`Cut3rModel.forward` calls them."""
    for name in ("encode_images", "step"):
        model.__dict__.pop(name, None)
    if mode == "none":
        return
    import torch._inductor.config as inductor_config

    # Keep the encoder's float16 rounding of q/k: inductor drops casts inside fused kernels by default.
    inductor_config.emulate_precision_casts = True
    options = {"mode": mode, "dynamic": False}
    compiled_encoder = torch.compile(model.encode_images, **options)
    compiled_step = torch.compile(model.step, **options)
    if mode != "reduce-overhead":
        model.encode_images = compiled_encoder  # type: ignore[method-assign]
        model.step = compiled_step  # type: ignore[method-assign]
        return

    # CUDA graphs replay into the same output memory: each call marks a new step, then copies what the caller keeps
    # (encoder tokens; step tokens, heads and state) out of it before the next replay overwrites it.
    def encoder_out_of_graph(*args, **kwargs):
        torch.compiler.cudagraph_mark_step_begin()
        return compiled_encoder(*args, **kwargs).clone()

    def step_out_of_graph(*args, **kwargs):
        torch.compiler.cudagraph_mark_step_begin()
        out, state = compiled_step(*args, **kwargs)
        return _cloned(out), RecurrentState(state.state_feat.clone(), state.mem.clone(), state.first.clone())

    model.encode_images = encoder_out_of_graph  # type: ignore[method-assign]
    model.step = step_out_of_graph  # type: ignore[method-assign]


def _cloned(out: StepOutput) -> StepOutput:
    return StepOutput(out.camera_token.clone(), out.patch_tokens.clone(),
                      {k: v.clone() for k, v in out.heads.items()}, {k: v.clone() for k, v in out.debug.items()})


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
