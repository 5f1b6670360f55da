"""CUT3R model: golden parity with the official code, batching, gating, preprocessing and config parsing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from workers.cut3r import (Cut3rConfig, Cut3rConfigError, Cut3rEncoder, PreprocessConfig, full_config,
                           parse_model_string, patch_points, preprocess_frames, random_model, tiny_config)
from workers.cut3r.heads import pose_to_matrix

# README tolerances (max abs, float32 CPU)
TOKEN_TOL = 2e-4
HEAD_TOL = {"pts3d_in_self_view": 2e-5, "pts3d_in_other_view": 2e-5, "conf_self": 2e-5, "conf": 2e-5,
            "rgb": 2e-5, "camera_pose": 5e-5}
# The intermediates, in pipeline order: the first one over its bound says where a mismatch starts.
DEBUG_ORDER = ("state_init", "mem_init", "enc_feat", "global_img_feat", "pose_in", "dec_layers", "new_state",
               "state_after", "mem_after")


def run_fixture(model, inputs, debug=True):
    frames = torch.from_numpy(inputs["frames"]).transpose(0, 1)  # [B,F,3,H,W]
    flags = {k: torch.from_numpy(inputs[k]).T for k in ("img_mask", "update", "reset")}
    with torch.inference_mode():
        return model(frames, heads=True, debug=debug, **flags)


@pytest.mark.parametrize("suffix", ["", "_32x48"])
def test_golden_parity(tiny_model, tiny_dir, suffix):
    inputs = np.load(tiny_dir / f"inputs{suffix}.npz")
    ref = np.load(tiny_dir / f"outputs{suffix}.npz")
    out = run_fixture(tiny_model, inputs)

    def fb(x):
        return x.transpose(0, 1).numpy()

    init = tiny_model.initial_state(1)
    ours = {
        "state_init": init.state_feat.numpy(), "mem_init": init.mem.numpy(),
        **{k: fb(out.debug[k]) for k in ("enc_feat", "global_img_feat", "pose_in", "new_state", "state_after",
                                         "mem_after")},
        "dec_layers": out.debug["dec_layers"].permute(1, 2, 0, 3, 4).numpy(),  # fixture: [F,depth,B,1+N,C]
    }
    np.testing.assert_array_equal(tiny_model.state_positions().numpy(), ref["dbg_state_pos"])
    for name in DEBUG_ORDER:
        expected = ref["dbg_" + name]
        assert ours[name].shape == expected.shape, name
        err = float(np.abs(ours[name] - expected).max())
        assert err <= TOKEN_TOL, f"first mismatch at dbg_{name}: max abs err {err:.2e}"
    for name, tensor in (("camera_token", out.camera_token), ("patch_tokens", out.patch_tokens)):
        err = float(np.abs(fb(tensor) - ref[name]).max())
        assert err <= TOKEN_TOL, f"{name}: max abs err {err:.2e}"
    assert set(out.heads) == set(HEAD_TOL)
    for name, tol in HEAD_TOL.items():
        assert fb(out.heads[name]).shape == ref[name].shape, name
        err = float(np.abs(fb(out.heads[name]) - ref[name]).max())
        assert err <= tol, f"{name}: max abs err {err:.2e} > {tol:.0e}"


def test_token_only_and_eager_attention(tiny_model, tiny_dir):
    inputs = np.load(tiny_dir / "inputs.npz")
    frames = torch.from_numpy(inputs["frames"]).transpose(0, 1)
    with torch.inference_mode():
        with_heads = tiny_model(frames, heads=True)
        tokens_only = tiny_model(frames)
        tiny_model.set_attention("eager")
        try:
            eager = tiny_model(frames, heads=True)
        finally:
            tiny_model.set_attention("fused")
    assert tokens_only.heads == {}
    torch.testing.assert_close(tokens_only.patch_tokens, with_heads.patch_tokens, rtol=0, atol=0)
    torch.testing.assert_close(eager.patch_tokens, with_heads.patch_tokens, rtol=0, atol=2e-5)
    torch.testing.assert_close(eager.heads["camera_pose"], with_heads.heads["camera_pose"], rtol=0, atol=2e-5)


def test_batch_of_three_lengths_equals_alone():
    model = random_model(tiny_config(), seed=3)
    gen = torch.Generator().manual_seed(0)
    lengths = [3, 1, 2]
    frames = torch.rand(3, 3, 3, 32, 48, generator=gen) * 2 - 1
    # Batched float32 matmuls may differ from unbatched ones in the last bit, and the encoder's float16 rounding of
    # q/k can turn that into one float16 step: compare at half the golden tolerance.
    tol = dict(rtol=0, atol=1e-4)
    with torch.inference_mode():
        batched = model(frames, lengths, heads=True)
        for b, n in enumerate(lengths):
            alone = model(frames[b:b + 1, :n], heads=True)
            torch.testing.assert_close(batched.patch_tokens[b, :n], alone.patch_tokens[0], **tol)
            torch.testing.assert_close(batched.camera_token[b, :n], alone.camera_token[0], **tol)
            for k, v in alone.heads.items():
                torch.testing.assert_close(batched.heads[k][b, :n], v[0], **tol, msg=k)
            # A video that has ended keeps its state: the final state is the one after its own last frame.
            torch.testing.assert_close(batched.state.state_feat[b], alone.state.state_feat[0], **tol)
            torch.testing.assert_close(batched.state.mem[b], alone.state.mem[0], **tol)
            assert not batched.patch_tokens[b, n:].any() and not batched.heads["rgb"][b, n:].any()


def test_update_reset_and_image_mask_gating():
    model = random_model(tiny_config(), seed=1)
    frames = torch.rand(1, 3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    init = model.initial_state(1)
    with torch.inference_mode():
        first = model(frames[:, :1], debug=True)
        no_update = model(frames[:, :2], update=torch.tensor([[True, False]]), debug=True)
        reset = model(frames, reset=torch.tensor([[False, True, False]]), debug=True)
        masked = model(frames[:, :1], img_mask=torch.tensor([[False]]), debug=True)
        masked_no_update = model(frames[:, :2], img_mask=torch.tensor([[True, False]]), debug=True)
    torch.testing.assert_close(no_update.debug["state_after"][:, 1], first.debug["state_after"][:, 0], rtol=0, atol=0)
    torch.testing.assert_close(no_update.debug["mem_after"][:, 1], first.debug["mem_after"][:, 0], rtol=0, atol=0)
    torch.testing.assert_close(masked_no_update.debug["state_after"][:, 1], first.debug["state_after"][:, 0],
                               rtol=0, atol=0)
    torch.testing.assert_close(reset.debug["state_after"][:, 1], init.state_feat, rtol=0, atol=0)
    torch.testing.assert_close(reset.debug["mem_after"][:, 1], init.mem, rtol=0, atol=0)
    # After a reset the next frame still reads the pose memory (only a video's first frame gets the pose token).
    assert not torch.equal(reset.debug["pose_in"][:, 2], model.pose_token.expand(1, 1, -1))
    torch.testing.assert_close(reset.debug["pose_in"][:, 0], model.pose_token.expand(1, 1, -1), rtol=0, atol=0)
    # A masked image is encoded as the learned masked-image token.
    torch.testing.assert_close(masked.debug["enc_feat"][0, 0], model.masked_img_token.expand(4, -1), rtol=0, atol=0)


def test_encoder_api_lists_and_points():
    model = random_model(tiny_config(), seed=2)
    encoder = Cut3rEncoder(model)
    assert encoder.compute_dtype == torch.float32
    gen = torch.Generator().manual_seed(2)
    videos = [torch.rand(n, 3, 32, 32, generator=gen) * 2 - 1 for n in (2, 3)]
    out = encoder.encode(videos, points=True)
    assert out.camera_tokens.shape == (2, 3, 1, 32) and out.patch_tokens.shape == (2, 3, 4, 32)
    assert out.points.shape == (2, 3, 4, 3) and out.points_conf.shape == (2, 3, 4)
    assert out.lengths.tolist() == [2, 3]
    with torch.inference_mode():
        ref = model(videos[1][None], heads=True)
    torch.testing.assert_close(out.patch_tokens[1], ref.patch_tokens[0], rtol=0, atol=1e-5)
    pts, conf = patch_points(ref.heads["pts3d_in_other_view"][0], ref.heads["conf"][0], 16)
    torch.testing.assert_close(out.points[1], pts, rtol=0, atol=1e-5)
    assert not out.points[0, 2].any()


def _rotation_of_quaternion(q_wxyz: np.ndarray) -> np.ndarray:
    """The rotation of a unit quaternion (w, x, y, z), written out from the textbook formula in float64."""
    w, x, y, z = np.asarray(q_wxyz, np.float64) / np.linalg.norm(q_wxyz)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


@pytest.mark.parametrize("suffix", ["", "_32x48"])
def test_encoder_camera_poses_are_the_official_pose_head_outputs_as_matrices(tiny_model, tiny_dir, suffix):
    """``camera_poses`` [B,T,4,4] = the golden ``camera_pose`` (t, q_wxyz) as camera-to-world matrices. Frame 0 of
    the fixture is a general rotation: the official model does not force it to the identity."""
    inputs = np.load(tiny_dir / f"inputs{suffix}.npz")
    ref = np.load(tiny_dir / f"outputs{suffix}.npz")["camera_pose"][:, 0]       # [F,7]
    out = Cut3rEncoder(tiny_model).encode(torch.from_numpy(inputs["frames"]).transpose(0, 1), points=True)
    ours = out.camera_poses[0].double().numpy()                                 # [F,4,4]
    assert out.camera_poses.shape == (1, len(ref), 4, 4) and out.camera_poses.dtype == torch.float32
    for frame, pose in enumerate(ref):
        np.testing.assert_allclose(ours[frame, :3, 3], pose[:3], rtol=0, atol=5e-5)
        np.testing.assert_allclose(ours[frame, :3, :3], _rotation_of_quaternion(pose[3:]), rtol=0, atol=1e-4)
        np.testing.assert_array_equal(ours[frame, 3], [0, 0, 0, 1])
    assert np.abs(ours[:, :3, :3] @ ours[:, :3, :3].transpose(0, 2, 1) - np.eye(3)).max() < 1e-5
    assert np.abs(ours[0, :3, :3] - np.eye(3)).max() > 0.1


def test_pose_to_matrix_by_hand_and_padded_frames():
    half = np.pi / 8                                              # a quarter turn about z
    pose = torch.tensor([[1.0, 2.0, 3.0, np.cos(half), 0.0, 0.0, np.sin(half)]], dtype=torch.float64)
    expected = np.array([[np.sqrt(0.5), -np.sqrt(0.5), 0, 1], [np.sqrt(0.5), np.sqrt(0.5), 0, 2], [0, 0, 1, 3],
                         [0, 0, 0, 1]])
    np.testing.assert_allclose(pose_to_matrix(pose)[0].numpy(), expected, atol=1e-12)
    scaled = pose.clone()
    scaled[:, 3:] *= 3.0                                          # an unnormalised quaternion: the same rotation
    np.testing.assert_allclose(pose_to_matrix(scaled)[0].numpy(), expected, atol=1e-12)

    model = random_model(tiny_config(), seed=3)
    videos = [torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(n)) * 2 - 1 for n in (3, 2)]
    out = Cut3rEncoder(model).encode(videos, points=True)
    assert out.camera_poses.shape == (2, 3, 4, 4) and torch.isfinite(out.camera_poses).all()
    assert not out.camera_poses[1, 2].any()                       # past the second video's length: zeros
    with torch.inference_mode():
        alone = model(videos[1][None], heads=("pose",)).heads["camera_pose"][0]
    torch.testing.assert_close(out.camera_poses[1, :2], pose_to_matrix(alone), rtol=0, atol=1e-5)
    assert Cut3rEncoder(model).encode(videos).camera_poses is None  # tokens only: no heads run


def test_preprocess_matches_fixture_normalisation(tiny_dir):
    inputs = np.load(tiny_dir / "inputs.npz")
    frames = preprocess_frames(inputs["frames_uint8"], PreprocessConfig(size=48, squash_size=None))
    np.testing.assert_allclose(frames.numpy(), inputs["frames"][:, 0], rtol=0, atol=1e-6)


def test_preprocess_default_pipeline():
    frames = np.random.default_rng(0).integers(0, 256, size=(2, 60, 80, 3), dtype=np.uint8)
    out = preprocess_frames(frames)
    assert out.shape == (2, 3, 432, 432) and out.dtype == torch.float32
    assert float(out.min()) >= -1.0 and float(out.max()) <= 1.0
    squashed = preprocess_frames(frames, PreprocessConfig(size=384))  # no final resize at 384
    assert squashed.shape == (2, 3, 384, 384)
    const = np.full((1, 20, 30, 3), 255, dtype=np.uint8)
    assert torch.allclose(preprocess_frames(const), torch.ones(1, 3, 432, 432))
    with pytest.raises(ValueError):
        preprocess_frames(frames.astype(np.float32))


def test_preprocess_equals_the_siglip_processor_chain_then_vlm3r_resize():
    """The reference built from transformers' own image transforms, in the order LLaVA-Video's SigLIP processor applies
    them (PIL bicubic resize of the uint8 frame to 384x384, rescale 1/255, normalise 0.5/0.5, channels first), then
    VLM-3R's bilinear resize to 432 (align_corners=False): equal bit for bit."""
    image_transforms = pytest.importorskip("transformers.image_transforms")
    from transformers.image_utils import ChannelDimension, PILImageResampling

    frames = np.random.default_rng(3).integers(0, 256, size=(2, 45, 70, 3), dtype=np.uint8)
    first = ChannelDimension.FIRST
    ref = []
    for frame in frames:
        x = image_transforms.resize(frame, size=(384, 384), resample=PILImageResampling.BICUBIC, data_format=first)
        x = image_transforms.rescale(x, scale=1 / 255, data_format=first)
        ref.append(image_transforms.normalize(x, mean=(0.5,) * 3, std=(0.5,) * 3, data_format=first))
    ref = torch.nn.functional.interpolate(torch.from_numpy(np.stack(ref)), size=(432, 432), mode="bilinear",
                                          align_corners=False)
    assert ref.dtype == torch.float32
    assert torch.equal(preprocess_frames(frames), ref)


def test_config_parsing_is_literal_only():
    cfg = full_config("cut3r_512_dpt_4_64")
    assert cfg.depth_mode == ("exp", -float("inf"), float("inf")) and cfg.img_size == (512, 512)
    assert Cut3rConfig.from_dict(cfg.to_dict()) == cfg
    assert full_config("cut3r_224_linear_4").head_type == "linear"
    kw = parse_model_string("ARCroco3DStereo(ARCroco3DStereoConfig(a=(1, -2.5, -inf), b='x', c=None, d=[True]))")
    assert kw == {"a": (1, -2.5, -float("inf")), "b": "x", "c": None, "d": (True,)}
    for bad in ("ARCroco3DStereo(ARCroco3DStereoConfig(x=__import__('os').system('true')))",
                "ARCroco3DStereo(ARCroco3DStereoConfig(x=os.sep))",
                "ARCroco3DStereo(ARCroco3DStereoConfig(x=-'a'))",
                "ARCroco3DStereo(ARCroco3DStereoConfig(**{'a': 1}))",
                "Other(ARCroco3DStereoConfig(a=1))",
                "ARCroco3DStereo(ARCroco3DStereoConfig(a=1)) + 1"):
        with pytest.raises(Cut3rConfigError):
            parse_model_string(bad)
    with pytest.raises(Cut3rConfigError, match="pos_embed"):
        Cut3rConfig.from_model_string("ARCroco3DStereo(ARCroco3DStereoConfig(output_mode='pts3d+pose', "
                                      "pose_head=True, pos_embed='cosine'))")


# bf16 (bf16 weights and activations, float32 heads / RoPE / norm statistics) against the official float32 outputs of
# the golden fixture. Measured: tokens max abs err 0.034 (values up to 2.8), min cosine per token 0.99990; camera
# pose 0.017, points 0.0017.
BF16_TOKEN_TOL = 0.06
BF16_TOKEN_MIN_COSINE = 0.9995
BF16_HEAD_TOL = {"camera_pose": 0.05, "pts3d_in_other_view": 0.01, "pts3d_in_self_view": 0.01}


@pytest.mark.parametrize("suffix", ["", "_32x48"])
def test_bf16_model_against_the_float32_golden_outputs(tiny_dir, suffix):
    from workers.cut3r import load_model

    model = load_model(tiny_dir / "model.safetensors", tiny_dir / "config.json").set_precision("bf16")
    assert model.compute_dtype == torch.bfloat16 and model.patch_embed.proj.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.downstream_head.parameters())
    inputs = np.load(tiny_dir / f"inputs{suffix}.npz")
    ref = np.load(tiny_dir / f"outputs{suffix}.npz")
    out = run_fixture(model, inputs, debug=False)
    for name, tensor in (("camera_token", out.camera_token), ("patch_tokens", out.patch_tokens)):
        assert tensor.dtype == torch.bfloat16
        ours = tensor.transpose(0, 1).float().numpy()
        err = float(np.abs(ours - ref[name]).max())
        cosine = (ours * ref[name]).sum(-1) / np.linalg.norm(ours, axis=-1) / np.linalg.norm(ref[name], axis=-1)
        assert err <= BF16_TOKEN_TOL, f"{name}: max abs err {err:.3g}"
        assert cosine.min() >= BF16_TOKEN_MIN_COSINE, f"{name}: min cosine {cosine.min():.6f}"
        assert err > 1e-4, "bf16 should differ from float32 (is the model really bf16?)"
    for name, tol in BF16_HEAD_TOL.items():
        head = out.heads[name]
        assert head.dtype == torch.float32
        err = float(np.abs(head.transpose(0, 1).numpy() - ref[name]).max())
        assert err <= tol, f"{name}: max abs err {err:.3g} > {tol}"


def test_encoder_first_in_chunks_equals_the_step_by_step_encoder():
    """forward() encodes every frame before the recurrence, in chunks of any size: the same tokens, heads and state as
    running the encoder inside each step, for videos of different lengths and a masked view."""
    model = random_model(tiny_config(), seed=4)
    gen = torch.Generator().manual_seed(4)
    frames = torch.rand(3, 4, 3, 32, 48, generator=gen) * 2 - 1
    lengths = torch.tensor([4, 2, 3])
    img_mask = torch.ones(3, 4, dtype=torch.bool)
    img_mask[0, 2] = False
    with torch.inference_mode():
        state = model.initial_state(3)
        steps = []
        for i in range(4):  # the recurrence with the encoder inside the step, rows of ended videos left out
            rows = (lengths > i).nonzero().squeeze(1)
            out, sub = model.step(state.select(rows), frames[rows, i], img_mask=img_mask[rows, i], heads=True)
            state = state.scatter(rows, sub)
            steps.append((rows, out))
        for chunk in (1, 5, 64):
            seq = model(frames, lengths, img_mask=img_mask, heads=True, encoder_chunk=chunk)
            for i, (rows, out) in enumerate(steps):
                torch.testing.assert_close(seq.patch_tokens[rows, i], out.patch_tokens, rtol=0, atol=1e-5)
                torch.testing.assert_close(seq.heads["pts3d_in_other_view"][rows, i], out.heads["pts3d_in_other_view"],
                                           rtol=0, atol=1e-5)
            torch.testing.assert_close(seq.state.state_feat, state.state_feat, rtol=0, atol=1e-5)
            assert not seq.patch_tokens[1, 2:].any()
    with pytest.raises(ValueError, match="chunk"):
        model.encode_frames(frames, lengths, chunk=0)
    with pytest.raises(ValueError, match="image_size"):
        model.step(model.initial_state(1), enc_feat=torch.zeros(1, 6, 64))


def test_encoder_options_precision_compile_and_host_copies():
    model = random_model(tiny_config(), seed=5)
    frames = [torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(n)) * 2 - 1 for n in (3, 2)]
    fp32 = Cut3rEncoder(model).encode(frames, points=True)
    encoder = Cut3rEncoder(model, precision="bf16", encoder_chunk=2)
    assert encoder.compute_dtype == torch.bfloat16 and encoder.precision == "bf16"
    kept = encoder.encode(frames, points=True, keep_dtype=True)
    assert kept.patch_tokens.dtype == torch.bfloat16 and kept.points.dtype == torch.float32
    host = kept.to_host()  # on CPU: the same batch
    assert host is kept
    torch.testing.assert_close(kept.patch_tokens.float(), fp32.patch_tokens, rtol=0, atol=0.05)
    assert Cut3rEncoder(model, precision="auto").compute_dtype == torch.float32  # auto on CPU
    for bad in (dict(precision="fp16"), dict(compile="max"), dict(encoder_chunk=0)):
        with pytest.raises(ValueError):
            Cut3rEncoder(model, **bad)
