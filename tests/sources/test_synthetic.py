"""The synthetic scene generator: determinism, exact ground truth, and renderings consistent with poses and K.

The rendering checks go through the camera model the readers use (OpenCV camera-to-world, pixel (u, v) at
u = fx x / z + cx with cx = (w - 1) / 2): a pixel back-projected with its depth must land on the surface it shows,
so a flipped axis, an inverted pose or a half-pixel shift fails them.
"""
from __future__ import annotations

import collections
import hashlib
import inspect
import os
import subprocess
import sys
from functools import lru_cache

import numpy as np
import pytest
import shapely
from shapely.geometry import Point, Polygon

from pipeline.sources.synthetic import (FURNITURE_CATEGORIES, MOUNTED_BOTTOM_M, MOUNTED_CATEGORIES, SyntheticScene,
                                        _render, generate_scene, generate_scenes)

# Seed 1 has an interior partial wall and seed 3 an L-shaped room (asserted in test_room_shapes_vary).
SEEDS = (0, 1, 2, 3)


@lru_cache(maxsize=None)
def scene(seed: int) -> SyntheticScene:
    return generate_scene(seed)


def furniture(s: SyntheticScene):
    return [o for o in s.objects if o.label in FURNITURE_CATEGORIES]


def footprint(obj) -> Polygon:
    corners = [obj.centroid[:2] + sx * obj.lengths[0] / 2 * obj.axes[0, :2] + sy * obj.lengths[1] / 2 * obj.axes[1, :2]
               for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    return Polygon(corners)


def box_corners(obj) -> np.ndarray:
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], np.float64)
    return obj.centroid + (signs * obj.lengths / 2) @ obj.axes                        # [8, 3]


def back_project(s: SyntheticScene, frame: int, mask: np.ndarray) -> np.ndarray:
    """World points [N, 3] of the masked pixels of ``frame``, from their depth, K and camera-to-world."""
    v, u = np.nonzero(mask)
    z = s.depth[frame][v, u].astype(np.float64)
    k = s.intrinsics
    camera = np.stack([(u - k[0, 2]) / k[0, 0] * z, (v - k[1, 2]) / k[1, 1] * z, z], axis=1)
    pose = s.camera_to_world[frame]
    return camera @ pose[:3, :3].T + pose[:3, 3]


def scene_digest(s: SyntheticScene) -> str:
    digest = hashlib.sha256()
    for array in (s.vertices, s.faces, s.colors, s.vertex_instance, s.camera_to_world, s.timestamps, s.intrinsics,
                  s.rgb, s.depth, s.instance):
        digest.update(np.ascontiguousarray(array).tobytes())
    for o in s.objects:
        digest.update(f"{o.instance_id}:{o.label}".encode())
        digest.update(np.concatenate([o.centroid, o.lengths, o.axes.ravel()]).tobytes())
    digest.update(repr(s.invalid_frames).encode())
    return digest.hexdigest()


# ---- determinism ------------------------------------------------------------------------------------------------

def test_same_seed_gives_byte_identical_scene():
    a, b = generate_scene(5), generate_scene(5)
    assert scene_digest(a) == scene_digest(b)
    assert [o.label for o in a.objects] == [o.label for o in b.objects]
    assert (a.name, a.seed, a.invalid_frames) == (b.name, b.seed, b.invalid_frames) == ("synth0005", 5,
                                                                                          a.invalid_frames)
    assert scene_digest(generate_scene(6)) != scene_digest(a)


def test_scene_is_identical_in_a_fresh_interpreter():
    """Nothing depends on process state (hash seed, what ran before): another interpreter builds the same bytes."""
    code = "\n".join(["from __future__ import annotations", "import hashlib", "import numpy as np",
                      "from pipeline.sources.synthetic import generate_scene", inspect.getsource(scene_digest),
                      "print(scene_digest(generate_scene(2)))"])
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == scene_digest(scene(2))


def test_generate_scenes_uses_consecutive_seeds():
    scenes = generate_scenes(2, seed=40, num_frames=6, width=32, height=24)
    assert [(s.name, s.seed, s.rgb.shape) for s in scenes] == [("synth0040", 40, (6, 24, 32, 3)),
                                                               ("synth0041", 41, (6, 24, 32, 3))]
    assert scene_digest(scenes[1]) == scene_digest(generate_scene(41, num_frames=6, width=32, height=24))


def test_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_frames"):
        generate_scene(0, num_frames=1)
    with pytest.raises(ValueError, match="8x8"):
        generate_scene(0, width=4, height=4)


# ---- the room and its objects -----------------------------------------------------------------------------------

def test_array_types_shapes_and_camera_model():
    s = scene(0)
    t, h, w = 48, 72, 96
    assert s.vertices.dtype == np.float64 and s.vertices.shape[1] == 3
    assert s.faces.dtype == np.int64 and s.faces.min() >= 0 and s.faces.max() < len(s.vertices)
    assert s.colors.dtype == np.uint8 and s.colors.shape == s.vertices.shape
    assert s.vertex_instance.dtype == np.int64 and s.vertex_instance.shape == (len(s.vertices),)
    assert s.rgb.shape == (t, h, w, 3) and s.rgb.dtype == np.uint8
    assert s.depth.shape == (t, h, w) and s.depth.dtype == np.float32
    assert s.instance.shape == (t, h, w) and s.instance.dtype == np.int32
    np.testing.assert_array_equal(s.timestamps, np.arange(t) / 2.0)
    np.testing.assert_array_equal(s.intrinsics, [[76.8, 0, 47.5], [0, 76.8, 35.5], [0, 0, 1]])
    assert (s.width, s.height) == (w, h)
    # Rigid camera-to-world poses; OpenCV: the camera's y axis (column 1) points down in the z-up world.
    rotation = s.camera_to_world[:, :3, :3]
    np.testing.assert_allclose(rotation @ rotation.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rotation.shape),
                               atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rotation), 1.0, atol=1e-12)
    np.testing.assert_array_equal(s.camera_to_world[:, 3], np.broadcast_to([0, 0, 0, 1], (t, 4)))
    assert (rotation[:, 2, 1] < 0).all()              # camera y (down) has a negative world z
    assert (rotation[:, 2, 2] < 0).all()              # looking slightly down
    # One lost pose, in the middle half of the walk; its true pose is still there.
    assert len(s.invalid_frames) == 1 and t // 4 <= s.invalid_frames[0] < 3 * t // 4
    assert np.isfinite(s.camera_to_world[s.invalid_frames[0]]).all()
    ids = [o.instance_id for o in s.objects]
    assert ids == sorted(set(ids)) and set(np.unique(s.vertex_instance)) == set(ids)


@pytest.mark.parametrize("seed", SEEDS)
def test_categories_counts_and_repeats(seed):
    s = scene(seed)
    labels = [o.label for o in s.objects]
    assert labels.count("floor") == 1 and labels.count("wall") >= 4
    assert set(labels) <= set(FURNITURE_CATEGORIES) | {"floor", "wall"}
    counts = collections.Counter(o.label for o in furniture(s))
    assert 5 <= sum(counts.values()) <= 15
    assert max(counts.values()) >= 2                              # a repeated category
    assert sum(c == 1 for c in counts.values()) >= 2             # and at least two unique ones


def test_room_shapes_vary():
    """The default seeds cover a plain rectangle, an interior partial wall and an L-shaped floor."""
    outer_walls = {}
    for seed in SEEDS:
        s = scene(seed)
        floor_faces = s.faces[s.vertex_instance[s.faces[:, 0]] == 0]
        floor_area = np.abs(np.cross(*(s.vertices[floor_faces[:, 1:]] - s.vertices[floor_faces[:, :1]])
                                     .transpose(1, 0, 2))[:, 2]).sum() / 2
        floor = next(o for o in s.objects if o.label == "floor")
        outer_walls[seed] = (sum(o.label == "wall" for o in s.objects),
                             bool(floor_area < floor.lengths[0] * floor.lengths[1] - 1e-6))
    assert outer_walls[0] == (4, False)       # rectangle
    assert outer_walls[1] == (5, False)       # rectangle plus a partial interior wall
    assert outer_walls[3] == (6, True)        # L shape: six walls, floor smaller than its bounding box


@pytest.mark.parametrize("seed", SEEDS)
def test_each_box_bounds_its_vertices_exactly(seed):
    s = scene(seed)
    for obj in s.objects:
        np.testing.assert_allclose(obj.axes @ obj.axes.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(obj.axes) == pytest.approx(1.0)
        np.testing.assert_array_equal(obj.axes[2], [0.0, 0.0, 1.0])            # upright
        local = (s.vertices[s.vertex_instance == obj.instance_id] - obj.centroid) @ obj.axes.T
        np.testing.assert_allclose(local.max(axis=0), obj.lengths / 2, atol=1e-9, err_msg=obj.label)
        np.testing.assert_allclose(local.min(axis=0), -obj.lengths / 2, atol=1e-9, err_msg=obj.label)
    # Some furniture is not axis-aligned, so oriented boxes are exercised.
    yaws = [np.arctan2(o.axes[0, 1], o.axes[0, 0]) for o in furniture(s)]
    assert any(abs(np.sin(2 * y)) > 0.05 for y in yaws)


@pytest.mark.parametrize("seed", SEEDS)
def test_furniture_rests_inside_the_room_without_overlaps(seed):
    s = scene(seed)
    walls = [footprint(o) for o in s.objects if o.label == "wall"]
    floor_triangles = s.vertices[s.faces[s.vertex_instance[s.faces[:, 0]] == 0]][:, :, :2]
    floor = shapely.union_all(shapely.polygons(floor_triangles))
    items = furniture(s)
    for obj in items:
        shape = footprint(obj)
        assert floor.buffer(1e-9).contains(shape), obj.label
        assert not any(shape.intersection(w).area > 1e-9 for w in walls), obj.label
        bottom = obj.centroid[2] - obj.lengths[2] / 2
        if obj.label == "tv" and bottom > 1e-9:   # a tv stands on a cabinet's top, inside its footprint
            cabinet = next(o for o in items if o.label == "cabinet" and footprint(o).buffer(1e-9).contains(shape))
            assert bottom == pytest.approx(cabinet.centroid[2] + cabinet.lengths[2] / 2, abs=1e-12)
        else:
            assert bottom == pytest.approx(0.0, abs=1e-12), obj.label
    for i, a in enumerate(items):
        for b in items[i + 1:]:
            za = (a.centroid[2] - a.lengths[2] / 2, a.centroid[2] + a.lengths[2] / 2)
            zb = (b.centroid[2] - b.lengths[2] / 2, b.centroid[2] + b.lengths[2] / 2)
            overlap_z = min(za[1], zb[1]) - max(za[0], zb[0])
            assert footprint(a).intersection(footprint(b)).area < 1e-9 or overlap_z <= 1e-9, (a.label, b.label)


@pytest.mark.parametrize("seed", SEEDS)
def test_faces_point_outward(seed):
    s = scene(seed)
    tri = s.vertices[s.faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    floor = s.vertex_instance[s.faces[:, 0]] == 0
    assert (normals[floor][:, 2] > 0).all() and np.abs(normals[floor][:, :2]).max() == 0.0
    # Closed boxes: the signed volume (divergence theorem) is positive, and equals the box volume for walls.
    signed = np.einsum("fi,fi->f", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])) / 6.0
    for obj in s.objects:
        if obj.label == "floor":
            continue
        volume = signed[s.vertex_instance[s.faces[:, 0]] == obj.instance_id].sum()
        assert 0.0 < volume <= np.prod(obj.lengths) + 1e-9, obj.label
        if obj.label == "wall":
            assert volume == pytest.approx(np.prod(obj.lengths), rel=1e-9)
    # The floor grid is dense enough to estimate the floor area from its vertices.
    floor_vertices = s.vertices[s.vertex_instance == 0]
    spacing = np.diff(np.unique(floor_vertices[:, 0]))
    assert spacing.max() <= 0.25 + 1e-9 and len(floor_vertices) >= 150


@pytest.mark.parametrize("seed", SEEDS)
def test_camera_walks_inside_the_room(seed):
    s = scene(seed)
    position = s.camera_to_world[:, :3, 3]
    assert ((position[:, 2] >= 1.4) & (position[:, 2] <= 1.6)).all()
    # Over a floor triangle (so inside the room, L shapes included).
    floor_tri = s.vertices[s.faces[s.vertex_instance[s.faces[:, 0]] == 0]][:, :, :2]       # [F, 3, 2]
    a, b, c = floor_tri[:, 0], floor_tri[:, 1], floor_tri[:, 2]
    p = position[:, None, :2]

    def left_of(o, q, r):    # >= 0 where r is on the left of (or on) the directed edge o -> q
        return (q[..., 0] - o[..., 0]) * (r[..., 1] - o[..., 1]) - (q[..., 1] - o[..., 1]) * (r[..., 0] - o[..., 0])

    over = (left_of(a, b, p) >= 0) & (left_of(b, c, p) >= 0) & (left_of(c, a, p) >= 0)
    assert over.any(axis=1).all()
    for obj in s.objects:
        if obj.label == "floor":
            continue
        shape = footprint(obj)
        distances = np.array([shape.distance(Point(x, y)) for x, y in position[:, :2]])
        if obj.label == "wall":
            assert distances.min() >= 0.3 - 1e-9
        else:
            assert distances.min() > 0.0, obj.label                                      # never inside furniture
    assert np.linalg.norm(np.diff(position, axis=0), axis=1).sum() > 1.0                 # it does walk


# ---- rendering --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_floor_pixels_back_project_onto_the_floor(seed):
    """Depth is the camera z of the surface: floor pixels land on z = 0, at the ray-plane intersection."""
    s = scene(seed)
    floor_frames = 0
    for frame in range(len(s.camera_to_world)):
        mask = s.instance[frame] == 0
        if mask.sum() < 10:
            continue
        floor_frames += 1
        points = back_project(s, frame, mask)
        np.testing.assert_allclose(points[:, 2], 0.0, atol=2e-5)
        # Independent ray-plane intersection for every floor pixel.
        v, u = np.nonzero(mask)
        k, pose = s.intrinsics, s.camera_to_world[frame]
        rays = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones(len(u))], axis=1) @ pose[:3, :3].T
        expected = -pose[2, 3] / rays[:, 2]
        np.testing.assert_allclose(s.depth[frame][mask], expected, rtol=1e-6)
    assert floor_frames >= len(s.camera_to_world) // 2


@pytest.mark.parametrize("seed", SEEDS)
def test_instance_pixels_back_project_into_their_boxes(seed):
    """Every labelled pixel, back-projected with its depth, K and camera-to-world, lies inside its object's box;
    pixels with no surface have depth 0 and instance -1."""
    s = scene(seed)
    by_id = {o.instance_id: o for o in s.objects}
    for frame in range(0, len(s.camera_to_world), 3):
        assert ((s.depth[frame] == 0) == (s.instance[frame] == -1)).all()
        assert (s.depth[frame][s.instance[frame] >= 0] > 0.05).all()
        for instance_id in np.unique(s.instance[frame]):
            if instance_id < 0:
                continue
            obj = by_id[int(instance_id)]
            local = (back_project(s, frame, s.instance[frame] == instance_id) - obj.centroid) @ obj.axes.T
            assert (np.abs(local) <= obj.lengths / 2 + 1e-4).all(), (frame, obj.label)


@pytest.mark.parametrize("seed", SEEDS)
def test_projected_box_corners_enclose_the_rendered_mask(seed):
    """Box corners projected with K and inv(camera_to_world) bound the object's rendered mask (catches OpenCV/OpenGL
    and world-to-camera/camera-to-world mix-ups); rendered alone, the mask spans the projected mesh."""
    s = scene(seed)
    checked = tight = 0
    for frame in range(len(s.camera_to_world)):
        world_to_camera = np.linalg.inv(s.camera_to_world[frame])
        for obj in furniture(s):
            mask = s.instance[frame] == obj.instance_id
            if mask.sum() < 20:
                continue
            corners = box_corners(obj) @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]
            if (corners[:, 2] <= 0.05).any():
                continue
            projected = corners @ s.intrinsics.T
            u, v = projected[:, 0] / projected[:, 2], projected[:, 1] / projected[:, 2]
            rows, cols = np.nonzero(mask)
            assert u.min() - 0.5 <= cols.min() and cols.max() <= u.max() + 0.5, (frame, obj.label)
            assert v.min() - 0.5 <= rows.min() and rows.max() <= v.max() + 0.5, (frame, obj.label)
            checked += 1
            faces = s.faces[s.vertex_instance[s.faces[:, 0]] == obj.instance_id]
            verts = s.vertices[np.unique(faces)] @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]
            pu = s.intrinsics[0, 0] * verts[:, 0] / verts[:, 2] + s.intrinsics[0, 2]
            pv = s.intrinsics[1, 1] * verts[:, 1] / verts[:, 2] + s.intrinsics[1, 2]
            whole_in_view = pu.min() >= 0 and pu.max() <= s.width - 1 and pv.min() >= 0 and pv.max() <= s.height - 1
            if whole_in_view and mask.sum() >= 30:
                # Rendered alone, the object's mask spans its mesh projected with K and inv(pose) (to 1.5 px: a thin
                # part such as a leg can fall between pixel centres; the exact pixel rule is tested on a square).
                tight += 1
                alone = _render(s.vertices, faces, s.colors, s.vertex_instance, s.camera_to_world[frame:frame + 1],
                                s.intrinsics, s.width, s.height)[2][0] == obj.instance_id
                rows, cols = np.nonzero(alone)
                np.testing.assert_array_less(np.abs([cols.min() - pu.min(), cols.max() - pu.max(),
                                                     rows.min() - pv.min(), rows.max() - pv.max()]), 1.5)
    assert checked >= 10 and tight >= 1


@pytest.mark.parametrize("seed", SEEDS)
def test_walk_sees_the_floor_and_the_furniture(seed):
    s = scene(seed)
    seen = set(np.unique(s.instance).tolist())
    assert 0 in seen
    items = furniture(s)
    assert sum(o.instance_id in seen for o in items) >= 0.8 * len(items)
    # Images have contrast: shading and colours differ across the frame.
    assert s.rgb.reshape(-1, 3).std(axis=0).min() > 10


def test_repeated_objects_share_a_colour_family_but_differ():
    s = scene(0)
    counts = collections.Counter(o.label for o in furniture(s))
    label = next(lbl for lbl, c in counts.items() if c >= 2)
    means = [s.colors[s.vertex_instance == o.instance_id].astype(float).mean(axis=0)
             for o in furniture(s) if o.label == label]
    assert np.abs(means[0] - means[1]).max() > 0.5                  # per-instance variation
    assert np.abs(means[0] - means[1]).max() < 60                   # around the same category colour


# ---- the rasteriser on hand-made geometry -----------------------------------------------------------------------

def test_rasteriser_pixel_centres_and_depth_of_a_square():
    """A square at z = 2 m, x, y in [-0.5, 0.5] m, seen by an identity pose with f = 10 px on a 9x7 image
    (cx = 4, cy = 3): it covers image points within 2.5 px of the centre, i.e. pixels u 2..6, v 1..5 exactly."""
    vertices = np.array([[-0.5, -0.5, 2.0], [0.5, -0.5, 2.0], [0.5, 0.5, 2.0], [-0.5, 0.5, 2.0]])
    faces = np.array([[0, 2, 1], [0, 3, 2]])        # normal -z: facing the camera at the origin
    colors = np.full((4, 3), 200, np.uint8)
    k = np.array([[10.0, 0, 4.0], [0, 10.0, 3.0], [0, 0, 1]])
    rgb, depth, instance = _render(vertices, faces, colors, np.full(4, 7), np.eye(4)[None], k, 9, 7)
    expected = np.zeros((7, 9), bool)
    expected[1:6, 2:7] = True
    np.testing.assert_array_equal(instance[0] == 7, expected)
    np.testing.assert_array_equal(instance[0][~expected], -1)
    np.testing.assert_array_equal(depth[0][expected], 2.0)
    np.testing.assert_array_equal(depth[0][~expected], 0.0)
    assert (rgb[0][expected] > 0).all() and (rgb[0][~expected] == 0).all()
    # Seen from behind (wound away from the camera) the square is culled.
    _, _, behind = _render(vertices, faces[:, ::-1], colors, np.full(4, 7), np.eye(4)[None], k, 9, 7)
    assert (behind[0] == -1).all()


def test_rasteriser_clips_a_floor_that_passes_behind_the_camera():
    """A ground plane 1 m below the camera (OpenCV y down) reaching behind it: every pixel below the horizon is
    filled with the exact perspective depth z = f * 1 m / (v - cy), none above it."""
    vertices = np.array([[-50.0, 1.0, -5.0], [50.0, 1.0, -5.0], [50.0, 1.0, 60.0], [-50.0, 1.0, 60.0]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])        # normal -y: up, towards the camera
    k = np.array([[20.0, 0, 15.5], [0, 20.0, 11.5], [0, 0, 1]])
    _, depth, instance = _render(vertices, faces, np.full((4, 3), 100, np.uint8), np.zeros(4, np.int64),
                                 np.eye(4)[None], k, 32, 24)
    rows = np.arange(24)
    below = rows > 11.5 + 20.0 / 60.0 * 1.0         # rays that reach the plane before its far edge at z = 60
    assert (instance[0][~below] == -1).all() and (instance[0][below] == 0).all()
    expected = 20.0 / (rows[below] - 11.5)
    np.testing.assert_allclose(depth[0][below], np.broadcast_to(expected[:, None], (below.sum(), 32)), rtol=1e-6)


# ---- wall-mounted objects (generate_scene(..., mounted=True)) -----------------------------------------------------
#
# Opt-in: hung on an outer wall at the documented height, clear of the furniture, of each other and of the camera
# walk, rendered like any other instance, and added without changing the rest of the scene. The raw-format round
# trips of mounted scenes are in the writers' tests (test_scannet, test_scannetpp, test_arkitscenes).


@lru_cache(maxsize=None)
def mounted_scene(seed: int) -> SyntheticScene:
    return generate_scene(seed, mounted=True)


def pair(seed: int) -> tuple[SyntheticScene, SyntheticScene]:
    """(the scene without mounted objects, the same seed with them)."""
    return scene(seed), mounted_scene(seed)


def mounted_objects(seed: int):
    base, hung = pair(seed)
    return hung.objects[len(base.objects):]


def z_range(obj) -> tuple[float, float]:
    return obj.centroid[2] - obj.lengths[2] / 2, obj.centroid[2] + obj.lengths[2] / 2


def box_distance(points: np.ndarray, obj) -> np.ndarray:
    """Euclidean distance [N] from world points [N, 3] to the solid box of ``obj``."""
    local = (points - obj.centroid) @ obj.axes.T
    return np.linalg.norm(np.maximum(np.abs(local) - obj.lengths / 2, 0.0), axis=1)


@pytest.mark.parametrize("seed", SEEDS)
def test_mounted_objects_are_added_after_an_unchanged_scene(seed):
    base, hung = pair(seed)
    assert scene_digest(generate_scene(seed, mounted=False)) == scene_digest(base)      # off by default
    n = len(base.objects)
    extra = hung.objects[n:]
    assert 1 <= len(extra) <= 3 and {o.label for o in extra} <= set(MOUNTED_CATEGORIES) <= set(FURNITURE_CATEGORIES)
    assert [o.instance_id for o in extra] == list(range(base.objects[-1].instance_id + 1,
                                                        base.objects[-1].instance_id + 1 + len(extra)))
    # Room, furniture, walk, lost frame and the mesh so far are those of mounted=False.
    for a, b in zip(base.objects, hung.objects[:n]):
        assert (a.instance_id, a.label) == (b.instance_id, b.label)
        np.testing.assert_array_equal(np.concatenate([a.centroid, a.lengths, a.axes.ravel()]),
                                      np.concatenate([b.centroid, b.lengths, b.axes.ravel()]))
    v = len(base.vertices)
    np.testing.assert_array_equal(hung.vertices[:v], base.vertices)
    np.testing.assert_array_equal(hung.colors[:v], base.colors)
    np.testing.assert_array_equal(hung.vertex_instance[:v], base.vertex_instance)
    np.testing.assert_array_equal(hung.faces[:len(base.faces)], base.faces)
    assert set(np.unique(hung.vertex_instance[v:])) == {o.instance_id for o in extra}
    np.testing.assert_array_equal(hung.camera_to_world, base.camera_to_world)
    np.testing.assert_array_equal(hung.timestamps, base.timestamps)
    assert hung.invalid_frames == base.invalid_frames and (hung.name, hung.seed) == (base.name, base.seed)


def test_mounted_scenes_are_deterministic_and_generate_scenes_passes_the_flag():
    scenes = generate_scenes(2, seed=40, num_frames=8, width=32, height=24, mounted=True)
    again = generate_scene(41, num_frames=8, width=32, height=24, mounted=True)
    assert scene_digest(scenes[1]) == scene_digest(again)
    assert len(scenes[1].objects) > len(generate_scene(41, num_frames=8, width=32, height=24).objects)
    assert scene_digest(generate_scenes(1, seed=40, num_frames=8, width=32, height=24)[0]) != \
        scene_digest(scenes[0])


@pytest.mark.parametrize("seed", SEEDS)
def test_mounted_objects_hang_on_an_outer_wall_at_the_documented_height(seed):
    _, hung = pair(seed)
    walls = [o for o in hung.objects if o.label == "wall"]
    wall_top = max(z_range(w)[1] for w in walls)
    floor_triangles = hung.vertices[hung.faces[hung.vertex_instance[hung.faces[:, 0]] == 0]][:, :, :2]
    floor = shapely.union_all(shapely.polygons(floor_triangles))
    for obj in mounted_objects(seed):
        bottom, top = z_range(obj)
        assert MOUNTED_BOTTOM_M[0] - 1e-9 <= bottom <= MOUNTED_BOTTOM_M[1] + 1e-9, obj.label
        assert top <= wall_top - 0.1 + 1e-9
        assert floor.buffer(1e-9).contains(footprint(obj))
        # The back (the -axes[1] face) is 1 cm off a wall: 2 cm behind its middle is inside that wall's slab, and
        # the object faces into the room along the wall's normal.
        back = obj.centroid - obj.lengths[1] / 2 * obj.axes[1]
        behind = back - 0.02 * obj.axes[1]
        holding = [w for w in walls if (box_distance(behind[None], w) == 0.0).all()]
        assert len(holding) == 1, obj.label
        assert box_distance(back[None], holding[0])[0] == pytest.approx(0.01, abs=1e-9)
        assert abs(obj.axes[1] @ holding[0].axes[1]) == pytest.approx(1.0, abs=1e-12)
        assert not any(footprint(obj).intersection(footprint(w)).area > 1e-9 for w in walls)


@pytest.mark.parametrize("seed", SEEDS)
def test_mounted_objects_clear_the_furniture_and_each_other(seed):
    """No two boxes intersect in 3D; furniture under a mounted object ends at least 0.3 m below its bottom."""
    base, hung = pair(seed)
    extra = mounted_objects(seed)
    floor_items = [o for o in base.objects if o.label in FURNITURE_CATEGORIES]
    for obj in extra:
        bottom = z_range(obj)[0]
        for other in floor_items:
            if footprint(obj).intersection(footprint(other)).area > 1e-9:
                assert z_range(other)[1] <= bottom - 0.3 + 1e-9, (obj.label, other.label)
        for other in extra:
            if other is not obj:
                assert footprint(obj).distance(footprint(other)) >= 0.05 - 1e-9


def test_upper_cabinets_hang_over_counters_and_every_mounted_category_occurs():
    """Across the seeds: some mounted cabinet is above a floor cabinet or sink (kitchen style), and every mounted
    category occurs."""
    over_counter = 0
    labels = set()
    for seed in SEEDS:
        base, _ = pair(seed)
        for obj in mounted_objects(seed):
            labels.add(obj.label)
            under = [o.label for o in base.objects if o.label in ("cabinet", "sink")
                     and footprint(obj).intersection(footprint(o)).area > 0.05]
            over_counter += obj.label == "cabinet" and bool(under)
    assert over_counter >= 2 and labels == set(MOUNTED_CATEGORIES)


@pytest.mark.parametrize("seed", SEEDS)
def test_camera_walk_keeps_clear_of_mounted_objects(seed):
    """Every camera centre, and the straight walk between consecutive frames, stays 0.2 m from every mounted box."""
    _, hung = pair(seed)
    centres = hung.camera_to_world[:, :3, 3]
    steps = np.linspace(0.0, 1.0, 21)[:, None, None]
    walk = (centres[:-1] + steps * (centres[1:] - centres[:-1])).reshape(-1, 3)
    for obj in mounted_objects(seed):
        assert box_distance(walk, obj).min() >= 0.2 - 1e-3, obj.label


@pytest.mark.parametrize("seed", SEEDS)
def test_mounted_objects_are_rendered_in_front_of_what_they_hide(seed):
    """Each mounted object is in the instance masks of several frames, its pixels back-project into its box, and a
    pixel differs from the scene without mounted objects only where a mounted object now shows, nearer."""
    base, hung = pair(seed)
    extra_ids = [o.instance_id for o in mounted_objects(seed)]
    for obj in mounted_objects(seed):
        frames = np.flatnonzero((hung.instance == obj.instance_id).any(axis=(1, 2)))
        assert len(frames) >= 3, obj.label
        for frame in frames[:: max(1, len(frames) // 4)]:
            mask = hung.instance[frame] == obj.instance_id
            local = (back_project(hung, frame, mask) - obj.centroid) @ obj.axes.T
            assert (np.abs(local) <= obj.lengths / 2 + 1e-4).all(), (frame, obj.label)
    changed = base.instance != hung.instance
    assert changed.any()
    assert np.isin(hung.instance[changed], extra_ids).all()
    previous = base.depth[changed]
    assert ((previous == 0) | (hung.depth[changed] < previous)).all()
    same = ~changed
    np.testing.assert_array_equal(hung.depth[same], base.depth[same])
    np.testing.assert_array_equal(hung.rgb[same], base.rgb[same])
    assert (hung.rgb[changed] != base.rgb[changed]).any(axis=-1).mean() > 0.9


# ---- the hanging rules on hand-made rooms: walks, furniture and views that force each rule to bind --------------

def _look_at(eye, target) -> np.ndarray:
    """OpenCV camera-to-world looking from ``eye`` at ``target`` (z-up world)."""
    forward = np.subtract(target, eye) / np.linalg.norm(np.subtract(target, eye))
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, np.cross(forward, right), forward], axis=1)
    pose[:3, 3] = eye
    return pose


def _hand_made_room():
    from pipeline.sources.synthetic import _make_room

    room = _make_room(np.random.default_rng(0))
    return room, float(room.wall_slabs[0].hi[2])


def _placed_box(item):
    """(rotation, origin, lo, hi) of a placed object's local bounding box."""
    from pipeline.sources.synthetic import _parts_bounds, _rotation_z

    lo, hi = _parts_bounds(item.parts)
    return _rotation_z(item.yaw), item.origin, lo, hi


def _distance_to_placed(points: np.ndarray, item) -> np.ndarray:
    rotation, origin, lo, hi = _placed_box(item)
    local = (points - origin) @ rotation
    return np.linalg.norm(np.maximum(np.maximum(lo - local, local - hi), 0.0), axis=1)


SMALL_K = np.array([[25.6, 0.0, 15.5], [0.0, 25.6, 11.5], [0.0, 0.0, 1.0]])   # 32 x 24 images


def test_hanging_keeps_clear_of_a_walk_along_the_walls():
    """A walk at the closest the generator's walks come to a wall (0.3 m) at eye height: whatever hangs keeps 0.2 m
    from it, between frames too, so deep cabinets low enough to reach the eye are left out or hung high."""
    from pipeline.sources.synthetic import _hang_mounted

    room, wall_height = _hand_made_room()
    loop = room.free.buffer(-0.3, join_style="mitre").exterior
    centre = np.array([*room.free.centroid.coords[0], 1.55])
    # Few frames, so the walk between them passes spots that no frame is near.
    eyes = [np.array([*loop.interpolate(f, normalized=True).coords[0], 1.55]) for f in np.linspace(0, 1, 12)]
    poses = np.stack([_look_at(eye, centre) for eye in eyes])
    steps = np.linspace(0.0, 1.0, 21)[:, None, None]
    walk = (poses[:-1, :3, 3] + steps * (poses[1:, :3, 3] - poses[:-1, :3, 3])).reshape(-1, 3)
    hung = [item for seed in range(16) for item in _hang_mounted(np.random.default_rng(seed), room, [], wall_height,
                                                                  poses, np.zeros((12, 24, 32), np.float32), SMALL_K)]
    assert len(hung) >= 5
    distances = [_distance_to_placed(walk, item).min() for item in hung]
    assert min(distances) >= 0.2 - 1e-3 and min(distances) < 0.35


def test_hanging_clears_tall_furniture_and_hangs_over_low_furniture():
    """Walls lined with low cabinets and tall refrigerators: mounted objects hang over the cabinets (0.3 m clear of
    their tops) and never over a refrigerator."""
    from pipeline.sources.synthetic import _hang_mounted, _place_against_wall, _Placed, _shape

    room, wall_height = _hand_made_room()
    rng = np.random.default_rng(5)
    layout = []
    for label in ["cabinet"] * 4 + ["refrigerator"] * 12:
        parts = _shape(label, rng)
        spot = _place_against_wall(rng, room, parts, layout)
        if spot is not None:
            layout.append(_Placed(label, parts, spot[0], spot[1], spot[2]))
    assert {p.label for p in layout} == {"cabinet", "refrigerator"}
    centre = np.array([*room.free.centroid.coords[0], 1.5])
    poses = np.stack([_look_at(centre, centre + [np.cos(a), np.sin(a), -0.1]) for a in np.linspace(0, 2 * np.pi, 36)])
    over = collections.Counter()
    for seed in range(8):
        for item in _hang_mounted(np.random.default_rng(seed), room, layout, wall_height, poses,
                                  np.zeros((36, 24, 32), np.float32), SMALL_K):
            bottom = item.origin[2] + _placed_box(item)[2][2]
            for floor_item in layout:
                if item.footprint.intersection(floor_item.footprint).area > 1e-9:
                    top = floor_item.origin[2] + _placed_box(floor_item)[3][2]
                    assert top <= bottom - 0.3 + 1e-9, floor_item.label
                    over[floor_item.label] += 1
    assert over["cabinet"] >= 2 and over["refrigerator"] == 0


def test_hanging_needs_views_of_the_object():
    """Cameras that all look at one wall hang everything on that wall; cameras that see only a surface right in front
    of them (every depth 0.1 m) hang nothing."""
    from pipeline.sources.synthetic import _hang_mounted

    room, wall_height = _hand_made_room()
    start, end, inward = room.wall_edges[0]
    middle = (start + end) / 2
    centre = np.array([*room.free.centroid.coords[0], 1.5])
    target = np.array([middle[0], middle[1], 1.8])
    poses = np.stack([_look_at(centre + [0.1 * np.cos(a), 0.1 * np.sin(a), 0.0], target)
                      for a in np.linspace(0, 2 * np.pi, 12)])
    hung = [item for seed in range(8) for item in _hang_mounted(np.random.default_rng(seed), room, [], wall_height,
                                                                 poses, np.zeros((12, 24, 32), np.float32), SMALL_K)]
    assert len(hung) >= 6
    for item in hung:
        rotation, origin, lo, hi = _placed_box(item)
        back = origin + rotation @ np.array([(lo[0] + hi[0]) / 2, lo[1], 0.0])
        assert np.dot(back[:2] - start, inward) == pytest.approx(0.01, abs=1e-9)
    blocked = np.full((12, 24, 32), 0.1, np.float32)
    assert not any(_hang_mounted(np.random.default_rng(seed), room, [], wall_height, poses, blocked, SMALL_K)
                   for seed in range(8))
