"""CUT3R prediction heads: the DPT head (``cut3r_512_dpt_4_64``) and the linear head (``cut3r_224_linear_4``).

Both take the decoder outputs ``[dec[0], dec[d/2][:, 1:], dec[3d/4][:, 1:], dec[d]]`` (``dec[d]`` still carries the
pose token in front), the image size and the patch RoPE table, and return a dict of per-pixel outputs:

* ``pts3d_in_self_view`` [B,H,W,3] and ``conf_self`` [B,H,W]: points in the frame's own camera;
* ``pts3d_in_other_view`` [B,H,W,3] and ``conf`` [B,H,W]: points in the first frame's camera (the "world");
* ``rgb`` [B,H,W,3] in (-1, 1); ``camera_pose`` [B,7] = (t, q_wxyz), camera-to-world, qw >= 0, in the first
  frame's camera (OpenCV axes, the model's scale); :func:`pose_to_matrix` makes it a 4x4 matrix.

``parts`` selects what to compute: ``"self"``, ``"cross"``, ``"rgb"``, ``"pose"`` (``"cross"`` implies the pose MLP's
input only, not its output).
"""
from __future__ import annotations

import contextlib
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from workers.cut3r.config import Cut3rConfig
from workers.cut3r.layers import ConditionModulationBlock, Mlp, RopeTable

ALL_PARTS = frozenset({"self", "cross", "rgb", "pose"})


# ---------------------------------------------------------------------------------------------------------------------
# Output post-processing (dust3r conventions)
# ---------------------------------------------------------------------------------------------------------------------
def reg_dense_depth(xyz: torch.Tensor, mode: tuple, pos_z: bool = False) -> torch.Tensor:
    kind = mode[0]
    if kind == "linear":
        return xyz
    if pos_z:
        xyz = xyz * torch.sign(xyz[..., -1:])
    d = xyz.norm(dim=-1, keepdim=True)
    xyz = xyz / d.clip(min=1e-8)
    if kind == "square":
        return xyz * d.square()
    return xyz * torch.expm1(d)


def reg_dense_conf(x: torch.Tensor, mode: tuple) -> torch.Tensor:
    kind, vmin, vmax = mode
    if kind == "exp":
        return vmin + x.exp().clip(max=vmax - vmin)
    return (vmax - vmin) * torch.sigmoid(x) + vmin


def postprocess_points(out: torch.Tensor, depth_mode: tuple, conf_mode: tuple, pos_z: bool = False,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    fmap = out.permute(0, 2, 3, 1)  # B,H,W,4
    return reg_dense_depth(fmap[..., 0:3], depth_mode, pos_z), reg_dense_conf(fmap[..., 3], conf_mode)


def postprocess_rgb(out: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    rgb = torch.sigmoid(out.permute(0, 2, 3, 1)) * (1 - 2 * eps) + eps
    return (rgb - 0.5) * 2


def postprocess_pose(out: torch.Tensor, mode: tuple) -> torch.Tensor:
    trans, quats = out[..., 0:3], out[..., 3:7]
    kind = mode[0]
    if kind == "linear":
        return trans
    d = trans.norm(dim=-1, keepdim=True)
    scale = d.square() / d.clip(min=1e-8) if kind == "square" else torch.expm1(d) / d.clip(min=1e-8)
    quats = F.normalize(quats, p=2, dim=-1)
    quats = torch.where(quats[..., 0:1] < 0, -quats, quats)
    return torch.cat([trans * scale, quats], dim=-1)


def pose_to_matrix(pose: torch.Tensor) -> torch.Tensor:
    """``camera_pose`` [...,7] = (t, q_wxyz) -> camera-to-world [...,4,4], as the official ``pose_encoding_to_camera``
    builds it (``R`` from the quaternion scaled by 2/|q|^2, so an unnormalised one gives the same rotation)."""
    t, q = pose[..., :3], pose[..., 3:7]
    r, i, j, k = q.unbind(-1)
    two_s = 2.0 / (q * q).sum(-1)
    rot = torch.stack((
        1 - two_s * (j * j + k * k), two_s * (i * j - k * r), two_s * (i * k + j * r),
        two_s * (i * j + k * r), 1 - two_s * (i * i + k * k), two_s * (j * k - i * r),
        two_s * (i * k - j * r), two_s * (j * k + i * r), 1 - two_s * (i * i + j * j),
    ), -1).unflatten(-1, (3, 3))
    out = torch.zeros(pose.shape[:-1] + (4, 4), dtype=pose.dtype, device=pose.device)
    out[..., :3, :3] = rot
    out[..., :3, 3] = t
    out[..., 3, 3] = 1
    return out


# ---------------------------------------------------------------------------------------------------------------------
# DPT
# ---------------------------------------------------------------------------------------------------------------------
class ResidualConvUnit(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class FeatureFusionBlock(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class _Scratch(nn.Module):
    def __init__(self, layer_dims: tuple, features: int):
        super().__init__()
        self.layer1_rn = nn.Conv2d(layer_dims[0], features, 3, padding=1, bias=False)
        self.layer2_rn = nn.Conv2d(layer_dims[1], features, 3, padding=1, bias=False)
        self.layer3_rn = nn.Conv2d(layer_dims[2], features, 3, padding=1, bias=False)
        self.layer4_rn = nn.Conv2d(layer_dims[3], features, 3, padding=1, bias=False)
        # The official module lists the same four convolutions again: its state dict has both key sets (aliases).
        self.layer_rn = nn.ModuleList([self.layer1_rn, self.layer2_rn, self.layer3_rn, self.layer4_rn])
        self.refinenet1 = FeatureFusionBlock(features)
        self.refinenet2 = FeatureFusionBlock(features)
        self.refinenet3 = FeatureFusionBlock(features)
        self.refinenet4 = FeatureFusionBlock(features)


class _Upsample2x(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class DPTAdapter(nn.Module):
    """DPT decoder over four token maps at 1/16 resolution -> ``num_channels`` maps at full resolution."""

    def __init__(self, dims_in: tuple, num_channels: int, feature_dim: int, last_dim: int, layer_dims: tuple,
                 patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        ld = layer_dims
        self.scratch = _Scratch(ld, feature_dim)
        self.head = nn.Sequential(
            nn.Conv2d(feature_dim, feature_dim // 2, 3, padding=1),
            _Upsample2x(),
            nn.Conv2d(feature_dim // 2, last_dim, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(last_dim, num_channels, 1),
        )
        self.act_postprocess = nn.ModuleList([
            nn.Sequential(nn.Conv2d(dims_in[0], ld[0], 1), nn.ConvTranspose2d(ld[0], ld[0], 4, stride=4)),
            nn.Sequential(nn.Conv2d(dims_in[1], ld[1], 1), nn.ConvTranspose2d(ld[1], ld[1], 2, stride=2)),
            nn.Sequential(nn.Conv2d(dims_in[2], ld[2], 1)),
            nn.Sequential(nn.Conv2d(dims_in[3], ld[3], 1), nn.Conv2d(ld[3], ld[3], 3, stride=2, padding=1)),
        ])

    def forward(self, tokens: list[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        h, w = image_size
        nh, nw = h // self.patch_size, w // self.patch_size
        layers = [t.transpose(1, 2).reshape(t.shape[0], t.shape[2], nh, nw) for t in tokens]
        layers = [self.act_postprocess[i](x) for i, x in enumerate(layers)]
        layers = [self.scratch.layer_rn[i](x) for i, x in enumerate(layers)]
        # With an odd token grid the stride-2 conv rounds up: crop back to the next level's size.
        path = self.scratch.refinenet4(layers[3])[:, :, : layers[2].shape[2], : layers[2].shape[3]]
        path = self.scratch.refinenet3(path, layers[2])
        path = self.scratch.refinenet2(path, layers[1])
        path = self.scratch.refinenet1(path, layers[0])
        return self.head(path)


class PoseDecoder(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.mlp = Mlp(dim, dim * 4, 7)

    def forward(self, pose_token: torch.Tensor) -> torch.Tensor:
        return self.mlp(pose_token)


def _no_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """The heads' pixel decoders run in float32 even under autocast, as in the official code."""
    if device_type == "meta":  # FLOP counting
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)


class DPTPts3dPose(nn.Module):
    def __init__(self, cfg: Cut3rConfig):
        super().__init__()
        self.cfg = cfg
        ed, dd = cfg.enc_embed_dim, cfg.dec_embed_dim
        dims_in = (ed, dd, dd, dd)
        args = dict(feature_dim=cfg.dpt_feature_dim, last_dim=cfg.dpt_last_dim,
                    layer_dims=tuple(cfg.dpt_layer_dims), patch_size=cfg.patch_size)
        self.dpt_self = DPTAdapter(dims_in, 4, **args)
        self.final_transform = nn.ModuleList(
            [ConditionModulationBlock(dd, cfg.dec_num_heads, 4.0, cfg.norm_eps) for _ in range(2)])
        self.dpt_cross = DPTAdapter(dims_in, 4, **args)
        if cfg.rgb_head:
            self.dpt_rgb = DPTAdapter(dims_in, 3, **args)
        self.pose_head = PoseDecoder(dd)

    def forward(self, dec: list[torch.Tensor], image_size: tuple[int, int], patch_rope: RopeTable,
                parts: Iterable[str] = ALL_PARTS) -> dict[str, torch.Tensor]:
        parts = set(parts)
        cfg = self.cfg
        device_type = dec[-1].device.type
        # float32 from here on (a bf16 model keeps its heads in float32, as the official code runs them)
        pose_token, tokens = dec[-1][:, 0].float(), dec[-1][:, 1:].float()
        plain = [dec[0].float(), dec[1].float(), dec[2].float(), tokens]
        out: dict[str, torch.Tensor] = {}
        if "cross" in parts:
            cross = tokens
            for blk in self.final_transform:
                cross = blk(cross, pose_token, patch_rope)
        with _no_autocast(device_type):
            if "self" in parts:
                out["pts3d_in_self_view"], out["conf_self"] = postprocess_points(
                    self.dpt_self(plain, image_size), cfg.depth_mode, cfg.conf_mode)
            if "rgb" in parts and cfg.rgb_head:
                out["rgb"] = postprocess_rgb(self.dpt_rgb(plain, image_size))
            if "pose" in parts:
                out["camera_pose"] = postprocess_pose(self.pose_head(pose_token.float()), cfg.pose_mode)
            if "cross" in parts:
                out["pts3d_in_other_view"], out["conf"] = postprocess_points(
                    self.dpt_cross(plain[:3] + [cross.float()], image_size), cfg.depth_mode, cfg.conf_mode)
        return out


class LinearPts3dPose(nn.Module):
    """Per-token MLPs whose outputs are pixel-shuffled into 16x16 pixel blocks."""

    def __init__(self, cfg: Cut3rConfig):
        super().__init__()
        self.cfg = cfg
        dd, p = cfg.dec_embed_dim, cfg.patch_size
        hidden = int(4.0 * dd)
        self.proj = Mlp(dd, hidden, 4 * p * p)
        if cfg.rgb_head:
            self.rgb_proj = Mlp(dd, hidden, 3 * p * p)
        self.pose_head = PoseDecoder(dd)
        self.final_transform = nn.ModuleList(
            [ConditionModulationBlock(dd, cfg.dec_num_heads, 4.0, cfg.norm_eps) for _ in range(2)])
        self.cross_proj = Mlp(dd, hidden, 4 * p * p)

    def _to_image(self, feat: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        h, w = image_size
        p = self.cfg.patch_size
        b = feat.shape[0]
        return F.pixel_shuffle(feat.transpose(-1, -2).reshape(b, -1, h // p, w // p), p)

    def forward(self, dec: list[torch.Tensor], image_size: tuple[int, int], patch_rope: RopeTable,
                parts: Iterable[str] = ALL_PARTS) -> dict[str, torch.Tensor]:
        parts = set(parts)
        cfg = self.cfg
        device_type = dec[-1].device.type
        # float32 from here on (a bf16 model keeps its heads in float32, as the official code runs them)
        pose_token, tokens = dec[-1][:, 0].float(), dec[-1][:, 1:].float()
        out: dict[str, torch.Tensor] = {}
        if "cross" in parts:
            cross = tokens
            for blk in self.final_transform:
                cross = blk(cross, pose_token, patch_rope)
        with _no_autocast(device_type):
            tokens = tokens.float()
            if "self" in parts:
                # The linear head flips each self-view point to positive depth (dust3r's pos_z).
                out["pts3d_in_self_view"], out["conf_self"] = postprocess_points(
                    self._to_image(self.proj(tokens), image_size), cfg.depth_mode, cfg.conf_mode, pos_z=True)
            if "rgb" in parts and cfg.rgb_head:
                out["rgb"] = postprocess_rgb(self._to_image(self.rgb_proj(tokens), image_size))
            if "pose" in parts:
                out["camera_pose"] = postprocess_pose(self.pose_head(pose_token.float()), cfg.pose_mode)
            if "cross" in parts:
                out["pts3d_in_other_view"], out["conf"] = postprocess_points(
                    self._to_image(self.cross_proj(cross.float()), image_size), cfg.depth_mode, cfg.conf_mode)
        return out


def build_head(cfg: Cut3rConfig) -> nn.Module:
    return DPTPts3dPose(cfg) if cfg.head_type == "dpt" else LinearPts3dPose(cfg)
