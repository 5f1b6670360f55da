"""Frame images as the vision tower sees them: squashed to 384x384 (PIL bicubic, as SigLIP's processor) and JPEG."""
from __future__ import annotations

from typing import Iterable

import numpy as np

from pipeline.core.errors import InputError

JPEG_QUALITY = 95
FRAME_SIZE = 384


def squash_rgb(rgb: np.ndarray, size: int = FRAME_SIZE) -> np.ndarray:
    """RGB uint8 [H, W, 3] → [size, size, 3] as SigLIP's image processor squashes (PIL bicubic on uint8, which
    antialiases when shrinking; OpenCV's cubic does not) — the same squash as extract's stored frames."""
    if rgb.shape[:2] == (size, size):
        return rgb
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((size, size), Image.Resampling.BICUBIC))


def jpeg_frames(images: Iterable[np.ndarray], where: str) -> list[bytes]:
    """RGB uint8 images → 384x384 JPEGs (squashed, PIL bicubic; deterministic bytes for given pixels)."""
    import cv2

    out = []
    for i, rgb in enumerate(images):
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise InputError(where, f"frame {i} is {rgb.dtype} {list(rgb.shape)}, expected RGB uint8")
        rgb = squash_rgb(rgb)
        ok, data = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise InputError(where, f"could not JPEG-encode frame {i}")
        out.append(data.tobytes())
    return out
