"""Trainable set, save → reload into a fresh base, checkpoint loaders with their key maps, VLM-3R export naming."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pipeline.core.errors import InputError
from pipeline.core.images import squash_rgb
from workers.trainer.tokenizer import ByteTokenizer
from workers.trainer.data import collate, encode_conversation, user_text
from workers.trainer.model import (LLAVA_VIDEO_KEY_MAP, ModelConfig, build_model, check_trainable, export_vlm3r,
                                   load_trainables, save_trainables)

RECORD = {"id": 0, "question": "How big is the room?", "options": None, "answer_text": "12.5"}


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _batch(d_spatial=768, frames=1, seed=0, features=False, d_clip=32):
    g = torch.Generator().manual_seed(seed)
    tok = ByteTokenizer()
    ids, labels = encode_conversation(tok, user_text(RECORD), "12.5")
    visual = {"vision_features": torch.randn(frames, 729, d_clip, generator=g)} if features else \
        {"pixel_values": torch.rand(frames, 3, 384, 384, generator=g) * 2 - 1}
    inputs = {"geometry_tokens": torch.randn(frames, 730, d_spatial, generator=g), **visual}
    return collate([(ids, labels, inputs), (ids[:-4] + ids[-3:], labels[:-4] + labels[-3:], inputs)], tok.pad_id)


def test_exactly_fusion_projector_and_lora_train():
    model = build_model(ModelConfig.tiny())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("fusion.", "projector.")) or ".lora_A." in n or ".lora_B." in n
                             for n in trainable)
    assert any(n.startswith("fusion.") for n in trainable) and any(n.startswith("projector.") for n in trainable)
    lora_layers = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable if ".lora_" in n}
    assert lora_layers == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "image_newline" in frozen
    assert any(n.startswith("vision_tower.") for n in frozen)
    assert any("embed_tokens" in n for n in frozen) and any("lm_head" in n for n in frozen)
    assert not any("lm_head" in n and ".lora_" in n for n in model.state_dict())
    counts = check_trainable(model)
    assert counts["trainable"] == sum(p.numel() for n, p in model.named_parameters() if n in trainable)
    model.image_newline.requires_grad_(True)          # a wrong freeze is caught, naming the parameter
    with pytest.raises(RuntimeError, match="image_newline"):
        check_trainable(model)


def test_lora_settings_are_upstreams_by_default():
    lora = build_model(ModelConfig.tiny(lora_r=128, lora_alpha=256)).lm.peft_config["default"]
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (128, 256, 0.05)


def test_save_then_reload_into_a_fresh_base_gives_the_same_loss(tmp_path):
    model = build_model(ModelConfig.tiny())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):                              # move the trainables away from their initialisation
        loss, _ = model(_batch())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        expected = model(_batch(seed=1))[0]
    save_trainables(model, tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {
        "adapter_model.safetensors", "adapter_config.json", "non_lora_trainables.safetensors"}
    fresh = build_model(ModelConfig.tiny()).eval()
    with torch.no_grad():
        before = fresh(_batch(seed=1))[0]
    load_trainables(fresh, tmp_path / "ckpt")
    with torch.no_grad():
        after = fresh(_batch(seed=1))[0]
    assert abs(float(before) - float(expected)) > 1e-4       # the training changed something ...
    torch.testing.assert_close(after, expected, rtol=0, atol=1e-6)   # ... and the reload restores all of it
    # The adapter folder is peft's own format: PeftModel loads it onto the bare language model.
    from peft import PeftModel

    bare = build_model(ModelConfig.tiny(), lora=False).lm
    peft_lm = PeftModel.from_pretrained(bare, str(tmp_path / "ckpt"))
    ours = {k: v for k, v in model.lm.state_dict().items() if ".lora_" in k}
    theirs = peft_lm.state_dict()
    assert ours and all(torch.equal(theirs[k], v) for k, v in ours.items())
    other = build_model(ModelConfig.tiny(lora_r=4, lora_alpha=8))
    with pytest.raises(InputError, match="adapter"):
        load_trainables(other, tmp_path / "ckpt")


def _qwen2_dict(model) -> dict:
    cfg = model.causal_lm.config.to_dict()
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def test_llava_video_checkpoint_loads_through_the_key_map(tmp_path):
    """A LLaVA-Video/VLM-3R-named checkpoint (written from a tiny model with the inverse key map) rebuilds it."""
    config = ModelConfig.tiny(vision_features=True, tiny_seed=5)
    source = build_model(config, lora=False)
    inverse = {ours: theirs for theirs, ours in LLAVA_VIDEO_KEY_MAP}
    state = {}
    for key, value in source.state_dict().items():
        for ours, theirs in sorted(inverse.items(), key=lambda kv: -len(kv[0])):
            if key.startswith(ours):
                state[theirs + key[len(ours):]] = value.contiguous()
                break
    assert "model.mm_projector.0.weight" in state and "model.fusion_block.clip_norm.weight" in state
    assert "model.layers.0.self_attn.q_proj.weight" in state and "lm_head.weight" in state
    folder = tmp_path / "llava_video"
    folder.mkdir()
    save_file(state, str(folder / "model-00001-of-00001.safetensors"))
    (folder / "config.json").write_text(json.dumps({**_qwen2_dict(source), "model_type": "llava_qwen",
                                                    "mm_vision_tower": "google/siglip-so400m-patch14-384"}))
    loaded = build_model(ModelConfig(base=str(folder), vision_features=True, fusion_heads=2, lora_r=8, lora_alpha=16),
                         lora=False)
    ours = loaded.state_dict()
    for key, value in source.state_dict().items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=0, msg=key)


def _onevision_folder(tmp_path, source):
    """A Hugging Face LLaVA-OneVision folder written from a tiny model (without its fusion block); its state."""
    state = {}
    for key, value in source.state_dict().items():
        if key.startswith("fusion."):
            continue                                  # stock OneVision has no fusion block
        for ours, theirs in (("vision_tower.", "model.vision_tower."), ("projector.", "model.multi_modal_projector."),
                             ("image_newline", "model.image_newline"), ("lm.model.", "model.language_model."),
                             ("lm.lm_head.", "lm_head.")):
            if key.startswith(ours):
                state[theirs + key[len(ours):]] = value.contiguous()
                break
    folder = tmp_path / "onevision"
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))
    vision = source.vision_tower.config.to_dict()
    (folder / "config.json").write_text(json.dumps({"model_type": "llava_onevision", "text_config": _qwen2_dict(source),
                                                    "vision_config": vision}))
    return folder, state


def test_hf_llava_onevision_folder_loads(tmp_path):
    config = ModelConfig.tiny(tiny_seed=7)
    source = build_model(config, lora=False)
    folder, state = _onevision_folder(tmp_path, source)
    loaded = build_model(ModelConfig(base=str(folder), fusion_heads=2, lora_r=8, lora_alpha=16))
    check_trainable(loaded)
    ours = {k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in loaded.state_dict().items()}
    for key, value in source.state_dict().items():
        if not key.startswith("fusion."):
            torch.testing.assert_close(ours[key], value, rtol=0, atol=0, msg=key)
    half = build_model(ModelConfig(base=str(folder), fusion_heads=2, lora_r=8, lora_alpha=16), dtype=torch.bfloat16)
    assert half.causal_lm.lm_head.weight.dtype == torch.bfloat16
    assert half.vision_tower.embeddings.patch_embedding.weight.dtype == torch.bfloat16
    assert half.fusion.out_proj.weight.dtype == torch.float32 and torch.get_default_dtype() == torch.float32
    state.pop("lm_head.weight")
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(InputError, match="lm.lm_head.weight"):
        build_model(ModelConfig(base=str(folder), fusion_heads=2, lora_r=8, lora_alpha=16))


def test_vision_features_of_a_llava_folder_come_from_its_tower_alone(tmp_path, monkeypatch):
    from workers.trainer import model as model_module
    from workers.trainer.vision import vision_encoder

    source = build_model(ModelConfig.tiny(tiny_seed=7), lora=False).eval()
    folder, _ = _onevision_folder(tmp_path, source)
    monkeypatch.setattr(model_module, "_folder_parts", lambda *a, **k: pytest.fail("built the language model"))
    encode, fingerprint = vision_encoder(str(folder))
    frame = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    pixels = (torch.from_numpy(squash_rgb(frame, 384)[None]).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5
    with torch.no_grad():
        expect = source.vision_features(pixels)
    torch.testing.assert_close(torch.from_numpy(encode([frame])), expect, rtol=0, atol=0)
    assert fingerprint == model_module.model_fingerprint(ModelConfig(base=str(folder)))
    qwen = tmp_path / "qwen2"
    qwen.mkdir()
    (qwen / "config.json").write_text(json.dumps({**_qwen2_dict(source), "model_type": "qwen2"}))
    with pytest.raises(InputError, match="has no vision tower"):
        vision_encoder(str(qwen))


def test_export_uses_vlm3r_names(tmp_path):
    model = build_model(ModelConfig.tiny())
    files = export_vlm3r(model, tmp_path / "export")
    names = set(torch.load(files[-1], weights_only=True))
    assert "base_model.model.model.fusion_block.cross_attention.in_proj_weight" in names
    assert {"base_model.model.model.mm_projector.0.weight", "base_model.model.model.mm_projector.2.bias"} <= names
    assert all(n.startswith(("base_model.model.model.fusion_block.", "base_model.model.model.mm_projector."))
               for n in names)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "export" / "adapter_model.safetensors"), "pt") as fh:
        keys = list(fh.keys())
    assert keys and all(k.startswith("base_model.model.model.layers.") and ".lora_" in k for k in keys)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    losses, grads = [], []
    for checkpointing in (False, True):
        model = build_model(ModelConfig.tiny(fusion_dropout=0.0, lora_dropout=0.0,
                                             gradient_checkpointing=checkpointing)).train()
        loss, _ = model(_batch())
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert model.causal_lm.model.gradient_checkpointing
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=1e-6)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_base_with_tied_embeddings_loads_without_an_lm_head_tensor(tmp_path):
    """Qwen2 0.5B/1.5B-based LLaVA-OneVision/LLaVA-Video folders tie lm_head to the embedding and do not store it."""
    config = ModelConfig.tiny(vision_features=True, tiny_seed=3)
    source = build_model(config, lora=False)
    state = {}
    for key, value in source.state_dict().items():
        for ours, theirs in (("projector.", "model.multi_modal_projector."), ("image_newline", "model.image_newline"),
                             ("lm.model.", "model.language_model.")):
            if key.startswith(ours):
                state[theirs + key[len(ours):]] = value.contiguous()
                break
    folder = tmp_path / "tied"
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llava_onevision", "text_config": {**_qwen2_dict(source), "tie_word_embeddings": True},
        "vision_config": {"hidden_size": source.d_clip}}))
    loaded = build_model(ModelConfig(base=str(folder), vision_features=True, fusion_heads=2, lora_r=8, lora_alpha=16))
    check_trainable(loaded)
    embed = state["model.language_model.embed_tokens.weight"]
    torch.testing.assert_close(loaded.causal_lm.lm_head.weight, embed, rtol=0, atol=0)
    torch.testing.assert_close(loaded.causal_lm.get_input_embeddings().weight, embed, rtol=0, atol=0)
