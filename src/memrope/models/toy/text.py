"""A weight-free text encoder for the embedded default: each word maps to a fixed random vector.

Deterministic across machines (seeded from a SHA-256 of the word), so the same prompt always
conditions the model the same way, and different prompts differ. Output follows the umT5
convention: [B, text_len, text_dim], zero past each prompt's length.
"""

from __future__ import annotations

import hashlib
import re

import torch

WORD_SEED_BYTES = 8  # bytes of the word's SHA-256 used as its generator seed
_WORD_SEPARATORS = re.compile(r"[\s,.]+")


class HashTextEncoder:
    def __init__(self, text_len: int, text_dim: int):
        if text_len < 1 or text_dim < 1:
            raise ValueError("HashTextEncoder: text_len and text_dim must be >= 1")
        self.text_len, self.text_dim = text_len, text_dim
        self.identity = f"hash-words-v1-{text_len}x{text_dim}"
        self.truncated: list[str] = []  # prompts cut to text_len words by the last encode()

    def _word(self, word: str) -> torch.Tensor:
        digest = hashlib.sha256(word.encode("utf-8")).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:WORD_SEED_BYTES], "little") >> 1)
        return torch.randn(self.text_dim, generator=gen)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(prompts), self.text_len, self.text_dim)
        self.truncated = []
        for i, prompt in enumerate(prompts):
            words = prompt.lower().split()
            if len(words) > self.text_len:
                self.truncated.append(prompt)
            for j, word in enumerate(words[: self.text_len]):
                out[i, j] = self._word(word)
        return out


class WorldTextEncoder(HashTextEncoder):
    """The hash encoder with the toy world's tokenisation: commas and full stops separate words.

    So ``"..., fast"`` and ``"... fast"`` condition the trained default model identically (the
    world's prompt parser reads them the same way).
    """

    def __init__(self, text_len: int, text_dim: int):
        super().__init__(text_len, text_dim)
        self.identity = f"world-words-v1-{text_len}x{text_dim}"

    def encode(self, prompts: list[str]) -> torch.Tensor:
        words = [" ".join(w for w in _WORD_SEPARATORS.split(p.lower()) if w) for p in prompts]
        out = super().encode(words)
        self.truncated = [prompts[words.index(w)] for w in self.truncated]
        return out
