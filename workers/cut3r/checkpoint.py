"""Loading CUT3R weights: official ``.pth`` checkpoints, plain state dicts, or safetensors + a config JSON.

Nothing here executes code from a file. ``.pth`` files go through torch's weights-only unpickler; the training-config
object stored under ``args`` (an ``argparse.Namespace`` or an OmegaConf ``DictConfig``) is rebuilt from inert stand-in
classes that only record their pickled state, and its ``model`` constructor string is parsed with :mod:`ast`
(:func:`workers.cut3r.config.parse_model_string`). Any other class in the file is refused.

Every load is strict: the file's keys and shapes must be exactly those of the model built from the config (the
official state-dict keys, including the DPT ``scratch.layer_rn.N`` aliases of ``scratch.layerN+1_rn``; an alias that
is absent is filled from its original, one that differs from it is an error). Errors name the file and the first
missing, unexpected or mismatched key.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from workers.cut3r.config import Cut3rConfig, Cut3rConfigError
from workers.cut3r.model import Cut3rModel


class Cut3rCheckpointError(Exception):
    """A checkpoint that cannot be used: names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass
class Checkpoint:
    config: Cut3rConfig
    state_dict: dict[str, torch.Tensor]
    path: Path


# ---------------------------------------------------------------------------------------------------------------------
# Stand-ins for the pickled training-config object
# ---------------------------------------------------------------------------------------------------------------------
class PickledObject:
    """An inert record of a pickled object: its class name and the state pickle gave it. Never runs any code."""

    pickled_name = "?"

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<stand-in for {self.pickled_name}>"


class PickledName:
    """A reference to a type or constant named in the pickle (``typing.Any``, ``builtins.dict``...); not callable."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"<name {self.name}>"


def _inert_call(*_args: Any) -> PickledName:
    return PickledName("<call>")


_STANDIN_CLASSES = (
    "argparse.Namespace",
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.tupleconfig.TupleConfig",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.base.Metadata",
    "omegaconf.nodes.AnyNode",
    "omegaconf.nodes.StringNode",
    "omegaconf.nodes.IntegerNode",
    "omegaconf.nodes.FloatNode",
    "omegaconf.nodes.BooleanNode",
    "omegaconf.nodes.BytesNode",
    "omegaconf.nodes.PathNode",
    "omegaconf.nodes.EnumNode",
)
_STANDIN_NAMES = (
    "typing.Any", "typing.Tuple", "typing.List", "typing.Dict", "typing.Optional", "typing.Union",
    "builtins.int", "builtins.float", "builtins.str", "builtins.bool", "builtins.bytes", "builtins.list",
    "builtins.tuple", "builtins.dict", "builtins.object", "builtins.Ellipsis", "builtins.NoneType",
    "pathlib.PosixPath", "pathlib.Path",
)
# Functions the config pickles call through REDUCE; replaced by a function that ignores its arguments.
_STANDIN_CALLS = ("collections.defaultdict", "_operator.getitem")


def _safe_globals() -> list[tuple[Any, str]]:
    entries: list[tuple[Any, str]] = []
    for name in _STANDIN_CLASSES:
        cls = type(f"StandIn_{name.rsplit('.', 1)[-1]}", (PickledObject,), {"pickled_name": name})
        entries.append((cls, name))
    entries += [(PickledName(name), name) for name in _STANDIN_NAMES]
    entries += [(_inert_call, name) for name in _STANDIN_CALLS]
    return entries


def _unwrap(value: Any) -> Any:
    """The plain value of an OmegaConf node stand-in (``_val``), else the value itself."""
    if isinstance(value, PickledObject) and isinstance(getattr(value, "state", None), dict) and "_val" in value.state:
        return value.state["_val"]
    return value


def model_string_from_args(args: Any) -> str | None:
    """``args.model`` of a training-config stand-in (Namespace or DictConfig), a dict, or None."""
    if isinstance(args, str):
        return args
    fields: Any = None
    if isinstance(args, Mapping):
        fields = args
    elif isinstance(args, PickledObject):
        state = getattr(args, "state", None)
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slotstate)
            state = state[0] or state[1]
        if isinstance(state, dict):
            fields = state["_content"] if isinstance(state.get("_content"), dict) else state
    if not isinstance(fields, Mapping):
        return None
    model = _unwrap(fields.get("model"))
    return model if isinstance(model, str) else None


# ---------------------------------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------------------------------
def _torch_load(path: Path) -> Any:
    with torch.serialization.safe_globals(_safe_globals()):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
        return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format


def read_checkpoint(path: str | Path, config: Cut3rConfig | str | Path | None = None) -> Checkpoint:
    """Read weights and architecture from ``path``.

    * ``*.safetensors``: a flat state dict; ``config`` (a :class:`Cut3rConfig` or a config JSON path) is required.
    * anything else: a torch file, either the official layout (``{"model": state_dict, "args": <config object>}``;
      the architecture comes from ``args.model`` unless ``config`` is given) or a plain state dict (needs ``config``).
    """
    path = Path(path)
    if not path.is_file():
        raise Cut3rCheckpointError(path, "no such file")
    cfg = _as_config(config) if config is not None else None
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state_dict = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise Cut3rCheckpointError(path, f"truncated or corrupt safetensors file ({exc})") from exc
        if cfg is None:
            raise Cut3rCheckpointError(path, "a safetensors file needs a config JSON (--config)")
        return Checkpoint(cfg, dict(state_dict), path)
    try:
        obj = _torch_load(path)
    except Cut3rCheckpointError:
        raise
    except Exception as exc:  # the unpickler and the zip reader raise many types
        message = str(exc)
        detail = re.search(r"WeightsUnpickler error: (.*)|^((?:Trying to|Unsupported global|Can only).*)$", message,
                           re.MULTILINE)
        text = (detail.group(detail.lastindex) if detail else message.splitlines()[0] if message
                else type(exc).__name__)[:200]
        if any(s in message for s in ("Unsupported global", "Can only", "unrecognized function", "blocked")):
            raise Cut3rCheckpointError(path, f"refused to unpickle a non-allowlisted object ({text})") from exc
        raise Cut3rCheckpointError(path, f"truncated or corrupt checkpoint ({type(exc).__name__}: {text})") from exc
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        state_dict = dict(obj["model"])
        if cfg is None:
            model_str = model_string_from_args(obj.get("args"))
            if model_str is None:
                raise Cut3rCheckpointError(path, "official layout without args.model; pass a config JSON")
            try:
                cfg = Cut3rConfig.from_model_string(model_str)
            except Cut3rConfigError as exc:
                raise Cut3rCheckpointError(path, str(exc)) from exc
    elif isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state_dict = dict(obj)
        if cfg is None:
            raise Cut3rCheckpointError(path, "a plain state dict needs a config JSON (--config)")
    else:
        raise Cut3rCheckpointError(path, "neither a state dict nor an official checkpoint ({'model', 'args'})")
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise Cut3rCheckpointError(path, f"entry {key!r} is not a tensor")
    return Checkpoint(cfg, state_dict, path)


def _as_config(config: Cut3rConfig | str | Path) -> Cut3rConfig:
    return config if isinstance(config, Cut3rConfig) else Cut3rConfig.from_json_file(config)


# ---------------------------------------------------------------------------------------------------------------------
# Strict checks
# ---------------------------------------------------------------------------------------------------------------------
_ALIAS = re.compile(r"^(.*\.scratch)\.layer_rn\.([0-3])\.weight$")


def alias_source(key: str) -> str | None:
    """``...scratch.layer_rn.N.weight`` -> ``...scratch.layer{N+1}_rn.weight`` (the same tensor), else None."""
    m = _ALIAS.match(key)
    return f"{m.group(1)}.layer{int(m.group(2)) + 1}_rn.weight" if m else None


def meta_model(cfg: Cut3rConfig) -> Cut3rModel:
    """The model's structure without memory (parameters on the meta device)."""
    with torch.device("meta"):
        return Cut3rModel(cfg)


def expected_shapes(cfg: Cut3rConfig) -> dict[str, tuple[int, ...]]:
    """Official state-dict keys (in order) and shapes of the architecture ``cfg``."""
    return {k: tuple(v.shape) for k, v in meta_model(cfg).state_dict().items()}


def verify_shapes(actual: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]],
                  source: str | Path, what: str = "model") -> None:
    """Raise :class:`Cut3rCheckpointError` naming ``source`` and the first missing, unexpected or mismatched key."""
    missing = [k for k in expected if k not in actual]
    unexpected = [k for k in actual if k not in expected]
    mismatched = [k for k in expected if k in actual and tuple(actual[k]) != tuple(expected[k])]
    problems = []
    if missing:
        problems.append(f"missing key {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if unexpected:
        problems.append(f"unexpected key {unexpected[0]!r}"
                        + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    if mismatched:
        k = mismatched[0]
        problems.append(f"shape mismatch for {k!r}: file {list(actual[k])} vs {what} {list(expected[k])}"
                        + (f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""))
    if problems:
        raise Cut3rCheckpointError(source, f"does not match the {what}: " + "; ".join(problems))


def complete_aliases(state_dict: dict[str, torch.Tensor], expected: Mapping[str, Any], source: str | Path,
                     ) -> dict[str, torch.Tensor]:
    """Fill absent DPT alias keys from their originals; refuse aliases whose values differ from the original."""
    out = dict(state_dict)
    for key in expected:
        src = alias_source(key)
        if src is None or src not in out:
            continue
        if key not in out:
            out[key] = out[src]
        elif out[key].shape == out[src].shape and out[key].data_ptr() != out[src].data_ptr() \
                and not torch.equal(out[key], out[src]):
            raise Cut3rCheckpointError(source, f"alias {key!r} differs from {src!r} (they are one tensor)")
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Manifests (../shared/fixtures/cut3r/*.manifest.json)
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Manifest:
    path: Path
    config: Cut3rConfig
    shapes: dict[str, tuple[int, ...]]
    aliases: dict[str, str]  # alias key -> original key


def load_manifest(path: str | Path) -> Manifest:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        cfg = Cut3rConfig.from_model_string(data["model_str"])
        entries = data["state_dict"]
        shapes = {e["key"]: tuple(e["shape"]) for e in entries}
        aliases = {e["key"]: e["alias_of"] for e in entries if e.get("alias_of")}
    except (OSError, ValueError, KeyError, TypeError, Cut3rConfigError) as exc:
        raise Cut3rCheckpointError(path, f"not a CUT3R manifest ({exc})") from exc
    return Manifest(path, cfg, shapes, aliases)


# ---------------------------------------------------------------------------------------------------------------------
# Building a model
# ---------------------------------------------------------------------------------------------------------------------
def model_from_checkpoint(ckpt: Checkpoint, *, device: torch.device | str = "cpu",
                          dtype: torch.dtype = torch.float32, manifest: str | Path | Manifest | None = None,
                          ) -> Cut3rModel:
    """Strictly load ``ckpt`` into a fresh model (built on the meta device, so no memory is spent on an init)."""
    model = meta_model(ckpt.config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state_dict = complete_aliases(ckpt.state_dict, expected, ckpt.path)
    verify_shapes({k: tuple(v.shape) for k, v in state_dict.items()}, expected, ckpt.path, "model config")
    if manifest is not None:
        man = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
        verify_shapes({k: tuple(v.shape) for k, v in state_dict.items()}, man.shapes, ckpt.path,
                      f"manifest {man.path.name}")
    for key, value in state_dict.items():
        if not value.is_floating_point():
            raise Cut3rCheckpointError(ckpt.path, f"{key!r} has dtype {value.dtype}, expected floating point")
    model.load_state_dict(state_dict, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype)
    model.requires_grad_(False)
    return model.eval()


def load_model(path: str | Path, config: Cut3rConfig | str | Path | None = None, *,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
               manifest: str | Path | Manifest | None = None) -> Cut3rModel:
    """Read and strictly load a checkpoint (see :func:`read_checkpoint` for the accepted files)."""
    return model_from_checkpoint(read_checkpoint(path, config), device=device, dtype=dtype, manifest=manifest)


def save_safetensors(model: Cut3rModel, weights_path: str | Path, config_path: str | Path) -> None:
    """Write ``model`` as safetensors + config JSON (both atomically), readable by :func:`load_model`."""
    from safetensors.torch import save_file

    from pipeline.core.atomic import atomic_path, write_text

    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in model.state_dict().items():
        value = value.detach().to("cpu").contiguous()
        ptr = value.data_ptr()
        tensors[key] = value.clone() if ptr in seen else value  # safetensors refuses shared storage (the aliases)
        seen.add(ptr)
    with atomic_path(weights_path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "producer": "workers.cut3r"})
    write_text(config_path, model.cfg.to_json())
