"""``vlm3r-data cut3r``: run CUT3R on inputs in the golden-fixture format and write its outputs.

Inputs (``.npz``): ``frames`` float32 [F,B,3,H,W] normalised to [-1, 1] and optional per-view flags ``img_mask``,
``update``, ``reset`` bool [F,B] (``true_shape`` [F,B,2] is checked against the frames; ``ray_mask`` must be False).
Outputs (``.npz``, written atomically), all [F,B,...] float32: ``camera_token``, ``patch_tokens`` and, unless
``--tokens-only``, ``pts3d_in_self_view``, ``conf_self``, ``rgb``, ``camera_pose``, ``pts3d_in_other_view``, ``conf``;
with ``--debug`` also the ``dbg_*`` intermediates of the fixture.
"""
from __future__ import annotations

import argparse
import sys

HELP = "run the CUT3R model on fixture-format inputs (frames + view flags) and write its outputs (.npz)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--weights", help="model weights (.safetensors or a plain state dict); needs --config")
    weights.add_argument("--checkpoint", help="official checkpoint (.pth with 'model' and 'args')")
    parser.add_argument("--config", help="config JSON (fixture layout with constructor_kwargs, or a manifest)")
    parser.add_argument("--manifest", help="also check the weights' keys and shapes against this manifest JSON")
    parser.add_argument("--inputs", required=True, help="inputs .npz (frames [F,B,3,H,W], img_mask, update, reset)")
    parser.add_argument("--out", required=True, help="outputs .npz to write")
    parser.add_argument("--tokens-only", action="store_true", help="skip the prediction heads")
    parser.add_argument("--debug", action="store_true", help="also write the dbg_* intermediates")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="fp32, or bf16 autocast (CUDA)")
    parser.add_argument("--attention", choices=("fused", "eager"), default="fused")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from pipeline.core.atomic import atomic_open
    from workers.cut3r import Cut3rCheckpointError, Cut3rConfigError, load_model

    if args.weights and not args.config:
        print("vlm3r-data cut3r: --weights needs --config", file=sys.stderr)
        return 2
    try:
        model = load_model(args.weights or args.checkpoint, args.config, device=args.device, manifest=args.manifest)
        inputs = _read_inputs(args.inputs)
    except (Cut3rCheckpointError, Cut3rConfigError, ValueError, OSError) as exc:
        print(f"vlm3r-data cut3r: {exc}", file=sys.stderr)
        return 1
    model.set_attention(args.attention)

    frames = torch.from_numpy(inputs["frames"]).transpose(0, 1).to(args.device)  # [B,F,3,H,W]
    flags = {k: torch.from_numpy(inputs[k]).T.to(args.device) for k in ("img_mask", "update", "reset") if k in inputs}
    autocast = torch.autocast(device_type=frames.device.type, dtype=torch.bfloat16,
                              enabled=args.precision == "bf16")
    with torch.inference_mode(), autocast:
        out = model(frames, heads=not args.tokens_only, debug=args.debug, **flags)

    def fb(x: torch.Tensor) -> np.ndarray:  # [B,F,...] -> [F,B,...] float32
        return x.transpose(0, 1).float().cpu().numpy()

    arrays = {"camera_token": fb(out.camera_token), "patch_tokens": fb(out.patch_tokens)}
    arrays.update({k: fb(v) for k, v in out.heads.items()})
    if args.debug:
        for k, v in out.debug.items():
            # dec_layers is [B,F,depth,1+N,C]; the fixture stores [F,depth,B,1+N,C]
            arrays["dbg_" + k] = v.permute(1, 2, 0, 3, 4).float().cpu().numpy() if k == "dec_layers" else fb(v)
        init = model.initial_state(1)
        arrays["dbg_state_init"] = init.state_feat.float().cpu().numpy()
        arrays["dbg_mem_init"] = init.mem.float().cpu().numpy()
        arrays["dbg_state_pos"] = model.state_positions().numpy()
        p = model.cfg.patch_size
        h, w = inputs["frames"].shape[-2:]
        arrays["dbg_patch_pos"] = np.stack(np.meshgrid(np.arange(h // p), np.arange(w // p), indexing="ij"),
                                           -1).reshape(-1, 2).astype(np.int64)
    with atomic_open(args.out, "wb") as fh:
        np.savez(fh, **arrays)
    n_frames, n_videos = inputs["frames"].shape[:2]
    print(f"cut3r: {n_frames} frames x {n_videos} videos -> {args.out} ({', '.join(sorted(arrays))})")
    return 0


def _read_inputs(path: str) -> dict:
    import numpy as np

    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    if "frames" not in arrays:
        raise ValueError(f"{path}: no 'frames' array")
    frames = arrays["frames"].astype(np.float32, copy=False)
    if frames.ndim != 5 or frames.shape[2] != 3:
        raise ValueError(f"{path}: frames must be [F,B,3,H,W], got {frames.shape}")
    f, b, _, h, w = frames.shape
    out = {"frames": frames}
    for key in ("img_mask", "update", "reset"):
        if key in arrays:
            flag = arrays[key].astype(bool)
            if flag.shape != (f, b):
                raise ValueError(f"{path}: {key} must be [F,B]=[{f},{b}], got {flag.shape}")
            out[key] = flag
    if "ray_mask" in arrays and arrays["ray_mask"].any():
        raise ValueError(f"{path}: ray-map inputs (ray_mask=True) are not supported")
    if "true_shape" in arrays and not (arrays["true_shape"].reshape(-1, 2) == (h, w)).all():
        raise ValueError(f"{path}: true_shape differs from the frames' size {h}x{w}")
    return out
