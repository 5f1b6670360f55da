"""CUT3R model configuration: one frozen dataclass, parsed from the official constructor string without ``eval``.

The official checkpoints carry ``args.model`` = ``"ARCroco3DStereo(ARCroco3DStereoConfig(k=v, ...))"``. We read the
keyword arguments with :mod:`ast` and accept only literals (numbers, strings, booleans, ``None``, tuples/lists) plus the
names ``inf``/``nan`` and unary minus; anything else (calls, attribute access, other names) is rejected.
"""
from __future__ import annotations

import ast
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping


class Cut3rConfigError(ValueError):
    """A constructor string or config file that does not describe a supported CUT3R model."""


# Official DPT adapter sizes (hard-coded in DPTPts3dPose); the tiny fixture overrides them.
OFFICIAL_DPT_FEATURE_DIM = 256
OFFICIAL_DPT_LAST_DIM = 128
OFFICIAL_DPT_LAYER_DIMS = (96, 192, 384, 768)

_INF = math.inf


@dataclass(frozen=True)
class Cut3rConfig:
    """Every field of ``ARCroco3DStereoConfig`` and the croco kwargs it forwards, with the official defaults.

    Fields that do not change the inference graph (``freeze``, ``mask_ratio``, ``landscape_only``, ``patch_embed_cls``)
    are kept so that a config round-trips, but they are not used: the official loader forces ``landscape_only=False``
    and replaces ``ManyAR_PatchEmbed`` by ``PatchEmbedDust3R``, which compute the same thing for every input.
    """

    # ARCroco3DStereoConfig
    output_mode: str = "pts3d"
    head_type: str = "linear"
    depth_mode: tuple = ("exp", -_INF, _INF)
    conf_mode: tuple = ("exp", 1, _INF)
    pose_mode: tuple = ("exp", -_INF, _INF)
    freeze: str = "none"
    landscape_only: bool = True
    patch_embed_cls: str = "PatchEmbedDust3R"
    ray_enc_depth: int = 2
    state_size: int = 324
    local_mem_size: int = 256
    state_pe: str = "2d"
    state_dec_num_heads: int = 16
    depth_head: bool = False
    rgb_head: bool = False
    pose_conf_head: bool = False
    pose_head: bool = False
    # CrocoConfig
    img_size: tuple = (224, 224)
    patch_size: int = 16
    mask_ratio: float = 0.9
    enc_embed_dim: int = 768
    enc_depth: int = 12
    enc_num_heads: int = 12
    dec_embed_dim: int = 512
    dec_depth: int = 8
    dec_num_heads: int = 16
    mlp_ratio: float = 4.0
    norm_im2_in_dec: bool = True
    pos_embed: str = "cosine"
    # Not an official option: DPT adapter sizes (the official code hard-codes 256 / 128 / (96, 192, 384, 768)).
    dpt_feature_dim: int = OFFICIAL_DPT_FEATURE_DIM
    dpt_last_dim: int = OFFICIAL_DPT_LAST_DIM
    dpt_layer_dims: tuple = OFFICIAL_DPT_LAYER_DIMS
    # Layer-norm epsilon of every norm in the model (croco's partial(nn.LayerNorm, eps=1e-6)).
    norm_eps: float = 1e-6
    # The ray-map encoder blocks hard-code 16 heads and mlp_ratio 4 in the official code.
    ray_enc_num_heads: int = field(default=16)

    def __post_init__(self) -> None:
        for name in ("depth_mode", "conf_mode", "pose_mode", "img_size", "dpt_layer_dims"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
            elif isinstance(value, int) and name == "img_size":
                object.__setattr__(self, name, (value, value))
        object.__setattr__(self, "depth_mode", _mode(self.depth_mode, "depth_mode"))
        object.__setattr__(self, "conf_mode", _mode(self.conf_mode, "conf_mode"))
        object.__setattr__(self, "pose_mode", _mode(self.pose_mode, "pose_mode"))
        problems = []
        if not self.pos_embed.startswith("RoPE"):
            problems.append(f"pos_embed={self.pos_embed!r} (only RoPE<base> is supported, e.g. 'RoPE100')")
        else:
            try:
                float(self.pos_embed[len("RoPE"):])
            except ValueError:
                problems.append(f"pos_embed={self.pos_embed!r} has no numeric base")
        if self.head_type not in ("dpt", "linear"):
            problems.append(f"head_type={self.head_type!r} (expected 'dpt' or 'linear')")
        if self.output_mode != "pts3d+pose":
            problems.append(f"output_mode={self.output_mode!r} (only 'pts3d+pose' is supported)")
        if not self.pose_head:
            problems.append("pose_head=False (the camera token needs the pose head)")
        if self.state_pe not in ("1d", "2d"):
            problems.append(f"state_pe={self.state_pe!r} (expected '1d' or '2d')")
        for name, dim, heads in (
            ("enc", self.enc_embed_dim, self.enc_num_heads),
            ("dec", self.dec_embed_dim, self.dec_num_heads),
            ("state_dec", self.dec_embed_dim, self.state_dec_num_heads),
            ("ray_enc", self.enc_embed_dim, self.ray_enc_num_heads),
        ):
            if dim % heads or (dim // heads) % 4:
                problems.append(f"{name}: width {dim} / {heads} heads must give a head size that is a multiple of 4")
        if len(self.dpt_layer_dims) != 4:
            problems.append(f"dpt_layer_dims={self.dpt_layer_dims!r} must have 4 entries")
        if self.depth_mode[0] not in ("exp", "square", "linear") or self.pose_mode[0] not in ("exp", "square", "linear"):
            problems.append(f"unsupported depth/pose mode {self.depth_mode[0]!r}/{self.pose_mode[0]!r}")
        if self.conf_mode[0] not in ("exp", "sigmoid"):
            problems.append(f"unsupported conf_mode {self.conf_mode[0]!r}")
        if self.depth_head or self.pose_conf_head:
            # pts3d+pose heads ignore these flags (no parameters), exactly like the official classes.
            pass
        if problems:
            raise Cut3rConfigError("unsupported CUT3R config: " + "; ".join(problems))

    # ----- derived sizes -----
    @property
    def rope_base(self) -> float:
        return float(self.pos_embed[len("RoPE"):])

    @property
    def hooks(self) -> tuple[int, int, int, int]:
        """Decoder outputs fed to the heads: dec[0] (encoder), dec[depth*2//4], dec[depth*3//4], dec[depth]."""
        d = self.dec_depth
        return (0, d * 2 // 4, d * 3 // 4, d)

    @property
    def has_official_dpt_dims(self) -> bool:
        return (self.dpt_feature_dim, self.dpt_last_dim, tuple(self.dpt_layer_dims)) == (
            OFFICIAL_DPT_FEATURE_DIM, OFFICIAL_DPT_LAST_DIM, OFFICIAL_DPT_LAYER_DIMS)

    # ----- (de)serialisation -----
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (infinities as the strings "inf"/"-inf", tuples as lists)."""
        return {k: _jsonable(v) for k, v in asdict(self).items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Cut3rConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise Cut3rConfigError(f"unknown CUT3R config fields: {unknown}")
        return cls(**{k: _from_json_value(v) for k, v in data.items()})

    @classmethod
    def from_constructor_kwargs(cls, kwargs: Mapping[str, Any], dpt_override: Mapping[str, Any] | None = None,
                                ) -> "Cut3rConfig":
        """Build from ``ARCroco3DStereoConfig(**kwargs)`` keyword arguments (+ optional DPT size override)."""
        data = {k: _from_json_value(v) for k, v in kwargs.items()}
        if "norm_layer" in data:
            raise Cut3rConfigError("norm_layer cannot be configured (LayerNorm eps=1e-6 is fixed)")
        if dpt_override:
            mapping = {"feature_dim": "dpt_feature_dim", "last_dim": "dpt_last_dim", "layer_dims": "dpt_layer_dims"}
            for key, value in dpt_override.items():
                if key not in mapping:
                    raise Cut3rConfigError(f"unknown DPT override {key!r} (expected {sorted(mapping)})")
                data[mapping[key]] = _from_json_value(value)
        return cls.from_dict(data)

    @classmethod
    def from_model_string(cls, model_str: str) -> "Cut3rConfig":
        return cls.from_constructor_kwargs(parse_model_string(model_str))

    @classmethod
    def from_json_file(cls, path: str | Path) -> "Cut3rConfig":
        """Read a config JSON in any of the accepted layouts.

        * the fixture layout: ``{"constructor_kwargs": {...}, "dpt_override_NONOFFICIAL": {...}}``;
        * a manifest layout: ``{"model_str": "ARCroco3DStereo(...)"}`` (or ``"model"``);
        * this class's own :meth:`to_dict` output.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise Cut3rConfigError(f"{path}: cannot read config JSON ({exc})") from exc
        try:
            return cls.from_json_data(data)
        except Cut3rConfigError as exc:
            raise Cut3rConfigError(f"{path}: {exc}") from exc

    @classmethod
    def from_json_data(cls, data: Mapping[str, Any]) -> "Cut3rConfig":
        if not isinstance(data, Mapping):
            raise Cut3rConfigError("config JSON must be an object")
        if "constructor_kwargs" in data:
            return cls.from_constructor_kwargs(data["constructor_kwargs"], data.get("dpt_override_NONOFFICIAL"))
        for key in ("model_str", "model"):
            if isinstance(data.get(key), str):
                return cls.from_model_string(data[key])
        return cls.from_dict(data)


def _mode(value: Any, name: str) -> tuple:
    if not isinstance(value, (tuple, list)) or len(value) != 3 or not isinstance(value[0], str):
        raise Cut3rConfigError(f"{name}={value!r} must be (kind, vmin, vmax)")
    kind, vmin, vmax = value
    return (kind, float(vmin) if not isinstance(vmin, int) else vmin, float(vmax) if not isinstance(vmax, int) else vmax)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def _from_json_value(value: Any) -> Any:
    if value == "inf":
        return _INF
    if value == "-inf":
        return -_INF
    if isinstance(value, list):
        return tuple(_from_json_value(v) for v in value)
    return value


# ---------------------------------------------------------------------------------------------------------------------
# Safe parsing of the official constructor string
# ---------------------------------------------------------------------------------------------------------------------
_ALLOWED_NAMES = {"inf": _INF, "nan": math.nan, "True": True, "False": False, "None": None}


def _literal(node: ast.AST, where: str) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
        return node.value
    if isinstance(node, ast.Name) and node.id in _ALLOWED_NAMES:
        return _ALLOWED_NAMES[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _literal(node.operand, where)
        if isinstance(operand, bool) or not isinstance(operand, (int, float)):
            raise Cut3rConfigError(f"{where}: unary sign on a non-number")
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, (ast.Tuple, ast.List)):
        return tuple(_literal(elt, where) for elt in node.elts)
    raise Cut3rConfigError(f"{where}: only literals are allowed, got {ast.dump(node)[:80]}")


def parse_model_string(model_str: str) -> dict[str, Any]:
    """Keyword arguments of ``ARCroco3DStereo(ARCroco3DStereoConfig(...))``, parsed safely (no ``eval``)."""
    try:
        tree = ast.parse(model_str.strip(), mode="eval")
    except SyntaxError as exc:
        raise Cut3rConfigError(f"cannot parse model string {model_str[:120]!r}: {exc}") from exc
    outer = tree.body
    if not (isinstance(outer, ast.Call) and isinstance(outer.func, ast.Name) and outer.func.id == "ARCroco3DStereo"
            and len(outer.args) == 1 and not outer.keywords):
        raise Cut3rConfigError(f"expected 'ARCroco3DStereo(ARCroco3DStereoConfig(...))', got {model_str[:120]!r}")
    inner = outer.args[0]
    if not (isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name)
            and inner.func.id == "ARCroco3DStereoConfig" and not inner.args):
        raise Cut3rConfigError(f"expected keyword arguments of ARCroco3DStereoConfig, got {model_str[:120]!r}")
    kwargs: dict[str, Any] = {}
    for kw in inner.keywords:
        if kw.arg is None:
            raise Cut3rConfigError("**kwargs are not allowed in the model string")
        kwargs[kw.arg] = _literal(kw.value, f"argument {kw.arg!r}")
    return kwargs


# ---------------------------------------------------------------------------------------------------------------------
# Named configurations
# ---------------------------------------------------------------------------------------------------------------------
CUT3R_512_DPT_4_64 = (
    "ARCroco3DStereo(ARCroco3DStereoConfig(freeze='encoder', state_size=768, state_pe='2d', pos_embed='RoPE100', "
    "rgb_head=True, pose_head=True, patch_embed_cls='ManyAR_PatchEmbed', img_size=(512, 512), head_type='dpt', "
    "output_mode='pts3d+pose', depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf), "
    "pose_mode=('exp', -inf, inf), enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, "
    "dec_depth=12, dec_num_heads=12, landscape_only=False))"
)
CUT3R_224_LINEAR_4 = (
    "ARCroco3DStereo(ARCroco3DStereoConfig(freeze='encoder', state_size=768, state_pe='2d', pos_embed='RoPE100', "
    "rgb_head=True, pose_head=True,  img_size=(224, 224), head_type='linear', output_mode='pts3d+pose', "
    "depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf), pose_mode=('exp', -inf, inf), enc_embed_dim=1024, "
    "enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_depth=12, dec_num_heads=12))"
)


def full_config(name: str = "cut3r_512_dpt_4_64") -> Cut3rConfig:
    """The architecture of an official checkpoint, by file stem."""
    strings = {"cut3r_512_dpt_4_64": CUT3R_512_DPT_4_64, "cut3r_224_linear_4": CUT3R_224_LINEAR_4}
    if name not in strings:
        raise Cut3rConfigError(f"unknown CUT3R model {name!r} (known: {sorted(strings)})")
    return Cut3rConfig.from_model_string(strings[name])


def tiny_config(head_type: str = "dpt") -> Cut3rConfig:
    """The golden fixture's architecture (about 1M parameters): fast enough for unit tests and the CPU demo."""
    return Cut3rConfig(
        freeze="encoder", state_size=32, state_pe="2d", pos_embed="RoPE100", rgb_head=True, pose_head=True,
        patch_embed_cls="ManyAR_PatchEmbed", img_size=(64, 64), head_type=head_type, output_mode="pts3d+pose",
        enc_embed_dim=64, enc_depth=2, enc_num_heads=4, dec_embed_dim=32, dec_depth=4, dec_num_heads=2,
        landscape_only=False, local_mem_size=16, state_dec_num_heads=4,
        dpt_feature_dim=16, dpt_last_dim=8, dpt_layer_dims=(8, 16, 24, 32),
    )
