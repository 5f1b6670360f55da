"""Geometry helpers against brute force: dense sampling, an independent bounded least-squares solver, shapely."""
from __future__ import annotations

import alphashape
import numpy as np
import pytest
import shapely
from scipy.optimize import minimize
from scipy.spatial.distance import cdist
from scipy.spatial.transform import Rotation

from pipeline.core.scene import box_aabb
from scene_graph import geometry as g


def _random_box(rng, seed, spread=1.0):
    axes = Rotation.random(random_state=seed).as_matrix().T        # rows = axes
    return rng.uniform(-spread, spread, 3), rng.uniform(0.1, 1.2, 3), axes


def _dense_solid(centroid, lengths, axes, n=13):
    """Points filling the box on an n^3 grid (surface included)."""
    t = np.linspace(-0.5, 0.5, n)
    local = np.stack(np.meshgrid(t, t, t, indexing="ij"), -1).reshape(-1, 3) * lengths
    return centroid + local @ axes


def test_corners_use_rows_as_axes():
    # ARKitScenes fixture of datasets.md 6.3: a cyclic axis permutation tells rows from columns.
    axes = np.array([0, 0, 1, 1, 0, 0, 0, 1, 0], float).reshape(3, 3)
    corners = g.box_corners([1.25, 1.25, 0.45], [0.9, 0.6, 0.4], axes)
    np.testing.assert_allclose(corners.min(0), [0.95, 1.05, 0.0], atol=1e-12)
    np.testing.assert_allclose(corners.max(0), [1.55, 1.45, 0.9], atol=1e-12)
    # Same bounds as the foundation's AABB helper; corner k follows BOX_CORNER_SIGNS.
    lo, hi = box_aabb(np.array([1.25, 1.25, 0.45]), np.array([0.9, 0.6, 0.4]), axes)
    np.testing.assert_allclose(corners.min(0), lo); np.testing.assert_allclose(corners.max(0), hi)
    np.testing.assert_allclose(corners[7], [1.25, 1.25, 0.45] + np.array([0.45, 0.3, 0.2]) @ axes)
    # Every edge joins corners one full length apart.
    lengths = np.linalg.norm(corners[g.BOX_EDGES[:, 0]] - corners[g.BOX_EDGES[:, 1]], axis=1)
    assert sorted(np.round(lengths, 9)) == sorted([0.9] * 4 + [0.6] * 4 + [0.4] * 4)


def test_point_box_distance_matches_dense_sampling():
    rng = np.random.default_rng(0)
    for seed in range(5):
        c, l, a = _random_box(rng, seed)
        solid = _dense_solid(c, l, a, n=25)
        points = rng.uniform(-2.5, 2.5, (50, 3))
        exact = g.point_box_distance(points, c, l, a)
        brute = cdist(points, solid).min(1)
        spacing = np.linalg.norm(l) / 24
        assert np.all(exact <= brute + 1e-12)                 # brute force can only overestimate
        assert np.all(brute - exact <= spacing)
        closest = g.closest_point_on_box(points, c, l, a)
        np.testing.assert_allclose(np.linalg.norm(points - closest, axis=1), exact, atol=1e-12)
    # Inside points are at distance 0; broadcasting [N, 1, 3] x [B] -> [N, B].
    boxes = [_random_box(rng, s) for s in range(3)]
    cs, ls, axs = (np.stack(x) for x in zip(*boxes))
    d = g.point_box_distance(cs[:, None, :], cs[None], ls[None], axs[None])
    assert d.shape == (3, 3) and np.all(np.diag(d) == 0)


def test_box_box_distance_is_exact_for_rotated_boxes():
    rng = np.random.default_rng(1)
    cases = [(_random_box(rng, 2 * k, 0.8), _random_box(rng, 2 * k + 1, 0.8)) for k in range(40)]
    ca, la, ra = (np.stack(x) for x in zip(*[c[0] for c in cases]))
    cb, lb, rb = (np.stack(x) for x in zip(*[c[1] for c in cases]))
    exact = g.box_box_distance(ca, la, ra, cb, lb, rb)        # vectorised over the 40 pairs
    assert exact.shape == (40,) and (exact > 0).sum() >= 25 and (exact == 0).sum() >= 5
    for k in range(40):
        # Independent reference: minimise |p(s) - q(t)|^2 over the box parameters with bounds (convex problem).
        half = np.r_[la[k], lb[k]] / 2

        def gap(x):
            diff = ca[k] + x[:3] @ ra[k] - cb[k] - x[3:] @ rb[k]
            return diff @ diff, np.r_[2 * ra[k] @ diff, -2 * rb[k] @ diff]
        best = minimize(gap, np.zeros(6), jac=True, method="L-BFGS-B", bounds=list(zip(-half, half)),
                        options={"ftol": 1e-15, "gtol": 1e-12}).fun      # convex: one start suffices
        assert exact[k] == pytest.approx(np.sqrt(max(best, 0.0)), abs=1e-6)
        # Dense sampling can only overestimate, by at most the sampling gaps.
        pa_, pb_ = _dense_solid(ca[k], la[k], ra[k], 9), _dense_solid(cb[k], lb[k], rb[k], 9)
        brute = cdist(pa_, pb_).min()
        assert exact[k] <= brute + 1e-9
        assert brute - exact[k] <= (np.linalg.norm(la[k]) + np.linalg.norm(lb[k])) / 8 / 2 + 1e-9


def test_box_box_distance_edge_cases():
    eye = np.eye(3)
    # Face to face along x: 2.0 m gap (a chair 2.0 m from a table).
    assert g.box_box_distance([0, 0, 0], [1, 1, 1], eye, [3, 0, 0], [1, 1, 1], eye) == pytest.approx(2.0)
    # Two long bars crossing like a plus sign: no corner inside the other, yet they intersect.
    assert g.box_box_distance([0, 0, 0], [4, 0.2, 0.2], eye, [0, 0, 0], [0.2, 4, 0.2], eye) == 0.0
    assert g.boxes_overlap([0, 0, 0], [4, 0.2, 0.2], eye, [0, 0, 0], [0.2, 4, 0.2], eye)
    # Edge to edge: a box rotated 45 deg about z next to an axis-aligned one; closest points are on edges.
    rot = Rotation.from_euler("z", 45, degrees=True).as_matrix().T
    d = g.box_box_distance([0, 0, 0], [1, 1, 1], eye, [2, 0, 0], [1, 1, 1], rot)
    assert d == pytest.approx(2 - 0.5 - np.sqrt(0.5))
    # Skew edges: bar along x above a bar along y, 0.3 m apart vertically.
    assert g.box_box_distance([0, 0, 0], [2, 0, 0], eye, [0, 0, 0.3], [0, 2, 0], eye) == pytest.approx(0.3)
    # Pairwise matrix is symmetric with a zero diagonal.
    m = g.pairwise_box_distances([[0, 0, 0], [3, 0, 0], [0, 5, 0]], [[1, 1, 1]] * 3, [eye] * 3)
    np.testing.assert_allclose(m, m.T); assert m[0, 1] == pytest.approx(2.0) and m[0, 2] == pytest.approx(4.0)


def test_segment_distance_degenerate_and_parallel():
    assert g.segment_segment_distance([0, 0, 0], [0, 0, 0], [1, 0, 0], [1, 0, 0]) == pytest.approx(1.0)
    assert g.segment_segment_distance([0, 0, 0], [1, 0, 0], [2, 1, 0], [3, 1, 0]) == pytest.approx(np.sqrt(2))
    assert g.segment_segment_distance([0, 0, 0], [1, 0, 0], [0.5, 1, 0], [2, 1, 0]) == pytest.approx(1.0)
    assert g.segment_segment_distance([0, 0, 0], [1, 0, 0], [0.5, 0.5, 0], [0.5, 0.5, 0]) == pytest.approx(0.5)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")   # alphashape uses np.bmat
def test_floor_area_of_a_4x3_floor_grid():
    x, y = np.meshgrid(np.linspace(0, 4, 81), np.linspace(0, 3, 61))
    floor = np.stack([x.ravel(), y.ravel(), np.zeros(x.size)], axis=1)
    shape = g.floor_shape(floor, alpha=5.0, num_samples=10_000, seed=42)
    assert shape.area_m2 == pytest.approx(12.0, rel=0.02)
    assert shapely.Polygon(shape.outline).area == pytest.approx(shape.area_m2)
    # Deterministic for a seed; the sample is VLM-3R's first draw after np.random.seed(seed).
    assert g.floor_shape(floor, seed=42).area_m2 == shape.area_m2
    np.random.seed(42)
    reference = alphashape.alphashape(floor[np.random.choice(len(floor), 10_000), :2], 5.0)
    assert shape.area_m2 == pytest.approx(reference.area, rel=1e-9)
    center = g.room_center(np.r_[floor, [[2.0, 1.5, 2.5]]])
    np.testing.assert_allclose(center, [2.0, 1.5, 1.25], atol=1e-9)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_alpha_shape_agrees_with_the_alphashape_package():
    rng = np.random.default_rng(3)
    # An L-shaped room with a courtyard hole, sampled unevenly: concave outline, enclosed hole, sparse parts.
    pts = rng.uniform(0, 5, (4000, 2))
    pts = pts[~((pts[:, 0] > 3) & (pts[:, 1] > 3))]
    pts = pts[~((np.abs(pts[:, 0] - 1.5) < 0.5) & (np.abs(pts[:, 1] - 1.5) < 0.5))]
    ours = g.alpha_shape(pts, 5.0)
    theirs = alphashape.alphashape(pts, 5.0)
    assert ours.area == pytest.approx(theirs.area, rel=1e-9)
    assert ours.symmetric_difference(theirs).area < 1e-9
    assert g.alpha_shape(pts[:3]).area == pytest.approx(shapely.MultiPoint(pts[:3]).convex_hull.area)


def test_floor_angles_left_is_positive():
    # Standing at the origin facing +x (z-up): +y is to the left, -y to the right, -x behind.
    here, facing = [0, 0, 0], [1, 0, 0]
    assert g.relative_bearing_deg(here, facing, [0, 1, 0]) == pytest.approx(90)
    assert g.relative_bearing_deg(here, facing, [0, -1, 0]) == pytest.approx(-90)
    assert abs(g.relative_bearing_deg(here, facing, [-1, 0, 0])) == pytest.approx(180)
    assert g.relative_bearing_deg(here, facing, [1, 1, 5]) == pytest.approx(45)
    np.testing.assert_allclose(g.wrap_deg([190, -190, 540, -180]), [-170, 170, 180, 180])
    # Observer frame: facing +y means +x is to the right.
    xy = g.floor_xy_in_frame(np.array([[0, 2, 0], [1, 0, 0], [-1, -1, 0]]), [0, 0, 0], [1, 0, 0])
    np.testing.assert_allclose(xy, [[-2, 0], [0, 1], [1, -1]], atol=1e-12)
    assert g.bearing_deg([0, 1]) == pytest.approx(90)


def test_box_shell_sampling_and_footprint():
    axes = Rotation.from_euler("z", 30, degrees=True).as_matrix().T
    pts = g.sample_box_shell([1, 2, 0.5], [0.6, 0.4, 1.0], axes, spacing=0.05)
    local = g.to_box_frame(pts, [1, 2, 0.5], axes)
    assert len(pts) > 0 and np.all(np.abs(local) <= np.array([0.3, 0.2, 0.5]) + 1e-12)
    assert np.all((np.abs(local) > np.array([0.6, 0.4, 1.0]) / 4).any(axis=1))   # hollow: the core is empty
    # A 3 cm box has no shell point at 5 cm spacing: the spacing halves until one survives.
    assert len(g.sample_box_shell([0, 0, 0], [0.03, 0.03, 0.03], np.eye(3), spacing=0.05)) > 0
    # Footprint of a tilted box equals the area of the convex hull of its corners' floor projection.
    tilted = Rotation.from_euler("xyz", [20, 35, 10], degrees=True).as_matrix().T
    corners = g.box_corners([0, 0, 0], [0.5, 0.8, 1.1], tilted)
    hull = shapely.MultiPoint(corners[:, :2]).convex_hull.area
    assert g.box_floor_area([0.5, 0.8, 1.1], tilted) == pytest.approx(hull)
    assert g.box_floor_area([0.5, 0.8, 1.1], np.eye(3)) == pytest.approx(0.4)


def test_rasteriser_covers_pixel_centres_and_clips_at_the_near_plane():
    k = (40.0, 40.0, 31.5, 23.5)
    # A square at depth 2 spanning camera x, y in [-0.5, 0.5]: pixel centres u, v with |u - c| <= 10.
    sq = np.array([[-0.5, -0.5, 2], [0.5, -0.5, 2], [0.5, 0.5, 2], [-0.5, 0.5, 2]])
    tris = sq[[[0, 1, 2], [0, 2, 3]]]
    face, pix, z = g.rasterize_triangles(tris, k, 64, 48)
    unique = np.unique(pix)
    cols, rows = unique % 64, unique // 64
    assert (cols.min(), cols.max(), rows.min(), rows.max()) == (22, 41, 14, 33) and len(unique) == 400
    np.testing.assert_allclose(z, 2.0)
    # A floor-like triangle reaching behind the camera is clipped, not dropped; depth is perspective-correct.
    two_behind = np.array([[-5, 1, -1], [5, 1, -1], [0, 1, 10.0]])
    one_behind = np.array([[-5, 1, 6], [5, 1, 6], [0, 1, -1.0]])
    face, pix, z = g.rasterize_triangles(np.stack([two_behind, one_behind]), k, 64, 48, near_m=0.05)
    assert set(face.tolist()) == {0, 1} and np.all(z >= 0.05 - 1e-9)
    rows = pix // 64
    np.testing.assert_allclose(z, 40.0 * 1.0 / (rows - 23.5), rtol=1e-9)   # a plane y = 1 seen at row v
    # The one-behind triangle, cut into two pieces, covers exactly the pixels whose ray meets it in front of the
    # near plane: intersect each pixel's ray with the plane y = 1 and test the hit against the triangle in x-z.
    u, v = np.meshgrid(np.arange(64.0), np.arange(48.0))
    below = v > 23.5
    depth = np.where(below, 40.0 / np.where(below, v - 23.5, 1), -1)
    x = (u - 31.5) / 40.0 * depth
    tri_xz = one_behind[:, [0, 2]]
    sides = np.stack([(tri_xz[(i + 1) % 3, 0] - tri_xz[i, 0]) * (depth - tri_xz[i, 1])
                      - (tri_xz[(i + 1) % 3, 1] - tri_xz[i, 1]) * (x - tri_xz[i, 0]) for i in range(3)])
    inside = (sides >= 0).all(0) | (sides <= 0).all(0)
    expected = np.flatnonzero((inside & below & (depth >= 0.05)).ravel())
    np.testing.assert_array_equal(np.unique(pix[face == 1]), expected)


def test_splat_points_round_like_vlm3r():
    """u, v = (u + 0.5).astype(int32): half up, and truncation toward zero just left of / above the image."""
    from scene_graph.geometry import splat_points

    k = (1.0, 1.0, 0.0, 0.0)                       # u = x / z, v = y / z
    pts = np.array([[2.49, 0.5, 1.0], [2.5, 0.0, 1.0], [-0.7, -0.9, 1.0], [-1.6, 0.0, 1.0], [0.0, 0.0, 0.01]])
    pix, z, ok = splat_points(pts, k, width=4, height=3)
    assert ok.tolist() == [True, True, True, False, False]
    assert pix.tolist() == [1 * 4 + 2, 0 * 4 + 3, 0] and z.tolist() == [1.0, 1.0, 1.0]
