"""On-disk cache of prompt embeddings, so a generation run never needs umT5 in memory.

One safetensors file per (encoder identity, prompt), named by the sha256 of both, holding the embedding
in bf16 (Wan runs umT5 in bf16 anyway; ~4 MB at most per prompt, much less because rows past the prompt's
true length are all zero and are not stored). Files are written to a temporary name and renamed into
place, so a crash never leaves a half-written entry that a later run would trust.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

CACHE_FORMAT = "memrope-prompt-embedding-v1"
CACHE_DTYPE = torch.bfloat16
_SUFFIX = ".safetensors"
_TENSOR = "embedding"


class TextEncoder(Protocol):
    identity: str
    text_len: int
    text_dim: int

    def encode(self, prompts: list[str]) -> torch.Tensor: ...

    def close(self) -> None: ...


class PromptEmbeddingCache:
    """Embeddings ``[text_len, text_dim]`` of one encoder identity, stored under ``directory``."""

    def __init__(self, directory: str | Path, identity: str) -> None:
        if not identity:
            raise ValueError("PromptEmbeddingCache needs a non-empty encoder identity")
        self.directory = Path(directory)
        self.identity = identity

    def key(self, prompt: str) -> str:
        """sha256 of (identity, prompt): the same prompt under another encoder is another entry."""
        return hashlib.sha256(f"{self.identity}\0{prompt}".encode()).hexdigest()

    def path(self, prompt: str) -> Path:
        return self.directory / f"{self.key(prompt)}{_SUFFIX}"

    def __contains__(self, prompt: str) -> bool:
        return self.get(prompt) is not None

    def get(self, prompt: str) -> torch.Tensor | None:
        """The cached float32 ``[text_len, text_dim]`` embedding, or None when absent or unreadable."""
        path = self.path(prompt)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                stored = f.get_tensor(_TENSOR)  # [n_tokens, text_dim]
        except (SafetensorError, OSError):
            return None  # unreadable entry: treated as a miss and rewritten
        if (
            meta.get("format") != CACHE_FORMAT
            or meta.get("identity") != self.identity
            or meta.get("prompt") != prompt
        ):
            return None
        text_len = int(meta["text_len"])
        out = torch.zeros(text_len, stored.shape[1], dtype=torch.float32)
        out[: stored.shape[0]] = stored.float()
        return out

    def put(self, prompt: str, embedding: torch.Tensor) -> Path:
        """Store ``embedding [text_len, text_dim]`` atomically; trailing all-zero rows are not written."""
        if embedding.ndim != 2:
            raise ValueError(f"embedding must be [text_len, text_dim], got {tuple(embedding.shape)}")
        nonzero = (embedding != 0).any(dim=1).nonzero()
        n_tokens = int(nonzero[-1]) + 1 if len(nonzero) else 0
        stored = embedding[:n_tokens].to(CACHE_DTYPE).contiguous().cpu()  # [n_tokens, text_dim]
        meta = {
            "format": CACHE_FORMAT,
            "identity": self.identity,
            "prompt": prompt,
            "text_len": str(embedding.shape[0]),
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.path(prompt)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{target.stem}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file({_TENSOR: stored}, tmp, metadata=meta)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target


def encode_prompts_cached(
    prompts: Sequence[str],
    cache_dir: str | Path,
    encoder_factory: Callable[[], TextEncoder],
    identity: str | None = None,
) -> torch.Tensor:
    """Embeddings ``[B, text_len, text_dim]`` (float32, bf16-exact) of ``prompts``, encoding only misses.

    ``encoder_factory`` is called at most once, and only if some prompt is not cached; the encoder is
    closed right after. ``identity`` defaults to ``encoder_factory.identity`` (see
    :class:`memrope.models.text.UMT5EncoderFactory`), which must be known without loading the encoder.
    Cached and freshly encoded prompts give identical values because both pass through bf16.
    """
    if isinstance(prompts, str) or not prompts:
        raise ValueError("encode_prompts_cached takes a non-empty list of prompt strings")
    identity = identity or getattr(encoder_factory, "identity", None)
    if not identity:
        raise TypeError("encoder_factory has no .identity; pass identity= explicitly")
    cache = PromptEmbeddingCache(cache_dir, identity)
    found = {p: cache.get(p) for p in dict.fromkeys(prompts)}
    missing = [p for p, e in found.items() if e is None]
    if missing:
        encoder = encoder_factory()
        try:
            fresh = encoder.encode(missing)  # [M, text_len, text_dim]
        finally:
            encoder.close()
        for prompt, emb in zip(missing, fresh, strict=True):
            cache.put(prompt, emb)
            found[prompt] = emb.to(CACHE_DTYPE).float()
    shapes = {tuple(e.shape) for e in found.values()}
    if len(shapes) != 1:
        raise ValueError(f"cached embeddings disagree in shape {sorted(shapes)}; clear {cache_dir}")
    return torch.stack([found[p] for p in prompts])  # [B, text_len, text_dim]
