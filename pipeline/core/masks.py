"""Region masks as they are stored and consumed: COCO compressed RLE (pycocotools) and the patch-grid resize.

Region prompts (``REGIONS_SCHEMA``, the QA records' ``regions``) hold masks at the stored frame's resolution as
pycocotools' compressed RLE ``{"size": [H, W], "counts": str}``. A region extractor pools patch features, so the
trainer's loader resizes each mask to the frame contract's patch grid (:mod:`pipeline.core.patch_points`: patch
(i, j) covers the pixels whose centres fall in row i and column j of the G x G grid over the whole image) as the
fraction of each cell's pixels that the mask covers.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

from pipeline.core.patch_points import PATCH_GRID, patch_index_of_pixels


def _coco(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {"size": [int(rle["size"][0]), int(rle["size"][1])],
            "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """A boolean [H, W] mask as pycocotools' compressed RLE ``{"size": [H, W], "counts": str}``."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2D, got shape {mask.shape}")
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)[:, :, None]))[0]
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """pycocotools' compressed RLE (``counts`` as str or bytes) -> boolean [H, W] mask."""
    return coco_mask.decode(_coco(rle)).astype(bool)


def rle_area(rle: dict[str, Any]) -> int:
    """The number of pixels of a compressed RLE's mask (without decoding it)."""
    return int(coco_mask.area(_coco(rle)))


def rle_bbox_xyxy(rle: dict[str, Any]) -> list[int]:
    """The box of a non-empty compressed RLE as inclusive pixel indices [x0, y0, x1, y1] (from pycocotools'
    ``toBbox`` [x, y, w, h]: x1 = x + w - 1)."""
    x, y, w, h = coco_mask.toBbox(_coco(rle))
    if w <= 0 or h <= 0:
        raise ValueError("an empty mask has no box")
    return [int(x), int(y), int(x + w) - 1, int(y + h) - 1]


def mask_patch_coverage(mask: np.ndarray, grid: int = PATCH_GRID) -> np.ndarray:
    """[grid, grid] float32: the fraction of each patch cell's pixels inside the boolean [H, W] mask (cells are the
    frame contract's; a cell that holds no pixel centre, on frames narrower than the grid, is 0)."""
    mask = np.asarray(mask, bool)
    height, width = mask.shape
    col_cell = patch_index_of_pixels(np.arange(width), np.zeros(width), (width, height), grid)
    row_cell = patch_index_of_pixels(np.zeros(height), np.arange(height), (width, height), grid) // grid
    ys, xs = np.nonzero(mask)
    inside = np.bincount(row_cell[ys] * grid + col_cell[xs], minlength=grid * grid).reshape(grid, grid)
    cell_pixels = np.outer(np.bincount(row_cell, minlength=grid), np.bincount(col_cell, minlength=grid))
    return (inside / np.maximum(cell_pixels, 1)).astype(np.float32)
