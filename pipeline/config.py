"""The whole-pipeline configuration (``vlm3r-data run --config pipeline.yaml``).

Frozen dataclasses validated in ``__post_init__``, loaded from YAML, with ``key=value`` overrides from the command line
(``extract.num_gpus=2``, ``workers=16``). Each stage's section holds that stage's command-line options by their long
names (``batch_videos: 8`` is ``--batch-videos 8``), so the YAML and ``vlm3r-data <stage> --help`` say the same thing.
No ``eval``, no dotted-path instantiation: values are plain YAML scalars and lists.

```yaml
root: /data/vlm3r_root
seed: 0
workers: 8                 # local Ray cluster size (ignored with ray_address)
ray_address: null          # e.g. "auto" to join a running cluster
local: false               # run every stage in-process (debugging)
datasets:
  - {name: scannet, raw: /data/scannet, split: train}
  - {name: arkitscenes, raw: /data/ARKitScenes}
stages:
  ingest: {num_frames: 32}
  extract: {checkpoint: /weights/cut3r_512_dpt_4_64.pth, num_gpus: 1, batch_videos: 8}
  qa: {bench: all}
skip: [train]              # stages not to run
```
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.layout import DATASETS, STAGES

# The stage commands ``run`` runs, in pipeline order (import-meta is an alternative to ingest + graph; predict runs
# inside train with its --predict option).
STAGE_ORDER = tuple(stage for stage in STAGES if stage not in ("import-meta", "predict"))


class ConfigError(ValueError):
    """The pipeline configuration is invalid; the message names the field."""


@dataclass(frozen=True)
class DatasetConfig:
    name: str
    raw: str
    split: str | None = None
    scenes: str | None = None      # comma-separated ids
    stream: str | None = None      # ScanNet++: iphone or dslr

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            raise ConfigError(f"datasets[].name: {self.name!r} is not one of {', '.join(DATASETS)}")
        if not self.raw:
            raise ConfigError(f"datasets[{self.name}].raw: a raw folder is required")


@dataclass(frozen=True)
class PipelineConfig:
    root: str
    datasets: tuple[DatasetConfig, ...] = ()
    seed: int = 0
    workers: int = 2
    ray_address: str | None = None
    local: bool = False
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.root:
            raise ConfigError("root: the dataset root is required")
        if self.workers < 1:
            raise ConfigError(f"workers: must be >= 1, got {self.workers}")
        unknown = sorted(set(self.stages) - set(STAGE_ORDER))
        if unknown:
            raise ConfigError(f"stages: unknown stage(s) {unknown}; known: {', '.join(STAGE_ORDER)}")
        unknown = sorted(set(self.skip) - set(STAGE_ORDER))
        if unknown:
            raise ConfigError(f"skip: unknown stage(s) {unknown}")
        for name, options in self.stages.items():
            if not isinstance(options, dict):
                raise ConfigError(f"stages.{name}: expected a mapping of options, got {type(options).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    if keys[0] in STAGE_ORDER:  # "extract.num_gpus=2" is short for "stages.extract.num_gpus=2"
        keys = ["stages", *keys]
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a mapping")
    node[keys[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] = (), base: dict[str, Any] | None = None) -> PipelineConfig:
    data: dict[str, Any] = copy.deepcopy(base or {})
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        data.update(loaded)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw_value = item.split("=", 1)
        _set_path(data, key.strip(), yaml.safe_load(raw_value))
    known = set(PipelineConfig.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {unknown}; known: {', '.join(sorted(known))}")
    try:
        datasets = tuple(DatasetConfig(**d) for d in data.pop("datasets", []) or [])
    except TypeError as exc:
        raise ConfigError(f"datasets: {exc}") from None
    data["skip"] = tuple(data.get("skip") or ())
    data["stages"] = {k: dict(v or {}) for k, v in (data.get("stages") or {}).items()}
    if "root" not in data:
        raise ConfigError("root: the dataset root is required")
    return PipelineConfig(datasets=datasets, **data)


def stage_flags(options: dict[str, Any]) -> list[str]:
    """``{"batch_videos": 8, "with_frames": True}`` -> ``["--batch-videos", "8", "--with-frames"]``."""
    argv: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv
