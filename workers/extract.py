"""What runs inside Ray for ``vlm3r-data extract``: CPU decode tasks and the CUT3R model actor.

Data path, with a bounded queue in between::

    driver ──(scene jobs)──> decode tasks (CPU): manifest frames -> decode_colors -> squash 384 -> [T,3,S,S]
                                    │ object refs (the frames never pass through the driver)
                                    v
    driver ──(batches of refs)──> model actor(s) (num_gpus): B videos in lock-step -> TokenSample per scene
                                    │
    driver <──(samples, in batch order)── writes shards

Batches are fixed slices of the sorted job list and results are consumed in submission order, so which scenes are
encoded together (which can change the last bits of a float) and the order of samples do not depend on worker count
or timing: the same inputs give byte-identical shards.

Application failures (a corrupt video, a manifest naming a missing frame) are values (:class:`SceneError`), recorded
as error rows; infrastructure failures (a dead worker or actor) are exceptions that Ray retries up to a cap.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np

from pipeline.core.patch_points import POINTS_SOURCES, PatchPoints, cut3r_geometry
from pipeline.core.version import __version__
from pipeline.core.tokens import (TokenSample, token_codec, token_dtype_name, validate_sample,
                                  with_estimated_poses)

MODEL_KINDS = ("checkpoint", "weights", "random_tiny")


# ---- the model -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSpec:
    """Where the CUT3R weights come from; small and picklable, so each actor loads the model itself.

    ``checkpoint``: an official ``.pth`` (architecture from its ``args.model``); ``weights``: a ``.safetensors`` or
    plain state dict plus ``config_path`` (config JSON); ``random_tiny``: the fixture-size architecture with random
    weights from ``seed`` (demo and tests).
    """

    kind: str
    path: str | None = None
    config_path: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"model kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        if self.kind in ("checkpoint", "weights") and not self.path:
            raise ValueError(f"a {self.kind} model needs a path")
        if self.kind == "weights" and not self.config_path:
            raise ValueError("weights need a config JSON (config_path)")

    def load(self):
        """The :class:`workers.cut3r.Cut3rModel` (float32, CPU, eval mode)."""
        from workers.cut3r import load_model, random_model, tiny_config

        if self.kind == "random_tiny":
            return random_model(tiny_config(), seed=self.seed)
        return load_model(self.path, self.config_path if self.kind == "weights" else None)

    def describe(self) -> dict[str, Any]:
        """Model id, checkpoint sha256 and architecture config: what a shard's meta records and a resume compares."""
        from pipeline.core.atomic import sha256_file
        from workers.cut3r import model_from_checkpoint, random_model, read_checkpoint, tiny_config

        if self.kind == "random_tiny":
            config = tiny_config()
            # No file: hash the weights themselves (names, dtypes, shapes, bytes), deterministic for a seed.
            sha = state_dict_sha256(random_model(config, seed=self.seed).state_dict())
            return {"model_id": f"cut3r-random-tiny-seed{self.seed}", "checkpoint_sha256": sha,
                    "model_config": config.to_dict()}
        assert self.path is not None
        path = Path(self.path)
        # The strict key and shape check runs here, in the driver, so a wrong file fails before any actor starts
        # (the tensors are memory-mapped: this costs no copy of the weights).
        checkpoint = read_checkpoint(path, self.config_path if self.kind == "weights" else None)
        model_from_checkpoint(checkpoint)
        return {"model_id": path.stem, "checkpoint_sha256": sha256_file(path),
                "model_config": checkpoint.config.to_dict()}

    def build_encoder(self, options: "ExtractOptions"):
        """The default encoder factory: this model wrapped in a :class:`workers.cut3r.Cut3rEncoder`."""
        from workers.cut3r import Cut3rEncoder

        return Cut3rEncoder(self.load(), device=options.device, precision=options.precision,
                            attention=options.attention, compile=options.compile,
                            encoder_chunk=options.encoder_chunk)


def state_dict_sha256(state_dict: dict) -> str:
    import torch

    h = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}:{tensor.dtype}:{list(tensor.shape)}\n".encode())
        h.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class TokenEncoder(Protocol):
    """What the model actor needs: B preprocessed videos [T_b,3,S,S] in, padded tokens out.

    The result (a :class:`workers.cut3r.EncodedBatch`) has ``camera_tokens`` [B,T,1,C], ``patch_tokens`` [B,T,N,C]
    (float32, or the compute dtype with ``keep_dtype``) and, with ``points=True``, ``points`` [B,T,N,3] and
    ``camera_poses`` [B,T,4,4] (both in the first frame's camera), and ``to_host()``;
    :class:`workers.cut3r.Cut3rEncoder` is the real one.
    """

    def encode(self, frames: list, *, points: bool = False, keep_dtype: bool = False) -> Any: ...  # points: CUT3R's point head


EncoderFactory = Callable[["ExtractOptions"], TokenEncoder]


# ---- options and identity ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExtractOptions:
    """How frames become tokens. Everything here that changes the bytes of a sample is part of the identity."""

    input_size: int = 432                 # CUT3R input side (27x27 = 729 patches at 432)
    squash_size: int | None = 384         # SigLIP squash before the resize; None resizes the decoded frame directly
    resample: str = "bicubic"             # PIL filter of the squash
    token_dtype: str = "float32"          # storage codec (pipeline.core.tokens.TOKEN_CODECS, or bf16/fp16/fp8_e4m3)
    precision: str = "fp32"               # compute precision of the model: fp32 | bf16 (bf16 weights/activations)
    device: str = "cpu"                   # torch device of the model actor
    attention: str = "fused"
    compile: str = "none"                 # torch.compile of the encoder call and recurrent step (none/default/...)
    encoder_chunk: int | None = None      # frames per encoder call (None: 64 on CUDA, else the batch's videos)
    points: str = "none"                  # per-patch 3D points: "none", "depth" (sensor depth + poses) or "cut3r"
    with_frames: bool = False             # the squashed JPEG frames for the trainer's vision tower
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        object.__setattr__(self, "token_dtype", token_dtype_name(self.token_dtype))
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        _ = self.preprocess  # PreprocessConfig validates size, squash size and filter
        if self.with_frames and self.squash_size is None:
            raise ValueError("with_frames stores the squashed frames: squash_size must be set")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if self.points not in ("none",) + POINTS_SOURCES:
            raise ValueError(f"points must be one of {('none',) + POINTS_SOURCES}, got {self.points!r}")

    @property
    def with_points(self) -> bool:
        return self.points != "none"

    @property
    def preprocess(self):
        from workers.cut3r import PreprocessConfig

        return PreprocessConfig(size=self.input_size, squash_size=self.squash_size, resample=self.resample)


def run_identity(model: dict[str, Any], options: ExtractOptions) -> dict[str, Any]:
    """The fields that must agree between every sample of a tokens folder (compared on resume): the token codec
    (``dtype``, ``storage``) is one of them, so a folder never mixes codecs.

    The compute precision is recorded as ``compute_precision`` only when it is not float32: float32 is what shards
    made before the precision became an option of its own were computed in, and they keep their identity (and
    their bytes)."""
    patch_size = int(model["model_config"].get("patch_size", 16))
    if options.input_size % patch_size:
        raise ValueError(f"input size {options.input_size} is not a multiple of the patch size {patch_size}")
    identity = {
        "model_id": model["model_id"],
        "checkpoint_sha256": model["checkpoint_sha256"],
        "model_config": model["model_config"],
        "input_size": options.input_size,
        "num_patches": (options.input_size // patch_size) ** 2,
        "token_width": int(model["model_config"]["dec_embed_dim"]),
        "preprocess": {"squash_size": options.squash_size, "resample": options.resample,
                       "normalize_mean": 0.5, "normalize_std": 0.5, "resize": "bilinear, align_corners=False"},
        "dtype": options.token_dtype,
        "storage": token_codec(options.token_dtype).storage,
        "with_points": options.with_points,
        "with_frames": options.with_frames,
        "jpeg_quality": options.jpeg_quality if options.with_frames else None,
        "code_version": __version__,
    }
    if options.with_points:  # only then: a run without points keeps the identity (and meta bytes) it always had
        identity["points_source"] = options.points
    if options.points == "cut3r":  # the pose head's camera-to-world of every frame, in frames.json
        identity["estimated_poses"] = "cut3r"
    if options.precision != "fp32":
        identity["compute_precision"] = options.precision
    return identity


# ---- decoding (CPU Ray task) -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SceneJob:
    dataset: str
    scene_id: str
    key: str                              # scene_key(dataset, scene_id)
    scene_dir: str
    manifest_sha256: str = ""             # of the scene's manifest.parquet: what the sample is made from


@dataclass(frozen=True)
class SceneError:
    """An application failure of one scene, as plain values (custom exceptions do not always survive pickling)."""

    error_type: str
    message: str
    path: str = ""

    @classmethod
    def from_exception(cls, exc: BaseException) -> "SceneError":
        return cls(type(exc).__name__, str(exc), getattr(exc, "path", "") or "")


@dataclass
class DecodedScene:
    job: SceneJob
    pixels: np.ndarray                    # [T,3,S,S] float32 in [-1, 1]
    frames: list[dict[str, Any]]          # manifest rows (JSON-safe), rank order
    jpegs: list[bytes] | None = None      # squashed frames as JPEG, when with_frames
    points: PatchPoints | None = None     # depth points of the manifest frames, when points == "depth"
    frames_without_depth: int = 0         # of them, frames whose depth is absent or unreadable (invalid points)

    @property
    def num_frames(self) -> int:
        return int(self.pixels.shape[0])


def _json_safe(value: Any) -> Any:
    # Non-finite floats (e.g. a missing timestamp) become null: JSON has no NaN.
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def decode_scene(job: SceneJob, options: ExtractOptions) -> DecodedScene:
    """Decode the scene's manifest frames (rank order) and preprocess them as VLM-3R's CUT3R saw them."""
    import cv2
    import torch

    from pipeline.core.errors import InputError
    from pipeline.core.frames import decode_colors
    from pipeline.core.scene import manifest_frames, read_manifest
    from pipeline.core.schemas import FRAMES_SCHEMA, read_table
    from workers.cut3r.preprocess import preprocess_frames, squash_uint8

    scene_dir = Path(job.scene_dir)
    manifest = read_manifest(scene_dir)
    if manifest.num_rows == 0:
        raise InputError(scene_dir / "manifest.parquet", "frame manifest is empty")
    try:
        rows = manifest_frames(read_table(scene_dir / "frames.parquet", FRAMES_SCHEMA), manifest)
    except ValueError as exc:
        raise InputError(scene_dir / "manifest.parquet", str(exc)) from None
    images = decode_colors(rows)
    pre = options.preprocess
    if pre.squash_size is not None:
        # Squash frame by frame: frames of one scene may differ in size (rotated or mixed sources).
        squashed = np.stack([squash_uint8(img[None], pre.squash_size, pre.resample)[0] for img in images])
    else:
        shapes = {img.shape for img in images}
        if len(shapes) != 1:
            raise InputError(scene_dir, f"frames differ in size {sorted(shapes)}; set a squash size")
        squashed = np.stack(images)
    with torch.inference_mode():
        # The squash is done above, so the preprocessing only normalises and resizes.
        pixels = preprocess_frames(squashed, type(pre)(size=pre.size, squash_size=None, resample=pre.resample))
    jpegs = None
    if options.with_frames:
        params = [int(cv2.IMWRITE_JPEG_QUALITY), options.jpeg_quality]
        jpegs = []
        for img in squashed:
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), params)
            if not ok:
                raise InputError(scene_dir, "JPEG encoding of a frame failed")
            jpegs.append(buf.tobytes())
    frames = [{k: _json_safe(v) for k, v in row.items()} for row in manifest.to_pylist()]
    # The frame contract's patch grid: 16-pixel patches of the input (27 x 27 at 432).
    grid = options.input_size // 16
    points, without_depth = _depth_points(rows, grid) if options.points == "depth" else (None, 0)
    return DecodedScene(job, pixels.numpy(), frames, jpegs, points, without_depth)


def _depth_points(rows, grid: int) -> tuple[PatchPoints, int]:
    """Depth points of the manifest frames (``rows``: their FRAMES_SCHEMA rows in rank order). A frame whose depth
    is absent or cannot be decoded gets invalid points (counted), not an error for the scene."""
    from pipeline.core.errors import InputError
    from pipeline.core.frames import decode_depths
    from pipeline.core.patch_points import manifest_patch_points

    depths = []
    for i in range(rows.num_rows):
        try:
            depths.append(decode_depths(rows.slice(i, 1))[0])
        except InputError:
            depths.append(None)
    return manifest_patch_points(rows, depths, grid), sum(d is None for d in depths)


def decode_or_error(job: SceneJob, options: ExtractOptions) -> DecodedScene | SceneError:
    """:func:`decode_scene`, with any failure of the scene's data returned as a :class:`SceneError` value."""
    try:
        return decode_scene(job, options)
    except Exception as exc:  # noqa: BLE001 - every failure of one scene's data becomes its error row
        return SceneError.from_exception(exc)


# ---- encoding (the pure core, and the actor around it) -----------------------------------------------------------

def encode_scenes(encoder: TokenEncoder, scenes: Sequence[DecodedScene], options: ExtractOptions,
                  identity: dict[str, Any], model_lock: Any = None) -> list[TokenSample | SceneError]:
    """Encode B decoded scenes in one lock-step batch; one validated sample (or error) per scene, in order.

    Only the model call and the copy of its outputs to host memory hold ``model_lock`` (when given): the storage
    codec and the checks of one batch run while the model computes the next one (see :class:`TokenActor`)."""
    import torch

    if not scenes:
        return []
    with model_lock if model_lock is not None else contextlib.nullcontext():
        # The compute dtype goes to the host (half the bytes in bf16); float32 of it is exact below.
        out = encoder.encode([torch.from_numpy(s.pixels) for s in scenes], points=options.points == "cut3r",
                             keep_dtype=True).to_host()
    results: list[TokenSample | SceneError] = []
    for b, scene in enumerate(scenes):
        t = scene.num_frames
        camera = out.camera_tokens[b, :t].float().numpy()   # [T,1,C]
        patch = out.patch_tokens[b, :t].float().numpy()     # [T,N,C]
        if not (np.isfinite(camera).all() and np.isfinite(patch).all()):
            results.append(SceneError("NonFiniteTokens", f"{scene.job.key}: the model produced non-finite tokens",
                                      scene.job.scene_dir))
            continue
        points, frames = scene.points, scene.frames
        meta = {**identity, "key": scene.job.key, "dataset": scene.job.dataset, "scene_id": scene.job.scene_id,
                "num_frames": t, "source_sha256": scene.job.manifest_sha256}
        if options.points == "depth":
            meta["points_frames_without_depth"] = scene.frames_without_depth
        if options.points == "cut3r":
            head = out.points[b, :t].float().numpy()                       # [T,N,3], first camera's frame
            poses = out.camera_poses[b, :t].float().numpy()                # [T,4,4], first camera's frame
            if not (np.isfinite(head).all() and np.isfinite(poses).all()):
                what = "point head produced non-finite points" if not np.isfinite(head).all() else \
                    "pose head produced non-finite camera poses"
                results.append(SceneError("NonFiniteTokens", f"{scene.job.key}: the {what}", scene.job.scene_dir))
                continue
            geometry = cut3r_geometry(head, poses, _sensor_pose(scene.frames[0]))
            points, frames = geometry.points, with_estimated_poses(scene.frames, geometry.camera_to_world, "cut3r")
            meta["points_frame"] = geometry.frame
        try:
            sample = TokenSample.from_float(
                scene.job.key, camera, patch, frames, meta, None if points is None else points.world,
                scene.jpegs, None if points is None else points.cam0, None if points is None else points.valid)
            results.append(validate_sample(sample, where=scene.job.key))
        except Exception as exc:  # noqa: BLE001 - e.g. a model whose token grid differs from the identity
            results.append(SceneError.from_exception(exc))
    return results


def _sensor_pose(row: dict[str, Any]) -> np.ndarray | None:
    """A manifest row's camera-to-world [4, 4] (NaN where JSON has null), or None when the row has no valid pose."""
    pose = row.get("camera_to_world")
    if not row.get("valid") or not isinstance(pose, list) or len(pose) != 16:
        return None
    return np.asarray([np.nan if v is None else v for v in pose], np.float64).reshape(4, 4)


def encode_items(encoder: TokenEncoder, items: Sequence[DecodedScene | SceneError], options: ExtractOptions,
                 identity: dict[str, Any], model_lock: Any = None) -> list[TokenSample | SceneError]:
    """Encode the decoded scenes of a batch together; scenes that failed to decode keep their error."""
    decoded = [item for item in items if isinstance(item, DecodedScene)]
    encoded = iter(encode_scenes(encoder, decoded, options, identity, model_lock))
    return [next(encoded) if isinstance(item, DecodedScene) else item for item in items]


class TokenActor:
    """The model actor: loads the encoder once, then encodes batches of decoded scenes (given as object refs, so
    the frames go from the decode workers to this actor without passing through the driver).

    With ``Scheduling.actor_concurrency`` = 2 (Ray ``max_concurrency``) it works on two batches at a time around one
    model lock: while one batch is on the model, the other fetches its frames from the object store, or stores and
    checks its tokens, so the model is not idle during either. Results are still consumed in submission order, so
    this changes no byte."""

    def __init__(self, encoder_factory: EncoderFactory, options: ExtractOptions, identity: dict[str, Any],
                 torch_threads: int = 1):
        import torch

        # A fixed thread count: CPU kernels may sum in another order on more threads, which changes the last bits.
        torch.set_num_threads(torch_threads)
        torch.manual_seed(0)
        self.options = options
        self.identity = identity
        self.encoder = encoder_factory(options)
        self.model_lock = threading.Lock()

    def encode(self, refs: list) -> list[TokenSample | SceneError]:
        import ray

        # Decode tasks never raise for bad data (they return SceneError), so a failure here is infrastructure.
        items = ray.get(list(refs))
        return encode_items(self.encoder, items, self.options, self.identity, self.model_lock)


# ---- the scheduler ---------------------------------------------------------------------------------------------

class ExtractionAborted(RuntimeError):
    """An infrastructure failure that retries did not fix (e.g. the model actor kept dying)."""


@dataclass
class Scheduling:
    """How work is spread: ``local`` runs everything in-process (debugging); otherwise Ray."""

    batch_videos: int = 4
    local: bool = False
    workers: int = 2                      # CPU decode workers (size of a local Ray cluster)
    num_gpus: float = 0.0                 # per model actor; 0 = CPU
    actors: int = 1
    actor_cpus: int = 1                   # CPUs (= torch threads) per model actor; same value, same bytes
    retries: int = 2                      # Ray retries of decode tasks and restarts of a dead actor
    queued_batches: int = 1               # batches queued per actor beyond those it works on (the bounded queue)
    actor_concurrency: int = 2            # batches an actor works on at once, one of them on the model
    ray_address: str | None = None
    # Custom Ray resources each model actor asks for, e.g. {"model_node": 1}: the actors go only to nodes started
    # with that resource (``ray start --resources='{"model_node": 1}'``). Placement, not identity: no byte changes.
    actor_resources: dict[str, float] = field(default_factory=dict)
    # How long the driver waits for a cluster that lost what the actors need (their node died) to get it back (a
    # replacement node) before it aborts; without a limit a pinned actor would wait for its restart forever.
    node_wait_s: float = 300.0

    def __post_init__(self) -> None:
        if self.batch_videos < 1 or self.workers < 1 or self.actors < 1 or self.actor_cpus < 1 \
                or self.queued_batches < 0 or self.actor_concurrency < 1:
            raise ValueError(f"invalid scheduling {asdict(self)}")
        if not self.node_wait_s > 0:
            raise ValueError(f"node wait must be a positive number of seconds, got {self.node_wait_s!r}")
        self.actor_resources = dict(self.actor_resources)
        for name, amount in self.actor_resources.items():
            check_actor_resource(name, amount)


def check_actor_resource(name: str, amount: float) -> None:
    """ValueError, naming the resource, unless Ray can schedule an actor asking for ``amount`` of ``name``."""
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ValueError(f"actor resource name must be a non-empty name without surrounding spaces, got {name!r}")
    if name in ("CPU", "GPU"):
        raise ValueError(f"actor resource {name}: set CPUs and GPUs with actor_cpus / num_gpus "
                         "(--actor-cpus / --num-gpus), not as a custom resource")
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not math.isfinite(amount) or amount <= 0:
        raise ValueError(f"actor resource {name}: the amount must be a positive number, got {amount!r}")
    if round(amount, 4) != amount:   # Ray's precision for fractional resources
        raise ValueError(f"actor resource {name}: Ray takes amounts with at most 4 decimals, got {amount!r}")


Result = tuple[SceneJob, "TokenSample | None", "SceneError | None"]


class ClusterTooSmall(RuntimeError):
    """The Ray cluster lacks the resources the scheduling asks for (checked before any work)."""


def cluster_shortage(scheduling: Scheduling) -> tuple[str, str] | None:
    """``(resource, what is missing)`` when the live nodes of the Ray cluster lack the GPUs or custom resources
    that the model actors ask for, else None."""
    import ray

    resources = ray.cluster_resources()          # totals of the nodes alive now
    for name, amount in {"GPU": scheduling.num_gpus, **scheduling.actor_resources}.items():
        have = resources.get(name, 0.0)
        if amount > 0 and amount * scheduling.actors > have:
            return name, (f"{scheduling.actors} model actor(s) x {amount:g} {name} need more {name} than the Ray "
                          f"cluster has ({have:g})")
    return None


def check_cluster(scheduling: Scheduling) -> None:
    """Start (or join) Ray and check that it has the GPUs and custom resources the model actors ask for;
    ClusterTooSmall if not."""
    from pipeline.core.parallel import init_ray

    if scheduling.local:
        return
    # A local cluster gets CPUs for the decode workers on top of the actors' own, or decoding could starve.
    init_ray(scheduling.workers + scheduling.actors * scheduling.actor_cpus, scheduling.ray_address)
    shortage = cluster_shortage(scheduling)
    if shortage is not None:
        name, missing = shortage
        hint = ("use --num-gpus 0 to run the model on CPU" if name == "GPU" else
                f"start the model node with `ray start --resources='{{\"{name}\": "
                f"{scheduling.actor_resources[name]:g}}}' ...`, or drop --actor-resource {name}")
        raise ClusterTooSmall(f"{missing}; {hint}")


def iter_extracted(jobs: Sequence[SceneJob], encoder_factory: EncoderFactory, options: ExtractOptions,
                   identity: dict[str, Any], scheduling: Scheduling) -> Iterator[Result]:
    """Yield ``(job, sample, None)`` or ``(job, None, error)`` for every job, in job order.

    Batches are ``jobs[i:i + batch_videos]``; a bounded number of batches (and their decode tasks) is in flight.
    Raises :class:`ExtractionAborted` when the model actor dies beyond its restarts.
    """
    batches = [list(jobs[i:i + scheduling.batch_videos]) for i in range(0, len(jobs), scheduling.batch_videos)]
    if scheduling.local:
        yield from _iter_local(batches, encoder_factory, options, identity, scheduling.actor_cpus)
    elif batches:
        yield from _iter_ray(batches, encoder_factory, options, identity, scheduling)


def _as_result(job: SceneJob, item: TokenSample | SceneError) -> Result:
    return (job, None, item) if isinstance(item, SceneError) else (job, item, None)


def _iter_local(batches, encoder_factory, options, identity, torch_threads: int) -> Iterator[Result]:
    import torch

    if not batches:
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(torch_threads)  # as in the actor, so --local gives the same bytes as Ray
    try:
        encoder = encoder_factory(options)
        for batch in batches:
            items = [decode_or_error(job, options) for job in batch]
            try:
                encoded = encode_items(encoder, items, options, identity)
            except Exception as exc:  # noqa: BLE001 - the model failed on this batch: its scenes become error rows
                encoded = [SceneError.from_exception(exc)] * len(batch)
            for job, item in zip(batch, encoded):
                yield _as_result(job, item)
    finally:
        torch.set_num_threads(threads)


def _iter_ray(batches, encoder_factory, options, identity, scheduling: Scheduling) -> Iterator[Result]:
    import ray
    from ray import exceptions as ray_errors
    from ray.exceptions import RayActorError, RayTaskError

    unreachable = getattr(ray_errors, "ActorUnavailableError", ())   # a RayActorError, not in older Rays
    check_cluster(scheduling)
    decode = ray.remote(num_cpus=1, max_retries=scheduling.retries)(decode_or_error)
    actor_cls = ray.remote(num_cpus=scheduling.actor_cpus, num_gpus=scheduling.num_gpus,
                           max_restarts=scheduling.retries, max_task_retries=scheduling.retries,
                           max_concurrency=scheduling.actor_concurrency,
                           resources=scheduling.actor_resources or None)(TokenActor)
    actors = [actor_cls.remote(encoder_factory, options, identity, scheduling.actor_cpus)
              for _ in range(scheduling.actors)]
    options_ref = ray.put(options)
    in_flight: deque = deque()
    # The bounded queue: per actor, the batches it works on (actor_concurrency) plus enough queued that every decode
    # worker has a scene, at least queued_batches; the decode tasks of a batch are submitted with it, so at most
    # max_in_flight * batch_videos scenes are decoded ahead of the model.
    ahead = max(scheduling.queued_batches, math.ceil(scheduling.workers / scheduling.batch_videos))
    max_in_flight = scheduling.actors * (ahead + scheduling.actor_concurrency)
    todo = iter(enumerate(batches))
    try:
        while True:
            while len(in_flight) < max_in_flight:
                nxt = next(todo, None)
                if nxt is None:
                    break
                number, batch = nxt
                refs = [decode.remote(job, options_ref) for job in batch]
                # Batch n always goes to actor n % actors: the assignment is part of the deterministic plan.
                in_flight.append((batch, refs, actors[number % len(actors)].encode.remote(refs)))
            if not in_flight:
                break
            batch, refs, future = in_flight.popleft()
            try:
                encoded = _await_batch(future, scheduling)
            except unreachable as exc:             # e.g. its node was lost; a rerun redoes only the unwritten scenes
                raise ExtractionAborted(f"the model actor became unreachable, its process or node lost ({exc}); "
                                        "rerun to resume") from None
            except RayActorError as exc:
                raise ExtractionAborted(f"the model actor died and was not restarted ({exc}); rerun to resume") \
                    from None
            except RayTaskError as exc:  # the model raised on this batch (e.g. out of memory): error rows
                cause = getattr(exc, "cause", None)
                error = SceneError.from_exception(cause if isinstance(cause, BaseException) else exc)
                encoded = [error] * len(batch)
            del refs  # the decoded frames can leave the object store
            for job, item in zip(batch, encoded):
                yield _as_result(job, item)
    finally:
        for actor in actors:
            ray.kill(actor)


def _await_batch(future, scheduling: Scheduling) -> list[TokenSample | SceneError]:
    """``ray.get`` of a model actor call, which gives up (:class:`ExtractionAborted`) once the live cluster has lacked
    the actors' GPUs or custom resources for ``scheduling.node_wait_s``: an actor whose node was lost waits for a
    node that can host its restart, forever if none comes (a pinned actor on a fixed cluster)."""
    import ray

    poll_s = min(5.0, scheduling.node_wait_s / 4)
    short_since: float | None = None
    while not ray.wait([future], timeout=poll_s)[0]:
        shortage = cluster_shortage(scheduling)
        if shortage is None:
            short_since = None
        elif short_since is None:
            short_since = time.monotonic()
        elif time.monotonic() - short_since >= scheduling.node_wait_s:
            raise ExtractionAborted(f"for {scheduling.node_wait_s:g} s, {shortage[1]} (a node was lost?): the model "
                                    "actor cannot be restarted; rerun to resume once the cluster has it again")
    return ray.get(future)
