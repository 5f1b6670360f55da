"""COLMAP text models (``cameras.txt``, ``images.txt``, ``points3D.txt``) and the nerfstudio pose convention.

COLMAP stores **world-to-camera** poses as a unit quaternion ``(qw, qx, qy, qz)`` and a translation; the camera is
OpenCV (x right, y down, z forward). ``images.txt`` has **two lines per image**: the pose line and a 2D-points line
that is empty for images without observations, so empty lines are data here and must not be dropped.

ScanNet++ uses ``OPENCV`` (iPhone: fx fy cx cy k1 k2 p1 p2) and ``OPENCV_FISHEYE`` (DSLR: fx fy cx cy k1 k2 k3 k4).
The writers (``write_*``) produce the same text format for synthetic fixtures.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.atomic import write_text
from pipeline.core.errors import InputError

# Parameter names per camera model, in COLMAP's order (src/colmap/sensor/models.h).
CAMERA_MODEL_PARAMS: dict[str, tuple[str, ...]] = {
    "SIMPLE_PINHOLE": ("f", "cx", "cy"),
    "PINHOLE": ("fx", "fy", "cx", "cy"),
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k"),
    "RADIAL": ("f", "cx", "cy", "k1", "k2"),
    "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
    "OPENCV_FISHEYE": ("fx", "fy", "cx", "cy", "k1", "k2", "k3", "k4"),
    "FULL_OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6"),
    "SIMPLE_RADIAL_FISHEYE": ("f", "cx", "cy", "k"),
    "RADIAL_FISHEYE": ("f", "cx", "cy", "k1", "k2"),
}


@dataclass(frozen=True)
class ColmapCamera:
    camera_id: int
    model: str
    width: int                 # pixels: the image size the parameters refer to
    height: int
    params: tuple[float, ...]  # in CAMERA_MODEL_PARAMS[model] order

    @property
    def param_dict(self) -> dict[str, float]:
        return dict(zip(CAMERA_MODEL_PARAMS[self.model], self.params))

    @property
    def focal_principal(self) -> tuple[float, float, float, float]:
        """(fx, fy, cx, cy) in pixels for this camera's width x height."""
        p = self.param_dict
        fx = p.get("fx", p.get("f"))
        fy = p.get("fy", p.get("f"))
        return float(fx), float(fy), float(p["cx"]), float(p["cy"])

    @property
    def distortion(self) -> dict[str, float]:
        return {k: v for k, v in self.param_dict.items() if k not in ("f", "fx", "fy", "cx", "cy")}


@dataclass(frozen=True)
class ColmapImage:
    image_id: int
    qvec_wxyz: np.ndarray      # [4] world-to-camera rotation
    tvec: np.ndarray           # [3] world-to-camera translation, metres
    camera_id: int
    name: str                  # as stored (may carry a folder prefix)

    @property
    def basename(self) -> str:
        """The file name without any folder prefix (``iphone/frame_000010.jpg`` -> ``frame_000010.jpg``)."""
        return self.name.rsplit("/", 1)[-1]

    @property
    def world_to_camera(self) -> np.ndarray:
        w2c = np.eye(4)
        w2c[:3, :3] = qvec_to_rotmat(self.qvec_wxyz)
        w2c[:3, 3] = self.tvec
        return w2c

    @property
    def camera_to_world(self) -> np.ndarray:
        return world_to_camera_inverse(self.world_to_camera)


def qvec_to_rotmat(qvec_wxyz: np.ndarray) -> np.ndarray:
    """Rotation matrices [..., 3, 3] from quaternions [..., 4] (w, x, y, z); the quaternion is normalised first."""
    q = np.asarray(qvec_wxyz, np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    rot = np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], axis=-1)
    return rot.reshape(q.shape[:-1] + (3, 3))


def rotmat_to_qvec(rot: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) with w >= 0 of a proper rotation [3, 3] (Shepperd's method, stable near 180°)."""
    r = np.asarray(rot, np.float64)
    trace = np.trace(r)
    # Pick the largest of 4w², 4x², 4y², 4z² as the divisor so no small number is divided by.
    diag = np.array([trace, r[0, 0], r[1, 1], r[2, 2]])
    i = int(np.argmax(diag))
    if i == 0:
        s = 2.0 * np.sqrt(1.0 + trace)
        q = np.array([s / 4, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s])
    elif i == 1:
        s = 2.0 * np.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2])
        q = np.array([(r[2, 1] - r[1, 2]) / s, s / 4, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s])
    elif i == 2:
        s = 2.0 * np.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2])
        q = np.array([(r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, s / 4, (r[1, 2] + r[2, 1]) / s])
    else:
        s = 2.0 * np.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1])
        q = np.array([(r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, s / 4])
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


def world_to_camera_inverse(matrix: np.ndarray) -> np.ndarray:
    """Inverse of rigid transforms [..., 4, 4] ([R|t] -> [R.T | -R.T t]); exact for rotations, unlike a generic inv."""
    m = np.asarray(matrix, np.float64)
    out = np.zeros_like(m)
    rot_t = np.swapaxes(m[..., :3, :3], -1, -2)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", rot_t, m[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


# ---- readers -----------------------------------------------------------------------------------------------------

def _data_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, text) of every non-comment line, **keeping empty lines** (see module docstring)."""
    if not path.exists():
        raise InputError(path, "COLMAP file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"unreadable COLMAP text file: {exc}") from exc
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if not line.startswith("#")]


def read_cameras_txt(path: str | os.PathLike) -> dict[int, ColmapCamera]:
    """``CAMERA_ID MODEL WIDTH HEIGHT PARAMS...`` per line -> {camera_id: ColmapCamera}."""
    path = Path(path)
    cameras: dict[int, ColmapCamera] = {}
    for lineno, line in _data_lines(path):
        if not line:
            continue
        parts = line.split()
        try:
            camera_id, model, width, height = int(parts[0]), parts[1], int(parts[2]), int(parts[3])
            params = tuple(float(v) for v in parts[4:])
        except (IndexError, ValueError) as exc:
            raise InputError(path, f"line {lineno}: malformed camera line {line!r}") from exc
        expected = CAMERA_MODEL_PARAMS.get(model)
        if expected is None:
            raise InputError(path, f"line {lineno}: unsupported camera model {model!r}")
        if len(params) != len(expected):
            raise InputError(path, f"line {lineno}: {model} needs {len(expected)} parameters, got {len(params)}")
        if camera_id in cameras:
            raise InputError(path, f"line {lineno}: duplicate camera id {camera_id}")
        cameras[camera_id] = ColmapCamera(camera_id, model, width, height, params)
    return cameras


def read_images_txt(path: str | os.PathLike) -> list[ColmapImage]:
    """Images in file order. Each image is a pose line followed by its 2D-points line (possibly empty).

    As COLMAP's own reader does, empty lines where a pose line is expected are skipped, and the line right after a
    pose line is always its points line (a final pose line may lack it).
    """
    path = Path(path)
    lines = _data_lines(path)
    images: list[ColmapImage] = []
    seen: set[int] = set()
    k = 0
    while k < len(lines):
        lineno, line = lines[k]
        if not line:
            k += 1
            continue
        parts = line.split()
        if len(parts) < 10:
            raise InputError(path, f"line {lineno}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME', "
                                   f"got {line!r} (were the empty 2D-points lines removed?)")
        try:
            image_id = int(parts[0])
            qvec = np.array([float(v) for v in parts[1:5]])
            tvec = np.array([float(v) for v in parts[5:8]])
            camera_id = int(parts[8])
        except ValueError as exc:
            raise InputError(path, f"line {lineno}: malformed image line {line!r}") from exc
        if not (np.isfinite(qvec).all() and np.isfinite(tvec).all()) or np.linalg.norm(qvec) == 0:
            raise InputError(path, f"line {lineno}: non-finite or zero quaternion/translation")
        if k + 1 < len(lines):
            points_lineno, points = lines[k + 1]
            if len(points.split()) % 3:
                raise InputError(path, f"line {points_lineno}: 2D-points line must hold X Y POINT3D_ID triples; "
                                       "the two-lines-per-image pairing is broken")
        k += 2
        if image_id in seen:
            raise InputError(path, f"line {lineno}: duplicate image id {image_id}")
        seen.add(image_id)
        # Names may contain spaces; everything after CAMERA_ID is the name.
        images.append(ColmapImage(image_id, qvec, tvec, camera_id, " ".join(parts[9:])))
    return images


def nerfstudio_to_camera_to_world(transform_matrix: np.ndarray) -> np.ndarray:
    """Undo ScanNet++'s nerfstudio export: OpenGL camera, world axes permuted ((x,y,z)_ns = (y, x, -z)_mesh).

    The export negates columns 1, 2 (OpenCV -> OpenGL camera), swaps rows 0, 1, then negates row 2; undone in
    reverse order. Returns camera-to-world, OpenCV camera, mesh world. [..., 4, 4] -> [..., 4, 4].
    """
    m = np.array(transform_matrix, np.float64, copy=True)
    m[..., 2, :] *= -1.0
    m[..., [0, 1], :] = m[..., [1, 0], :]
    m[..., :, 1:3] *= -1.0
    return m


def camera_to_world_to_nerfstudio(camera_to_world: np.ndarray) -> np.ndarray:
    """The forward ScanNet++ nerfstudio transform (inverse of :func:`nerfstudio_to_camera_to_world`)."""
    m = np.array(camera_to_world, np.float64, copy=True)
    m[..., :, 1:3] *= -1.0
    m[..., [0, 1], :] = m[..., [1, 0], :]
    m[..., 2, :] *= -1.0
    return m


# ---- writers (synthetic fixtures) ----------------------------------------------------------------------------------

def write_cameras_txt(path: str | os.PathLike, cameras: list[ColmapCamera]) -> None:
    lines = ["# Camera list with one line of data per camera:",
             "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
             f"# Number of cameras: {len(cameras)}"]
    for cam in cameras:
        if len(cam.params) != len(CAMERA_MODEL_PARAMS[cam.model]):
            raise ValueError(f"camera {cam.camera_id}: {cam.model} needs {len(CAMERA_MODEL_PARAMS[cam.model])} params")
        lines.append(" ".join([str(cam.camera_id), cam.model, str(cam.width), str(cam.height)]
                              + [repr(float(p)) for p in cam.params]))
    write_text(path, "\n".join(lines) + "\n")


def write_images_txt(path: str | os.PathLike, images: list[ColmapImage]) -> None:
    """Two lines per image; the 2D-points line is written empty, as COLMAP does for images without points."""
    lines = ["# Image list with two lines of data per image:",
             "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
             "#   POINTS2D[] as (X, Y, POINT3D_ID)",
             f"# Number of images: {len(images)}, mean observations per image: 0"]
    for img in images:
        values = [repr(float(v)) for v in (*img.qvec_wxyz, *img.tvec)]
        lines.append(" ".join([str(img.image_id), *values, str(img.camera_id), img.name]))
        lines.append("")
    write_text(path, "\n".join(lines) + "\n")


def write_points3d_txt(path: str | os.PathLike, points_xyz: np.ndarray, colors: np.ndarray) -> None:
    """``POINT3D_ID X Y Z R G B ERROR`` with an empty track (enough for a structurally valid file)."""
    lines = ["# 3D point list with one line of data per point:",
             "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
             f"# Number of points: {len(points_xyz)}, mean track length: 0"]
    for i, (p, c) in enumerate(zip(np.asarray(points_xyz, np.float64), np.asarray(colors, np.uint8)), start=1):
        x, y, z = (repr(float(v)) for v in p)
        lines.append(f"{i} {x} {y} {z} {int(c[0])} {int(c[1])} {int(c[2])} 0.0")
    write_text(path, "\n".join(lines) + "\n")
