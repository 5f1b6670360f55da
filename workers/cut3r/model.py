"""CUT3R (ARCroco3DStereo) inference: a recurrent state updated frame by frame, B videos in lock-step.

One step on a batch of frames [B,3,H,W]:

1. encoder: patch embedding, ``enc_depth`` ViT blocks with 2D RoPE (q/k rounded to float16 around the rotation, as
   croco's encoder does), final norm -> ``enc_feat`` [B,N,Ce];
2. pose query: the learned ``pose_token`` on a video's first frame, afterwards the pose retriever's answer to the
   frame's mean encoder feature ``global_img_feat`` [B,1,Ce] read against the pose memory ``mem``;
3. decoder: the image tokens ``[pose, decoder_embed(enc_feat)]`` (pose token at position (-1,-1)) and the state tokens
   (positions on a 2D grid) go through ``dec_depth`` layer pairs *in parallel*: layer k of the state decoder reads the
   image tokens of layer k-1 and layer k of the image decoder reads the state of layer k-1;
4. ``camera_token`` = final image token 0, ``patch_tokens`` = final image tokens 1..N (after ``dec_norm``);
5. pose memory write: ``mem`` <- write blocks(mem, [proj_q(global_img_feat), camera_token]);
6. gating: rows with ``img_mask & update`` take the new state and memory, others keep theirs; rows with ``reset`` go
   back to the initial state and memory (after the update); a reset does not bring back the pose token;
7. optional heads (DPT or linear) on ``[enc_feat, dec[d/2], dec[3d/4], dec[d]]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator

import torch
import torch.nn as nn

from workers.cut3r.config import Cut3rConfig
from workers.cut3r.heads import ALL_PARTS, build_head
from workers.cut3r.layers import (Attention, CrossAttention, DecoderBlock, EncoderBlock, PatchEmbed, RopeTable,
                                  grid_positions, rope_table)

HEAD_OUTPUTS = ("pts3d_in_self_view", "conf_self", "rgb", "camera_pose", "pts3d_in_other_view", "conf")


class LocalMemory(nn.Module):
    """The pose retriever: a learned memory of ``size`` slots of width 2*Cd written and read by decoder blocks."""

    def __init__(self, size: int, k_dim: int, v_dim: int, num_heads: int, eps: float, depth: int = 2):
        super().__init__()
        self.v_dim = v_dim
        self.proj_q = nn.Linear(k_dim, v_dim)
        self.masked_token = nn.Parameter(torch.zeros(1, 1, v_dim))
        self.mem = nn.Parameter(torch.zeros(1, size, 2 * v_dim))
        self.write_blocks = nn.ModuleList([DecoderBlock(2 * v_dim, num_heads, 4.0, eps) for _ in range(depth)])
        self.read_blocks = nn.ModuleList([DecoderBlock(2 * v_dim, num_heads, 4.0, eps) for _ in range(depth)])

    def update_mem(self, mem: torch.Tensor, feat_k: torch.Tensor, feat_v: torch.Tensor) -> torch.Tensor:
        feat = torch.cat([self.proj_q(feat_k), feat_v], dim=-1)  # [B,1,2Cd]
        for blk in self.write_blocks:
            mem = blk(mem, feat, None, None)
        return mem

    def inquire(self, query: torch.Tensor, mem: torch.Tensor) -> torch.Tensor:
        x = self.proj_q(query)
        x = torch.cat([x, self.masked_token.expand(x.shape[0], -1, -1).to(x.dtype)], dim=-1)
        for blk in self.read_blocks:
            x = blk(x, mem, None, None)
        return x[..., -self.v_dim:]


@dataclass
class RecurrentState:
    """What carries over between frames, per video row.

    ``state_feat`` [B,S,Cd] and ``mem`` [B,M,2Cd]; ``first`` [B] bool is True until a row has seen its first frame
    (that frame gets the learned pose token instead of a memory read). The initial values are the same for every row.
    """

    state_feat: torch.Tensor
    mem: torch.Tensor
    first: torch.Tensor

    def select(self, rows: torch.Tensor) -> "RecurrentState":
        return RecurrentState(self.state_feat[rows], self.mem[rows], self.first[rows])

    def scatter(self, rows: torch.Tensor, part: "RecurrentState") -> "RecurrentState":
        state_feat, mem, first = self.state_feat.clone(), self.mem.clone(), self.first.clone()
        state_feat[rows], mem[rows], first[rows] = part.state_feat, part.mem, part.first
        return RecurrentState(state_feat, mem, first)


@dataclass
class StepOutput:
    camera_token: torch.Tensor  # [B,1,Cd]
    patch_tokens: torch.Tensor  # [B,N,Cd]
    heads: dict[str, torch.Tensor] = field(default_factory=dict)
    debug: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class SequenceOutput:
    """Outputs over a sequence, video-major: ``camera_token`` [B,T,1,Cd], ``patch_tokens`` [B,T,N,Cd], each head
    output and debug intermediate [B,T,...]. Frames past a video's length are zeros."""

    camera_token: torch.Tensor
    patch_tokens: torch.Tensor
    heads: dict[str, torch.Tensor] = field(default_factory=dict)
    debug: dict[str, torch.Tensor] = field(default_factory=dict)
    state: RecurrentState | None = None  # after the last frame


class Cut3rModel(nn.Module):
    """ARCroco3DStereo with the official parameter names (its state dict loads strictly, key for key)."""

    def __init__(self, cfg: Cut3rConfig):
        super().__init__()
        self.cfg = cfg
        ed, dd, eps = cfg.enc_embed_dim, cfg.dec_embed_dim, cfg.norm_eps
        # Registration order reproduces the official state-dict order.
        self.patch_embed = PatchEmbed(3, ed, cfg.patch_size)
        self.patch_embed_ray_map = PatchEmbed(6, ed, cfg.patch_size)
        self.enc_blocks = nn.ModuleList(
            [EncoderBlock(ed, cfg.enc_num_heads, cfg.mlp_ratio, eps, fp16_rope=True) for _ in range(cfg.enc_depth)])
        self.enc_norm = nn.LayerNorm(ed, eps=eps)
        self.decoder_embed = nn.Linear(ed, dd)
        self.dec_blocks = nn.ModuleList([DecoderBlock(dd, cfg.dec_num_heads, cfg.mlp_ratio, eps, cfg.norm_im2_in_dec)
                                         for _ in range(cfg.dec_depth)])
        self.dec_norm = nn.LayerNorm(dd, eps=eps)
        # The ray-map encoder is part of the checkpoint but never changes the outputs for image inputs
        # (the official code adds 0 * its output); it is loaded and never run.
        self.enc_blocks_ray_map = nn.ModuleList(
            [EncoderBlock(ed, cfg.ray_enc_num_heads, 4.0, eps, fp16_rope=True) for _ in range(cfg.ray_enc_depth)])
        self.enc_norm_ray_map = nn.LayerNorm(ed, eps=eps)
        self.pose_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.pose_retriever = LocalMemory(cfg.local_mem_size, ed, dd, cfg.dec_num_heads, eps)
        self.register_tokens = nn.Embedding(cfg.state_size, ed)
        self.masked_img_token = nn.Parameter(torch.zeros(1, ed))
        self.masked_ray_map_token = nn.Parameter(torch.zeros(1, ed))
        self.decoder_embed_state = nn.Linear(ed, dd)
        self.dec_blocks_state = nn.ModuleList(
            [DecoderBlock(dd, cfg.state_dec_num_heads, cfg.mlp_ratio, eps, cfg.norm_im2_in_dec)
             for _ in range(cfg.dec_depth)])
        self.dec_norm_state = nn.LayerNorm(dd, eps=eps)
        self.downstream_head = build_head(cfg)
        self._rope_cache: dict[tuple, RopeTable] = {}

    # ----- configuration of the execution -----
    def set_attention(self, mode: str) -> "Cut3rModel":
        """``"fused"`` (scaled_dot_product_attention) or ``"eager"`` (softmax(q k^T) v spelled out)."""
        if mode not in ("fused", "eager"):
            raise ValueError(f"attention must be 'fused' or 'eager', got {mode!r}")
        for module in self.modules():
            if isinstance(module, (Attention, CrossAttention)):
                module.eager = mode == "eager"
        return self

    # ----- positions -----
    def state_positions(self, device: torch.device | str | None = None) -> torch.Tensor:
        """[S,2] (y, x): a 2D grid of width ``int(sqrt(S))`` rounded up to even, or (i, i) for ``state_pe='1d'``."""
        s = self.cfg.state_size
        idx = torch.arange(s, device=device)
        if self.cfg.state_pe == "1d":
            return torch.stack([idx, idx], dim=-1)
        width = int(s ** 0.5)
        width = width + 1 if width % 2 == 1 else width
        return torch.stack([idx // width, idx % width], dim=-1)

    def _rope(self, kind: str, positions: torch.Tensor, head_dim: int, key: tuple | None) -> RopeTable:
        if key is None:
            return rope_table(positions, head_dim, self.cfg.rope_base)
        full_key = (kind, head_dim, positions.device) + key
        table = self._rope_cache.get(full_key)
        if table is None:
            table = self._rope_cache[full_key] = rope_table(positions, head_dim, self.cfg.rope_base)
        return table

    # ----- state -----
    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> RecurrentState:
        device = device if device is not None else self.pose_token.device
        state = self.decoder_embed_state(self.register_tokens.weight)[None]  # [1,S,Cd]
        mem = self.pose_retriever.mem
        return RecurrentState(
            state_feat=state.expand(batch_size, -1, -1).to(device),
            mem=mem.expand(batch_size, -1, -1).to(device),
            first=torch.ones(batch_size, dtype=torch.bool, device=device),
        )

    # ----- precision -----
    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of the encoder and decoders' weights and activations (the heads always run in float32)."""
        return self.enc_norm.weight.dtype

    def set_precision(self, precision: str) -> "Cut3rModel":
        """``"fp32"``, or ``"bf16"``: bfloat16 weights and activations everywhere but in the heads, which stay float32
        as in the official code. Where the official code keeps more precision, so does the bf16 model: RoPE angles
        and rotations are float32 (and the encoder's q/k are rounded to float16 around them), LayerNorm statistics
        and attention softmax accumulate in float32 (inside torch's kernels)."""
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        self.to(torch.bfloat16 if precision == "bf16" else torch.float32)
        self.downstream_head.float()
        return self

    # ----- encoder -----
    def encode_images(self, images: torch.Tensor, rope: RopeTable) -> torch.Tensor:
        dtype = self.compute_dtype
        x = self.patch_embed(images.to(dtype)).to(dtype)
        for blk in self.enc_blocks:
            x = blk(x, rope)
        return self.enc_norm(x)

    def _patch_rope(self, gh: int, gw: int, device: torch.device | str) -> RopeTable:
        head_dim = self.cfg.enc_embed_dim // self.cfg.enc_num_heads
        return self._rope("patch", grid_positions(gh, gw, device)[None], head_dim, (gh, gw))

    def encode_views(self, images: torch.Tensor, img_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder tokens [B,N,Ce] of B views [B,3,H,W]; a masked view (``img_mask`` False) is the learned
        masked-image token, as in the official ``_encode_views``."""
        b, _, h, w = images.shape
        p = self.cfg.patch_size
        rope = self._patch_rope(h // p, w // p, images.device)
        if img_mask is None or bool(img_mask.all()):
            return self.encode_images(images, rope)
        enc_feat = self.masked_img_token.to(self.compute_dtype).expand(b, (h // p) * (w // p), -1).clone()
        if bool(img_mask.any()):
            rows = img_mask.nonzero().squeeze(1)
            enc_feat[rows] = self.encode_images(images[rows], rope).to(enc_feat.dtype)
        return enc_feat

    def encode_frames(self, frames: torch.Tensor, lengths: torch.Tensor, img_mask: torch.Tensor | None = None,
                      chunk: int = 64) -> torch.Tensor:
        """Encoder tokens [B,T,N,Ce] (on the model's device) of every frame t < lengths[b] of B videos [B,T,3,H,W],
        ``chunk`` frames per encoder call, before any recurrent step: the encoder does not depend on the state, so
        its matrices are as tall as ``chunk`` frames instead of B. Frames past a video's length stay zeros.

        ``frames`` may be in host memory while the model is on a CUDA device: each chunk is then gathered into pinned
        memory and copied on a side stream while the previous chunk is encoded."""
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        device = self.pose_token.device
        b, t, _, h, w = frames.shape
        p = self.cfg.patch_size
        n = (h // p) * (w // p)
        out = torch.zeros(b * t, n, self.cfg.enc_embed_dim, dtype=self.compute_dtype, device=device)
        active = (torch.arange(t, device=lengths.device)[None] < lengths[:, None]).flatten().cpu()
        if img_mask is not None:
            shown = img_mask.to(device="cpu", dtype=torch.bool).flatten()
            out[(active & ~shown).to(device)] = self.masked_img_token.to(out.dtype)
            active = active & shown
        rows = active.nonzero().squeeze(1)
        rope = self._patch_rope(h // p, w // p, device)
        for idx, images in _device_chunks(frames.flatten(0, 1), rows, chunk, device):
            out[idx.to(device)] = self.encode_images(images, rope)
        return out.unflatten(0, (b, t))

    # ----- one frame -----

    def step(
        self,
        state: RecurrentState,
        images: torch.Tensor | None = None,
        *,
        enc_feat: torch.Tensor | None = None,
        image_size: tuple[int, int] | None = None,
        img_mask: torch.Tensor | None = None,
        update: torch.Tensor | None = None,
        reset: torch.Tensor | None = None,
        heads: bool | Iterable[str] = False,
        debug: bool = False,
        first_frame: bool | None = None,
    ) -> tuple[StepOutput, RecurrentState]:
        """Advance every row of ``state`` by one frame ``images`` [B,3,H,W] (normalised to [-1, 1]), or by its
        encoder tokens ``enc_feat`` [B,N,Ce] computed beforehand (:meth:`encode_frames`) with ``image_size`` (H, W).

        ``img_mask``, ``update``, ``reset``: bool [B] (defaults True, True, False), the official per-view flags.
        ``heads``: False (tokens only), True (every head) or a subset of {"self", "cross", "rgb", "pose"}.
        ``first_frame``: True/False when every/no row is at its first frame (saves reading ``state.first``).
        """
        cfg = self.cfg
        if enc_feat is None:
            if images is None:
                raise ValueError("step needs the images or their encoder tokens (enc_feat)")
            b, _, h, w = images.shape
            device = images.device
        else:
            if image_size is None:
                raise ValueError("step with precomputed encoder tokens needs the image_size (H, W)")
            b, (h, w) = enc_feat.shape[0], image_size
            device = enc_feat.device
        p = cfg.patch_size
        gh, gw = h // p, w // p
        n = gh * gw
        parts = _head_parts(heads)
        # Flags left as None cost no device synchronisation (and let the step run on the meta device).
        all_images = img_mask is None or bool(img_mask.all())
        any_reset = reset is not None and bool(reset.any())
        ones = torch.ones(b, dtype=torch.bool, device=device)
        img_mask = ones if img_mask is None else img_mask.to(device=device, dtype=torch.bool)
        update = ones if update is None else update.to(device=device, dtype=torch.bool)

        # Positions: patches row-major (y, x); a masked image gets all-zero positions, as in the official code.
        patch_pos = grid_positions(gh, gw, device)[None]  # [1,N,2]
        if all_images:
            pos_key: tuple | None = (gh, gw)
        else:
            patch_pos = patch_pos.expand(b, -1, -1) * img_mask[:, None, None]
            pos_key = None
        pose_pos = torch.full((patch_pos.shape[0], 1, 2), -1, dtype=patch_pos.dtype, device=device)
        img_pos = torch.cat([pose_pos, patch_pos], dim=1)
        state_pos = self.state_positions(device)[None]
        img_hd = cfg.dec_embed_dim // cfg.dec_num_heads
        st_hd = cfg.dec_embed_dim // cfg.state_dec_num_heads
        img_rope_img = self._rope("img", img_pos, img_hd, pos_key)
        img_rope_state = self._rope("img", img_pos, st_hd, pos_key)
        state_rope_state = self._rope("state", state_pos, st_hd, ())
        state_rope_img = self._rope("state", state_pos, img_hd, ())

        # 1. encoder (unless done beforehand for the whole sequence)
        if enc_feat is None:
            enc_feat = self.encode_views(images, None if all_images else img_mask)
        elif tuple(enc_feat.shape[1:]) != (n, cfg.enc_embed_dim):
            raise ValueError(f"enc_feat has shape {list(enc_feat.shape)}, expected [B, {n}, {cfg.enc_embed_dim}]")
        global_img_feat = enc_feat.mean(dim=1, keepdim=True)

        # 2. pose query
        pose_token = self.pose_token.expand(b, -1, -1)
        if first_frame is None:
            n_first = int(state.first.sum())
            first_frame = True if n_first == b else False if n_first == 0 else None  # None: mixed rows
        if first_frame:
            pose_in = pose_token
        else:
            read = self.pose_retriever.inquire(global_img_feat, state.mem)
            pose_in = read if first_frame is False else torch.where(state.first[:, None, None],
                                                                     pose_token.to(read.dtype), read)

        # 3. decoder, state and image layers in parallel
        f_img = torch.cat([pose_in.to(enc_feat.dtype), self.decoder_embed(enc_feat)], dim=1)
        f_state = state.state_feat
        dec_layers = []
        for blk_state, blk_img in zip(self.dec_blocks_state, self.dec_blocks):
            f_state, f_img = (blk_state(f_state, f_img, state_rope_state, img_rope_state),
                              blk_img(f_img, f_state, img_rope_img, state_rope_img))
            dec_layers.append(f_img)
        new_state = self.dec_norm_state(f_state)
        dec_last = self.dec_norm(f_img)
        dec_layers[-1] = dec_last

        # 4.-5. tokens and pose memory
        camera_token = dec_last[:, :1]
        new_mem = self.pose_retriever.update_mem(state.mem, global_img_feat, camera_token)

        # 6. gating
        take = (img_mask & update)[:, None, None]
        state_feat = torch.where(take, new_state.to(state.state_feat.dtype), state.state_feat)
        mem = torch.where(take, new_mem.to(state.mem.dtype), state.mem)
        if any_reset:
            init = self.initial_state(1, device)
            back = reset.to(device=device, dtype=torch.bool)[:, None, None]
            state_feat = torch.where(back, init.state_feat.to(state_feat.dtype), state_feat)
            mem = torch.where(back, init.mem.to(mem.dtype), mem)
        next_state = RecurrentState(state_feat, mem, torch.zeros_like(state.first))

        out = StepOutput(camera_token=camera_token, patch_tokens=dec_last[:, 1:])
        # 7. heads
        if parts:
            hooks = cfg.hooks
            dec = [enc_feat, dec_layers[hooks[1] - 1][:, 1:], dec_layers[hooks[2] - 1][:, 1:], dec_last]
            patch_rope = self._rope("patch", patch_pos, img_hd, pos_key)
            out.heads = self.downstream_head(dec, (h, w), patch_rope, parts)
        if debug:
            out.debug = {
                "enc_feat": enc_feat, "global_img_feat": global_img_feat, "pose_in": pose_in,
                "dec_layers": torch.stack(dec_layers, dim=1),  # [B,depth,1+N,Cd]
                "new_state": new_state, "state_after": state_feat, "mem_after": mem,
            }
        return out, next_state

    # ----- a whole sequence -----
    def forward(
        self,
        frames: torch.Tensor,
        lengths: torch.Tensor | list[int] | None = None,
        *,
        img_mask: torch.Tensor | None = None,
        update: torch.Tensor | None = None,
        reset: torch.Tensor | None = None,
        heads: bool | Iterable[str] = False,
        debug: bool = False,
        state: RecurrentState | None = None,
        encoder_chunk: int | None = None,
    ) -> SequenceOutput:
        """Run ``frames`` [B,T,3,H,W] through the model, all videos in lock-step: the encoder over every frame first
        (``encoder_chunk`` frames per call, default B; see :meth:`encode_frames`), then the recurrent decoder frame by
        frame.

        ``lengths`` [B]: video b has frames 0..lengths[b]-1; at later steps its row is left out of the computation, so
        its state cannot change. ``img_mask``/``update``/``reset``: optional bool [B,T] per-view flags. ``frames``
        may be in (pinned) host memory when the model is on a GPU; outputs are on the model's device.
        """
        b, t = frames.shape[:2]
        image_size = (int(frames.shape[-2]), int(frames.shape[-1]))
        device = self.pose_token.device
        lengths_t = _lengths(lengths, b, t, device)
        fresh = state is None
        state = self.initial_state(b, device) if state is None else state
        enc_all = self.encode_frames(frames, lengths_t, img_mask, encoder_chunk or max(b, 1))
        cams, patches = [], []
        head_steps: dict[str, list[torch.Tensor]] = {}
        debug_steps: dict[str, list[torch.Tensor]] = {}
        lengths_host = lengths_t.cpu()  # which rows run at each step, decided without a device synchronisation
        for i in range(t):
            active = lengths_host > i
            flags = {name: (None if arr is None else arr[:, i])
                     for name, arr in (("img_mask", img_mask), ("update", update), ("reset", reset))}
            # From a fresh state, every row active at step i > 0 has seen its first frame (lengths are prefixes).
            first_frame = (i == 0) if fresh else None
            if bool(active.all()):
                step_out, state = self.step(state, enc_feat=enc_all[:, i], image_size=image_size, heads=heads,
                                            debug=debug, first_frame=first_frame, **flags)
            else:
                rows = active.nonzero().squeeze(1).to(device)
                sub_flags = {k: (None if v is None else v.to(device)[rows]) for k, v in flags.items()}
                sub_out, sub_state = self.step(state.select(rows), enc_feat=enc_all[rows, i], image_size=image_size,
                                               heads=heads, debug=debug, first_frame=first_frame, **sub_flags)
                state = state.scatter(rows, sub_state)
                step_out = _pad_rows(sub_out, rows, b)
            cams.append(step_out.camera_token)
            patches.append(step_out.patch_tokens)
            for k, v in step_out.heads.items():
                head_steps.setdefault(k, []).append(v)
            for k, v in step_out.debug.items():
                debug_steps.setdefault(k, []).append(v)
        result = SequenceOutput(
            camera_token=torch.stack(cams, dim=1),
            patch_tokens=torch.stack(patches, dim=1),
            heads={k: torch.stack(v, dim=1) for k, v in head_steps.items()},
            debug={k: torch.stack(v, dim=1) for k, v in debug_steps.items()},
            state=state,
        )
        return result


def _device_chunks(flat: torch.Tensor, rows: torch.Tensor, chunk: int, device: torch.device,
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(row indices, ``flat[rows]`` on ``device``) for successive ``chunk`` rows of ``flat`` [M,...].

    From host memory to a CUDA device, each chunk is gathered into pinned memory and its copy issued on a side
    stream one chunk ahead, so it overlaps the compute on the previous chunk; the compute stream waits for the copy's
    event before using it. Otherwise the rows are simply moved.
    """
    starts = range(0, int(rows.numel()), chunk)

    def gather(idx: torch.Tensor) -> torch.Tensor:
        first, last = int(idx[0]), int(idx[-1])
        if last - first + 1 == idx.numel():  # consecutive rows (every video long enough): a view, no copy
            return flat[first:last + 1]
        return flat[idx.to(flat.device)]

    if device.type != "cuda" or flat.device.type == "cuda":
        for start in starts:
            idx = rows[start:start + chunk]
            yield idx, gather(idx).to(device)
        return
    copy_stream = torch.cuda.Stream(device)
    compute_stream = torch.cuda.current_stream(device)

    def issue(start: int) -> tuple[torch.Tensor, torch.Tensor, torch.cuda.Event]:
        idx = rows[start:start + chunk]
        # The caching host allocator keeps the pinned block until the asynchronous copy from it has finished.
        host = gather(idx).pin_memory()
        with torch.cuda.stream(copy_stream):
            on_device = host.to(device, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record(copy_stream)
        return idx, on_device, copied

    ahead = issue(0) if len(starts) else None
    for start in starts:
        assert ahead is not None
        idx, on_device, copied = ahead
        ahead = issue(start + chunk) if start + chunk < int(rows.numel()) else None
        compute_stream.wait_event(copied)
        on_device.record_stream(compute_stream)  # allocated for the copy stream, used on the compute stream
        yield idx, on_device


def _head_parts(heads: bool | Iterable[str]) -> frozenset[str]:
    if heads is True:
        return ALL_PARTS
    if not heads:
        return frozenset()
    parts = frozenset(heads)
    unknown = parts - ALL_PARTS
    if unknown:
        raise ValueError(f"unknown head parts {sorted(unknown)} (known: {sorted(ALL_PARTS)})")
    return parts


def _lengths(lengths, b: int, t: int, device) -> torch.Tensor:
    if lengths is None:
        return torch.full((b,), t, dtype=torch.long, device=device)
    lengths_t = torch.as_tensor(lengths, dtype=torch.long, device=device)
    if lengths_t.shape != (b,) or bool((lengths_t < 0).any()) or bool((lengths_t > t).any()):
        raise ValueError(f"lengths must be {b} values in [0, {t}], got {lengths_t.tolist()}")
    return lengths_t


def _pad_rows(out: StepOutput, rows: torch.Tensor, b: int) -> StepOutput:
    def pad(x: torch.Tensor) -> torch.Tensor:
        full = x.new_zeros((b,) + tuple(x.shape[1:]))
        full[rows] = x
        return full

    return replace(out, camera_token=pad(out.camera_token), patch_tokens=pad(out.patch_tokens),
                   heads={k: pad(v) for k, v in out.heads.items()},
                   debug={k: pad(v) for k, v in out.debug.items()})
