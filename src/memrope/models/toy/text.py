"""A weight-free text encoder for the embedded default: each word maps to a fixed random vector.

Deterministic across machines (seeded from a SHA-256 of the word), so the same prompt always
conditions the model the same way, and different prompts differ. Output follows the umT5
convention: [B, text_len, text_dim], zero past each prompt's length.
"""

from __future__ import annotations

import hashlib
import re

import torch

from ...world.palette import BACKGROUND_COLOURS, OBJECT_COLOURS
from ...world.prompts import PATTERN_WORDS
from ...world.world import SHAPES, SIZE_FRACTIONS, SPEED_BANDS

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
    """The hash encoder with the toy world's grammar: each word also carries the vector of its role.

    Why roles: Wan's cross-attention has no positions on the text side (a real umT5 output is
    already contextual), so plain hashed words are a bag of words: "a red disc and a blue square"
    and "a blue disc and a red square" would condition the model identically, and it could only
    learn the average colour of the two objects (the first trained default did exactly that:
    magenta where red and blue were asked). Here a size, colour or shape word of the k-th object
    phrase gets the vector of role ``object-k`` added, background words ``background``, the speed
    word ``speed``; filler and unknown words get none. This is what a contextual encoder provides
    for free, made explicit for a closed vocabulary. Commas and full stops separate words, so
    ``"..., fast"`` and ``"... fast"`` condition the model identically.
    """

    def __init__(self, text_len: int, text_dim: int, roles: bool = True):
        super().__init__(text_len, text_dim)
        self.roles = roles  # False: the first default's encoder (words only), kept to replay its training
        self.identity = f"world-words-{'roles-v2' if roles else 'v1'}-{text_len}x{text_dim}"

    def encode(self, prompts: list[str]) -> torch.Tensor:
        words = [[w for w in _WORD_SEPARATORS.split(p.lower()) if w] for p in prompts]
        out = super().encode([" ".join(w) for w in words])
        self.truncated = [p for p, w in zip(prompts, words, strict=True) if len(w) > self.text_len]
        for i, prompt_words in enumerate(words if self.roles else []):
            for j, role in enumerate(word_roles(prompt_words[: self.text_len])):
                if role is not None:
                    out[i, j] += self._word(ROLE_PREFIX + role)
        return out


ROLE_PREFIX = "\x00role:"
"""Prefix of a role's hash key; the NUL byte keeps role vectors apart from any word's vector."""


def word_roles(words: list[str]) -> list[str | None]:
    """Role of each word: ``object-k`` (k = 1-based object phrase), ``background``, ``speed`` or None.

    An object phrase is [size] colour shape; it ends at its shape word, so the next size or colour
    word starts phrase k + 1. Words outside the world's vocabulary (and filler) have no role.
    """
    roles: list[str | None] = []
    phrase = 1
    for word in words:
        if word in SIZE_FRACTIONS or word in OBJECT_COLOURS:
            roles.append(f"object-{phrase}")
        elif word in SHAPES:
            roles.append(f"object-{phrase}")
            phrase += 1
        elif word in BACKGROUND_COLOURS or word in PATTERN_WORDS:
            roles.append("background")
        elif word in SPEED_BANDS:
            roles.append("speed")
        else:
            roles.append(None)
    return roles


def world_text_encoder(identity: str, text_len: int, text_dim: int) -> WorldTextEncoder:
    """The encoder a weights file was trained with (its recorded ``identity``); a clear error if unknown."""
    for roles in (True, False):
        encoder = WorldTextEncoder(text_len, text_dim, roles=roles)
        if encoder.identity == identity:
            return encoder
    known = [WorldTextEncoder(text_len, text_dim, roles=r).identity for r in (True, False)]
    raise ValueError(f"weights were trained with text encoder {identity!r}, which this memrope does not "
                     f"provide (known: {known}); retrain with `python -m memrope.world.train`")
