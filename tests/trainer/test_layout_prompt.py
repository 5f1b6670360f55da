"""Token layout (pool → row newlines → splice at <image>) and the qwen_1_5 prompt with its label masks."""
import pytest
import torch

from workers.trainer.tokenizer import ByteTokenizer

from workers.trainer.data import collate, encode_conversation, time_instruction, user_text
from workers.trainer.fusion import pool_2x2
from workers.trainer.model import (IGNORE_INDEX, IMAGE_TOKEN_INDEX, TOKENS_PER_FRAME, ModelConfig, add_row_newlines,
                                   build_model)

RECORD = {"id": 3, "question": "How many chair(s) are in this room?", "options": None, "answer_text": "4",
          "ground_truth": "4"}


def test_row_newlines_follow_each_row_of_each_frame():
    frames, grid, channels = 2, 14, 3
    pooled = torch.arange(frames * grid * grid * channels, dtype=torch.float32).reshape(frames, grid * grid, channels)
    newline = torch.tensor([-1.0, -2.0, -3.0])
    out = add_row_newlines(pooled, newline)
    assert out.shape == (frames, grid * (grid + 1), channels) == (2, TOKENS_PER_FRAME, 3)
    for f in range(frames):
        for r in range(grid):
            for c in range(grid):   # token (r, c) sits at r * 15 + c; the newline closes each row at r * 15 + 14
                assert torch.equal(out[f, r * 15 + c], pooled[f, r * grid + c])
            assert torch.equal(out[f, r * 15 + 14], newline)
    with pytest.raises(ValueError, match="14x14"):
        add_row_newlines(torch.zeros(1, 195, 3), newline)


def test_encode_frames_is_fusion_projector_pool_newline_by_hand():
    torch.manual_seed(0)
    model = build_model(ModelConfig.tiny(vision_features=True, d_spatial=8)).eval()
    features, geometry = torch.randn(2, 729, model.d_clip), torch.randn(2, 730, 8)
    with torch.no_grad():
        got = model.encode_frames(geometry, vision_features=features)
        fused = model.fusion(features, geometry)
        h = model.projector.linear_2(torch.nn.functional.gelu(model.projector.linear_1(fused)))
        pooled = pool_2x2(h).reshape(2, 14, 14, -1)
        expect = torch.cat([pooled, model.image_newline.expand(2, 14, 1, -1)], dim=2).reshape(2, 210, -1)
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-6)


def test_splice_puts_each_video_at_its_image_placeholder_and_masks_it():
    torch.manual_seed(0)
    model = build_model(ModelConfig.tiny(vision_features=True, d_spatial=8)).eval()
    tok = ByteTokenizer()
    rows = [encode_conversation(tok, user_text(RECORD), "4"), encode_conversation(tok, "<image>\nHi", "12")]
    videos = [torch.randn(2, 210, 64), torch.randn(1, 210, 64)]       # 2 frames, then 1 frame
    geometry = {"geometry_tokens": torch.zeros(1, 730, 8)}
    batch = collate([(i, lab, geometry) for i, lab in rows], tok.pad_id)
    with torch.no_grad():
        embeds, mask, labels = model.splice(batch["input_ids"], batch["attention_mask"], batch["labels"],
                                            torch.cat(videos), [2, 1])
        table = model.causal_lm.get_input_embeddings().weight
    for row, ((ids, labs), video) in enumerate(zip(rows, videos)):
        p = ids.index(IMAGE_TOKEN_INDEX)
        n = video.shape[0] * 210
        length = len(ids) - 1 + n
        assert int(mask[row].sum()) == length and mask[row, :length].all()
        torch.testing.assert_close(embeds[row, :p], table[torch.tensor(ids[:p])])
        torch.testing.assert_close(embeds[row, p:p + n], video.reshape(n, -1))
        torch.testing.assert_close(embeds[row, p + n:length], table[torch.tensor(ids[p + 1:])])
        assert (labels[row, p:p + n] == IGNORE_INDEX).all()
        assert labels[row, :length].tolist() == labs[:p] + [IGNORE_INDEX] * n + labs[p + 1:]
        assert (labels[row, length:] == IGNORE_INDEX).all() and (embeds[row, length:] == 0).all()


def test_qwen_1_5_prompt_and_answer_only_labels():
    tok = ByteTokenizer()
    ids, labels = encode_conversation(tok, user_text(RECORD), "4")
    text = tok.decode([i if i != IMAGE_TOKEN_INDEX else tok.encode("#")[0] for i in ids])
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n#\n"
                    "These are frames of a video.\nHow many chair(s) are in this room?\n"
                    "Please answer the question using a single word or phrase.<|im_end|>\n"
                    "<|im_start|>assistant\n4<|im_end|>\n")
    assert ids.count(IMAGE_TOKEN_INDEX) == 1
    learned = [lab for lab in labels if lab != IGNORE_INDEX]
    assert learned == tok.encode("4") + [tok.im_end_id]
    assert labels[-3:] == [tok.encode("4")[0], tok.im_end_id, IGNORE_INDEX]


def test_upstream_masking_learns_the_assistant_turn_and_every_separator():
    tok = ByteTokenizer()
    ids, labels = encode_conversation(tok, user_text(RECORD), "4", masking="upstream")
    head = tok.encode("<|im_start|>assistant\n")
    start = len(ids) - len(head) - 3
    assert labels[start:] == ids[start:]                     # the whole assistant turn
    separators = {tok.im_start_id, tok.im_end_id, tok.encode("\n")[0]}
    for i, (token, lab) in enumerate(zip(ids[:start], labels[:start])):
        assert lab == (token if token in separators else IGNORE_INDEX), i
    with pytest.raises(ValueError, match="masking"):
        encode_conversation(tok, "<image>", "4", masking="everything")


def test_time_instruction_matches_llava_video_and_goes_before_the_question():
    text = time_instruction(12.3456, [0.0, 4.5, 9.001])
    assert text == ("The video lasts for 12.35 seconds, and 3 frames are uniformly sampled from it. These frames are "
                    "located at 0.00s,4.50s,9.00s.Please answer the following questions related to this video.")
    user = user_text(RECORD, {"duration_s": 12.3456, "frame_times_s": [0.0, 4.5, 9.001]})
    assert user.startswith("<image>\n" + text + "\n\nThese are frames of a video.")
    assert user.count("<image>") == 1


def test_a_local_hugging_face_tokenizer_gives_the_same_prompt_and_labels(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from workers.trainer.tokenizer import HFTokenizer

    # A byte-level BPE without merges and Qwen's special tokens, saved as a local folder like Qwen2's.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    bpe = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<|endoftext|>").save_pretrained(str(tmp_path / "tok"))
    hf, byte = HFTokenizer(tmp_path / "tok"), ByteTokenizer()
    ids, labels = encode_conversation(hf, user_text(RECORD), "4")
    ref_ids, _ = encode_conversation(byte, user_text(RECORD), "4")
    assert len(ids) == len(ref_ids) and ids.index(IMAGE_TOKEN_INDEX) == ref_ids.index(IMAGE_TOKEN_INDEX)
    assert hf.decode([i for i in ids if i >= 0]) == byte.decode([i for i in ref_ids if i >= 0])
    assert hf.decode([lab for lab in labels if lab != IGNORE_INDEX]) == "4<|im_end|>"
    assert ids.count(hf.im_start_id) == 3 and ids.count(hf.im_end_id) == 3
