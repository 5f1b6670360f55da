"""Tokenizers with one small interface (``encode``, ``decode``, ``im_start_id``, ``im_end_id``, ``pad_id``,
``vocab_size``): Qwen2's from a local folder, or the tiny model's byte tokenizer built in code."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"


class ByteTokenizer:
    """UTF-8 bytes plus Qwen's three special tokens: the tiny model's tokenizer (built in code, nothing to load)."""

    SPECIALS = (END_OF_TEXT, IM_START, IM_END)

    def __init__(self) -> None:
        self.special_ids = {s: 256 + i for i, s in enumerate(self.SPECIALS)}
        self.vocab_size = 256 + len(self.SPECIALS)
        self.pad_id = self.special_ids[END_OF_TEXT]
        self.im_start_id = self.special_ids[IM_START]
        self.im_end_id = self.special_ids[IM_END]

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, part in enumerate(_split_specials(text, self.SPECIALS)):
            if part in self.special_ids and i % 2 == 1:
                ids.append(self.special_ids[part])
            else:
                ids.extend(part.encode("utf-8"))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        inverse = {v: k for k, v in self.special_ids.items()}
        out, buf = [], bytearray()
        for i in ids:
            if i in inverse:
                out.append(buf.decode("utf-8", errors="replace") + inverse[i])
                buf = bytearray()
            elif 0 <= i < 256:
                buf.append(i)
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)


def _split_specials(text: str, specials: Sequence[str]) -> list[str]:
    """Alternating [text, special, text, special, ...] (odd positions are special tokens)."""
    import re

    return re.split("(" + "|".join(re.escape(s) for s in specials) + ")", text)


class HFTokenizer:
    """A Hugging Face tokenizer from a local folder (Qwen2's), with the same small interface."""

    def __init__(self, folder: str | Path):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.im_start_id = self.tok.convert_tokens_to_ids(IM_START)
        self.im_end_id = self.tok.convert_tokens_to_ids(IM_END)
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else \
            self.tok.convert_tokens_to_ids(END_OF_TEXT)
        self.vocab_size = len(self.tok)

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)


def load_tokenizer(base: str) -> ByteTokenizer | HFTokenizer:
    return ByteTokenizer() if base == "tiny" else HFTokenizer(base)
