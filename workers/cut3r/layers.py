"""Transformer building blocks of CUT3R, named like the official modules so state dicts load key for key.

RoPE follows croco's cuRoPE2D kernel: for a head of size D, Q = D/4 frequencies ``base**(-j/Q)`` (j < Q); the first
half of the head rotates by the token's y position, the second half by x; inside each half the pairs are
(j, j+Q) ("rotate half"): ``u' = u cos - v sin``, ``v' = v cos + u sin``. Angles and products are float32.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


# ---------------------------------------------------------------------------------------------------------------------
# 2D rotary position embedding
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RopeTable:
    """cos/sin for one set of token positions and one head size: each [B or 1, 1, N, D] float32."""

    cos: torch.Tensor
    sin: torch.Tensor


def rope_table(positions: torch.Tensor, head_dim: int, base: float) -> RopeTable:
    """``positions`` [B, N, 2] (y, x), integer or float; returns tables broadcastable over heads."""
    if head_dim % 4:
        raise ValueError(f"RoPE2D needs a head size that is a multiple of 4, got {head_dim}")
    q = head_dim // 4
    device = positions.device
    inv_freq = 1.0 / torch.pow(torch.tensor(float(base), dtype=torch.float32, device=device),
                               torch.arange(q, dtype=torch.float32, device=device) / q)
    pos = positions.to(torch.float32)
    ang_y = pos[..., 0:1] * inv_freq  # [B, N, Q]
    ang_x = pos[..., 1:2] * inv_freq
    cos = torch.cat([ang_y.cos(), ang_y.cos(), ang_x.cos(), ang_x.cos()], dim=-1)
    sin = torch.cat([ang_y.sin(), ang_y.sin(), ang_x.sin(), ang_x.sin()], dim=-1)
    return RopeTable(cos.unsqueeze(1), sin.unsqueeze(1))


def _rotate_half_pairs(t: torch.Tensor) -> torch.Tensor:
    # [..., (half, uv, Q)] -> (-v, u) inside each half
    q = t.shape[-1] // 4
    t = t.unflatten(-1, (2, 2, q))
    return torch.stack((-t[..., 1, :], t[..., 0, :]), dim=-2).flatten(-3)


def apply_rope(t: torch.Tensor, table: RopeTable, fp16_round: bool = False) -> torch.Tensor:
    """Rotate ``t`` [B, H, N, D]; computed in float32 and returned in ``t``'s dtype.

    ``fp16_round`` reproduces croco's encoder, which casts q and k to float16 before the kernel and the kernel writes
    float16 back: the input and the result are both rounded to float16.
    """
    dtype = t.dtype
    x = t.to(torch.float16).float() if fp16_round else t.float()
    out = x * table.cos + _rotate_half_pairs(x) * table.sin
    if fp16_round:
        out = out.to(torch.float16)
    return out.to(dtype)


# ---------------------------------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------------------------------
def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eager: bool) -> torch.Tensor:
    """Softmax attention over [B, H, N, D]; ``eager`` spells it out (the reference path), else the fused kernel."""
    if not eager:
        return F.scaled_dot_product_attention(q, k, v)
    scale = q.shape[-1] ** -0.5
    weights = torch.softmax((q * scale) @ k.transpose(-2, -1), dim=-1)
    return weights @ v


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Attention(nn.Module):
    """Self-attention with a fused qkv projection (keys ``qkv``, ``proj``)."""

    def __init__(self, dim: int, num_heads: int, fp16_rope: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.fp16_rope = fp16_rope
        self.eager = False
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: RopeTable | None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q = apply_rope(q, rope, self.fp16_rope)
            k = apply_rope(k, rope, self.fp16_rope)
        out = attend(q, k, v, self.eager)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class CrossAttention(nn.Module):
    """Queries from ``x``, keys/values from ``y`` (keys ``projq``, ``projk``, ``projv``, ``proj``)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.eager = False
        self.projq = nn.Linear(dim, dim)
        self.projk = nn.Linear(dim, dim)
        self.projv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor, x_rope: RopeTable | None, y_rope: RopeTable | None,
                ) -> torch.Tensor:
        b, nq, c = x.shape
        nk = y.shape[1]
        h = self.num_heads
        q = self.projq(x).reshape(b, nq, h, c // h).transpose(1, 2)
        k = self.projk(y).reshape(b, nk, h, c // h).transpose(1, 2)
        v = self.projv(y).reshape(b, nk, h, c // h).transpose(1, 2)
        if x_rope is not None:
            q = apply_rope(q, x_rope)
        if y_rope is not None:
            k = apply_rope(k, y_rope)
        out = attend(q, k, v, self.eager)
        return self.proj(out.transpose(1, 2).reshape(b, nq, c))


class EncoderBlock(nn.Module):
    """Pre-norm ViT block (croco ``Block``)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float, fp16_rope: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, fp16_rope=fp16_rope)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, rope: RopeTable | None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """Self-attention, cross-attention to a normalised memory ``y``, MLP (dust3r ``DecoderBlock``)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float, norm_mem: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.norm3 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = nn.LayerNorm(dim, eps=eps) if norm_mem else nn.Identity()

    def forward(self, x: torch.Tensor, y: torch.Tensor, x_rope: RopeTable | None, y_rope: RopeTable | None,
                ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), x_rope)
        y = self.norm_y(y)
        x = x + self.cross_attn(self.norm2(x), y, x_rope, y_rope)
        return x + self.mlp(self.norm3(x))


class ModLN(nn.Module):
    """adaLN: LayerNorm then ``x * (1 + scale) + shift`` with (shift, scale) from an MLP of the condition."""

    def __init__(self, dim: int, mod_dim: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(mod_dim, dim * 2))

    def forward(self, x: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        shift, scale = self.mlp(mod).chunk(2, dim=-1)  # each [B, D]
        return self.norm(x) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class ConditionModulationBlock(nn.Module):
    """ViT block whose two norms are modulated by the pose token (the heads' ``final_transform``)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.norm1 = ModLN(dim, dim, eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = ModLN(dim, dim, eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, mod: torch.Tensor, rope: RopeTable | None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x, mod), rope)
        return x + self.mlp(self.norm2(x, mod))


class PatchEmbed(nn.Module):
    """Non-overlapping patch convolution (key ``proj``); tokens in row-major order (index = y * W/p + x)."""

    def __init__(self, in_chans: int, dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
        return self.proj(x).flatten(2).transpose(1, 2).float()


def grid_positions(h: int, w: int, device: torch.device | str | None = None) -> torch.Tensor:
    """[h*w, 2] int64 (y, x) in row-major order."""
    ys = torch.arange(h, device=device)
    xs = torch.arange(w, device=device)
    return torch.cartesian_prod(ys, xs)
