"""Which scaled-dot-product-attention kernel the transformer's passes prefer.

PyTorch's SDPA picks a kernel by fixed rules; on a given GPU another one can be faster at the shapes
a stream uses (cuDNN attention on Hopper, FlashAttention elsewhere) and on a CPU the fused kernel
beats the math one by 2x at tiny shapes. On a GPU a choice only sets the *priority*: every backend
stays allowed behind the preferred one, so a call the preferred kernel cannot serve (an odd head
size, a mask, the VAE's attention on the decode thread, which sees the same process-wide setting)
still runs. The CPU ignores priorities, so there a choice allows that kernel and the math fallback.
``auto`` times each backend that accepts the stream's own shapes and layouts once, at the start.

Outputs of different kernels agree to rounding, not bit for bit: a resumed stream should use the
backend it started with for bit-exact continuation (``auto`` may time differently on resume).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

KERNELS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}
CHOICES = ("default", "auto", *KERNELS)
"""``default``: SDPA's own rules; ``auto``: the fastest measured; else that kernel first."""
AUTO_REPEATS = 5  # timed calls per kernel and shape after one warm-up call


@dataclass(frozen=True)
class AttentionShape:
    """One attention call of a pass: queries [B, H, Lq, D] against keys/values [B, H, Lk, D], laid
    out as the model passes them (transposed views of [B, L, H, D])."""

    batch: int
    heads: int
    head_dim: int
    query_tokens: int
    key_tokens: int

    def tensors(self, device: torch.device, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        out = []
        for tokens in (self.query_tokens, self.key_tokens, self.key_tokens):
            x = torch.randn(self.batch, tokens, self.heads, self.head_dim, generator=gen)
            out.append(x.to(device=device, dtype=dtype).transpose(1, 2))
        return tuple(out)


@dataclass(frozen=True)
class AttentionChoice:
    """The kernel preferred by a stream's passes (``name``), and how ``auto`` arrived at it."""

    name: str = "default"
    timings_ms: dict[str, float] = field(default_factory=dict)  # auto: mean ms per pass's calls, per kernel
    device_type: str = "cuda"

    def __post_init__(self) -> None:
        if self.name not in CHOICES or self.name == "auto":
            raise ValueError(f"attention backend must be one of {', '.join(CHOICES)}, got {self.name!r}")

    @contextlib.contextmanager
    def preferred(self) -> Iterator[None]:
        """Run the enclosed passes with this kernel first in SDPA's priority (all others behind it)."""
        if self.name == "default":
            yield
            return
        first = KERNELS[self.name]
        if self.device_type == "cpu":  # the CPU picks its fused kernel whatever the priority: allow
            allowed = [first] if first == SDPBackend.MATH else [first, SDPBackend.MATH]  # only this one
            with sdpa_kernel(allowed):
                yield
            return
        with sdpa_kernel([first, *(k for k in KERNELS.values() if k != first)], set_priority=True):
            yield


def accepts(kernel: str, shapes: list[AttentionShape], device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``kernel`` alone serves every shape (SDPA raises when no allowed kernel can)."""
    try:
        with sdpa_kernel([KERNELS[kernel]]):
            for shape in shapes:
                F.scaled_dot_product_attention(*shape.tensors(device, dtype))
    except RuntimeError:
        return False
    return True


def choose(name: str, shapes: list[AttentionShape], device: torch.device, dtype: torch.dtype,
           repeats: int = AUTO_REPEATS) -> AttentionChoice:
    """``name`` as an :class:`AttentionChoice`; ``auto`` times every kernel that accepts all ``shapes``
    (one warm-up, then ``repeats`` rounds of every shape) and keeps the fastest."""
    if name != "auto":
        return AttentionChoice(name, device_type=device.type)
    timings: dict[str, float] = {}
    for kernel in KERNELS:
        if not accepts(kernel, shapes, device, dtype):
            continue
        inputs = [s.tensors(device, dtype, seed=i) for i, s in enumerate(shapes)]
        with torch.no_grad(), sdpa_kernel([KERNELS[kernel]]):
            for q, k, v in inputs:
                F.scaled_dot_product_attention(q, k, v)
            _sync(device)
            start = time.perf_counter()
            for _ in range(repeats):
                for q, k, v in inputs:
                    F.scaled_dot_product_attention(q, k, v)
            _sync(device)
        timings[kernel] = (time.perf_counter() - start) * 1e3 / repeats
    if not timings:
        raise RuntimeError("no attention kernel accepts this stream's shapes")  # math always should
    return AttentionChoice(min(timings, key=timings.get), timings, device_type=device.type)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
