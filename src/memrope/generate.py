"""Streaming generation: the chunk loop (denoise -> commit -> decode -> emit).

All per-stream state is explicit and owned here: the KV cache (tensors, slot table, clock), the text
context, the decoder's causal state and the noise. By default (``noise="chunk"``) noise is drawn per
chunk from a CPU generator seeded by (seed, chunk index), so a chunk's noise does not depend on how
many chunks came before in this process - the video is reproducible from the seed, on any device,
and a run can resume at any chunk boundary without noise state. ``noise="reference"`` draws the
MemRoPE reference's noise instead (one generator: the whole video's initial noise first, then every
re-noise in order; :mod:`memrope.noise`, in constant memory) and steps with the reference's sampler
arithmetic (:func:`memrope.sampling.reference_steps`), so that the same model gives the reference's
latents; its generator states are part of :meth:`StreamingGenerator.state_dict`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch

from .cache import CachePolicy, make_cache
from .cache.plan import CacheGeometry
from .models.attention import AttentionShape, choose
from .models.graphs import PassGraphs
from .models.wan import Conditioning, TextContext, WanModel
from .models.wan_fused import EAGER, compiled_kernels
from .noise import ReferenceNoise
from .sampling import (
    SamplerConfig,
    denoising_timesteps,
    reference_renoise,
    reference_steps,
    reference_x0,
    renoise,
    x0_from_velocity,
)

MASK64 = (1 << 64) - 1
NOISE_MODES = ("chunk", "reference")


class LatentDecoder(Protocol):
    """Streaming latent -> pixel decoder with causal state carried across chunks."""

    def reset(self) -> None: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, F, h, w] -> uint8 [B, T, H, W, 3]; T = 1 + 4(F-1) on a stream's first call, 4F after."""
        ...


def chunk_seed(seed: int, chunk_index: int) -> int:
    """Independent 63-bit seed per (seed, chunk) via splitmix64 (no cross-chunk RNG coupling)."""
    z = (seed * 0x9E3779B97F4A7C15 + chunk_index + 1) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return (z ^ (z >> 31)) >> 1


@dataclass(frozen=True)
class GenerationConfig:
    latent_hw: tuple[int, int]  # latent frame size (h, w) before patching, e.g. (60, 104) for 480x832
    chunk_frames: int = 3  # num_frame_per_block
    batch: int = 1
    seed: int = 0
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    # "chunk": a generator per (seed, chunk); "reference": the MemRoPE reference's draws and sampler
    # arithmetic, which needs the video's length in latent frames (its initial noise is drawn whole first)
    noise: str = "chunk"
    noise_frames: int | None = None

    def __post_init__(self) -> None:
        if self.noise not in NOISE_MODES:
            raise ValueError(f"noise must be one of {', '.join(NOISE_MODES)}, got {self.noise!r}")
        if self.noise == "reference" and (self.noise_frames is None or self.noise_frames < self.chunk_frames
                                          or self.noise_frames % self.chunk_frames):
            raise ValueError(f"reference noise needs the video's length in latent frames (noise_frames), a "
                             f"multiple of chunk_frames {self.chunk_frames}; got {self.noise_frames}")
        if self.noise == "chunk" and self.noise_frames is not None:
            raise ValueError("noise_frames applies to noise='reference' only")
        if self.chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {self.chunk_frames}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if len(self.latent_hw) != 2 or min(self.latent_hw) < 1:
            raise ValueError(f"latent_hw must be (h, w) >= 1, got {self.latent_hw}")


@dataclass(frozen=True)
class ChunkOrder:
    """What the chunk loop makes next (:meth:`StreamingGenerator.chunks` asks before every chunk).

    ``switch``: a prompt change ``(text, cut)`` applied right before the chunk (``switch_prompt``);
    ``context``: clean latents [B, C, chunk_frames, h, w] committed as the chunk instead of generating
    it (frames of an image or video the stream continues: ``memrope.context``); ``prompt_index``: what
    the chunk's statistics record as its prompt's index.
    """

    switch: tuple[TextContext, bool] | None = None
    context: torch.Tensor | None = None
    prompt_index: int | None = None


@dataclass
class ChunkResult:
    index: int
    latents: torch.Tensor  # [B, C, F, h, w] clean latents of this chunk
    frames: torch.Tensor | None  # uint8 [B, T, H, W, 3] when a decoder is attached
    stats: dict[str, Any]


class StreamingGenerator:
    """Generates a video chunk by chunk in constant memory (for bounded cache policies)."""

    def __init__(self, model: WanModel, policy: CachePolicy, text: TextContext, config: GenerationConfig,
                 decoder: LatentDecoder | None = None, fused: bool = True, attention: str = "default",
                 compile: bool | str = False, cuda_graphs: bool = False, graph_backend: Any = None,
                 fp8: str | None = None):
        self.model = model
        self.config = config
        self.text = text
        self.decoder = decoder
        geometry = model.cache_geometry(config.batch, config.latent_hw, config.chunk_frames)
        self.cache = make_cache(policy, geometry, model.rope, stages=model.stages())  # per device if split
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self._reference: ReferenceNoise | None = None  # the reference's noise stream (noise="reference")
        self._sigmas: list[float] = []  # the reference's sigma per pass (noise="reference")
        if config.noise == "reference":
            steps = reference_steps(config.sampler)
            self.timesteps, self._sigmas = [t for t, _ in steps], [s for _, s in steps]
            self._reference = ReferenceNoise(config.seed, config.batch, (model.config.in_dim, *config.latent_hw),
                                             config.noise_frames)
        else:
            self.timesteps = denoising_timesteps(config.sampler)
        self._latents: dict[int, torch.Tensor] = {}  # frame_idx -> [B, C, 1, h, w], cached frames only
        self._pending: ChunkResult | None = None  # generated, not yet decoded (overlapped decoding)
        self._conditioning: dict[float, Conditioning] = {}  # timestep -> its time embedding, reused
        # The weights are read once: build a new generator after changing them. ``fused=False`` (or
        # hooked / wrapped modules) runs the module path, e.g. to measure what the fused path saves.
        with torch.no_grad():
            self._fused = model.fused_params() if fused else None
            if fp8 is not None:  # float8 matmul weights (models/fp8.py); the fused path only
                if self._fused is None:
                    raise ValueError("--fp8 runs on the fused inference path; the module path was requested")
                from .models.fp8 import quantize_fused

                self._fused = quantize_fused(self._fused, fp8, self.device)
        # The SDPA kernel the passes prefer (models/attention.py); "auto" times the stream's own shapes.
        self.attention = choose(attention, attention_shapes(model, policy, geometry, config), self.device, self.dtype)
        # The steady state (a full bounded cache: static shapes): compiled kernels (``compile``: True or a
        # torch.compile mode) and whole passes replayed as CUDA graphs; both on the fused path only.
        fusing = self._fused is not None
        self.kernels = compiled_kernels(None if compile is True else compile) if compile and fusing else EAGER
        # ``graph_backend``: what captures the passes (None: CUDA graphs on a CUDA device; tests pass one).
        if len(self.cache.parts()) > 1 and (cuda_graphs or graph_backend is not None):
            self.graphs = PassGraphs(None, "passes over split blocks cross devices and are not captured")
        elif graph_backend is not None and fusing:
            self.graphs = PassGraphs(graph_backend)
        else:
            self.graphs = PassGraphs.for_device(self.device, cuda_graphs and fusing)
        self.cache.static_writes = self.graphs.backend is not None
        if decoder is not None:
            decoder.reset()

    def switch_prompt(self, text: TextContext, cut: bool = False) -> dict[str, Any]:
        """Change the prompt between chunks; the policy decides what happens to the cache.

        Recaching policies re-encode the frames the policy names under the new prompt in one clean
        t=0 pass over their latents (LongLive's KV recache: the frames attend the kept slots and each
        other); others flush or keep (see each policy). The cache carries it out through its own
        protocol (``switch``, ``begin_replay``, one committing pass, ``end_chunk``), whatever its storage.
        """
        self.text = text
        sw = self.cache.switch(cut=cut)
        frames = tuple(sw.recache)
        if frames:
            with torch.no_grad(), self.attention.preferred():
                self.cache.begin_replay(frames)
                latents = torch.cat([self._latents[f] for f in frames], dim=2)  # [B, C, len(frames), h, w]
                self.model(latents, self.conditioning(self.config.sampler.context_t), self.text, self.cache,
                           commit=True, fused=self._fused)
                self.cache.end_chunk()
        return {"at_chunk": self.cache.clock.chunks, "action": sw.action, "cut": cut,
                "kept": len(sw.keep), "recached": len(frames), "pos_shift": sw.pos_shift}

    def conditioning(self, t: float) -> Conditioning:
        """The model's time conditioning at step ``t`` for this stream's batch, computed once: few-step
        sampling visits the same timesteps in every chunk (and the weights do not change mid-stream)."""
        if t not in self._conditioning:
            steps = torch.full((self.config.batch,), float(t), device=self.device)
            self._conditioning[t] = self.model.condition(steps, self.config.batch, self.config.chunk_frames)
        return self._conditioning[t]

    def _remember(self, first_frame: int, x0: torch.Tensor) -> None:
        """Keep the clean latents of frames still in the cache (needed to recache them)."""
        if not self.cache.policy.recaches_on_switch:
            return
        for j in range(x0.shape[2]):
            self._latents[first_frame + j] = x0[:, :, j:j + 1]
        cached = {s.frame_idx for s in self.cache.slots if s.frame_idx is not None}
        for f in [f for f in self._latents if f not in cached]:
            del self._latents[f]

    def chunk_noise(self, chunk_index: int) -> list[torch.Tensor]:
        """Initial noise then one re-noise draw per later step, each [B, C, n, h, w]: from the CPU
        generator of this chunk, or (``noise="reference"``) the reference's next draws (chunks in order)."""
        cfg = self.config
        if self._reference is not None:
            n = cfg.chunk_frames
            draws = [self._reference.initial(chunk_index * n, n)]  # [B, n, C, h, w]: the reference's layout
            draws += [self._reference.renoise(n) for _ in self.timesteps[1:]]
            return [d.permute(0, 2, 1, 3, 4).to(device=self.device, dtype=self.dtype) for d in draws]
        gen = torch.Generator(device="cpu").manual_seed(chunk_seed(cfg.seed, chunk_index))
        shape = (cfg.batch, self.model.config.in_dim, cfg.chunk_frames, *cfg.latent_hw)
        draws = [torch.randn(shape, generator=gen) for _ in self.timesteps]
        return [d.to(device=self.device, dtype=self.dtype) for d in draws]

    def _pass(self, x: torch.Tensor, t: float, commit: bool) -> torch.Tensor:
        """One transformer pass of a generated chunk: eager while the cache fills; in the steady state
        with the compiled kernels and, where captured, replayed as a CUDA graph (``models/graphs.py``)."""
        cond, cache = self.conditioning(t), self.cache
        kernels = self.kernels if self.kernels is not EAGER and cache.full() else EAGER
        if self.graphs.backend is None:  # graphs off: the plain pass
            return self.model(x, cond, self.text, cache, commit=commit, fused=self._fused, kernels=kernels)

        def run(xs: torch.Tensor) -> torch.Tensor:
            return self.model(xs, cond, self.text, cache, commit=commit, fused=self._fused, kernels=kernels)

        layout = cache.pass_signature()
        key = None if layout is None else (float(t), commit, layout)
        return self.graphs.run(key, x, cache, commit, self.text, run)
    def _step(self, step: int, x: torch.Tensor, v: torch.Tensor,
              noise: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """x0 from the velocity at pass ``step``, and the next pass's input (x0 re-noised; x0 after the last)."""
        last = step + 1 == len(self.timesteps)
        if self._reference is not None:  # the reference's arithmetic (sampling.reference_steps)
            x0 = reference_x0(x, v, self._sigmas[step])
            return x0, x0 if last else reference_renoise(x0, noise[step + 1], self._sigmas[step + 1])
        x0 = x0_from_velocity(x, v, self.timesteps[step])
        return x0, x0 if last else renoise(x0, noise[step + 1], self.timesteps[step + 1])

    def next_chunk(self) -> ChunkResult:
        """Denoise, commit and decode the next chunk (the decode runs here, synchronously)."""
        result = self._denoise()
        self._decode(result)
        return result

    def check_context(self, latents: torch.Tensor) -> None:
        """Clean latents that can stand for one chunk of this stream: [B, C, chunk_frames, h, w], finite."""
        cfg = self.config
        shape = (cfg.batch, self.model.config.in_dim, cfg.chunk_frames, *cfg.latent_hw)
        if tuple(latents.shape) != shape:
            raise ValueError(f"context latents must be one chunk {list(shape)}, got {list(latents.shape)}")

    @torch.no_grad()
    def _denoise(self, context: torch.Tensor | None = None) -> ChunkResult:
        """4 read passes and the commit pass of the next chunk; frames not decoded yet. With ``context``
        (clean latents of given frames) only the commit pass runs: those frames join the cache as if
        generated, so that the stream continues them."""
        cfg, cache = self.config, self.cache
        start, cpu_start = time.perf_counter(), time.thread_time()  # wall time; this thread's CPU time
        if context is not None:
            self.check_context(context)
        plan = cache.begin_chunk(cfg.chunk_frames)
        with self.attention.preferred():
            if context is not None:
                x0 = context.to(device=self.device, dtype=self.dtype)
            else:
                noise = self.chunk_noise(plan.chunk_index)
                x = noise[0]
                for step, t in enumerate(self.timesteps):
                    v = self._pass(x, t, commit=False)
                    x0, x = self._step(step, x, v, noise)
            self._pass(x0, cfg.sampler.context_t, commit=True)
        cache.end_chunk()
        self._remember(plan.first_frame, x0)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # once per chunk, so that the timing is honest
        stats = {
            "index": plan.chunk_index,
            "first_frame": plan.first_frame,
            "latent_frames": plan.n_frames,
            "video_frames": None,
            "ms": round((time.perf_counter() - start) * 1e3, 3),
            "cpu_ms": round((time.thread_time() - cpu_start) * 1e3, 3),
            "cache_bytes": cache.nbytes(),
            "cache_frames": plan.n_past + plan.n_frames,
            "max_frame_pos": plan.max_frame_pos,
            "query_pos": list(plan.query_pos),
            "evicted": len(plan.evicted),
        }
        if context is not None:
            stats["context"] = True
        return ChunkResult(index=plan.chunk_index, latents=x0, frames=None, stats=stats)

    @torch.no_grad()
    def _decode(self, result: ChunkResult) -> ChunkResult:
        """Decode ``result`` in place; ``ms`` then covers denoising and decoding, ``decode_ms`` the latter."""
        if self.decoder is None:
            return result
        start = time.perf_counter()
        result.frames = self.decoder.decode(result.latents)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        decode_ms = (time.perf_counter() - start) * 1e3
        result.stats.update(video_frames=int(result.frames.shape[1]), decode_ms=round(decode_ms, 3),
                            ms=round(result.stats["ms"] + decode_ms, 3))
        return result

    @property
    def chunks_emitted(self) -> int:
        """Chunks handed out so far: the clock, less a chunk generated but not yet decoded."""
        return self.cache.clock.chunks - (self._pending is not None)

    def stream(self, num_chunks: int, switches: dict[int, tuple[TextContext, bool]] | None = None,
               overlap_decode: bool = False) -> Iterator[ChunkResult]:
        """Yield chunks until ``num_chunks`` exist (continuing after a resume);
        ``switches[k] = (text, cut)`` changes the prompt right before chunk k.

        ``overlap_decode``: see :meth:`chunks`, which this is with a fixed length and schedule.
        """
        if num_chunks < 1:
            raise ValueError(f"num_chunks must be >= 1, got {num_chunks}")
        switches = switches or {}
        if 0 in switches:
            raise ValueError("the first prompt is the generator's own; switches start at chunk 1")

        def order(k: int) -> ChunkOrder | None:
            if k >= num_chunks:
                return None
            return ChunkOrder(switch=switches.get(k), prompt_index=sum(1 for s in switches if s <= k))

        yield from self.chunks(order, overlap_decode)

    def chunks(self, order: Callable[[int], ChunkOrder | None], overlap_decode: bool = False) -> Iterator[ChunkResult]:
        """Yield chunks without a fixed end: before making chunk k, ``order(k)`` says what it is (a
        :class:`ChunkOrder`), or ``None`` to stop (a chunk still pending decode is then yielded first).

        ``overlap_decode``: decode chunk k on a worker thread while the transformer runs chunk k + 1
        (the decoder and the transformer then use the machine at the same time). Chunk k is yielded
        once both are done, so whenever the caller holds chunk k the decoder is idle at chunk k and
        the cache is at chunk k + 1, whose latents are the generator's *pending* chunk: it is part
        of ``state_dict``, and a resumed generator decodes and yields it first. Output is identical
        to the sequential order. ``order(k + 1)`` is asked while the caller holds chunk k - 1
        overlapped, while it holds chunk k otherwise: a live prompt change reaches the next chunk
        that is generated.
        """
        overlap = overlap_decode and self.decoder is not None
        if self._pending is not None and not overlap:  # resumed from an overlapped run
            last, self._pending = self._pending, None
            yield self._decode(last)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memrope-decode") if overlap else None
        try:
            while (step := order(self.cache.clock.chunks)) is not None:
                event = self.switch_prompt(*step.switch) if step.switch is not None else None
                previous = self._pending
                decoding = pool.submit(self._decode, previous) if pool and previous is not None else None
                result = self._denoise() if step.context is None else self._denoise(step.context)
                if step.prompt_index is not None:
                    result.stats["prompt_index"] = step.prompt_index
                if event is not None:
                    result.stats["switch"] = event
                if not overlap:
                    yield self._decode(result)
                    continue
                self._pending = result
                if decoding is not None:
                    yield decoding.result()
            if self._pending is not None:  # the last chunk (or one pending from a resumed run)
                last, self._pending = self._pending, None
                yield self._decode(last)
        finally:
            if pool is not None:
                pool.shutdown(wait=True)

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything needed to continue this stream exactly, between chunks.

        Per-chunk noise needs no state (it is a function of seed and chunk index); the reference's
        noise stream stores its generators' states. The text context is recomputed from the prompt by
        the caller; the decoder's causal state is included.
        """
        tensors, data = self.cache.state_dict()
        tensors = {f"cache.{k}": t for k, t in tensors.items()}
        tensors.update({f"latent.{f}": t.contiguous() for f, t in self._latents.items()})
        if self.decoder is not None and hasattr(self.decoder, "state_dict"):
            tensors.update({f"decoder.{k}": t.contiguous() for k, t in self.decoder.state_dict().items()})
        out = {"cache": data, "config": self.describe()}
        if self._reference is not None:
            noise_tensors, out["noise"] = self._reference.state_dict()
            tensors.update({f"noise.{k}": t for k, t in noise_tensors.items()})
        if self._pending is not None:  # generated but not decoded: decoded first after a resume
            tensors["pending.latents"] = self._pending.latents.contiguous()
            out["pending"] = json_roundtrip({"index": self._pending.index, "stats": self._pending.stats})
        return tensors, out

    def load_state_dict(self, tensors: dict[str, torch.Tensor], data: dict[str, Any]) -> None:
        saved = data["config"]
        if "noise" not in saved["generation"]:  # saved before noise modes existed: per-chunk noise
            saved = {**saved, "generation": {**saved["generation"], "noise": "chunk", "noise_frames": None}}
        if saved != json_roundtrip(self.describe()):
            raise ValueError("saved state was made by a different generator configuration")
        part = lambda prefix: {k[len(prefix):]: t for k, t in tensors.items() if k.startswith(prefix)}  # noqa: E731
        self.cache.load_state_dict(part("cache."), data["cache"])
        if self._reference is not None:
            self._reference.load_state_dict(part("noise."), data["noise"])
        self._latents = {int(f): t.to(self.device) for f, t in part("latent.").items()}
        if self.decoder is not None and hasattr(self.decoder, "load_state_dict"):
            self.decoder.load_state_dict(part("decoder."))
        self._pending = None
        if "pending" in data:
            p = data["pending"]
            latents = tensors["pending.latents"].to(device=self.device, dtype=self.dtype)
            self._pending = ChunkResult(index=p["index"], latents=latents, frames=None, stats=p["stats"])

    def describe(self) -> dict[str, Any]:
        return {
            "policy": self.cache.policy.describe(),
            "generation": {**asdict(self.config), "timesteps": self.timesteps},
            "model": self.model.config.to_dict(),
        }


def attention_shapes(model: WanModel, policy: CachePolicy, geometry: CacheGeometry,
                     config: GenerationConfig) -> list[AttentionShape]:
    """The two attention calls of every block: the chunk against its largest context, and against the text."""
    cfg = model.config
    chunk_tokens = config.chunk_frames * geometry.frame_tokens
    context_frames = policy.capacity_frames(config.chunk_frames) or config.chunk_frames
    return [AttentionShape(config.batch, cfg.num_heads, cfg.head_dim, chunk_tokens, n)
            for n in (context_frames * geometry.frame_tokens, cfg.text_len)]


def json_roundtrip(data: Any) -> Any:
    """What ``data`` looks like after a JSON save and load (tuples become lists, ...)."""
    import json

    return json.loads(json.dumps(data, default=str))
