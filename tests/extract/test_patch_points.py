"""Per-patch depth points against the synthetic generator's true geometry (its mesh planes)."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.patch_points import (PATCH_GRID, cut3r_geometry, depth_patch_points, frames_patch_points,
                                        manifest_patch_points, patch_index_of_pixels)
from pipeline.sources.synthetic import generate_scene
from scene_graph.geometry import rasterize_triangles

G = PATCH_GRID


def _planes(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per face: a plane id shared by coplanar faces, and the planes' (unit normal, offset) [P, 4]."""
    tri = vertices[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    flip = np.sign(normal[np.arange(len(normal)), np.argmax(np.abs(normal) > 1e-6, axis=1)])
    normal *= flip[:, None]
    offset = np.einsum("ij,ij->i", normal, tri[:, 0])
    params = np.round(np.c_[normal, offset], 6)
    uniq, plane_of_face = np.unique(params, axis=0, return_inverse=True)
    return plane_of_face.reshape(-1), uniq


def _render(vertices, faces, world_to_camera, k, width, height):
    """Nearest face and depth per pixel centre of a pinhole camera (a z-buffer over the project's rasteriser)."""
    tri_cam = vertices[faces] @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]
    face, pix, z = rasterize_triangles(tri_cam, k, width, height, 0.05)
    order = np.lexsort((z, pix))
    face, pix, z = face[order], pix[order], z[order]
    first = np.r_[True, pix[1:] != pix[:-1]]
    depth = np.zeros(width * height)
    face_of = np.full(width * height, -1)
    depth[pix[first]], face_of[pix[first]] = z[first], face[first]
    return depth.reshape(height, width), face_of.reshape(height, width)


def _check_frame(points_world, valid, c2w, image_k, image_wh, face_of, depth_k, plane_of_face, planes, tol_m):
    """Every valid point projects into its own patch; on single-plane patches it lies on that plane."""
    fx, fy, cx, cy = image_k
    cam = (points_world[valid] - c2w[:3, 3]) @ c2w[:3, :3]
    u, v = fx * cam[:, 0] / cam[:, 2] + cx, fy * cam[:, 1] / cam[:, 2] + cy
    assert np.array_equal(patch_index_of_pixels(u, v, image_wh), np.flatnonzero(valid))
    # The patch of each depth pixel, as the contract defines it (independent of the code under test).
    h, w = face_of.shape
    dfx, dfy, dcx, dcy = depth_k
    vv, uu = np.mgrid[0:h, 0:w]
    cell = patch_index_of_pixels((uu - dcx) / dfx * fx + cx, (vv - dcy) / dfy * fy + cy, image_wh)
    single_plane = 0
    errors = []
    on_centre = rich = 0
    centre_of = {p: i for i, p in enumerate(np.flatnonzero(valid))}
    for patch in np.flatnonzero(valid):
        here = cell == patch
        faces_here = face_of[here]
        if (faces_here < 0).any() or len(np.unique(plane_of_face[faces_here])) != 1:
            continue
        normal, offset = planes[plane_of_face[faces_here[0]], :3], planes[plane_of_face[faces_here[0]], 3]
        errors.append(abs(points_world[patch] @ normal - offset))
        single_plane += 1
        # Where the patch holds a block of at least 3 x 3 depth pixels of its plane, the point is where the ray
        # through the patch centre meets that plane.
        if here.any(axis=1).sum() >= 3 and here.any(axis=0).sum() >= 3:
            rich += 1
            row, col = divmod(int(patch), G)
            centre = ((col + 0.5) * image_wh[0] / G - 0.5, (row + 0.5) * image_wh[1] / G - 0.5)
            i = centre_of[patch]
            on_centre += abs(u[i] - centre[0]) < 1e-3 and abs(v[i] - centre[1]) < 1e-3
    assert single_plane > 50
    assert max(errors) < tol_m, max(errors)
    assert on_centre >= 0.95 * rich, (on_centre, rich)
    return single_plane


@pytest.fixture(scope="module")
def synth():
    return generate_scene(3, num_frames=8, width=96, height=72)


def test_depth_points_project_into_their_patch_and_lie_on_the_true_planes(synth):
    plane_of_face, planes = _planes(synth.vertices, synth.faces)
    k = synth.intrinsics
    image_k = (k[0, 0], k[1, 1], k[0, 2], k[1, 2])
    wh = (synth.width, synth.height)
    poses = list(synth.camera_to_world)
    points = frames_patch_points(list(synth.depth), [image_k] * len(poses), [image_k] * len(poses), [wh] * len(poses),
                                 poses)
    assert points.world.shape == (len(poses), G * G, 3) and points.world.dtype == np.float32
    assert points.valid.mean() > 0.9
    for rank, c2w in enumerate(poses):
        _, face_of = _render(synth.vertices, synth.faces, np.linalg.inv(c2w), image_k, *wh)
        _check_frame(points.world[rank].astype(np.float64), points.valid[rank], c2w, image_k, wh, face_of, image_k,
                     plane_of_face, planes, tol_m=1e-3)
    # Camera-0 points are the world points in the first camera's frame.
    c2w0 = poses[0]
    np.testing.assert_allclose(points.cam0, (points.world.astype(np.float64) - c2w0[:3, 3]) @ c2w0[:3, :3], atol=1e-5)
    assert not points.world[~points.valid].any() and not points.cam0[~points.valid].any()


def test_depth_with_its_own_resolution_and_narrower_field_of_view(synth):
    """Depth rendered at 40x30 with a longer focal length (it sees only the middle of the colour image): points
    still land in their own patch and on the true planes; patches outside the depth's view are invalid."""
    plane_of_face, planes = _planes(synth.vertices, synth.faces)
    k = synth.intrinsics
    image_k, wh = (k[0, 0], k[1, 1], k[0, 2], k[1, 2]), (synth.width, synth.height)
    depth_k, depth_wh = (48.0, 47.0, 19.0, 15.2), (40, 30)
    c2w = synth.camera_to_world[2]
    depth, face_of = _render(synth.vertices, synth.faces, np.linalg.inv(c2w), depth_k, *depth_wh)
    points_cam, valid = depth_patch_points(depth, depth_k, image_k, wh)
    world = points_cam @ c2w[:3, :3].T + c2w[:3, 3]
    _check_frame(world, valid, c2w, image_k, wh, face_of, depth_k, plane_of_face, planes, tol_m=1e-5)
    # The depth sees colour u in about [-5, 101] scaled by 76.8/48: the outer patch columns get nothing.
    grid_valid = valid.reshape(G, G)
    assert not grid_valid[:, 0].any() and not grid_valid[:, -1].any() and grid_valid[G // 2, G // 2]


def test_median_pixel_of_a_patch():
    """A 2x2 depth image under one patch grid of 1x1: the lower median (2.0 at pixel 3) is back-projected through
    its own pixel."""
    depth = np.array([[4.0, 1.0], [0.0, 2.0]])               # pixel 2 has no depth
    points, valid = depth_patch_points(depth, (1.0, 1.0, 0.5, 0.5), (1.0, 1.0, 0.5, 0.5), (2, 2), grid=1)
    assert valid.tolist() == [True]
    np.testing.assert_allclose(points[0], [(1 - 0.5) * 2.0, (1 - 0.5) * 2.0, 2.0])


def test_frames_without_depth_or_pose_give_invalid_points_never_a_crash(synth):
    k = synth.intrinsics
    image_k, wh = (k[0, 0], k[1, 1], k[0, 2], k[1, 2]), (synth.width, synth.height)
    poses = [synth.camera_to_world[0], synth.camera_to_world[1], np.full((4, 4), np.nan)]
    depths = [synth.depth[0], None, synth.depth[2]]
    points = frames_patch_points(depths, [None] * 3, [image_k] * 3, [wh] * 3, poses)
    assert points.valid[0].all() and not points.valid[1].any() and not points.valid[2].any()
    empty = frames_patch_points([np.zeros((72, 96))], [None], [image_k], [wh], [poses[0]])
    assert not empty.valid.any() and not empty.world.any()
    # Without a first pose there is no camera-0 frame: nothing is valid.
    no_first = frames_patch_points([synth.depth[0], synth.depth[1]], [None] * 2, [image_k] * 2, [wh] * 2,
                                   [None, poses[1]])
    assert not no_first.valid.any()


def _rigid(rng, angle: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    pose = np.eye(4)
    pose[:3, :3] = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k    # Rodrigues
    pose[:3, 3] = rng.normal(size=3)
    return pose


def test_cut3r_points_and_poses_through_the_first_sensor_pose():
    rng = np.random.default_rng(0)
    cam0 = rng.normal(size=(2, G * G, 3))
    cam0[1, 5] = np.nan
    poses = np.stack([_rigid(rng, 0.1), _rigid(rng, 0.7)])         # the pose head's, in camera 0
    c2w0 = np.eye(4)
    c2w0[:3, :3] = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    c2w0[:3, 3] = [1.0, 2.0, 1.5]
    geometry = cut3r_geometry(cam0, poses, c2w0)
    points = geometry.points
    assert geometry.frame == "world_z_up"
    assert points.valid.sum() == 2 * G * G - 1 and not points.valid[1, 5] and not points.world[1, 5].any()
    np.testing.assert_allclose(points.cam0[points.valid], cam0[points.valid], atol=1e-6)
    np.testing.assert_allclose(points.world[points.valid], cam0[points.valid] @ c2w0[:3, :3].T + c2w0[:3, 3],
                               atol=1e-6)
    # A point and the camera that sees it move together: camera coordinates are the same in either frame.
    np.testing.assert_allclose(geometry.camera_to_world, c2w0 @ poses, atol=1e-12)
    in_camera1 = (points.world[0] - geometry.camera_to_world[1, :3, 3]) @ geometry.camera_to_world[1, :3, :3]
    np.testing.assert_allclose(in_camera1, (cam0[0] - poses[1, :3, 3]) @ poses[1, :3, :3], atol=1e-5)


@pytest.mark.parametrize("first_pose", [None, np.full((4, 4), np.nan)])
def test_cut3r_without_a_first_sensor_pose_camera0_is_the_world(first_pose):
    rng = np.random.default_rng(1)
    cam0 = rng.normal(size=(3, G * G, 3))
    cam0[2, 0, 1] = np.inf
    poses = np.stack([_rigid(rng, a) for a in (0.05, 0.3, 0.9)])
    geometry = cut3r_geometry(cam0, poses, first_pose)
    assert geometry.frame == "camera0"
    assert geometry.points.valid.sum() == 3 * G * G - 1 and not geometry.points.valid[2, 0]
    np.testing.assert_array_equal(geometry.points.world, geometry.points.cam0)
    np.testing.assert_array_equal(geometry.points.cam0[geometry.points.valid],
                                  cam0[geometry.points.valid].astype(np.float32))
    np.testing.assert_array_equal(geometry.camera_to_world, poses)
    with pytest.raises(ValueError, match="one 4x4 pose per frame"):
        cut3r_geometry(cam0, poses[:2], first_pose)


def test_rotated_arkitscenes_frames_through_the_reader(tmp_path):
    """An ARKitScenes scan stored sideways (sky Left): the reader's upright intrinsics, poses and decoded depth
    give points in their own patch cells, on the canonical mesh's planes (PNG millimetres: < 1 mm)."""
    from pipeline.core.frames import decode_depths
    from pipeline.core.scene import build_manifest, manifest_frames
    from pipeline.sources.arkitscenes import READER
    from pipeline.sources.arkitscenes_writer import write_arkitscenes

    synth = generate_scene(4, num_frames=6, width=96, height=72)
    video_id = write_arkitscenes(synth, tmp_path, split="train", sky_direction="Left")
    scene = READER.read_scene(tmp_path, video_id, "train")
    rows = manifest_frames(scene.frames, build_manifest(scene.frames))
    assert set(rows.column("rotate_k").to_pylist()) == {3}
    depths = decode_depths(rows)
    points = manifest_patch_points(rows, depths)
    plane_of_face, planes = _planes(np.asarray(scene.mesh_vertices, np.float64), np.asarray(scene.mesh_faces))
    checked = 0
    for rank, r in enumerate(rows.to_pylist()):
        if not r["valid"]:
            assert not points.valid[rank].any()
            continue
        c2w = np.asarray(r["camera_to_world"]).reshape(4, 4)
        image_k, wh = (r["fx"], r["fy"], r["cx"], r["cy"]), (r["width"], r["height"])
        depth_k = (r["depth_fx"], r["depth_fy"], r["depth_cx"], r["depth_cy"])
        assert depths[rank].shape == (r["depth_height"], r["depth_width"]) and wh == (96, 72)
        _, face_of = _render(np.asarray(scene.mesh_vertices, np.float64), np.asarray(scene.mesh_faces),
                             np.linalg.inv(c2w), depth_k, r["depth_width"], r["depth_height"])
        _check_frame(points.world[rank].astype(np.float64), points.valid[rank], c2w, image_k, wh, face_of, depth_k,
                     plane_of_face, planes, tol_m=1e-3)
        checked += 1
    assert checked >= 4


def test_extract_stores_depth_points_in_the_token_sample(tmp_path):
    """``extract --points depth`` on an ingested ScanNet-format scene: the three point members, their source in
    meta, world points that project into their own patch of their frame, camera-0 points consistent with them."""
    from extract_factories import ingest_synthetic

    from pipeline.cli import main as cli_main
    from pipeline.core.tokens import iter_samples

    ingest_synthetic(tmp_path / "raw", tmp_path / "root", [8])
    status = cli_main(["extract", "--root", str(tmp_path / "root"), "--random-tiny", "--size", "64",
                       "--squash-size", "48", "--points", "depth", "--local"])
    assert status == 0
    (sample,) = list(iter_samples(tmp_path / "root" / "tokens"))
    t, n = sample.num_frames, sample.meta["num_patches"]
    assert sample.meta["points_source"] == "depth" and sample.meta["points_frames_without_depth"] == 0
    assert sample.points.shape == sample.points_cam0.shape == (t, n, 3) and sample.points_valid.shape == (t, n)
    assert sample.points_valid.mean() > 0.9
    c2w0 = np.asarray(sample.frames[0]["camera_to_world"]).reshape(4, 4)
    np.testing.assert_allclose(sample.points_cam0, (sample.points.astype(np.float64) - c2w0[:3, 3]) @ c2w0[:3, :3]
                               * sample.points_valid[..., None], atol=1e-4)
    side = int(round(np.sqrt(n)))
    scene_frames = {r["frame_index"]: r for r in _scene_frames(tmp_path / "root", sample)}
    for rank, row in enumerate(sample.frames):
        f = scene_frames[row["frame_index"]]
        c2w = np.asarray(row["camera_to_world"]).reshape(4, 4)
        cam = (sample.points[rank][sample.points_valid[rank]].astype(np.float64) - c2w[:3, 3]) @ c2w[:3, :3]
        u, v = f["fx"] * cam[:, 0] / cam[:, 2] + f["cx"], f["fy"] * cam[:, 1] / cam[:, 2] + f["cy"]
        own = patch_index_of_pixels(u, v, (f["width"], f["height"]), grid=side)
        assert np.array_equal(own, np.flatnonzero(sample.points_valid[rank]))


def _scene_frames(root, sample):
    from pipeline.core.schemas import FRAMES_SCHEMA, read_table

    return read_table(root / "scenes" / sample.meta["dataset"] / sample.meta["scene_id"] / "frames.parquet",
                      FRAMES_SCHEMA).to_pylist()
