"""VLM-3R's fusion block: visual tokens attend to the frame's geometry tokens (camera token + patch tokens).

Parameter names are those of the released checkpoint (``model.fusion_block.<name>``), so VLM-3R's weights load by
name. Each frame's queries attend only to that frame's geometry tokens (frames are the batch axis).
"""
from __future__ import annotations

import torch
from torch import nn


class FusionBlock(nn.Module):
    def __init__(self, d_clip: int = 1152, d_spatial: int = 768, d_attn: int = 1152, num_heads: int = 18,
                 dropout: float = 0.1):
        super().__init__()
        self.clip_norm = nn.LayerNorm(d_clip)
        self.spatial_encoder_norm = nn.LayerNorm(d_spatial)
        self.clip_query_proj = nn.Linear(d_clip, d_attn)
        self.spatial_encoder_key_proj = nn.Linear(d_spatial, d_attn)
        self.spatial_encoder_value_proj = nn.Linear(d_spatial, d_attn)
        # nn.MultiheadAttention has its own in/out projections: Q/K/V are projected twice, as upstream.
        self.cross_attention = nn.MultiheadAttention(d_attn, num_heads, batch_first=True)
        self.out_proj = nn.Linear(d_attn, d_clip)
        self.out_norm = nn.LayerNorm(d_clip)
        self.dropout = nn.Dropout(dropout)

    def forward(self, visual_tokens: torch.Tensor, geometry_tokens: torch.Tensor) -> torch.Tensor:
        """visual_tokens [F, 729, d_clip], geometry_tokens [F, 730, d_spatial] -> fused [F, 729, d_clip]."""
        query = self.clip_query_proj(self.clip_norm(visual_tokens))
        spatial = self.spatial_encoder_norm(geometry_tokens)
        key = self.spatial_encoder_key_proj(spatial)
        value = self.spatial_encoder_value_proj(spatial)
        attended, _ = self.cross_attention(query, key, value, need_weights=False)
        # The residual adds the raw visual tokens; dropout covers the whole sum (upstream order).
        return self.dropout(self.out_norm(self.out_proj(attended)) + visual_tokens)


def pool_2x2(tokens: torch.Tensor, grid: int = 27, out: int = 14) -> torch.Tensor:
    """[F, grid*grid, C] -> [F, out*out, C] by bilinear interpolation (align_corners=False), as LLaVA-Video pools."""
    frames, n, channels = tokens.shape
    if n != grid * grid:
        raise ValueError(f"expected {grid}x{grid}={grid * grid} tokens per frame, got {n}")
    image = tokens.transpose(1, 2).reshape(frames, channels, grid, grid)
    pooled = nn.functional.interpolate(image, size=(out, out), mode="bilinear", align_corners=False)
    return pooled.flatten(2).transpose(1, 2)
