"""ScanNet++ (v1/v2) reader: ``<raw>/data/<scene_id>/`` plus the root split lists and label files -> CanonicalScene.

World: the release's aligned assets (``mesh_aligned_0.05.ply``, ``aligned_pose``, COLMAP poses, boxes) already share
one z-up metric frame, so the alignment is the identity (recorded in ``meta``).

Frames, ``stream="iphone"`` (default):

- one row per ``frame_%06d`` entry of ``iphone/pose_intrinsic_imu.json`` (the number is the video frame index):
  ``timestamp``; ``aligned_pose`` as camera-to-world (OpenCV); ``valid`` = the pose is finite and rigid (missing,
  null or non-finite poses keep their row with a NaN pose). The raw ARKit ``pose`` is never used.
- colour: pre-extracted ``iphone/rgb/frame_%06d.jpg`` when every frame has one (what the official
  ``prepare_iphone_data`` writes), else the video (``rgb.mkv`` of v2 or ``rgb.mp4`` of v1; frame = video frame index).
  Frames the colour source lacks (past the end of the video) are dropped, and counted in ``meta``.
- intrinsics: the per-frame JSON ``intrinsic`` refers to the COLMAP camera's size (``iphone/colmap/cameras.txt``,
  1920x1440 in the release; the video size when there is no COLMAP) and is scaled to the colour size read from the
  video header (or first image) and to 256x192 for depth. Lens distortion (OPENCV k1 k2 p1 p2) is recorded in ``meta``;
  images are not undistorted.
- depth: references into ``iphone/depth.bin`` (either encoding, see :mod:`pipeline.core.depth_bin`).
- cross-check: the COLMAP poses of the registered frames (``iphone/colmap/images.txt``, world-to-camera) are inverted
  and compared with ``aligned_pose``; the largest deviation is recorded, and flagged (and logged) above 1 cm / 1°.

Frames, ``stream="dslr"``: the images of ``dslr/resized_images`` ordered by name (frame_index = position in that
order; the DSLR has no timestamps, so ``timestamp`` = index / 3 s, the rate VLM-3R writes its DSLR videos at), with
camera-to-world = inverse of the COLMAP pose in ``dslr/colmap/images.txt`` (unregistered images: invalid). The camera
is ``OPENCV_FISHEYE``: fx, fy, cx, cy are the fisheye camera's, scaled to the image size, and the images are **not
undistorted** by this reader (the model and k1..k4 are in ``meta["camera"]``; a pinhole projection with these
intrinsics is only approximate). ``train_test_lists.json`` is recorded in ``meta``; no depth.

Objects: every ``segments_anno.json`` segGroup with an ``obb``: ``instance_id`` = ``objectId``, ``label`` = the raw
label, box = ``centroid``, ``axesLengths`` (full lengths), ``normalizedAxes`` reshaped row-major with the **rows** as
axes; the AABB is recomputed from the corners and compared with the file's ``min``/``max`` (deviation in ``meta``).
``num_points`` = mesh vertices whose segment (``segments.json``) the group lists; ``vertex_instance`` assigns each
vertex the ``objectId`` of the (last) group listing its segment, -1 for none.

Category rule (``metadata/semantic_benchmark/map_benchmark.csv``, as the official ``map_semantic.py`` reads it): the
row's ``semantic_map_to`` when it is a name; the raw label when that is empty/NaN, when it is ``None`` (the class
is left out of the benchmark) or when the label has no row. Every object is kept (the object table is the scene's
inventory); how many were renamed, benchmark-excluded, unmapped, and in ``top100.txt``/``top100_instance.txt`` is in
``meta["categories"]``, so consumers can filter by the benchmark lists whose paths are recorded there too.
"""
from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.core.errors import InputError, read_input_json
from pipeline.core.ply import read_ply
from pipeline.core.scene import CanonicalScene, box_aabb, finite_pose_mask, frames_columns, objects_table
from pipeline.core.schemas import FRAMES_SCHEMA, table_from_columns
from pipeline.sources.colmap import (ColmapCamera, read_cameras_txt, read_images_txt, nerfstudio_to_camera_to_world)
from pipeline.core.depth_bin import DEPTH_HEIGHT, DEPTH_WIDTH, index_depth_bin

log = logging.getLogger(__name__)

STREAMS = ("iphone", "dslr")
DSLR_NOMINAL_FPS = 3.0           # frames per second assigned to the (timestamp-less) DSLR sequence
POSE_CHECK_TOLERANCE_M = 0.01    # aligned_pose vs COLMAP: flag above 1 cm ...
POSE_CHECK_TOLERANCE_DEG = 1.0   # ... or 1 degree
MINMAX_TOLERANCE_M = 1e-3        # recomputed AABB vs the file's obb min/max
UNLISTED_SPLIT = "unlisted"
# Scene ids are mostly 10 hex characters, but the release also has a few others: the nvs_sem_train list holds
# "7104910700000" and the 9-digit "511061232", "717485935", "736536044" (as do VLM-3R's copies of the lists).
_SCENE_ID = re.compile(r"^[0-9a-f]{6,16}$")
_FRAME_KEY = re.compile(r"^frame_(\d+)$")
_FRAME_NAME = re.compile(r"^frame_(\d+)\.(?:jpg|jpeg|png)$", re.IGNORECASE)
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class ScanNetPPPaths:
    scene_dir: Path

    @property
    def mesh(self) -> Path:
        return self.scene_dir / "scans" / "mesh_aligned_0.05.ply"

    @property
    def segments(self) -> Path:
        return self.scene_dir / "scans" / "segments.json"

    @property
    def segments_anno(self) -> Path:
        return self.scene_dir / "scans" / "segments_anno.json"

    @property
    def iphone(self) -> Path:
        return self.scene_dir / "iphone"

    @property
    def pose_json(self) -> Path:
        return self.iphone / "pose_intrinsic_imu.json"

    @property
    def depth_bin(self) -> Path:
        return self.iphone / "depth.bin"

    @property
    def video(self) -> Path | None:
        """``rgb.mkv`` (v2) or ``rgb.mp4`` (v1); the v2 name wins if both are present."""
        for name in ("rgb.mkv", "rgb.mp4"):
            if (self.iphone / name).is_file():
                return self.iphone / name
        return None

    @property
    def dslr(self) -> Path:
        return self.scene_dir / "dslr"


# ---- splits ----------------------------------------------------------------------------------------------------------

def _split_name(list_path: Path) -> str:
    """``nvs_sem_train.txt`` -> ``train``; other lists (``nvs_test.txt``, ``sem_test.txt``, ...) keep their stem."""
    stem = list_path.stem
    return stem[len("nvs_sem_"):] if stem.startswith("nvs_sem_") else stem


def read_split_lists(raw: str | Path) -> dict[str, list[str]]:
    """{split: scene ids} from ``<raw>/splits/*.txt``, in priority order: the ``nvs_sem_*`` lists, then the others."""
    split_dir = Path(raw) / "splits"
    if not split_dir.is_dir():
        return {}
    files = sorted((p for p in split_dir.glob("*.txt") if p.is_file()),
                   key=lambda p: (not p.stem.startswith("nvs_sem_"), p.name))
    out: dict[str, list[str]] = {}
    for path in files:
        ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        bad = [i for i in ids if not _SCENE_ID.match(i)]
        if bad:
            raise InputError(path, f"not a ScanNet++ scene id (6 to 16 hex digits): {bad[0]!r}")
        out.setdefault(_split_name(path), []).extend(ids)
    return out


def list_scenes(raw: str | Path, split: str | None = None) -> list[tuple[str, str]]:
    """(scene_id, split) of the scenes present under ``<raw>/data``, sorted by id.

    The split is the first list naming the scene (``nvs_sem_train``/``nvs_sem_val`` before the test lists). Listed
    scenes without a folder are skipped (partial downloads); folders in no list get ``"unlisted"``. ``split`` may be
    given as ``train`` or as the list name ``nvs_sem_train``.
    """
    raw = Path(raw)
    data = raw / "data"
    if not data.is_dir():
        raise InputError(data, "ScanNet++ data folder not found")
    split_of: dict[str, str] = {}
    for name, ids in read_split_lists(raw).items():
        for scene_id in ids:
            split_of.setdefault(scene_id, name)
    wanted = None if split is None else _split_name(Path(f"{split}.txt"))
    scenes = [(d.name, split_of.get(d.name, UNLISTED_SPLIT)) for d in sorted(data.iterdir())
              if d.is_dir() and _SCENE_ID.match(d.name)]
    return [(s, sp) for s, sp in scenes if wanted is None or sp == wanted]


# ---- small readers ---------------------------------------------------------------------------------------------------

def read_video_header(path: Path) -> dict[str, Any]:
    """Width, height, frame count and rate of a video from its container (no decoding; counts packets if needed)."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(path, "video file has no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            num_frames = stream.frames
            if not num_frames:  # Matroska stores no frame count: count the demuxed packets instead
                num_frames = sum(1 for packet in container.demux(stream) if packet.size)
            rate = stream.average_rate or stream.guessed_rate
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - PyAV raises av.error.* (FFmpegError subclasses) for corrupt files
        raise InputError(path, f"corrupt video: cannot read the container header ({exc})") from exc
    if not width or not height or not num_frames:
        raise InputError(path, f"corrupt video: {width}x{height}, {num_frames} frames")
    return {"width": int(width), "height": int(height), "frames": int(num_frames),
            "fps": float(rate) if rate else None}


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:  # reads the header only
            return img.size
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(path, f"corrupt image: {exc}") from exc


def read_label_map(path: Path) -> dict[str, str]:
    """``map_benchmark.csv`` -> {class: semantic_map_to} (raw cell text, stripped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"unreadable label map: {exc}") from exc
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or not {"class", "semantic_map_to"} <= set(reader.fieldnames):
        raise InputError(path, f"label map needs columns 'class' and 'semantic_map_to', has {reader.fieldnames}")
    return {row["class"].strip(): (row["semantic_map_to"] or "").strip() for row in reader if row["class"]}


def _read_class_list(path: Path) -> set[str] | None:
    if not path.is_file():
        return None
    return {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def _category(label: str, label_map: dict[str, str]) -> tuple[str, str]:
    """(category, how) by the documented rule; how ∈ renamed / kept / benchmark_excluded / not_in_map."""
    if label not in label_map:
        return label, "not_in_map"
    target = label_map[label]
    if target in ("", "nan", "NaN"):
        return label, "kept"
    if target == "None":
        return label, "benchmark_excluded"
    return target, "renamed"


def _pose_deviation(c2w_a: np.ndarray, c2w_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Camera-centre distance (m) and relative rotation angle (degrees) of paired poses [N, 4, 4]."""
    translation_m = np.linalg.norm(c2w_a[:, :3, 3] - c2w_b[:, :3, 3], axis=1)
    rel = np.einsum("nji,njk->nik", c2w_a[:, :3, :3], c2w_b[:, :3, :3])
    cos = np.clip((np.trace(rel, axis1=1, axis2=2) - 1.0) / 2.0, -1.0, 1.0)
    return translation_m, np.degrees(np.arccos(cos))


def _scale_intrinsics(fx, fy, cx, cy, from_size: tuple[int, int], to_size: tuple[int, int]):
    sx, sy = to_size[0] / from_size[0], to_size[1] / from_size[1]
    return fx * sx, fy * sy, cx * sx, cy * sy


# ---- iPhone stream ---------------------------------------------------------------------------------------------------

def _iphone_poses(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """frame indices [N], timestamps [N] (s), camera-to-world [N, 4, 4] (NaN where lost), intrinsics [N, 3, 3]."""
    data = read_input_json(path, "pose_intrinsic_imu.json")
    if not isinstance(data, dict) or not data:
        raise InputError(path, "expected a non-empty object keyed frame_%06d")
    entries = []
    for key, entry in data.items():
        m = _FRAME_KEY.match(key)
        if m is None or not isinstance(entry, dict):
            raise InputError(path, f"unexpected entry {key!r} (keys must be frame_%06d with an object value)")
        entries.append((int(m.group(1)), key, entry))
    entries.sort(key=lambda e: e[0])
    n = len(entries)
    frame_index = np.array([e[0] for e in entries], np.int64)
    if len(np.unique(frame_index)) != n:
        raise InputError(path, "two keys name the same frame number")
    timestamps = np.empty(n)
    c2w = np.full((n, 4, 4), np.nan)
    intrinsics = np.empty((n, 3, 3))
    for i, (_, key, entry) in enumerate(entries):
        try:
            timestamps[i] = float(entry["timestamp"])
            intrinsics[i] = np.asarray(entry["intrinsic"], np.float64).reshape(3, 3)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(path, f"{key}: missing or malformed timestamp/intrinsic ({exc})") from exc
        pose = entry.get("aligned_pose")
        if pose is not None:
            try:
                c2w[i] = np.asarray(pose, np.float64).reshape(4, 4)
            except (TypeError, ValueError) as exc:
                raise InputError(path, f"{key}: aligned_pose is not a 4x4 matrix ({exc})") from exc
    if not np.isfinite(intrinsics).all():
        raise InputError(path, "non-finite intrinsic matrix")
    return frame_index, timestamps, c2w, intrinsics


def _iphone_colour(paths: ScanNetPPPaths, frame_index: np.ndarray) -> dict[str, Any]:
    """Which colour source to use, its size, and which frames it has."""
    rgb_dir = paths.iphone / "rgb"
    images: dict[int, Path] = {}
    if rgb_dir.is_dir():
        for p in rgb_dir.iterdir():
            m = _FRAME_NAME.match(p.name)
            if m:
                images[int(m.group(1))] = p
    has_image = np.array([int(i) in images for i in frame_index], bool)
    video = paths.video
    if has_image.all() or (video is None and has_image.any()):
        first = images[int(frame_index[np.flatnonzero(has_image)[0]])]
        width, height = _image_size(first)
        return {"kind": "image", "path": str(rgb_dir), "width": width, "height": height, "available": has_image,
                "paths": [str(images.get(int(i), "")) for i in frame_index]}
    if video is None:
        raise InputError(paths.iphone / "rgb.mkv", "no iPhone video (rgb.mkv or rgb.mp4) and no extracted "
                                                   "rgb/frame_%06d.jpg frames")
    header = read_video_header(video)
    return {"kind": "video", "path": str(video), "width": header["width"], "height": header["height"],
            "frames": header["frames"], "fps": header["fps"], "available": frame_index < header["frames"]}


def _iphone_camera(paths: ScanNetPPPaths) -> ColmapCamera | None:
    cameras_txt = paths.iphone / "colmap" / "cameras.txt"
    if not cameras_txt.is_file():
        return None
    cameras = read_cameras_txt(cameras_txt)
    if len(cameras) != 1:
        raise InputError(cameras_txt, f"expected the iPhone's single camera, found {len(cameras)}")
    return next(iter(cameras.values()))


def _colmap_check(images_txt: Path, frame_index: np.ndarray, c2w: np.ndarray, valid: np.ndarray) -> dict[str, Any]:
    images = read_images_txt(images_txt)
    row_of = {int(f): r for r, f in enumerate(frame_index)}
    rows, colmap_c2w = [], []
    for img in images:
        m = _FRAME_NAME.match(img.basename)
        if m and int(m.group(1)) in row_of and valid[row_of[int(m.group(1))]]:
            rows.append(row_of[int(m.group(1))])
            colmap_c2w.append(img.camera_to_world)
    check: dict[str, Any] = {"images_txt": str(images_txt), "registered": len(images), "compared": len(rows),
                             "max_translation_m": None, "max_rotation_deg": None, "exceeds_tolerance": False}
    if rows:
        t_dev, r_dev = _pose_deviation(c2w[rows], np.stack(colmap_c2w))
        check.update(max_translation_m=float(t_dev.max()), max_rotation_deg=float(r_dev.max()),
                     exceeds_tolerance=bool(t_dev.max() > POSE_CHECK_TOLERANCE_M
                                            or r_dev.max() > POSE_CHECK_TOLERANCE_DEG))
        if check["exceeds_tolerance"]:
            log.warning("%s: aligned_pose differs from COLMAP by up to %.4f m / %.3f deg", images_txt,
                        t_dev.max(), r_dev.max())
    return check


def _iphone_frames(paths: ScanNetPPPaths) -> tuple[pa.Table, dict[str, Any]]:
    frame_index, timestamps, c2w, intrinsics = _iphone_poses(paths.pose_json)
    colour = _iphone_colour(paths, frame_index)
    keep = colour["available"]
    dropped = int((~keep).sum())
    frame_index, timestamps, c2w, intrinsics = frame_index[keep], timestamps[keep], c2w[keep], intrinsics[keep]
    n = len(frame_index)
    if n == 0:
        raise InputError(paths.pose_json, "no frame of the pose file exists in the colour source")
    valid = finite_pose_mask(c2w)
    c2w[~valid] = np.nan

    camera = _iphone_camera(paths)
    colour_size = (colour["width"], colour["height"])
    reference_size = (camera.width, camera.height) if camera is not None else colour_size
    fx, fy, cx, cy = intrinsics[:, 0, 0], intrinsics[:, 1, 1], intrinsics[:, 0, 2], intrinsics[:, 1, 2]

    cols = frames_columns(n)
    cols.update(frame_index=frame_index, timestamp=timestamps, camera_to_world=c2w.reshape(n, 16), valid=valid,
                width=np.full(n, colour["width"], np.int32), height=np.full(n, colour["height"], np.int32))
    cols["fx"], cols["fy"], cols["cx"], cols["cy"] = _scale_intrinsics(fx, fy, cx, cy, reference_size, colour_size)
    if colour["kind"] == "video":
        cols.update(color_kind=["video"] * n, color_path=[colour["path"]] * n, color_offset=frame_index.copy())
    else:
        cols.update(color_kind=["image"] * n, color_path=[p for p, k in zip(colour["paths"], keep) if k])

    depth_meta = None
    if paths.depth_bin.is_file():
        index = index_depth_bin(paths.depth_bin, DEPTH_WIDTH, DEPTH_HEIGHT)
        has_depth = frame_index < index.num_frames
        rows = frame_index[has_depth]
        cols["depth_kind"] = [index.kind if h else "none" for h in has_depth]
        cols["depth_path"] = [str(paths.depth_bin) if h else "" for h in has_depth]
        cols["depth_offset"][has_depth] = index.offsets[rows]
        cols["depth_length"][has_depth] = index.lengths[rows]
        cols["depth_scale"][:] = index.unit_m
        cols["depth_width"][has_depth] = DEPTH_WIDTH
        cols["depth_height"][has_depth] = DEPTH_HEIGHT
        dfx, dfy, dcx, dcy = _scale_intrinsics(fx, fy, cx, cy, reference_size, (DEPTH_WIDTH, DEPTH_HEIGHT))
        for name, values in (("depth_fx", dfx), ("depth_fy", dfy), ("depth_cx", dcx), ("depth_cy", dcy)):
            cols[name][has_depth] = values[has_depth]
        depth_meta = {"path": str(paths.depth_bin), "kind": index.kind, "frames": index.num_frames,
                      "width": DEPTH_WIDTH, "height": DEPTH_HEIGHT, "frames_without_depth": int((~has_depth).sum())}

    images_txt = paths.iphone / "colmap" / "images.txt"
    meta: dict[str, Any] = {
        "video_source": {key: colour[key] for key in ("kind", "path", "width", "height", "frames", "fps")
                         if key in colour} | {"stream": "iphone"},
        "pose_source": str(paths.pose_json),
        "pose_field": "aligned_pose",
        "frames_without_colour": dropped,
        "intrinsic_reference_size": list(reference_size),
        "camera": None if camera is None else {
            "model": camera.model, "distortion": camera.distortion, "undistorted": False,
            "source": str(paths.iphone / "colmap" / "cameras.txt")},
        "depth_source": depth_meta,
        "colmap_check": _colmap_check(images_txt, frame_index, c2w, valid) if images_txt.is_file() else None,
    }
    return table_from_columns(FRAMES_SCHEMA, cols), meta


# ---- DSLR stream -----------------------------------------------------------------------------------------------------

def _dslr_frames(paths: ScanNetPPPaths) -> tuple[pa.Table, dict[str, Any]]:
    image_dir = paths.dslr / "resized_images"
    names = sorted(p.name for p in image_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES) \
        if image_dir.is_dir() else []
    if not names:
        raise InputError(image_dir, "no DSLR images in resized_images/")
    cameras_txt, images_txt = paths.dslr / "colmap" / "cameras.txt", paths.dslr / "colmap" / "images.txt"
    cameras = read_cameras_txt(cameras_txt)
    registered = {img.basename: img for img in read_images_txt(images_txt)}
    n = len(names)
    c2w = np.full((n, 4, 4), np.nan)
    cols = frames_columns(n)
    used_cameras: set[int] = set()
    for i, name in enumerate(names):
        img = registered.get(name)
        if img is not None:
            if img.camera_id not in cameras:
                raise InputError(images_txt, f"{name}: camera id {img.camera_id} not in {cameras_txt.name}")
            c2w[i] = img.camera_to_world
        # Unregistered images still get the intrinsics when the rig has one camera (it always has in ScanNet++).
        if img is not None:
            camera = cameras[img.camera_id]
        else:
            camera = next(iter(cameras.values())) if len(cameras) == 1 else None
        width, height = _image_size(image_dir / name)
        cols["width"][i], cols["height"][i] = width, height
        if camera is not None:
            used_cameras.add(camera.camera_id)
            fx, fy, cx, cy = camera.focal_principal
            cols["fx"][i], cols["fy"][i], cols["cx"][i], cols["cy"][i] = _scale_intrinsics(
                fx, fy, cx, cy, (camera.width, camera.height), (width, height))
    valid = finite_pose_mask(c2w)
    c2w[~valid] = np.nan
    frame_index = np.arange(n, dtype=np.int64)
    cols.update(frame_index=frame_index, timestamp=frame_index / DSLR_NOMINAL_FPS,
                camera_to_world=c2w.reshape(n, 16), valid=valid,
                color_kind=["image"] * n, color_path=[str(image_dir / name) for name in names])

    lists_path = paths.dslr / "train_test_lists.json"
    lists = read_input_json(lists_path, "train_test_lists.json") if lists_path.is_file() else None
    if lists is not None and not (isinstance(lists, dict) and all(isinstance(lists.get(k, []), list)
                                                                  for k in ("train", "test"))):
        raise InputError(lists_path, "expected {\"train\": [names], \"test\": [names]}")
    nerfstudio = paths.dslr / "nerfstudio" / "transforms.json"
    meta: dict[str, Any] = {
        "video_source": {"kind": "image", "path": str(image_dir), "stream": "dslr", "frames": n,
                         "order": "file name", "timestamps": f"index / {DSLR_NOMINAL_FPS:g} s (the DSLR has none)"},
        "pose_source": str(images_txt),
        "camera": {"source": str(cameras_txt), "undistorted": False,
                   "note": "fisheye images are not undistorted; fx fy cx cy are the distorted camera's",
                   "models": {str(c): {"model": cameras[c].model, "distortion": cameras[c].distortion,
                                       "width": cameras[c].width, "height": cameras[c].height}
                              for c in sorted(used_cameras)}},
        "dslr_train_test": None if lists is None else {
            "path": str(lists_path), "train": sorted(lists.get("train", [])), "test": sorted(lists.get("test", []))},
        "registered_not_on_disk": len(set(registered) - set(names)),
        "unregistered_images": int((~valid).sum()),
        "depth_source": None,
        "nerfstudio_check": _nerfstudio_check(nerfstudio, names, c2w, valid) if nerfstudio.is_file() else None,
    }
    return table_from_columns(FRAMES_SCHEMA, cols), meta


def _nerfstudio_check(path: Path, names: list[str], c2w: np.ndarray, valid: np.ndarray) -> dict[str, Any]:
    """Undo the nerfstudio convention and compare with the COLMAP poses (catches a wrong world permutation)."""
    data = read_input_json(path, "nerfstudio transforms.json")
    if not isinstance(data, dict):
        raise InputError(path, "expected an object with 'frames'")
    row_of = {name: i for i, name in enumerate(names)}
    rows, ns_c2w = [], []
    for frame in list(data.get("frames", [])) + list(data.get("test_frames", [])):
        if not isinstance(frame, dict):
            raise InputError(path, "a frames entry is not an object")
        row = row_of.get(Path(str(frame.get("file_path", ""))).name)
        if row is not None and valid[row]:
            try:
                matrix = np.asarray(frame["transform_matrix"], np.float64).reshape(4, 4)
            except (KeyError, TypeError, ValueError) as exc:
                raise InputError(path, f"{frame.get('file_path')}: transform_matrix is not a 4x4 matrix") from exc
            rows.append(row)
            ns_c2w.append(nerfstudio_to_camera_to_world(matrix))
    check: dict[str, Any] = {"path": str(path), "compared": len(rows), "max_translation_m": None,
                             "max_rotation_deg": None}
    if rows:
        t_dev, r_dev = _pose_deviation(c2w[rows], np.stack(ns_c2w))
        check.update(max_translation_m=float(t_dev.max()), max_rotation_deg=float(r_dev.max()))
    return check


# ---- annotations -----------------------------------------------------------------------------------------------------

def _obb_array(group: dict, key: str, size: int, path: Path) -> np.ndarray:
    try:
        values = np.asarray(group["obb"][key], np.float64).reshape(size)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(path, f"segGroup {group.get('id')!r}: obb.{key} must hold {size} numbers ({exc})") from exc
    if not np.isfinite(values).all():
        raise InputError(path, f"segGroup {group.get('id')!r}: obb.{key} is not finite")
    return values


def vertex_instances(seg_indices: np.ndarray, member_segments: list[np.ndarray],
                     instance_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """[V] instance id per vertex (-1 = none) and how many segment memberships were shadowed.

    A segment listed by several groups goes to the last one (as ScanNet's export script does).
    """
    vertex_instance = np.full(len(seg_indices), -1, np.int64)
    seg_ids = np.concatenate(member_segments) if member_segments else np.zeros(0, np.int64)
    if len(seg_ids) == 0:
        return vertex_instance, 0
    owner = np.repeat(instance_ids, [len(s) for s in member_segments])
    # np.unique keeps the first occurrence; on the reversed lists that is the last group listing the segment.
    uniq_seg, first_in_reversed = np.unique(seg_ids[::-1], return_index=True)
    uniq_owner = owner[::-1][first_in_reversed]
    pos = np.minimum(np.searchsorted(uniq_seg, seg_indices), len(uniq_seg) - 1)
    hit = uniq_seg[pos] == seg_indices
    vertex_instance[hit] = uniq_owner[pos[hit]]
    return vertex_instance, int(len(seg_ids) - len(uniq_seg))


def group_vertex_counts(seg_indices: np.ndarray, member_segments: list[np.ndarray]) -> list[int]:
    """Per group, the number of vertices whose segment it lists (regardless of who wins shared segments)."""
    present_seg, vertices_per_seg = np.unique(seg_indices, return_counts=True)
    counts = []
    for segs in member_segments:
        segs = np.unique(segs)
        pos = np.minimum(np.searchsorted(present_seg, segs), max(len(present_seg) - 1, 0))
        counts.append(int(vertices_per_seg[pos][present_seg[pos] == segs].sum()) if len(present_seg) else 0)
    return counts


def _objects(paths: ScanNetPPPaths, raw: Path, num_vertices: int) -> tuple[pa.Table, np.ndarray, dict[str, Any]]:
    anno = read_input_json(paths.segments_anno, "segments_anno.json")
    groups = anno.get("segGroups") if isinstance(anno, dict) else None
    if not isinstance(groups, list):
        raise InputError(paths.segments_anno, "no segGroups list")
    segments = read_input_json(paths.segments, "segments.json")
    try:
        seg_indices = np.asarray(segments["segIndices"], np.int64)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(paths.segments, f"segIndices missing or not integers ({exc})") from exc
    if seg_indices.shape != (num_vertices,):
        raise InputError(paths.segments, f"{seg_indices.size} segIndices for a mesh of {num_vertices} vertices")

    boxed = [g for g in groups if isinstance(g, dict) and g.get("obb")]
    ids = [g.get("objectId") for g in boxed]
    if any(not isinstance(i, int) for i in ids):
        raise InputError(paths.segments_anno, "a segGroup with an obb has no integer objectId")
    if len(set(ids)) != len(ids):
        raise InputError(paths.segments_anno, "duplicate objectId among the segGroups")
    centroid = np.array([_obb_array(g, "centroid", 3, paths.segments_anno) for g in boxed]).reshape(-1, 3)
    lengths = np.array([_obb_array(g, "axesLengths", 3, paths.segments_anno) for g in boxed]).reshape(-1, 3)
    axes = np.array([_obb_array(g, "normalizedAxes", 9, paths.segments_anno) for g in boxed]).reshape(-1, 3, 3)

    member_segments = [np.asarray(g.get("segments", []), np.int64).reshape(-1) for g in boxed]
    vertex_instance, shared = vertex_instances(seg_indices, member_segments, np.asarray(ids, np.int64))
    num_points = group_vertex_counts(seg_indices, member_segments)

    label_map_path = raw / "metadata" / "semantic_benchmark" / "map_benchmark.csv"
    label_map = read_label_map(label_map_path) if label_map_path.is_file() else {}
    labels = [str(g.get("label", "")) for g in boxed]
    mapped = [_category(label, label_map) for label in labels]
    categories = [c for c, _ in mapped]
    top100_path = raw / "metadata" / "semantic_benchmark" / "top100.txt"
    top100_instance_path = raw / "metadata" / "semantic_benchmark" / "top100_instance.txt"
    top100, top100_instance = _read_class_list(top100_path), _read_class_list(top100_instance_path)

    lo, hi = box_aabb(centroid, lengths, axes)
    file_min = np.array([_obb_array(g, "min", 3, paths.segments_anno) if "min" in g["obb"] else np.full(3, np.nan)
                         for g in boxed]).reshape(-1, 3)
    file_max = np.array([_obb_array(g, "max", 3, paths.segments_anno) if "max" in g["obb"] else np.full(3, np.nan)
                         for g in boxed]).reshape(-1, 3)
    deviation = np.maximum(np.abs(lo - file_min), np.abs(hi - file_max)).max(axis=1)   # [N] metres, NaN = no min/max
    has_minmax = np.isfinite(deviation)
    orthonormality = np.abs(np.einsum("nij,nkj->nik", axes, axes) - np.eye(3)).max(axis=(1, 2))

    how = [h for _, h in mapped]
    meta = {
        "annotations": {"segments": str(paths.segments), "segments_anno": str(paths.segments_anno)},
        "label_map": str(label_map_path) if label_map else None,
        "categories": {
            "rule": "semantic_map_to when it names a class; else the raw label (empty/NaN, 'None', or no row)",
            "objects": len(boxed), "renamed": how.count("renamed"), "kept": how.count("kept"),
            "benchmark_excluded": how.count("benchmark_excluded"), "not_in_map": how.count("not_in_map"),
            "top100": str(top100_path) if top100 is not None else None,
            "in_top100": None if top100 is None else sum(c in top100 for c in categories),
            "top100_instance": str(top100_instance_path) if top100_instance is not None else None,
            "in_top100_instance": None if top100_instance is None else sum(c in top100_instance for c in categories),
        },
        "groups_without_obb": len(groups) - len(boxed),
        "segments_in_several_groups": shared,
        "obb_minmax_max_deviation_m": float(deviation[has_minmax].max()) if has_minmax.any() else None,
        "obb_minmax_mismatch_ids": [int(i) for i, d in zip(ids, deviation) if d > MINMAX_TOLERANCE_M],
        "obb_axes_max_orthonormality_error": float(orthonormality.max()) if len(boxed) else None,
    }
    table = objects_table(ids, labels, categories, centroid, lengths, axes, num_points)
    return table, vertex_instance, meta


# ---- the reader ------------------------------------------------------------------------------------------------------

class ScanNetPPReader:
    layout = "<raw>/data/<scene id>/{scans,iphone,dslr}/..., <raw>/splits/*.txt, <raw>/metadata/"

    def looks_like(self, raw: Path) -> bool:
        """A ScanNet++ release: scene folders (hex ids) with scans/ or iphone/ under data/."""
        data = raw / "data"
        return data.is_dir() and any(d.is_dir() and _SCENE_ID.match(d.name) and
                                     ((d / "scans").is_dir() or (d / "iphone").is_dir()) for d in data.iterdir())

    name = "scannetpp"

    def __init__(self, stream: str = "iphone"):
        if stream not in STREAMS:
            raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}")
        self.stream = stream

    def list_scenes(self, raw: Path, split: str | None = None) -> list[tuple[str, str]]:
        return list_scenes(raw, split)

    def read_scene(self, raw: Path, scene_id: str, split: str, stream: str | None = None) -> CanonicalScene:
        stream = stream or self.stream
        if stream not in STREAMS:
            raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}")
        raw = Path(raw).absolute()
        paths = ScanNetPPPaths(raw / "data" / scene_id)
        if not paths.scene_dir.is_dir():
            raise InputError(paths.scene_dir, "scene folder not found under data/")
        frames, frame_meta = _iphone_frames(paths) if stream == "iphone" else _dslr_frames(paths)

        mesh = read_ply(paths.mesh)
        if len(mesh.vertices) == 0:
            raise InputError(paths.mesh, "mesh has no vertices")
        if len(mesh.faces) and (mesh.faces.min() < 0 or mesh.faces.max() >= len(mesh.vertices)):
            raise InputError(paths.mesh, f"face vertex index out of range 0..{len(mesh.vertices) - 1}")
        objects, vertex_instance, object_meta = _objects(paths, raw, len(mesh.vertices))

        meta: dict[str, Any] = {
            **frame_meta,
            "mesh_source": str(paths.mesh),
            "alignment": np.eye(4).tolist(),
            "alignment_source": "identity: ScanNet++ aligned assets and poses already share the mesh's z-up frame",
            "invalid_frames": int((~frames.column("valid").to_numpy(zero_copy_only=False)).sum()),
            **object_meta,
        }
        return CanonicalScene(dataset=self.name, scene_id=scene_id, split=split, frames=frames, objects=objects,
                              mesh_vertices=mesh.vertices, mesh_faces=mesh.faces, mesh_colors=mesh.colors,
                              vertex_instance=vertex_instance, meta=meta)


READER = ScanNetPPReader()
