"""The MemRoPE reference's noise, drawn chunk by chunk in constant memory with the reference's values.

The reference (YoungRaeKimm/MemRoPE@b89bf5b ``inference.py``, ``pipeline/causal_inference.py``) seeds one
CPU generator with the seed and draws, in bf16,

1. the whole video's initial noise, ``randn([B, F, C, h, w])``, before anything runs;
2. then, chunk after chunk, one ``randn([B * n, C, h, w])`` after every denoising pass but the last
   (the re-noise of x0 to the next noise level).

Holding step 1 costs ``2 B F C h w`` bytes, growing with the video (an hour at 832x480 is 2.9 GB). It
need not be held: how torch's CPU normal kernel consumes its mt19937 stream makes it drawable in pieces.
For a contiguous tensor of ``N >= 16`` values it takes one 32-bit word per value and turns each block
of 16 into normals (Box-Muller on 8 pairs, the block's first half against its second); when ``N`` is
not a multiple of 16 the last 16 values are redrawn from extra words. So a draw of ``N = 16 k`` values
consumes exactly ``N`` words, and consecutive draws whose sizes are multiples of 16 give exactly the
values of one draw of their total size (tested, bf16 and fp32; checked again on first use for the
installed torch, :func:`pieces_equal_whole`). A frame of Wan latents holds ``C h w = 16 h w`` values,
so every chunk of every sample starts and ends on a block. Hence:

- sample ``b``'s initial noise is its own generator, seeded with the seed and advanced past the
  ``b F C h w`` words of the samples before it; each chunk draws its ``n C h w`` values from it;
- the re-noise generator is seeded with the seed and advanced past all ``B F C h w`` words of step 1
  (:func:`skip`: ``uniform_`` on fp32 takes one word per value, ~4 ns each on one CPU core: 0.1 s for
  a minute of 832x480 video, 6 s for an hour, once per run);
- resuming restores the generators' states (5 kB each) from the checkpoint.

When a frame's size is not a multiple of 16 (not the case for Wan's 16 latent channels) or the
installed torch draws otherwise, the honest version runs instead: step 1 is drawn whole at the start
and held (its memory as above), then served chunk by chunk.
"""

from __future__ import annotations

import math
from functools import cache

import torch

REFERENCE_DTYPE = torch.bfloat16
"""The reference draws in its model dtype, bf16 (``pipeline.to(dtype=torch.bfloat16)``)."""
NORMAL_BLOCK = 16
"""Values per block of torch's CPU normal kernel (``normal_fill``: Box-Muller on 8 pairs)."""
_SKIP_PIECE = 1 << 22  # values per uniform_ call while skipping (16 MiB of fp32 scratch)


def skip(generator: torch.Generator, words: int) -> None:
    """Advance a CPU generator by ``words`` 32-bit draws (fp32 ``uniform_`` takes one per value)."""
    scratch = torch.empty(min(words, _SKIP_PIECE))
    while words > 0:
        n = min(words, _SKIP_PIECE)
        scratch[:n].uniform_(generator=generator)
        words -= n


@cache
def pieces_equal_whole(dtype: torch.dtype = REFERENCE_DTYPE) -> bool:
    """Does this torch draw ``randn(a + b)`` as ``randn(a)`` then ``randn(b)`` for block-sized ``a, b``, and
    does :func:`skip` advance like a draw? (Microseconds; the property the chunked draw rests on.)"""
    n = 4 * NORMAL_BLOCK
    whole_gen = torch.Generator().manual_seed(0)
    whole = torch.randn(n, generator=whole_gen, dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    parts = torch.cat([torch.randn(NORMAL_BLOCK, generator=gen, dtype=dtype),
                       torch.randn(n - NORMAL_BLOCK, generator=gen, dtype=dtype)])
    skipped = torch.Generator().manual_seed(0)
    skip(skipped, NORMAL_BLOCK)
    rest = torch.randn(n - NORMAL_BLOCK, generator=skipped, dtype=dtype)
    return (torch.equal(whole, parts) and torch.equal(whole[NORMAL_BLOCK:], rest)
            and torch.equal(whole_gen.get_state(), gen.get_state())
            and torch.equal(whole_gen.get_state(), skipped.get_state()))


class ReferenceNoise:
    """The reference's draws for a video of ``frames`` latent frames of ``frame_shape`` = (C, h, w),
    ``batch`` samples: :meth:`initial` per chunk, in order, and :meth:`renoise` per later step."""

    def __init__(self, seed: int, batch: int, frame_shape: tuple[int, int, int], frames: int,
                 dtype: torch.dtype = REFERENCE_DTYPE):
        if batch < 1 or frames < 1 or len(frame_shape) != 3 or min(frame_shape) < 1:
            raise ValueError(f"reference noise needs batch, frames and frame shape >= 1, got {batch}, {frames}, "
                             f"{frame_shape}")
        self.seed, self.batch, self.frames, self.dtype = seed, batch, frames, dtype
        self.frame_shape = tuple(frame_shape)
        self.frame_numel = math.prod(frame_shape)
        self.chunked = self.frame_numel % NORMAL_BLOCK == 0 and pieces_equal_whole(dtype)
        self.drawn = 0  # latent frames of initial noise handed out
        self._whole: torch.Tensor | None = None  # [B, F, C, h, w], only when not chunked
        self._initial: list[torch.Generator] = []
        self._renoise = torch.Generator().manual_seed(seed)
        if self.chunked:
            for b in range(batch):
                gen = torch.Generator().manual_seed(seed)
                skip(gen, b * frames * self.frame_numel)
                self._initial.append(gen)
            skip(self._renoise, batch * frames * self.frame_numel)
        else:  # the reference's own draw, held: then the re-noise generator is where it left it
            self._whole = torch.randn((batch, frames, *frame_shape), generator=self._renoise, dtype=dtype)

    @property
    def held_bytes(self) -> int:
        """Memory held for initial noise (0 when drawn chunk by chunk)."""
        return 0 if self._whole is None else self._whole.numel() * self._whole.element_size()

    def initial(self, first_frame: int, n: int) -> torch.Tensor:
        """Initial noise of latent frames ``[first_frame, first_frame + n)``: ``[B, n, C, h, w]`` (the
        reference's layout). Chunks come in order, each once."""
        if first_frame != self.drawn or first_frame + n > self.frames or n < 1:
            raise ValueError(f"reference noise is drawn in order over {self.frames} frames: next are frames "
                             f"from {self.drawn}, asked for {first_frame}..{first_frame + n - 1}")
        self.drawn += n
        if self._whole is not None:
            return self._whole[:, first_frame:first_frame + n].clone()
        return torch.stack([torch.randn((n, *self.frame_shape), generator=g, dtype=self.dtype)
                            for g in self._initial])

    def renoise(self, n: int) -> torch.Tensor:
        """One re-noise draw for a chunk of ``n`` frames: ``randn([B * n, C, h, w])`` viewed ``[B, n, C, h, w]``."""
        return torch.randn((self.batch * n, *self.frame_shape), generator=self._renoise,
                           dtype=self.dtype).view(self.batch, n, *self.frame_shape)

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        """Generator states (uint8 tensors) and how many frames were drawn: resume continues the stream."""
        tensors = {"renoise": self._renoise.get_state()}
        tensors.update({f"initial.{b}": g.get_state() for b, g in enumerate(self._initial)})
        return tensors, {"drawn": self.drawn}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], data: dict[str, int]) -> None:
        expected = {"renoise", *(f"initial.{b}" for b in range(len(self._initial)))}
        if set(tensors) != expected:
            raise ValueError(f"reference noise state holds {sorted(tensors)}, expected {sorted(expected)}")
        self._renoise.set_state(tensors["renoise"])
        for b, g in enumerate(self._initial):
            g.set_state(tensors[f"initial.{b}"])
        self.drawn = int(data["drawn"])
