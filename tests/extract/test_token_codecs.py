"""Token codecs: float8 E4M3 bits against torch's float8_e4m3fn, the scaled codecs' error bounds and sizes, round
trips of every codec through real shards, validation of the scale members, and the dump-tokens command."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_shards import make_sample, write_samples

from pipeline.cli import main as cli_main
from pipeline.core.shards import ShardError
from pipeline.core.tokens import (E4M3_VALUES, TOKEN_CODECS, TokenSample, decode_tokens, e4m3_bits_to_float32,
                                  find_sample, float32_to_e4m3_bits, iter_samples, quantize_tokens,
                                  sample_members, store_tokens, token_codec, validate_sample)

SCALED = ("float8_e4m3", "int8")


def gaussian_tokens(t: int = 4, n: int = 50, c: int = 16, seed: int = 0) -> np.ndarray:
    """Tokens with channel scales spread over four orders of magnitude and one outlier channel."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((t, n, c)).astype(np.float32) * np.logspace(-2, 2, c, dtype=np.float32)
    values[:, 3, 5] *= 30  # an outlier token in one channel: only that channel's scale grows
    return values


def test_e4m3_bits_equal_torch_float8_e4m3fn():
    patterns = np.arange(256, dtype=np.uint8)
    reference = torch.from_numpy(patterns).view(torch.float8_e4m3fn).float().numpy()
    np.testing.assert_array_equal(np.isnan(E4M3_VALUES), np.isnan(reference))
    finite = ~np.isnan(reference)
    np.testing.assert_array_equal(e4m3_bits_to_float32(patterns)[finite], reference[finite])
    odd = patterns[:101].reshape(1, 101)  # an odd count decodes one code at a time instead of two
    np.testing.assert_array_equal(e4m3_bits_to_float32(odd), reference[None, :101])
    # every finite value encodes to its own pattern (including -0 -> 0x80)
    np.testing.assert_array_equal(float32_to_e4m3_bits(reference[finite]), patterns[finite])

    rng = np.random.default_rng(1)
    representable = np.sort(np.unique(reference[finite]))
    midpoints = ((representable[1:].astype(np.float64) + representable[:-1]) / 2).astype(np.float32)  # exact ties
    values = np.concatenate([rng.standard_normal(100_000).astype(np.float32) * 100,
                             rng.standard_normal(20_000).astype(np.float32) * 1e-3,  # subnormal range (< 2^-6)
                             midpoints, np.nextafter(midpoints, np.float32(np.inf)),
                             np.nextafter(midpoints, np.float32(-np.inf)),
                             np.float32([0.0, -0.0, 448.0, -448.0, 2.0 ** -9, 2.0 ** -10, 3 * 2.0 ** -10])])
    values = values[np.abs(values) <= 448]
    expected = torch.from_numpy(values).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
    np.testing.assert_array_equal(float32_to_e4m3_bits(values), expected)
    # beyond the range: saturation at +-448, never the NaN pattern 0x7F / 0xFF
    huge = np.float32([449, 464, 480, 1e30, np.inf, -500, -np.inf])
    np.testing.assert_array_equal(e4m3_bits_to_float32(float32_to_e4m3_bits(huge)),
                                  np.float32([448, 448, 448, 448, 448, -448, -448]))
    with pytest.raises(ValueError, match="NaN"):
        float32_to_e4m3_bits(np.float32([1.0, np.nan]))


@pytest.mark.parametrize("dtype", SCALED)
def test_scaled_codecs_error_bounds_scales_and_determinism(dtype):
    values = gaussian_tokens()
    codes, scale = quantize_tokens(values, dtype)
    assert codes.dtype == TOKEN_CODECS[dtype].stored and codes.shape == values.shape
    assert scale.dtype == np.float32 and scale.shape == (4, 1, 16)
    # the scale maps each frame's and channel's largest magnitude onto the codec's largest code
    np.testing.assert_allclose(scale * TOKEN_CODECS[dtype].max_code, np.abs(values).max(axis=1, keepdims=True),
                               rtol=1e-6)
    decoded = decode_tokens(codes, dtype, scale)
    assert decoded.dtype == np.float32
    error = np.abs(decoded - values)
    if dtype == "int8":  # uniform steps of one scale: at most half a step (plus float32 rounding)
        assert (error <= 0.5 * scale * (1 + 1e-5)).all()
    else:  # 3 mantissa bits: half an ulp is 1/16 of the value in the normal range, 2^-10 * scale below it
        assert (error <= np.maximum(np.abs(values) / 16, scale * 2.0 ** -10) * (1 + 1e-5)).all()
    cosine = (decoded * values).sum(-1) / np.linalg.norm(decoded, axis=-1) / np.linalg.norm(values, axis=-1)
    assert cosine.min() > 0.998
    again = quantize_tokens(values.copy(), dtype)
    np.testing.assert_array_equal(again[0], codes)
    np.testing.assert_array_equal(again[1], scale)
    # a channel that is zero in a frame: scale 1, codes 0, decodes to exact zeros
    values[1, :, 2] = 0
    codes, scale = quantize_tokens(values, dtype)
    assert scale[1, 0, 2] == 1.0 and not decode_tokens(codes, dtype, scale)[1, :, 2].any()
    with pytest.raises(ValueError, match="non-finite"):
        quantize_tokens(np.full((1, 2, 3), np.inf, np.float32), dtype)
    with pytest.raises(ValueError, match="scales"):
        decode_tokens(codes, dtype)


def test_one_byte_codecs_take_about_half_of_bf16():
    t, n, c = 32, 729, 768
    values = np.random.default_rng(0).standard_normal((t, n + 1, c)).astype(np.float32)
    sizes = {}
    for dtype in ("bfloat16", "int8"):
        camera = store_tokens(values[:, :1], dtype)
        patch = store_tokens(values[:, 1:], dtype)
        sizes[dtype] = sum(a.nbytes for pair in (camera, patch) for a in pair if a is not None) / t
    assert sizes["bfloat16"] == (n + 1) * c * 2
    assert sizes["int8"] == (n + 1) * c + 2 * c * 4        # codes + two [1, C] float32 scales per frame
    assert sizes["int8"] / 2**20 < 0.55


def codec_sample(key: str, dtype: str, seed: int = 0, points: bool = True) -> TokenSample:
    base = make_sample(key, dtype="float32", points=points, seed=seed)
    meta = {**base.meta, "dtype": dtype, "storage": token_codec(dtype).storage}
    return TokenSample.from_float(key, base.camera, base.patch, base.frames, meta, base.points, base.jpegs,
                                  base.points_cam0, base.points_valid)


@pytest.mark.parametrize("dtype", sorted(TOKEN_CODECS))
def test_every_codec_round_trips_through_a_shard(tmp_path, dtype):
    sample = codec_sample("scannet_scene0000_00", dtype, seed=3)
    floats = make_sample("scannet_scene0000_00", dtype="float32", seed=3)
    write_samples(tmp_path, [sample])
    [read] = list(iter_samples(tmp_path, expect={"dtype": dtype}))
    members = {name.split(".", 1)[1] for name, _ in sample_members(read)}
    assert ({"camera_scale.npy", "patch_scale.npy"} <= members) == (dtype in SCALED)
    assert read.patch.dtype == TOKEN_CODECS[dtype].stored
    for name in ("camera", "patch", "camera_scale", "patch_scale"):
        np.testing.assert_array_equal(getattr(read, name), getattr(sample, name))
    camera, patch = read.camera_tokens(), read.patch_tokens()
    assert camera.dtype == patch.dtype == np.float32
    if dtype == "float32":
        np.testing.assert_array_equal(patch, floats.patch)
    else:  # the decoded tokens are what the codec keeps of the float32 ones
        np.testing.assert_allclose(patch, floats.patch, rtol=0.07, atol=0.02 * np.abs(floats.patch).max())
    # writing the read sample again gives the same bytes
    write_samples(tmp_path / "again", [read])
    assert (tmp_path / "again" / "shard-000000.tar").read_bytes() == (tmp_path / "shard-000000.tar").read_bytes()


def test_validation_of_scale_members():
    good = codec_sample("scannet_scene0000_00", "int8")
    validate_sample(good, "x")
    cases = [
        (dict(patch_scale=None), "patch_scale.npy is missing"),
        (dict(camera_scale=good.camera_scale.astype(np.float64)), "camera_scale.npy is float64"),
        (dict(patch_scale=good.patch_scale[:2]), "patch_scale.npy is float32 [2, 1, 8], expected float32 [3, 1, 8]"),
        (dict(patch_scale=-good.patch_scale), "not finite and positive"),
    ]
    for change, message in cases:
        with pytest.raises(ShardError, match=message.replace("[", r"\[").replace("]", r"\]")):
            validate_sample(TokenSample(**{**vars(good), **change}), "x")
    lossless = codec_sample("scannet_scene0000_00", "bfloat16")
    with pytest.raises(ShardError, match="camera_scale.npy is present but dtype bfloat16 has no scales"):
        validate_sample(TokenSample(**{**vars(lossless), "camera_scale": good.camera_scale}), "x")
    with pytest.raises(ShardError, match="must be stored as 'int8_scaled'"):
        validate_sample(TokenSample(**{**vars(good), "meta": {**good.meta, "storage": "native"}}), "x")


def test_find_sample_and_dump_tokens(tmp_path, capsys):
    root = tmp_path / "root"
    samples = [codec_sample(f"scannet_scene000{i}_00", "float8_e4m3", seed=i, points=i == 1) for i in range(3)]
    write_samples(root / "tokens", samples, max_shard_bytes=100)  # one sample per shard
    assert find_sample(root / "tokens", "scannet_scene0002_00").key == "scannet_scene0002_00"

    out = tmp_path / "dump" / "one.npz"
    assert cli_main(["dump-tokens", "--root", str(root), "--key", "scannet_scene0001_00", "--out", str(out)]) == 0
    dumped = np.load(out)
    assert sorted(dumped.files) == ["camera", "patch", "points", "points_cam0", "points_valid"]
    for name, expected in (("camera", samples[1].camera_tokens()), ("patch", samples[1].patch_tokens()),
                           ("points", samples[1].points), ("points_cam0", samples[1].points_cam0)):
        assert dumped[name].dtype == np.float32
        np.testing.assert_array_equal(dumped[name], expected)
    assert dumped["points_valid"].dtype == np.bool_
    np.testing.assert_array_equal(dumped["points_valid"], samples[1].points_valid)
    assert cli_main(["dump-tokens", "--root", str(root), "--key", "scannet_scene0000_00", "--out", str(out)]) == 0
    assert sorted(np.load(out).files) == ["camera", "patch"]  # no points in that sample
    capsys.readouterr()

    assert cli_main(["dump-tokens", "--root", str(root), "--key", "scannet_scene0042_00", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no sample with key 'scannet_scene0042_00'" in err and "index.json" in err and "Traceback" not in err
    assert cli_main(["dump-tokens", "--root", str(tmp_path / "nowhere"), "--key", "k", "--out", str(out)]) == 2
    assert "dataset root not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli_main(["dump-tokens", "--root", str(tmp_path / "empty"), "--key", "k", "--out", str(out)]) == 2
    assert "shard index not found" in capsys.readouterr().err
    assert not list((tmp_path / "dump").glob(".*.tmp"))


# ---- the decoder: split over threads, the same bits -----------------------------------------------------------------

LOSSY_OR_NARROW = ("bfloat16", "float16", "float8_e4m3", "int8")


def reference_decode(stored: np.ndarray, dtype: str, scale: np.ndarray | None) -> np.ndarray:
    """The codecs' definitions in one plain numpy expression each, on the calling thread."""
    if dtype == "bfloat16":
        return (stored.astype(np.uint32) << 16).view(np.float32)
    if dtype == "float16":
        return stored.astype(np.float32)
    if dtype == "int8":
        return stored.astype(np.float32) * scale
    return E4M3_VALUES[stored] * scale


def every_pattern(dtype: str, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Stored tokens of ``shape`` cycling through every bit pattern of the codec (NaN, infinities, subnormals and
    the int8 code -128 included) in a shuffled order, and random positive scales [T, 1, C] for the scaled codecs."""
    rng = np.random.default_rng(seed)
    stored_dtype = TOKEN_CODECS[dtype].stored
    bits = np.uint16 if stored_dtype.itemsize == 2 else np.uint8
    patterns = np.arange(np.iinfo(bits).max + 1, dtype=bits)
    values = rng.permutation(np.resize(patterns, int(np.prod(shape)))).view(stored_dtype).reshape(shape)
    scale = None
    if TOKEN_CODECS[dtype].scaled:
        scale = (rng.uniform(0.5, 2.0, (shape[0], 1, shape[2])) * 10.0 ** rng.integers(-30, 30, (shape[0], 1, shape[2]))
                 ).astype(np.float32)
    return values, scale


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype == np.float32 and a.shape == b.shape and np.array_equal(a.view(np.uint32),
                                                                                       b.view(np.uint32))


@pytest.mark.parametrize("dtype", LOSSY_OR_NARROW)
def test_threaded_decode_equals_the_reference_bit_for_bit(monkeypatch, dtype):
    import pipeline.core.tokens as tokens

    # Every array is split (no size threshold) and fp8 looks up a few rows at a time, so frame blocks, lookup blocks
    # and partial last blocks fall at odd places: odd frame counts, one frame, more threads than frames, odd widths.
    monkeypatch.setattr(tokens, "PARALLEL_DECODE_BYTES", 0)
    monkeypatch.setattr(tokens, "_E4M3_BLOCK_VALUES", 40)
    shapes = [(7, 50, 16), (5, 1, 16), (3, 13, 10), (1, 9, 16), (9, 4, 15), (2, 3, 2)]
    for seed, shape in enumerate(shapes):
        stored, scale = every_pattern(dtype, shape, seed)
        reference = reference_decode(stored, dtype, scale)
        for threads in (1, 2, 3, 4, 7, 16):
            assert same_bits(decode_tokens(stored, dtype, scale, threads=threads), reference), (shape, threads)
    if dtype in SCALED:  # scales shared by every frame broadcast like [T, 1, C] ones
        stored, scale = every_pattern(dtype, (5, 6, 8), 9)
        assert same_bits(decode_tokens(stored, dtype, scale[:1], threads=3), reference_decode(stored, dtype, scale[:1]))
    else:  # any shape for the lossless codecs, including [T, C] and one value
        stored, _ = every_pattern(dtype, (9, 37), 9)
        assert same_bits(decode_tokens(stored, dtype, threads=4), reference_decode(stored, dtype, None))
        assert same_bits(decode_tokens(stored[3, 5], dtype), reference_decode(stored[3, 5], dtype, None))


@pytest.mark.parametrize("dtype", LOSSY_OR_NARROW)
def test_a_samples_decode_does_not_depend_on_the_thread_count(tmp_path, monkeypatch, dtype):
    from concurrent.futures import ThreadPoolExecutor

    import pipeline.core.tokens as tokens

    # Patch tokens of 33 frames x 64 x 512: a 4.1 MiB float32 output, over the default threshold for splitting.
    base = make_sample("scannet_scene0000_00", t=33, n=64, c=512, dtype="float32", points=False, frames=False)
    meta = {**base.meta, "dtype": dtype, "storage": token_codec(dtype).storage}
    write_samples(tmp_path, [TokenSample.from_float(base.key, base.camera, base.patch, base.frames, meta)])
    [sample] = list(iter_samples(tmp_path, verify_sha256=False))
    assert sample.patch_tokens().nbytes >= tokens.PARALLEL_DECODE_BYTES
    reference = reference_decode(sample.patch, dtype, sample.patch_scale)
    for threads in ("1", "2", "3", "8"):
        monkeypatch.setenv(tokens.DECODE_THREADS_ENV, threads)
        assert same_bits(sample.patch_tokens(), reference), threads
        assert same_bits(sample.camera_tokens(), reference_decode(sample.camera, dtype, sample.camera_scale))
    # several threads decoding at once share the pool safely
    monkeypatch.setenv(tokens.DECODE_THREADS_ENV, "3")
    with ThreadPoolExecutor(4) as callers:
        assert all(same_bits(got, reference) for got in callers.map(lambda _: sample.patch_tokens(), range(8)))
    monkeypatch.setenv(tokens.DECODE_THREADS_ENV, "two")
    with pytest.raises(ValueError, match="VLM3R_DECODE_THREADS must be a positive integer"):
        sample.patch_tokens()


def test_decode_in_a_forked_child_after_the_pool_started():
    """A DataLoader-style worker forked from a process whose decode pool is running gets a pool of its own (the
    parent's threads do not exist in the child: reusing that pool would wait forever)."""
    import multiprocessing

    stored, _ = every_pattern("bfloat16", (8, 300, 1024), 0)  # 9.4 MiB of float32: split
    reference = reference_decode(stored, "bfloat16", None)
    assert same_bits(decode_tokens(stored, "bfloat16", threads=2), reference)
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        got = pool.apply_async(decode_tokens, (stored, "bfloat16"), {"threads": 2}).get(timeout=60)
    assert same_bits(got, reference)
