"""Region prompts (SR-3D style): for every manifest frame and every instance visible in it, the visible-pixel mask
as COCO compressed RLE at the frame's stored resolution, its box, area, visible fraction, a truncation flag and the
source of the pixels.

The pixels come from the same pass as the graph's visibility table (:func:`scene_graph.graph.build_scene_graph`
with ``regions=RegionConfig()``): the release's 2D instance masks where the frame has one, else the mesh rasterised
with the depth test. That pass works on a raster grid (the instance mask's resolution, the depth map's, or a grid
capped at ``GraphConfig.max_raster_pixels``); this module carries a frame's visible pixels from that grid to the
stored colour image (nearest grid pixel of each image pixel centre, through the two cameras' intrinsics), encodes
them with pycocotools, and builds the REGIONS_SCHEMA rows. Everything here is pure (arrays in, arrays out) except
:func:`instance_masks_with_fallback`, which calls the reader it is given.

``bbox_xyxy`` are inclusive pixel indices, as the visibility table's ``bbox_2d`` and VLM-3R's 2D boxes: the mask's
pixels are columns ``x0..x1`` and rows ``y0..y1`` (pycocotools' ``toBbox`` ``[x, y, w, h]`` is
``[x0, y0, x1 - x0 + 1, y1 - y0 + 1]``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
from pycocotools import mask as coco_mask

from pipeline.core.errors import InputError
from pipeline.core.schemas import REGIONS_SCHEMA, table_from_columns

# The minimum visible area of a region, as a fraction of the frame: one cell of the 27x27 patch grid that the
# geometry and vision tokens use (1/729 of the image). A smaller mask covers less than one patch, so a region
# extractor pooling patch features under it would read mostly its neighbours: such slivers get no region.
MIN_REGION_AREA_FRACTION = 1.0 / 729.0


@dataclass(frozen=True)
class RegionConfig:
    """Knobs of the region prompts; the dict goes into the graph marker next to GraphConfig's."""
    min_area_fraction: float = MIN_REGION_AREA_FRACTION   # minimum mask area / frame area (see the constant)

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_area_fraction < 1.0:
            raise ValueError(f"min_area_fraction must be in [0, 1), got {self.min_area_fraction}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def min_pixels(self, width: int, height: int) -> int:
        """The smallest mask area (pixels, >= 1) kept on a width x height frame."""
        return max(1, int(np.ceil(self.min_area_fraction * width * height - 1e-9)))


# ---- COCO RLE (encode / decode: pipeline.core.masks) ----------------------------------------------------------------

def region_rle(row: dict[str, Any]) -> dict[str, Any]:
    """The pycocotools RLE object of a REGIONS_SCHEMA row (as a dict, e.g. from ``table.to_pylist()``)."""
    return {"size": [int(row["mask_height"]), int(row["mask_width"])], "counts": row["rle_counts"]}


# ---- from the raster grid to the stored frame --------------------------------------------------------------------

def grid_index_of_pixels(image_k, image_wh: tuple[int, int], grid_k, grid_wh: tuple[int, int]):
    """For each image column and row, the grid column and row whose pixel contains the image pixel's centre
    (-1 where the centre falls outside the grid, e.g. a depth camera with a narrower field of view).

    Both cameras share the centre and orientation (registered depth, or a resampled grid of the same image), so the
    map is separable: image u -> normalised x = (u - cx) / fx -> grid u' = gfx * x + gcx, nearest pixel."""
    fx, fy, cx, cy = image_k
    gfx, gfy, gcx, gcy = grid_k
    cols = np.floor(gfx * (np.arange(image_wh[0]) - cx) / fx + gcx + 0.5).astype(np.int64)
    rows = np.floor(gfy * (np.arange(image_wh[1]) - cy) / fy + gcy + 0.5).astype(np.int64)
    cols[(cols < 0) | (cols >= grid_wh[0])] = -1
    rows[(rows < 0) | (rows >= grid_wh[1])] = -1
    return cols, rows


def image_mask_crop(grid_pixels: np.ndarray, grid_w: int, col_of: np.ndarray, row_of: np.ndarray):
    """The image-resolution mask of one object's visible grid pixels, cropped to the image rows and columns that map
    into the pixels' grid box: (mask [h, w] bool, first image column, first image row), or None if no image pixel
    centre lands on one of them."""
    gcol, grow = grid_pixels % grid_w, grid_pixels // grid_w
    gx0, gy0 = int(gcol.min()), int(grow.min())
    gx1, gy1 = int(gcol.max()), int(grow.max())
    image_cols = np.flatnonzero((col_of >= gx0) & (col_of <= gx1))    # contiguous: the map is monotonic
    image_rows = np.flatnonzero((row_of >= gy0) & (row_of <= gy1))
    if len(image_cols) == 0 or len(image_rows) == 0:
        return None
    grid = np.zeros((gy1 - gy0 + 1, gx1 - gx0 + 1), bool)
    grid[grow - gy0, gcol - gx0] = True
    crop = grid[(row_of[image_rows] - gy0)[:, None], (col_of[image_cols] - gx0)[None, :]]
    return crop, int(image_cols[0]), int(image_rows[0])


def truncated_objects(points_cam: np.ndarray, owner: np.ndarray, n_objects: int, image_k,
                      image_wh: tuple[int, int], near_m: float) -> np.ndarray:
    """[n_objects] bool: the object's projection crosses the image border, i.e. one of its surface points (camera
    frame, [P, 3], owner row [P]) projects outside the image's pixel edges or lies behind the near plane (its
    projection is then unbounded). Exact for triangle meshes: a triangle with every vertex in front of the camera and
    inside the image projects inside it."""
    fx, fy, cx, cy = image_k
    z = points_cam[:, 2]
    in_front = z >= near_m
    safe_z = np.where(in_front, z, 1.0)
    u = fx * points_cam[:, 0] / safe_z + cx
    v = fy * points_cam[:, 1] / safe_z + cy
    outside = ~in_front | (u < -0.5) | (u > image_wh[0] - 0.5) | (v < -0.5) | (v > image_wh[1] - 0.5)
    return np.bincount(owner[outside], minlength=n_objects)[:n_objects] > 0


def frame_region_rows(rank: int, owner: np.ndarray, grid_pixels: np.ndarray, grid_wh: tuple[int, int], grid_k,
                      image_k, image_wh: tuple[int, int], visible_fraction: np.ndarray, truncated: np.ndarray,
                      source: str, config: RegionConfig = RegionConfig()) -> dict[str, Any] | None:
    """The region rows of one frame as columns (``object_row`` instead of instance ids), or None when no object
    keeps a region.

    ``owner``/``grid_pixels``: the object row and grid pixel index (row * grid width + column) of every visible
    pixel of the frame on the raster grid (``grid_wh``, intrinsics ``grid_k``); ``visible_fraction``/``truncated``:
    per object row. Masks are built at the stored image resolution ``image_wh`` (intrinsics ``image_k``).
    """
    width, height = image_wh
    col_of, row_of = grid_index_of_pixels(image_k, image_wh, grid_k, grid_wh)
    min_pixels = config.min_pixels(width, height)
    order = np.argsort(owner, kind="stable")
    owner, grid_pixels = owner[order], grid_pixels[order]
    object_rows, starts = np.unique(owner, return_index=True)
    stops = np.r_[starts[1:], len(owner)]
    out: dict[str, list] = {name: [] for name in ("object_row", "bbox_xyxy", "rle_counts", "visible_pixels",
                                                  "visible_fraction", "truncated")}
    full = np.zeros((height, width), np.uint8, order="F")     # pycocotools encodes Fortran-order [H, W, 1]
    previous = (slice(0, 0), slice(0, 0))
    for row, start, stop in zip(object_rows.tolist(), starts.tolist(), stops.tolist()):
        found = image_mask_crop(grid_pixels[start:stop], grid_wh[0], col_of, row_of)
        if found is None:
            continue
        crop, x_off, y_off = found
        area = int(crop.sum())
        if area < min_pixels:
            continue
        ys, xs = np.nonzero(crop.any(axis=1))[0], np.nonzero(crop.any(axis=0))[0]
        y0, y1, x0, x1 = ys[0] + y_off, ys[-1] + y_off, xs[0] + x_off, xs[-1] + x_off
        full[previous] = 0                                 # only the last mask's crop is non-zero
        previous = (slice(y_off, y_off + crop.shape[0]), slice(x_off, x_off + crop.shape[1]))
        full[previous] = crop
        rle = coco_mask.encode(full[:, :, None])[0]
        out["object_row"].append(row)
        out["bbox_xyxy"].append([x0, y0, x1, y1])
        out["rle_counts"].append(rle["counts"].decode("ascii"))
        out["visible_pixels"].append(area)
        out["visible_fraction"].append(float(visible_fraction[row]))
        out["truncated"].append(bool(truncated[row]))
    if not out["object_row"]:
        return None
    n = len(out["object_row"])
    return {"rank": np.full(n, rank, np.int32), "object_row": np.asarray(out["object_row"], np.int64),
            "bbox_xyxy": np.asarray(out["bbox_xyxy"], np.int32).reshape(n, 4),
            "mask_height": np.full(n, height, np.int32), "mask_width": np.full(n, width, np.int32),
            "rle_counts": out["rle_counts"], "visible_pixels": np.asarray(out["visible_pixels"], np.int64),
            "visible_fraction": np.asarray(out["visible_fraction"], np.float64),
            "truncated": np.asarray(out["truncated"], bool), "source": [source] * n}


def regions_table(parts: Sequence[dict[str, Any]], instance_ids: np.ndarray) -> pa.Table:
    """REGIONS_SCHEMA rows from the frames' column dicts (in rank order, object rows sorted by instance id)."""
    if not parts:
        return table_from_columns(REGIONS_SCHEMA, {name: [] for name in REGIONS_SCHEMA.names})
    cols = {k: (np.concatenate([p[k] for p in parts]) if isinstance(parts[0][k], np.ndarray)
                else [x for p in parts for x in p[k]]) for k in parts[0]}
    cols["instance_id"] = np.asarray(instance_ids, np.int64)[cols.pop("object_row")]
    return table_from_columns(REGIONS_SCHEMA, cols)


def region_stats(regions: pa.Table) -> dict[str, Any]:
    """Counts for the graph marker: regions, by source, truncated ones, instances with a region."""
    sources = regions.column("source").to_pylist()
    return {"regions": regions.num_rows, "region_sources": {s: sources.count(s) for s in sorted(set(sources))},
            "truncated_regions": int(np.asarray(regions.column("truncated").to_pylist(), bool).sum()),
            "instances_with_regions": len(set(regions.column("instance_id").to_pylist()))}


# ---- the release's 2D masks, with a fallback -----------------------------------------------------------------------

def instance_masks_with_fallback(read_mask: Callable[[int], np.ndarray], frame_indices: Sequence[int],
                                 ) -> tuple[list[np.ndarray | None], list[dict[str, Any]]]:
    """Each frame's 2D instance mask from ``read_mask(frame_index)``, or None where it is missing or corrupt (the
    reader raised InputError, or the array is not a 2D integer image): the graph then rasterises the mesh with the
    depth test for that frame. Returns (masks by rank, fallbacks: ``{"frame_index", "path", "problem"}`` per frame
    that fell back), so the driver can count and record them."""
    masks: list[np.ndarray | None] = []
    fallbacks: list[dict[str, Any]] = []
    for frame_index in frame_indices:
        try:
            mask = np.asarray(read_mask(int(frame_index)))
            if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
                raise InputError("instance mask", f"expected a 2D integer image, got {mask.dtype} {mask.shape}")
        except InputError as exc:
            masks.append(None)
            fallbacks.append({"frame_index": int(frame_index), "path": str(exc.path), "problem": exc.problem})
            continue
        masks.append(mask)
    return masks, fallbacks
