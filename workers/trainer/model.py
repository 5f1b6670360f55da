"""The VLM-3R model assembled from parts: SigLIP vision tower → fusion block (visual tokens attend to the frame's
geometry tokens) → 2-layer GELU projector → bilinear 2x2 pooling (27x27 → 14x14) → one learned newline token
after each row (14 x 15 = 210 tokens per frame) → spliced into a Qwen2 language model's ``inputs_embeds`` at
``<image>``, with LoRA (peft) on the language model.

Bases come from local folders only (nothing is downloaded):

- ``base="tiny"``: a small random SigLIP + Qwen2 built in code (tests, the demo, benchmarks);
- a LLaVA-Video-7B-Qwen2-style folder (lmms-lab / VLM-3R layout; ``config.json`` with ``mm_vision_tower``) or a
  Hugging Face LLaVA-OneVision folder (``model_type == "llava_onevision"``); weights are renamed with the key maps
  below and loaded strictly (missing and unexpected keys are reported, never ignored silently).

Key maps (checkpoint prefix → our module prefix; first match wins):

=====================================================  =============================================
LLaVA-Video / VLM-3R checkpoint                         ours
=====================================================  =============================================
``model.vision_tower.vision_tower.vision_model.*``      ``vision_tower.*`` (26 layers kept; transformers 5's
                                                        SigLIP has no ``vision_model`` level, it is dropped)
``model.mm_projector.0.*`` / ``model.mm_projector.2.*`` ``projector.linear_1.*`` / ``projector.linear_2.*``
``model.image_newline``                                 ``image_newline``
``model.fusion_block.*``                                ``fusion.*``
``model.*`` (embed_tokens, layers, norm)                ``lm.model.*``
``lm_head.*``                                           ``lm.lm_head.*``
=====================================================  =============================================

HF LLaVA-OneVision: ``model.vision_tower.*`` / ``vision_tower.*`` → ``vision_tower.*``;
``model.multi_modal_projector.*`` / ``multi_modal_projector.*`` → ``projector.*``; ``model.image_newline`` /
``image_newline`` → ``image_newline``; ``model.language_model.*`` → ``lm.model.*``; ``language_model.model.*``
→ ``lm.model.*``; ``lm_head.*`` / ``language_model.lm_head.*`` → ``lm.lm_head.*``. A checkpoint without a fusion
block (plain LLaVA-Video) leaves the fusion block at its initialisation; that is reported as ``missing`` by
:func:`load_base_weights`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from pipeline.core.errors import InputError
from workers.trainer.fusion import FusionBlock, pool_2x2

IMAGE_TOKEN_INDEX = -200     # placeholder id of <image> in input_ids (LLaVA's convention)
IGNORE_INDEX = -100          # label of tokens that are not learned
VISION_GRID = 27             # 384 / 14 patches per side (SigLIP so400m-patch14-384)
POOLED_GRID = 14             # after bilinear 2x2 pooling
TOKENS_PER_FRAME = POOLED_GRID * (POOLED_GRID + 1)   # 14 rows of 14 tokens + one newline each = 210
IMAGE_SIZE = 384
LORA_EXCLUDED = ("lm_head",)

LLAVA_VIDEO_KEY_MAP: tuple[tuple[str, str], ...] = (
    ("model.vision_tower.vision_tower.", "vision_tower."),
    ("model.mm_projector.0.", "projector.linear_1."),
    ("model.mm_projector.2.", "projector.linear_2."),
    ("model.image_newline", "image_newline"),
    ("model.fusion_block.", "fusion."),
    ("model.", "lm.model."),
    ("lm_head.", "lm.lm_head."),
)
# A bare SigLIP folder (the whole SigLIP or its vision model) into a module whose tower is ``vision_tower``.
SIGLIP_FOLDER_KEY_MAP: tuple[tuple[str, str], ...] = (("vision_model.", "vision_tower.vision_model."),
                                                      ("", "vision_tower."))
HF_ONEVISION_KEY_MAP: tuple[tuple[str, str], ...] = (
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "projector."),
    ("model.image_newline", "image_newline"),
    ("model.fusion_block.", "fusion."),
    ("model.language_model.", "lm.model."),
    ("vision_tower.", "vision_tower."),
    ("multi_modal_projector.", "projector."),
    ("image_newline", "image_newline"),
    ("language_model.model.", "lm.model."),
    ("language_model.lm_head.", "lm.lm_head."),
    ("lm_head.", "lm.lm_head."),
)
# VLM-3R's non_lora_trainables.bin names (the trainables of a PeftModel around LlavaQwenForCausalLM).
VLM3R_EXPORT_PREFIX = {"fusion.": "base_model.model.model.fusion_block.",
                       "projector.linear_1.": "base_model.model.model.mm_projector.0.",
                       "projector.linear_2.": "base_model.model.model.mm_projector.2."}

# SigLIP so400m-patch14-384 (LLaVA-Video's tower); LLaVA folders name it but do not carry its config.
SIGLIP_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                     image_size=384, patch_size=14, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)


@dataclass(frozen=True)
class ModelConfig:
    """What model to build. ``base`` is ``"tiny"`` or a local folder; the ``tiny_*`` fields size the tiny one."""

    base: str = "tiny"
    vision_tower: str = ""              # a local SigLIP folder overriding the base's tower ("" = the base's)
    vision_features: bool = False       # inputs are pre-computed tower features [F, 729, d_clip]: no tower is built
    d_spatial: int = 768                # geometry-token width (CUT3R)
    fusion_heads: int = 18
    fusion_dropout: float = 0.1
    lora_r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ()  # () = every Linear of the language model except lm_head
    gradient_checkpointing: bool = False
    tiny_vision_width: int = 32
    tiny_vision_layers: int = 2         # layers used (one more is built and dropped, as for the real tower)
    tiny_vision_heads: int = 2
    tiny_vision_ffn: int = 0            # 0 = 2 x width
    tiny_lm_width: int = 64
    tiny_lm_layers: int = 2
    tiny_lm_heads: int = 4
    tiny_lm_kv_heads: int = 2
    tiny_lm_ffn: int = 128
    tiny_vocab: int = 0                 # 0 = the byte tokenizer's vocabulary
    tiny_seed: int = 0                  # the tiny base's weights are a function of this seed
    # A random frozen lm_head (std 0.02) gives near-uniform logits that LoRA and the projector can barely move; the
    # tiny base scales it so a few hundred steps learn something (real bases come trained).
    tiny_lm_head_scale: float = 30.0

    def __post_init__(self) -> None:
        if self.lora_r < 0 or self.lora_alpha <= 0 or not 0 <= self.lora_dropout < 1:
            raise ValueError(f"invalid LoRA settings r={self.lora_r} alpha={self.lora_alpha} "
                             f"dropout={self.lora_dropout}")
        if self.base != "tiny" and not Path(self.base).is_dir():
            raise InputError(self.base, "model base must be 'tiny' or an existing local folder")
        if self.vision_tower and not Path(self.vision_tower).is_dir():
            raise InputError(self.vision_tower, "vision tower must be an existing local SigLIP folder")
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))

    @classmethod
    def tiny(cls, **overrides: Any) -> "ModelConfig":
        """The tiny random model (fusion heads sized for the tiny tower width)."""
        defaults: dict[str, Any] = dict(base="tiny", fusion_heads=2, lora_r=8, lora_alpha=16)
        defaults.update(overrides)
        return cls(**defaults)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config fields {unknown}")
        return cls(**{k: (tuple(v) if k == "lora_targets" else v) for k, v in data.items()})


# ---- the model ---------------------------------------------------------------------------------------------------

class Projector(nn.Module):
    """LLaVA's mlp2x_gelu: Linear(d_clip, d_lm) → GELU → Linear(d_lm, d_lm) (HF names linear_1 / linear_2)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.linear_1 = nn.Linear(d_in, d_out)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(d_out, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


def add_row_newlines(pooled: torch.Tensor, newline: torch.Tensor, grid: int = POOLED_GRID) -> torch.Tensor:
    """[F, grid*grid, C] → [F, grid*(grid+1), C]: the newline embedding after each row of each frame."""
    frames, n, channels = pooled.shape
    if n != grid * grid:
        raise ValueError(f"expected {grid}x{grid}={grid * grid} pooled tokens per frame, got {n}")
    rows = pooled.reshape(frames, grid, grid, channels)
    nl = newline.to(pooled.dtype).reshape(1, 1, 1, channels).expand(frames, grid, 1, channels)
    return torch.cat([rows, nl], dim=2).reshape(frames, grid * (grid + 1), channels)


class VLM3R(nn.Module):
    """Vision tower (optional) + fusion + projector + newline + language model. ``lm`` becomes a peft model after
    :meth:`apply_lora`; until then it is the plain ``Qwen2ForCausalLM`` (so base weights load by their own names)."""

    def __init__(self, config: ModelConfig, vision_tower: nn.Module | None, lm: nn.Module, d_clip: int):
        super().__init__()
        self.config = config
        self.vision_tower = vision_tower
        self.fusion = FusionBlock(d_clip=d_clip, d_spatial=config.d_spatial, d_attn=d_clip,
                                  num_heads=config.fusion_heads, dropout=config.fusion_dropout)
        d_lm = lm.config.hidden_size
        self.projector = Projector(d_clip, d_lm)
        # LLaVA initialises the newline as randn(d) / sqrt(d); it is frozen (loaded from the base when it has one).
        self.image_newline = nn.Parameter(torch.randn(d_lm) / d_lm ** 0.5)
        self.lm = lm
        self.d_clip = d_clip

    # -- parts ------------------------------------------------------------------------------------------------------
    @property
    def causal_lm(self) -> nn.Module:
        """The Qwen2ForCausalLM (inside the peft wrapper once LoRA is applied)."""
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[F, 3, 384, 384] normalised pixels → [F, 729, d_clip]: the last kept layer's hidden state (the real
        tower's second-to-last; the last layer and the post-layernorm are not used, as in LLaVA)."""
        if self.vision_tower is None:
            raise RuntimeError("this model was built for pre-computed vision features (no vision tower)")
        out = self.vision_tower(pixel_values=pixel_values, output_hidden_states=True)
        return out.hidden_states[-1]

    def encode_frames(self, geometry_tokens: torch.Tensor, *, pixel_values: torch.Tensor | None = None,
                      vision_features: torch.Tensor | None = None) -> torch.Tensor:
        """Frames → LM tokens: [F, 730, d_spatial] geometry + pixels or features → [F, 210, d_lm]."""
        if vision_features is None:
            if pixel_values is None:
                raise ValueError("encode_frames needs pixel_values or vision_features")
            with torch.no_grad():  # the tower is frozen: no activations kept for it
                vision_features = self.vision_features(pixel_values)
        fused = self.fusion(vision_features.to(self.fusion.clip_norm.weight.dtype),
                            geometry_tokens.to(self.fusion.clip_norm.weight.dtype))
        projected = self.projector(fused)
        pooled = pool_2x2(projected, grid=VISION_GRID, out=POOLED_GRID)
        return add_row_newlines(pooled, self.image_newline)

    def splice(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None,
               visual: torch.Tensor, frames_per_sample: Iterable[int]) -> tuple[torch.Tensor, torch.Tensor,
                                                                               torch.Tensor | None]:
        """Replace each row's single ``IMAGE_TOKEN_INDEX`` by its video's tokens; right-pad the rows again.

        input_ids/attention_mask/labels [B, L]; visual [sum(frames), 210, d_lm] → embeds [B, L', d_lm], mask, labels.
        """
        embed = self.causal_lm.get_input_embeddings()
        per_video = visual.split(list(frames_per_sample))
        if len(per_video) != input_ids.shape[0]:
            raise ValueError(f"{len(per_video)} videos for {input_ids.shape[0]} rows")
        rows, row_labels = [], []
        for i, video in enumerate(per_video):
            ids = input_ids[i][attention_mask[i].bool()]
            where = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten()
            if where.numel() != 1:
                raise ValueError(f"row {i} has {where.numel()} <image> placeholders, expected exactly 1")
            p = int(where[0])
            text = embed(ids.clamp(min=0))
            flat = video.reshape(-1, video.shape[-1]).to(text.dtype)
            rows.append(torch.cat([text[:p], flat, text[p + 1:]]))
            if labels is not None:
                lab = labels[i][attention_mask[i].bool()]
                row_labels.append(torch.cat([lab[:p], lab.new_full((flat.shape[0],), IGNORE_INDEX), lab[p + 1:]]))
        length = max(r.shape[0] for r in rows)
        embeds = rows[0].new_zeros(len(rows), length, rows[0].shape[-1])
        mask = attention_mask.new_zeros(len(rows), length)
        out_labels = input_ids.new_full((len(rows), length), IGNORE_INDEX) if labels is not None else None
        for i, r in enumerate(rows):
            embeds[i, :r.shape[0]] = r
            mask[i, :r.shape[0]] = 1
            if out_labels is not None:
                out_labels[i, :r.shape[0]] = row_labels[i]
        return embeds, mask, out_labels

    def forward(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, int]:
        """Mean next-token cross-entropy over the learned tokens of the batch, and their number."""
        visual = self.encode_frames(batch["geometry_tokens"], pixel_values=batch.get("pixel_values"),
                                    vision_features=batch.get("vision_features"))
        embeds, mask, labels = self.splice(batch["input_ids"], batch["attention_mask"], batch["labels"], visual,
                                           batch["frames_per_sample"])
        causal = self.causal_lm
        hidden = causal.model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
        # Logits only where a label is learned: a 150K vocabulary x 7K positions would not fit otherwise.
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        logits = causal.lm_head(hidden[:, :-1][keep]).float()
        count = int(keep.sum())
        if count == 0:
            raise ValueError("a batch without any learned token (all labels are -100)")
        loss = nn.functional.cross_entropy(logits, targets[keep], reduction="mean")
        return loss, count

    @torch.no_grad()
    def generate(self, batch: Mapping[str, Any], max_new_tokens: int, eos_token_id: int) -> list[list[int]]:
        """Greedy decoding (one video per row; rows are decoded one by one so no padding enters the cache)."""
        visual = self.encode_frames(batch["geometry_tokens"], pixel_values=batch.get("pixel_values"),
                                    vision_features=batch.get("vision_features"))
        embeds, mask, _ = self.splice(batch["input_ids"], batch["attention_mask"], None, visual,
                                      batch["frames_per_sample"])
        return [self._greedy(embeds[i:i + 1, :int(mask[i].sum())], None, max_new_tokens, eos_token_id)
                for i in range(embeds.shape[0])]

    def _greedy(self, step_input: torch.Tensor, past: Any, max_new_tokens: int, eos_token_id: int) -> list[int]:
        """Greedy tokens after ``step_input`` [1, L, d_lm] (continuing ``past``, a KV cache, when given)."""
        causal = self.causal_lm
        embed = causal.get_input_embeddings()
        tokens: list[int] = []
        for _ in range(max_new_tokens):
            out = causal(inputs_embeds=step_input, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = int(out.logits[0, -1].argmax())
            if token == eos_token_id:
                break
            tokens.append(token)
            step_input = embed(torch.tensor([[token]], device=step_input.device))
        return tokens

    @torch.no_grad()
    def generate_for_video(self, video: Mapping[str, torch.Tensor], prompts: Sequence[Sequence[int]],
                           max_new_tokens: int, eos_token_id: int) -> list[list[int]]:
        """Greedy answers to several prompts about one video, sharing its work: the frames are encoded once and the
        common prefix (the text before ``<image>`` plus the ~6.7K video tokens) is prefilled once; each prompt then
        continues from a copy of that cache. Same tokens as :meth:`generate` row by row, a fraction of the cost.

        ``video``: geometry_tokens [F, 730, d] and pixel_values or vision_features; ``prompts``: token ids with one
        ``IMAGE_TOKEN_INDEX`` each, all sharing the text before it.
        """
        import copy

        if not prompts:
            return []
        causal = self.causal_lm
        embed = causal.get_input_embeddings()
        visual = self.encode_frames(video["geometry_tokens"], pixel_values=video.get("pixel_values"),
                                    vision_features=video.get("vision_features"))
        splits = []
        for ids in prompts:
            ids = list(ids)
            if ids.count(IMAGE_TOKEN_INDEX) != 1:
                raise ValueError(f"a prompt has {ids.count(IMAGE_TOKEN_INDEX)} <image> placeholders, expected 1")
            p = ids.index(IMAGE_TOKEN_INDEX)
            splits.append((ids[:p], ids[p + 1:]))
        head = splits[0][0]
        if any(h != head for h, _ in splits):
            raise ValueError("prompts about one video must share the text before <image>")
        device = visual.device
        prefix = torch.cat([embed(torch.tensor([head], device=device))[0],
                            visual.reshape(-1, visual.shape[-1]).to(embed.weight.dtype)])[None]
        prefix_cache = causal(inputs_embeds=prefix, use_cache=True).past_key_values
        return [self._greedy(embed(torch.tensor([tail], device=device)), copy.deepcopy(prefix_cache),
                             max_new_tokens, eos_token_id) for _, tail in splits]

    # -- LoRA and freezing -----------------------------------------------------------------------------------------
    def lora_target_names(self) -> list[str]:
        """Leaf names of the language model's Linear layers that get LoRA (all but lm_head unless configured)."""
        if self.config.lora_targets:
            return list(self.config.lora_targets)
        names = set()
        for name, module in self.causal_lm.named_modules():
            if isinstance(module, nn.Linear) and ".lora_" not in name:
                parts = name.split(".")
                names.add(parts[-2] if parts[-1] == "base_layer" else parts[-1])  # peft wraps x as x.base_layer
        return sorted(names - set(LORA_EXCLUDED))

    def apply_lora(self) -> None:
        """Wrap the language model with peft LoRA, then freeze everything but fusion, projector and LoRA."""
        from peft import LoraConfig, get_peft_model

        if hasattr(self.lm, "peft_config"):
            raise RuntimeError("LoRA is already applied")
        if self.config.lora_r > 0:
            lora = LoraConfig(r=self.config.lora_r, lora_alpha=self.config.lora_alpha,
                              lora_dropout=self.config.lora_dropout, target_modules=self.lora_target_names(),
                              bias="none", task_type="CAUSAL_LM")
            self.lm = get_peft_model(self.lm, lora)
        self.freeze()

    def freeze(self) -> None:
        for name, p in self.named_parameters():
            p.requires_grad_(is_intended_trainable(name))

    def enable_gradient_checkpointing(self) -> None:
        causal = self.causal_lm
        causal.config.use_cache = False
        # Non-reentrant checkpointing: works with frozen inputs (inputs_embeds) and with DDP's no_sync.
        if hasattr(causal, "activation_checkpointing_enable"):   # transformers >= 5
            causal.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            causal.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def is_intended_trainable(name: str) -> bool:
    """Fusion, projector and LoRA matrices train; the tower, embeddings, lm_head, newline and base weights do not."""
    return name.startswith(("fusion.", "projector.")) or ".lora_A." in name or ".lora_B." in name


def check_trainable(model: nn.Module) -> dict[str, int]:
    """Assert exactly the intended parameters require grad; returns parameter counts (trainable, frozen, lora)."""
    wrong_on = [n for n, p in model.named_parameters() if p.requires_grad and not is_intended_trainable(n)]
    wrong_off = [n for n, p in model.named_parameters() if not p.requires_grad and is_intended_trainable(n)]
    if wrong_on or wrong_off:
        raise RuntimeError(f"trainable set is wrong: unexpectedly trainable {wrong_on[:10]} "
                           f"({len(wrong_on)}), unexpectedly frozen {wrong_off[:10]} ({len(wrong_off)})")
    counts = {"trainable": 0, "frozen": 0, "lora": 0, "fusion": 0, "projector": 0}
    for n, p in model.named_parameters():
        counts["trainable" if p.requires_grad else "frozen"] += p.numel()
        for part in ("fusion", "projector"):
            if n.startswith(part + "."):
                counts[part] += p.numel()
        if ".lora_" in n:
            counts["lora"] += p.numel()
    if counts["fusion"] == 0 or counts["projector"] == 0:
        raise RuntimeError("the model has no fusion block or projector parameters")
    return counts


# ---- building ----------------------------------------------------------------------------------------------------

def _tiny_parts(config: ModelConfig) -> tuple[nn.Module | None, nn.Module, int]:
    from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

    from workers.trainer.tokenizer import ByteTokenizer

    torch.manual_seed(config.tiny_seed)
    tower = None
    if not config.vision_features:
        vcfg = SiglipVisionConfig(hidden_size=config.tiny_vision_width,
                                  intermediate_size=config.tiny_vision_ffn or 2 * config.tiny_vision_width,
                                  num_hidden_layers=config.tiny_vision_layers + 1,
                                  num_attention_heads=config.tiny_vision_heads,
                                  image_size=IMAGE_SIZE, patch_size=14, vision_use_head=False)
        tower = SiglipVisionModel(vcfg)
        _drop_last_vision_layer(tower)
    lcfg = Qwen2Config(vocab_size=config.tiny_vocab or ByteTokenizer().vocab_size,
                       hidden_size=config.tiny_lm_width, intermediate_size=config.tiny_lm_ffn,
                       num_hidden_layers=config.tiny_lm_layers, num_attention_heads=config.tiny_lm_heads,
                       num_key_value_heads=config.tiny_lm_kv_heads, max_position_embeddings=32768,
                       tie_word_embeddings=False, rope_theta=1_000_000.0, use_cache=False)
    lm = Qwen2ForCausalLM(lcfg)
    with torch.no_grad():
        lm.lm_head.weight.mul_(config.tiny_lm_head_scale)
    return tower, lm, config.tiny_vision_width


def _drop_last_vision_layer(tower: nn.Module) -> None:
    """LLaVA uses the second-to-last layer: drop the last one so the last hidden state is the one used."""
    encoder = getattr(tower, "vision_model", tower).encoder   # transformers 5 has no vision_model wrapper
    encoder.layers = nn.ModuleList(list(encoder.layers)[:-1])
    tower.config.num_hidden_layers = len(encoder.layers)


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise InputError(path, "model folder has no config.json")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise InputError(path, f"unreadable config.json ({exc})") from None


def detect_layout(folder: Path) -> str:
    """``llava_video`` (lmms-lab / VLM-3R), ``llava_onevision`` (Hugging Face) or ``qwen2`` (a bare LM)."""
    cfg = _read_config(folder)
    if cfg.get("model_type") == "llava_onevision":
        return "llava_onevision"
    if "mm_vision_tower" in cfg or cfg.get("model_type") in ("llava_qwen", "llava"):
        return "llava_video"
    if cfg.get("model_type") == "qwen2":
        return "qwen2"
    raise InputError(folder / "config.json", f"unsupported model_type {cfg.get('model_type')!r} "
                                             "(expected a LLaVA-Video-Qwen2, LLaVA-OneVision or Qwen2 folder)")


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _folder_parts(config: ModelConfig, dtype: torch.dtype) -> tuple[nn.Module | None, nn.Module, int, str]:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    folder = Path(config.base)
    layout = detect_layout(folder)
    cfg = _read_config(folder)
    drop_last = True
    if layout == "llava_onevision":
        text = dict(cfg["text_config"])
        vision = dict(cfg["vision_config"])
        drop_last = False  # HF OneVision towers are already cut to the used layers (vision_feature_layer -1)
    elif layout == "llava_video":
        text = {k: v for k, v in cfg.items() if not k.startswith("mm_")}
        vision = dict(SIGLIP_SO400M)
    else:
        text, vision = cfg, dict(SIGLIP_SO400M)
    text.pop("model_type", None)
    text.pop("architectures", None)
    with _default_dtype(dtype):   # build the 7B directly in its dtype (no fp32 copy on the host)
        lm = Qwen2ForCausalLM(Qwen2Config(**text))
    tower = None
    # Without a tower, the projector's input width in the checkpoint is the feature width.
    projector_in = _checkpoint_shape(folder, ("model.mm_projector.0.weight",
                                              "model.multi_modal_projector.linear_1.weight",
                                              "multi_modal_projector.linear_1.weight"))
    d_clip = int(projector_in[1]) if config.vision_features and projector_in else int(vision["hidden_size"])
    if not config.vision_features:
        tower = _build_tower(config, vision, drop_last, dtype)
        d_clip = tower.config.hidden_size
    return tower, lm, d_clip, layout


def _build_tower(config: ModelConfig, vision: dict[str, Any], drop_last: bool, dtype: torch.dtype) -> nn.Module:
    """The SigLIP tower (weights not loaded) of the base's ``vision`` config, or of ``config.vision_tower``'s folder
    when set; LLaVA's last layer dropped where ``drop_last`` (always for a separate tower folder)."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    if config.vision_tower:
        vcfg_raw = _read_config(Path(config.vision_tower))
        vision, drop_last = dict(vcfg_raw.get("vision_config", vcfg_raw)), True
    vision = {k: v for k, v in vision.items() if k != "model_type"}
    with _default_dtype(dtype):
        tower = SiglipVisionModel(SiglipVisionConfig(**{**vision, "vision_use_head": False}))
    if drop_last:
        _drop_last_vision_layer(tower)
    return tower


def folder_tower(config: ModelConfig, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Iterable[Path],
                                                                                   tuple[tuple[str, str], ...]]:
    """The vision tower of a LLaVA-Video or LLaVA-OneVision folder alone, without its language model: the tower
    (weights not loaded), the weight files and the key map of the tower's keys (for :func:`load_base_weights` on a
    module whose tower is its ``vision_tower``). A bare Qwen2 folder has no tower: InputError."""
    folder = Path(config.base)
    layout = detect_layout(folder)
    if layout == "qwen2" and not config.vision_tower:
        raise InputError(folder, "a bare Qwen2 folder has no vision tower: give a SigLIP, LLaVA-Video or "
                                 "LLaVA-OneVision folder")
    cfg = _read_config(folder)
    if layout == "llava_onevision":
        vision, drop_last = dict(cfg["vision_config"]), False
    else:
        vision, drop_last = dict(SIGLIP_SO400M), True
    tower = _build_tower(config, vision, drop_last, dtype)
    if config.vision_tower:
        return tower, sorted(Path(config.vision_tower).glob("*.safetensors")), SIGLIP_FOLDER_KEY_MAP
    key_map = LLAVA_VIDEO_KEY_MAP if layout == "llava_video" else HF_ONEVISION_KEY_MAP
    return tower, sorted(folder.glob("*.safetensors")), tuple((src, dst) for src, dst in key_map
                                                              if dst.startswith("vision_tower."))


def _checkpoint_shape(folder: Path, keys: Iterable[str]) -> list[int] | None:
    """Shape of the first of ``keys`` found in the folder's safetensors files (read from the headers only)."""
    from safetensors import safe_open

    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as fh:
            names = set(fh.keys())
            for key in keys:
                if key in names:
                    return list(fh.get_slice(key).get_shape())
    return None


def build_model(config: ModelConfig, *, dtype: torch.dtype = torch.float32, lora: bool = True) -> VLM3R:
    """Build the model, load its base weights (folders) and apply LoRA + the freeze; checks the trainable set."""
    if config.base == "tiny":
        tower, lm, d_clip = _tiny_parts(config)
        model = VLM3R(config, tower, lm, d_clip)  # fusion/projector/newline init follow the same seeded stream
    else:
        tower, lm, d_clip, layout = _folder_parts(config, dtype)
        model = VLM3R(config, tower, lm, d_clip)
        key_map = LLAVA_VIDEO_KEY_MAP if layout == "llava_video" else HF_ONEVISION_KEY_MAP
        files = sorted(Path(config.base).glob("*.safetensors"))
        if layout == "qwen2":
            key_map = (("model.", "lm.model."), ("lm_head.", "lm.lm_head."))
        report = load_base_weights(model, files, key_map)
        allowed_missing = {k for k in report["missing"] if k.startswith("fusion.")}
        if model.causal_lm.lm_head.weight is model.causal_lm.get_input_embeddings().weight:
            # tie_word_embeddings (Qwen2 0.5B/1.5B bases): the checkpoint stores the embedding only; lm_head is it.
            allowed_missing.add("lm.lm_head.weight")
        if layout == "qwen2":
            allowed_missing |= {k for k in report["missing"] if not k.startswith("lm.")}
        if config.vision_tower and tower is not None:
            vfiles = sorted(Path(config.vision_tower).glob("*.safetensors"))
            vreport = load_base_weights(model, vfiles, SIGLIP_FOLDER_KEY_MAP)
            allowed_missing |= {k for k in report["missing"] if k.startswith("vision_tower.")}
            bad = [k for k in vreport["missing"] if k.startswith("vision_tower.")]
            if bad:
                raise InputError(config.vision_tower, f"vision tower weights missing {bad[:5]}")
        bad_missing = sorted(set(report["missing"]) - allowed_missing)
        if bad_missing:
            raise InputError(config.base, f"base checkpoint lacks {len(bad_missing)} weights, e.g. {bad_missing[:5]}")
    if model.vision_tower is not None:
        model.vision_tower.eval()
    if lora:
        model.apply_lora()
        check_trainable(model)
    if config.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model


def map_key(key: str, key_map: Iterable[tuple[str, str]]) -> str | None:
    for src, dst in key_map:
        if key.startswith(src):
            return dst + key[len(src):]
    return None


_TOWER_WRAPPER = "vision_tower.vision_model."


def load_base_weights(model: VLM3R, files: Iterable[Path], key_map: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Copy checkpoint tensors into the (LoRA-free) model by the key map. Returns the model keys the files did not
    provide (``missing``) and the checkpoint keys with no place in the model (``unexpected``: e.g. the SigLIP layer
    and post-layernorm LLaVA does not use). Raises on a shape mismatch or when no file is given."""
    from safetensors import safe_open

    files = list(files)
    if not files:
        raise InputError(str(getattr(model.config, "base", "")), "no *.safetensors weight files found")
    key_map = tuple(key_map)
    state = model.state_dict()
    loaded: set[str] = set()
    unexpected: list[str] = []
    for path in files:
        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():
                ours = map_key(key, key_map)
                if ours is not None and ours not in state and ours.startswith(_TOWER_WRAPPER):
                    ours = "vision_tower." + ours[len(_TOWER_WRAPPER):]   # transformers 5 SigLIP: no vision_model.
                if ours is None or ours not in state:
                    unexpected.append(key)
                    continue
                tensor = fh.get_tensor(key)
                if tuple(tensor.shape) != tuple(state[ours].shape):
                    raise InputError(path, f"{key} has shape {list(tensor.shape)}, model expects "
                                           f"{list(state[ours].shape)} for {ours}")
                with torch.no_grad():
                    state[ours].copy_(tensor.to(state[ours].dtype))
                loaded.add(ours)
    return {"missing": sorted(set(state) - loaded), "unexpected": sorted(unexpected)}


# ---- trainable weights: save, load, export -----------------------------------------------------------------------

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
NON_LORA_WEIGHTS = "non_lora_trainables.safetensors"


def non_lora_state(model: VLM3R) -> dict[str, torch.Tensor]:
    """Fusion + projector weights under our names (``fusion.*``, ``projector.*``)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
            if k.startswith(("fusion.", "projector."))}


def save_trainables(model: VLM3R, folder: Path, state: Mapping[str, torch.Tensor] | None = None) -> None:
    """Write the adapter in peft's format (adapter_model.safetensors + adapter_config.json, loadable with
    ``PeftModel.from_pretrained`` on the bare language model) and fusion + projector as safetensors.

    ``state`` is the model's full state dict when the parameters themselves are sharded (FSDP)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(model.lm, "peft_config"):
        lm_state = None if state is None else {k[len("lm."):]: v for k, v in state.items() if k.startswith("lm.")}
        adapter = get_peft_model_state_dict(model.lm, state_dict=lm_state)
        save_file({k: v.detach().cpu().contiguous() for k, v in adapter.items()}, str(folder / ADAPTER_WEIGHTS),
                  metadata={"format": "pt"})
        model.lm.peft_config["default"].save_pretrained(str(folder))
        # peft writes target_modules from a set, in an order that changes with Python's hash seed: sort it so the
        # same run writes the same bytes.
        config_path = folder / "adapter_config.json"
        config = json.loads(config_path.read_text())
        if isinstance(config.get("target_modules"), list):
            config["target_modules"] = sorted(config["target_modules"])
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    non_lora = non_lora_state(model) if state is None else \
        {k: v.detach().cpu().contiguous() for k, v in state.items() if k.startswith(("fusion.", "projector."))}
    save_file(non_lora, str(folder / NON_LORA_WEIGHTS), metadata={"format": "pt"})


def trainables_as_model_state(model: VLM3R, folder: Path) -> dict[str, torch.Tensor]:
    """What :func:`save_trainables` wrote, renamed to the model's own parameter names (``lm.base_model...
    .lora_A.default.weight``), for loaders that set parameters by name (FSDP's full-state-dict load)."""
    from safetensors.torch import load_file

    state = dict(load_file(str(Path(folder) / NON_LORA_WEIGHTS)))
    adapter_path = Path(folder) / ADAPTER_WEIGHTS
    if adapter_path.is_file():
        for key, value in load_file(str(adapter_path)).items():
            # peft drops the adapter name on save: ...lora_A.weight -> ...lora_A.default.weight
            state["lm." + key.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default.")] = value
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(state) != expected:
        raise InputError(folder, f"trainable weights do not match the model: missing "
                                 f"{sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}")
    return state


def load_trainables(model: VLM3R, folder: Path) -> None:
    """Load what :func:`save_trainables` wrote into a freshly built model (strict: every adapter, fusion and projector
    tensor must be present and nothing else)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(folder)
    non_lora_path = folder / NON_LORA_WEIGHTS
    if not non_lora_path.is_file():
        raise InputError(non_lora_path, "checkpoint has no fusion/projector weights")
    non_lora = load_file(str(non_lora_path))
    expected = set(non_lora_state(model))
    if set(non_lora) != expected:
        raise InputError(non_lora_path, f"keys differ from the model: missing {sorted(expected - set(non_lora))[:5]}, "
                                        f"unexpected {sorted(set(non_lora) - expected)[:5]}")
    model.load_state_dict(non_lora, strict=False)
    if hasattr(model.lm, "peft_config"):
        adapter_path = folder / ADAPTER_WEIGHTS
        if not adapter_path.is_file():
            raise InputError(adapter_path, "checkpoint has no LoRA adapter")
        try:
            result = set_peft_model_state_dict(model.lm, load_file(str(adapter_path)))
        except RuntimeError as exc:   # shape mismatch: another LoRA rank or another base
            raise InputError(adapter_path, f"adapter does not fit the model ({str(exc).splitlines()[0]} ...)") from None
        lora_missing = [k for k in result.missing_keys if ".lora_" in k]
        if result.unexpected_keys or lora_missing:
            raise InputError(adapter_path, f"adapter keys do not match the model: unexpected "
                                           f"{list(result.unexpected_keys)[:5]}, missing {lora_missing[:5]}")


def export_vlm3r(model: VLM3R, folder: Path) -> list[Path]:
    """VLM-3R's release layout: the peft adapter plus ``non_lora_trainables.bin`` (a torch state dict named
    ``base_model.model.model.fusion_block.*`` / ``...mm_projector.0|2.*``, as its loader expects)."""
    save_trainables(model, folder)
    renamed = {}
    for key, value in non_lora_state(model).items():
        for ours, theirs in VLM3R_EXPORT_PREFIX.items():
            if key.startswith(ours):
                renamed[theirs + key[len(ours):]] = value
                break
    path = Path(folder) / "non_lora_trainables.bin"
    torch.save(renamed, path)
    return [Path(folder) / ADAPTER_WEIGHTS, Path(folder) / ADAPTER_CONFIG, path]


def model_fingerprint(config: ModelConfig) -> str:
    """sha256 of what determines the base model: the resolved config and, for folders, the weight files' names and
    sizes and the config.json bytes (hashing 15 GB of weights per run would cost minutes)."""
    h = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    for folder in filter(None, (config.base if config.base != "tiny" else "", config.vision_tower)):
        folder = Path(folder)
        h.update((folder / "config.json").read_bytes() if (folder / "config.json").is_file() else b"")
        for f in sorted(folder.glob("*.safetensors")):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()
