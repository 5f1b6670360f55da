"""CUT3R inference of our own: exact (float32 parity with the official code), batched, token-only when asked.

Public API (what the extraction stage uses)::

    from workers.cut3r import (Cut3rConfig, Cut3rEncoder, PreprocessConfig, load_model, preprocess_frames,
                               random_model, tiny_config, full_config)

    model = load_model("cut3r_512_dpt_4_64.pth")                  # official file: config from args.model
    model = load_model("model.safetensors", "config.json")        # safetensors + config JSON
    model = random_model(tiny_config(), seed=0)                    # demo / tests

    frames = preprocess_frames(uint8_frames)                       # [T,H,W,3] uint8 -> [T,3,432,432] float32
    encoder = Cut3rEncoder(model, device="cuda")                   # bf16 autocast on CUDA, fp32 on CPU, fused attention
    out = encoder.encode([frames_a, frames_b, frames_c])           # B videos of different lengths, in lock-step
    out.camera_tokens   # [B,T,1,768]   (frames past a video's length are zeros; out.lengths [B])
    out.patch_tokens    # [B,T,729,768] row-major patches (index = y*27 + x)
    encoder.encode(frames_btchw, lengths, points=True).points      # + per-patch 3D points [B,T,729,3]
    #   and .camera_poses [B,T,4,4]: each frame's camera-to-world, both in the first frame's camera

Lower level: :class:`Cut3rModel` (``model(frames [B,T,3,H,W], lengths, heads=..., img_mask=, update=, reset=)`` and
``model.step(state, images [B,3,H,W], ...)`` for one frame), :func:`read_checkpoint`, :func:`load_manifest`,
:func:`expected_shapes`, :func:`save_safetensors`. Conventions are documented in ``workers/cut3r/README.md``.
"""
from workers.cut3r.checkpoint import (Checkpoint, Cut3rCheckpointError, Manifest, expected_shapes, load_manifest,
                                      load_model, model_from_checkpoint, read_checkpoint, save_safetensors)
from workers.cut3r.config import Cut3rConfig, Cut3rConfigError, full_config, parse_model_string, tiny_config
from workers.cut3r.encoder import Cut3rEncoder, EncodedBatch, patch_points, random_model
from workers.cut3r.model import HEAD_OUTPUTS, Cut3rModel, RecurrentState, SequenceOutput, StepOutput
from workers.cut3r.preprocess import PreprocessConfig, preprocess_frames

__all__ = [
    "Checkpoint", "Cut3rCheckpointError", "Cut3rConfig", "Cut3rConfigError", "Cut3rEncoder", "Cut3rModel",
    "EncodedBatch", "HEAD_OUTPUTS", "Manifest", "PreprocessConfig", "RecurrentState", "SequenceOutput", "StepOutput",
    "expected_shapes", "full_config", "load_manifest", "load_model", "model_from_checkpoint", "parse_model_string",
    "patch_points", "preprocess_frames", "random_model", "read_checkpoint", "save_safetensors", "tiny_config",
]
