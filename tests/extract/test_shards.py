"""Token shards: bf16 storage, round trip through webdataset, byte-reproducibility, rollover, index, recovery and
the reader's validation. Real tar files, written and parsed back."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import time

import cv2
import numpy as np
import pytest
import torch

from pipeline.core.atomic import read_json
from pipeline.core.shards import (MARKER_DIR, ShardError, ShardRecord, ShardWriter, read_ahead, read_index,
                                  recover_shards, shard_paths, write_index)
from pipeline.core.tokens import (TokenSample, bf16_bits_to_float32, decode_tokens, encode_tokens, float32_to_bf16_bits,
                                  iter_samples, read_shard, sample_from_wds, sample_members,
                                  tokens_as_torch, validate_sample, with_estimated_poses, write_sample)

SHA = "ab" * 32


def make_sample(key: str, t: int = 3, n: int = 4, c: int = 8, dtype: str = "bfloat16", points: bool = True,
                frames: bool = True, seed: int = 0) -> TokenSample:
    rng = np.random.default_rng(seed)
    camera = rng.normal(size=(t, 1, c)).astype(np.float32)
    patch = rng.normal(size=(t, n, c)).astype(np.float32) * 10
    jpegs = None
    if frames:
        jpegs = [cv2.imencode(".jpg", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))[1].tobytes() for _ in range(t)]
    meta = {"key": key, "dataset": "scannet", "scene_id": key, "model_id": "m", "checkpoint_sha256": SHA,
            "dtype": dtype, "storage": "uint16_bits" if dtype == "bfloat16" else "native", "num_frames": t,
            "num_patches": n, "token_width": c, "input_size": 32, "with_points": points, "with_frames": frames,
            "code_version": "test", **({"points_source": "depth"} if points else {})}
    rows = [{"rank": i, "frame_index": 10 * i, "timestamp": i / 30, "camera_to_world": list(np.eye(4).ravel()),
             "valid": True} for i in range(t)]
    world = rng.normal(size=(t, n, 3)).astype(np.float32)
    return TokenSample(key, encode_tokens(camera, dtype), encode_tokens(patch, dtype), rows, meta,
                       world if points else None, jpegs,
                       points_cam0=(world[..., ::-1].copy() if points else None),
                       points_valid=(rng.random((t, n)) < 0.8 if points else None))


def write_samples(tokens_dir, samples, max_shard_bytes=10**9):
    with ShardWriter(tokens_dir, max_shard_bytes=max_shard_bytes, identity={"model_id": "m"}) as writer:
        for sample in samples:
            write_sample(writer, sample)
    write_index(tokens_dir, writer.records, {"model_id": "m"})
    return writer.records


def test_bf16_bits_match_torch_rounding_and_are_lossless():
    rng = np.random.default_rng(0)
    values = np.concatenate([
        rng.normal(size=10000).astype(np.float32) * 1e3,
        np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, 3.4e38, 1e-40, 1.00390625, 1.01171875], np.float32),
        # exact ties between two bf16 values: round half to even
        (np.arange(1, 200, dtype=np.uint32) << 16 | 0x8000).view(np.float32),
        ((np.arange(0, 64, dtype=np.uint32) << 16) + 0x3F808000).view(np.float32),
    ])
    bits = float32_to_bf16_bits(values)
    expected = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(bits, expected)
    # bf16 -> float32 -> bf16 is the identity on the bit patterns
    np.testing.assert_array_equal(float32_to_bf16_bits(bf16_bits_to_float32(bits)), bits)
    nan_bits = float32_to_bf16_bits(np.array([np.nan, -np.nan], np.float32))
    assert np.isnan(bf16_bits_to_float32(nan_bits)).all()
    as_torch = tokens_as_torch(bits, "bf16")
    assert as_torch.dtype == torch.bfloat16
    np.testing.assert_array_equal(as_torch.float().numpy(), bf16_bits_to_float32(bits))


def test_round_trip_through_webdataset_is_bit_exact(tmp_path):
    samples = [make_sample("scannet_scene0000_00", dtype="bfloat16", seed=1),
               make_sample("scannet_scene0001_00", dtype="float16", points=False, seed=2),
               make_sample("scannetpp_0a5c013435", dtype="float32", frames=False, t=5, seed=3)]
    write_samples(tmp_path, samples)
    back = list(iter_samples(tmp_path))
    assert [s.key for s in back] == [s.key for s in samples]
    for want, got in zip(samples, back):
        assert got.camera.dtype == want.camera.dtype and got.patch.dtype == want.patch.dtype
        assert got.camera.tobytes() == want.camera.tobytes() and got.patch.tobytes() == want.patch.tobytes()
        np.testing.assert_array_equal(got.patch_tokens(), decode_tokens(want.patch, want.meta["dtype"]))
        assert got.frames == want.frames and got.meta == want.meta
        assert (got.points is None) == (want.points is None)
        if want.points is not None:
            assert got.points.tobytes() == want.points.tobytes()
            assert got.points_cam0.tobytes() == want.points_cam0.tobytes()
            assert got.points_valid.dtype == np.bool_ and np.array_equal(got.points_valid, want.points_valid)
        assert got.jpegs == want.jpegs
    assert back[0].images()[0].shape == (16, 16, 3)
    # the same samples through a plain webdataset pipeline over the index's shard list
    import webdataset as wds

    piped = list(wds.WebDataset(shard_paths(tmp_path), shardshuffle=False, empty_check=False).map(sample_from_wds))
    assert [s.patch.tobytes() for s in piped] == [s.patch.tobytes() for s in samples]
    # bf16 tokens are exactly the bf16 rounding of the float32 values they came from
    rng = np.random.default_rng(1)
    rng.normal(size=(3, 1, 8))
    patch32 = rng.normal(size=(3, 4, 8)).astype(np.float32) * 10
    np.testing.assert_array_equal(back[0].patch_tokens(),
                                  torch.from_numpy(patch32).to(torch.bfloat16).float().numpy())


def test_shards_are_byte_identical_and_members_have_fixed_headers(tmp_path):
    samples = [make_sample(f"scannet_scene{i:04d}_00", seed=i) for i in range(3)]
    write_samples(tmp_path / "a", samples)
    write_samples(tmp_path / "b", samples)
    a, b = (tmp_path / "a" / "shard-000000.tar").read_bytes(), (tmp_path / "b" / "shard-000000.tar").read_bytes()
    assert a == b
    assert (tmp_path / "a" / "index.json").read_bytes() == (tmp_path / "b" / "index.json").read_bytes()
    with tarfile.open(tmp_path / "a" / "shard-000000.tar") as tar:
        members = tar.getmembers()
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o444)}
    names = [m.name for m in members]
    assert names[:4] == ["scannet_scene0000_00.meta.json", "scannet_scene0000_00.frames.json",
                         "scannet_scene0000_00.camera.npy", "scannet_scene0000_00.patch.npy"]
    assert "scannet_scene0002_00.frame_002.jpg" in names


def test_rollover_by_size_and_index_hashes(tmp_path):
    samples = [make_sample(f"scannet_scene{i:04d}_00", seed=i) for i in range(7)]
    sample_bytes = sum(512 + -(-len(d) // 512) * 512 for _, d in sample_members(samples[0]))

    def closed(n: int) -> int:  # file size of n samples: end-of-archive blocks, padded to whole tar records
        return -(-(n * sample_bytes + 1024) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE

    limit = closed(3) + 100
    assert closed(4) > limit, "the samples should be big enough that four do not fit"
    records = write_samples(tmp_path, samples, max_shard_bytes=limit)
    assert [list(r.keys) for r in records] == [[s.key for s in samples[i:i + 3]] for i in (0, 3, 6)]
    index = read_index(tmp_path)
    assert index["num_shards"] == 3 and index["num_samples"] == 7
    for entry in index["shards"]:
        data = (tmp_path / entry["file"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["size_bytes"] == len(data)
        assert entry["num_samples"] == len(entry["keys"])
        # the file as written, tar record padding included, stays within the limit
        assert len(data) <= limit
        marker = read_json(tmp_path / MARKER_DIR / entry["file"].replace(".tar", ".json"))
        assert marker["sha256"] == entry["sha256"] and marker["identity"] == {"model_id": "m"}
    # a sample bigger than the limit gets a shard of its own
    big = write_samples(tmp_path / "big", samples[:2], max_shard_bytes=100)
    assert [list(r.keys) for r in big] == [[samples[0].key], [samples[1].key]]


def test_recover_removes_debris_and_keeps_complete_shards(tmp_path):
    samples = [make_sample(f"scannet_scene{i:04d}_00", seed=i) for i in range(4)]
    records = write_samples(tmp_path, samples, max_shard_bytes=100)  # one sample per shard
    assert len(records) == 4
    (tmp_path / ".shard-000004.tar.tmp").write_bytes(b"partial")         # killed while writing
    (tmp_path / MARKER_DIR / "shard-000003.json").unlink()                # killed between rename and marker
    (tmp_path / "shard-000002.tar").write_bytes(b"truncated")             # file no longer matches its marker
    state = recover_shards(tmp_path)
    assert [r.file for r in state.records] == ["shard-000000.tar", "shard-000001.tar"]
    assert state.keys == {samples[0].key, samples[1].key} and state.next_index == 2
    assert sorted(state.removed) == sorted([".shard-000004.tar.tmp", f"{MARKER_DIR}/shard-000002.json",
                                            "shard-000002.tar", "shard-000003.tar"])
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == ["shard-000000.tar", "shard-000001.tar"]


def test_writer_exception_leaves_no_partial_shard(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, max_shard_bytes=10**9) as writer:
            write_sample(writer, make_sample("scannet_scene0000_00"))
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def _rewrite_member(tokens_dir, suffix: str, new_bytes) -> None:
    """Replace one member of the first sample in shard 0 and re-index (so only the sample itself is wrong)."""
    path = tokens_dir / "shard-000000.tar"
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            if info.name.endswith(suffix):
                data = new_bytes(data)
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = path.read_bytes()
    write_index(tokens_dir, [ShardRecord(path.name, ("scannet_scene0000_00",), len(data),
                                         hashlib.sha256(data).hexdigest())])


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


@pytest.mark.parametrize("suffix, change, message", [
    ("patch.npy", lambda d: _npy(np.zeros((3, 5, 8), np.uint16)), "patch.npy has shape [3, 5, 8], expected [3, 4, 8]"),
    ("camera.npy", lambda d: _npy(np.zeros((3, 1, 8), np.float64)), "camera.npy has dtype float64"),
    ("frames.json", lambda d: json.dumps(json.loads(d)[:2]).encode(), "frames.json has 2 frames, tokens have 3"),
    ("meta.json", lambda d: json.dumps({**json.loads(d), "dtype": "int4"}).encode(), "unknown token dtype 'int4'"),
    ("points.npy", lambda d: _npy(np.zeros((3, 4, 3), np.float16)), "points.npy is float16"),
    ("points_valid.npy", lambda d: _npy(np.ones((3, 4), np.uint8)), "points_valid.npy is uint8 [3, 4], expected bool"),
    ("meta.json", lambda d: json.dumps({**json.loads(d), "points_source": "lidar"}).encode(),
     "meta points_source is 'lidar'"),
    # 4 patches of width 8 cannot come from a 48x48 input (3x3 patches of 16) of a model with width 768
    ("meta.json", lambda d: json.dumps({**json.loads(d), "input_size": 48,
                                        "model_config": {"patch_size": 16, "dec_embed_dim": 768}}).encode(),
     "do not match input_size 48 with patch_size 16 and dec_embed_dim 768 (expected 9 / 768)"),
])
def test_reader_fails_loudly_on_a_wrong_sample(tmp_path, suffix, change, message):
    write_samples(tmp_path, [make_sample("scannet_scene0000_00")], max_shard_bytes=100)
    list(iter_samples(tmp_path))  # valid before the change
    _rewrite_member(tmp_path, suffix, change)
    with pytest.raises(ShardError, match="shard-000000.tar:scannet_scene0000_00") as info:
        list(iter_samples(tmp_path))
    assert message in str(info.value)


def test_reader_checks_checkpoint_hash_index_hash_and_keys(tmp_path):
    write_samples(tmp_path, [make_sample("scannet_scene0000_00"), make_sample("scannet_scene0001_00")])
    assert len(list(iter_samples(tmp_path, expect={"checkpoint_sha256": SHA, "num_frames": 3}))) == 2
    with pytest.raises(ShardError, match=f"checkpoint_sha256 is '{SHA}', expected 'cd"):
        list(iter_samples(tmp_path, expect={"checkpoint_sha256": "cd" * 32}))
    with pytest.raises(ShardError, match="num_frames is 3, expected 32"):
        list(read_shard(tmp_path / "shard-000000.tar", expect={"num_frames": 32}))
    index = read_json(tmp_path / "index.json")
    index["shards"][0]["keys"] = ["scannet_scene0000_00"]
    (tmp_path / "index.json").write_text(json.dumps(index))
    with pytest.raises(ShardError, match="index.json lists"):
        list(iter_samples(tmp_path))
    # one flipped byte in the middle of a shard: the sha256 check catches it before parsing
    path = tmp_path / "shard-000000.tar"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="sha256 differs from index.json"):
        list(iter_samples(tmp_path))


def test_writer_refuses_invalid_samples(tmp_path):
    bad = make_sample("scannet.scene0000_00")
    with pytest.raises(ShardError, match="has a dot"):
        sample_members(bad)
    short = make_sample("scannet_scene0000_00")
    short.jpegs = short.jpegs[:2]
    with pytest.raises(ShardError, match="2 JPEG frames"):
        write_sample(ShardWriter(tmp_path, max_shard_bytes=10**6), short)


def _cut3r_video_sample() -> TokenSample:
    """A pose-less video's sample with CUT3R points (camera 0 is the world) and the model's estimated poses."""
    sample = make_sample("video_phone__IMG_0001")
    sample.points_cam0 = sample.points.copy()
    sample.frames = with_estimated_poses(
        [{**row, "camera_to_world": [None] * 16, "valid": False} for row in sample.frames],
        np.stack([np.eye(4), _pose(0.2, [0.1, 0.0, 0.3]), _pose(0.4, [0.2, -0.1, 0.6])]), "cut3r")
    sample.meta.update(points_source="cut3r", estimated_poses="cut3r", points_frame="camera0")
    return sample


def _pose(angle: float, t) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, :3] = [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
    pose[:3, 3] = t
    return pose


def _changed(sample: TokenSample, meta=None, rank=None, row=None, points=None) -> TokenSample:
    import copy

    out = copy.deepcopy(sample)
    out.meta.update(meta or {})
    for key in [k for k, v in (meta or {}).items() if v is None]:
        del out.meta[key]
    if rank is not None:
        out.frames[rank].update(row)
        for key in [k for k, v in row.items() if v is None]:
            del out.frames[rank][key]
    if points is not None:
        out.points = points
    return out


def test_estimated_poses_round_trip_beside_the_sensor_poses(tmp_path):
    sample = _cut3r_video_sample()
    write_samples(tmp_path, [sample])
    (got,) = list(iter_samples(tmp_path))
    assert got.frames == sample.frames and got.meta["points_frame"] == "camera0"
    assert [r["camera_to_world"] for r in got.frames] == [[None] * 16] * 3      # the sensor pose stays missing
    np.testing.assert_array_equal(np.array(got.frames[1]["estimated_camera_to_world"]).reshape(4, 4),
                                  _pose(0.2, [0.1, 0.0, 0.3]))
    # a sample without CUT3R points cannot carry estimated poses either
    plain = make_sample("scannet_scene0000_00")
    plain.frames = with_estimated_poses(plain.frames, np.stack([np.eye(4)] * 3), "cut3r")
    with pytest.raises(ShardError, match="has no estimated_poses"):
        validate_sample(plain, "plain")


@pytest.mark.parametrize("change, message", [
    (dict(meta={"estimated_poses": None, "points_frame": None}), "meta.json has no estimated_poses, but frames.json "
                                                                 "rows [0, 1, 2] carry estimated poses"),
    (dict(meta={"points_source": "depth"}), "meta estimated_poses is 'cut3r' with points_source 'depth'"),
    (dict(meta={"points_frame": "world"}), "meta points_frame is 'world'"),
    (dict(meta={"points_frame": None}), "meta points_frame is None"),
    (dict(rank=1, row={"estimated_pose_source": None}), "rank 1: estimated_pose_source is None"),
    (dict(rank=2, row={"estimated_camera_to_world": [1.0] * 12}), "rank 2: estimated_camera_to_world is not a list "
                                                                   "of 16 numbers"),
    (dict(rank=2, row={"estimated_camera_to_world": list((_pose(0.4, [0, 0, 0]) * 1.1).ravel())}),
     "rank 2: estimated_camera_to_world is not a rigid camera-to-world matrix"),
    (dict(points=np.zeros((3, 4, 3), np.float32)), "points_frame is 'camera0', but points.npy differs"),
])
def test_estimated_poses_are_validated(change, message):
    good = _cut3r_video_sample()
    validate_sample(good, "here")
    with pytest.raises(ShardError, match="here") as info:
        validate_sample(_changed(good, **change), "here")
    assert message in str(info.value)


def test_more_than_a_thousand_jpeg_frames_read_back_in_rank_order(tmp_path):
    # frame_1000.jpg sorts between frame_100.jpg and frame_101.jpg as text; the reader must order frames by rank
    sample = make_sample("scannet_scene0000_00", t=1002, n=1, c=2, points=False, frames=False)
    tiny = [cv2.imencode(".jpg", np.full((8, 8, 3), i % 256, np.uint8))[1].tobytes() for i in range(1002)]
    sample.jpegs, sample.meta["with_frames"] = tiny, True
    write_samples(tmp_path, [sample])
    (back,) = list(iter_samples(tmp_path))
    assert back.jpegs == tiny


def test_a_closed_shard_never_exceeds_the_limit(tmp_path):
    # tarfile pads the closed archive to whole 10 kB records: the rollover must count that padding, or a limit just
    # above the members' bytes lets the file grow past it
    samples = [make_sample(f"scannet_scene{i:04d}_00", seed=i) for i in range(7)]
    sample_bytes = sum(512 + -(-len(d) // 512) * 512 for _, d in sample_members(samples[0]))
    for extra in (0, 100, 3000, 7000):
        limit = 2 * sample_bytes + 1024 + extra
        records = write_samples(tmp_path / str(extra), samples, max_shard_bytes=limit)
        assert [k for r in records for k in r.keys] == [s.key for s in samples]
        for record in records:
            size = (tmp_path / str(extra) / record.file).stat().st_size
            assert size == record.size_bytes
            assert len(record.keys) == 1 or size <= limit, (extra, record)


def test_own_tar_reader_equals_webdataset_and_falls_back_to_it(tmp_path):
    """The shard reader parses our USTAR headers itself (one read per payload, .npy payloads as writable buffers whose
    arrays are views): same samples as webdataset on our shards; a pax tar written by another tool is read by
    webdataset; a truncated or garbled shard is an error naming the file."""
    import webdataset as wds

    from pipeline.core.shards import _iter_wds_samples, iter_raw_samples

    samples = [make_sample("scannet_scene0000_00", dtype="bfloat16", seed=1),
               make_sample("scannet_scene0001_00", dtype="float16", points=False, seed=2)]
    write_samples(tmp_path / "ours", samples)
    [path] = shard_paths(tmp_path / "ours")
    ours = list(iter_raw_samples(path))
    theirs = list(_iter_wds_samples(path))
    assert [k for k, _ in ours] == [k for k, _ in theirs] == [s.key for s in samples]
    for (_, a), (_, b) in zip(ours, theirs):
        assert sorted(a) == sorted(b)
        assert all(bytes(a[name]) == b[name] for name in a)
        assert isinstance(a["patch.npy"], np.ndarray) and isinstance(a["meta.json"], bytes)
    read = list(iter_samples(tmp_path / "ours"))
    assert read[0].patch.flags.writeable and not read[0].patch.flags.owndata  # a view of the payload buffer
    np.testing.assert_array_equal(read[0].patch, samples[0].patch)

    pax = tmp_path / "pax" / "shard-000000.tar"
    pax.parent.mkdir()
    with tarfile.open(pax, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, payload in sample_members(samples[0]):
            info = tarfile.TarInfo(name)
            info.size, info.pax_headers = len(payload), {"comment": "written by another tool"}
            tar.addfile(info, io.BytesIO(payload))
    [(key, members)] = list(iter_raw_samples(pax))
    assert key == samples[0].key and isinstance(members["patch.npy"], bytes)
    assert members["patch.npy"] == [p for n, p in sample_members(samples[0]) if n.endswith(".patch.npy")][0]

    data = (tmp_path / "ours" / "shard-000000.tar").read_bytes()
    # (a cut at a member boundary or bytes after the end-of-archive blocks are a valid tar: index.json's size and
    # sha256 catch those)
    for name, broken in (("cut", data[:len(data) // 2 + 100]), ("garbled", b"x" * 512 + data[512:])):
        bad = tmp_path / f"{name}.tar"
        bad.write_bytes(broken)
        with pytest.raises(ShardError, match=f"{name}.tar.*not a readable shard"):
            list(iter_raw_samples(bad))
    assert wds  # webdataset is what the fallback and sample_from_wds pipelines use


# ---- reading ahead -------------------------------------------------------------------------------------------------

def test_read_ahead_keeps_order_and_raises_errors_in_place():
    def items():
        yield from range(5)
        raise ValueError("broken after 5")

    got = []
    with pytest.raises(ValueError, match="broken after 5"):
        for item in read_ahead(items(), depth=2):
            got.append(item)
    assert got == [0, 1, 2, 3, 4]  # every item before the error arrived, in order
    assert list(read_ahead(iter(range(7)), depth=0)) == list(read_ahead(iter(range(7)), depth=3)) == list(range(7))


def test_read_ahead_produces_while_the_consumer_works_and_stops_when_closed():
    produced = []
    step = threading.Event()

    def items():
        for i in range(100):
            produced.append(i)
            yield i

    reader = read_ahead(items(), depth=1)
    assert next(reader) == 0
    deadline = time.monotonic() + 10
    while len(produced) < 3 and time.monotonic() < deadline:  # item 1 waits in the hand-off, item 2 in put()
        step.wait(0.01)
    assert produced[:3] == [0, 1, 2]
    assert len(produced) == 3  # bounded: no more than depth items ahead (plus the one being handed over)
    threads = [t for t in threading.enumerate() if t.name == "shard-read-ahead"]
    assert len(threads) == 1
    reader.close()  # the consumer stops early: the producer thread ends, nothing is left running
    assert not threads[0].is_alive()
    assert len(produced) < 100


def test_iter_samples_reads_ahead_with_the_same_samples_and_errors(tmp_path):
    samples = [make_sample(f"scannet_scene000{i}_00", seed=i) for i in range(4)]
    write_samples(tmp_path, samples, max_shard_bytes=1000)
    assert len(read_index(tmp_path)["shards"]) > 1
    for depth in (0, 1, 3):
        back = list(iter_samples(tmp_path, read_ahead_samples=depth))
        assert [s.key for s in back] == [s.key for s in samples]
        for a, b in zip(back, samples):
            assert np.array_equal(a.patch_tokens(), b.patch_tokens())
    # an unfinished iteration (next() only) leaves no reading thread behind once dropped
    first = iter_samples(tmp_path)
    assert next(first).key == samples[0].key
    first.close()
    assert not [t for t in threading.enumerate() if t.name == "shard-read-ahead"]
    # a corrupt last shard: the earlier samples come first, then the same error as without read-ahead
    last = sorted(tmp_path.glob("shard-*.tar"))[-1]
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF
    last.write_bytes(bytes(data))
    for depth in (0, 2):
        got = []
        with pytest.raises(ShardError, match=f"{last.name}.*sha256 differs from index.json"):
            for sample in iter_samples(tmp_path, read_ahead_samples=depth):
                got.append(sample.key)
        assert got and got == [s.key for s in samples[:len(got)]]


def test_write_sample_takes_samples_as_extract_makes_them(tmp_path):
    # extract's samples carry the source digest in meta.json; it is sample data, not the shard marker's unit entry
    sample = make_sample("scannet_scene0000_00")
    sample.meta["source_sha256"] = "cd" * 32
    records = write_samples(tmp_path, [sample])
    assert records[0].units == {}
    (back,) = list(iter_samples(tmp_path))
    assert back.meta["source_sha256"] == "cd" * 32
