"""``memrope plan`` / ``generate --dry-run``: the memory a run needs, per component, before anything loads.

The plan runs the run itself on the ``meta`` device: the real model of the run's size and dtype, the
real cache of its policy, the real decoder, the real chunk loop (enough chunks to fill the cache and
run it full), with no data and no weights. Every tensor the run creates is counted while it lives
(a ``TorchDispatchMode`` that follows each storage until it is freed), so the plan holds what the
code actually allocates: weights, the fused path's binding, the KV cache and the policy's state,
the text context of every prompt, the decoder's weights and causal state, and the transient peaks
of a chunk's passes and of its decode. Two things the meta device does differently are put right:

- attention: the meta device computes SDPA the "math" way, with the whole L x S score matrix; GPUs
  and the CPU run a fused kernel whose memory is its output and a row log-sum-exp: the plan
  substitutes that (``_FusedAttention``);
- CPU convolutions: oneDNN computes into its own buffer and reorders it into PyTorch's output and a
  contiguous copy: two output-sized transients per convolution (seen with the profiler, torch 2.13);
  on a CUDA device every allocation is rounded up to the caching allocator's 512-byte blocks.

Not in the plan: CUDA workspaces outside the caching allocator (the plan leaves 5% headroom on CUDA
devices), the umT5 encoder (prompts come from the prompt cache: run ``memrope encode-prompts`` first),
the one-off peak of reading a checkpoint (on the host), compiled kernels and CUDA-graph pools (they
use less than the eager pass they replace plus one static input and output). The plan is checked
against the CPU allocator's own peak on the tiny and toy shapes (``tests/test_memory_plan.py``) and,
on a GPU, against ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .cache import make_policy
from .cache.policy import CachePolicy
from .errors import UserError
from .generate import GenerationConfig, StreamingGenerator
from .models.wan import WanModel
from .models.wan_config import WanConfig

GIB = 2**30
CUDA_BLOCK = 512  # bytes: the CUDA caching allocator rounds each allocation up to this
CUDA_HEADROOM = 0.95  # share of a CUDA device's free memory a plan may use (workspaces, fragmentation)
CPU_CONV_TRANSIENTS = 2  # output-sized buffers a CPU (oneDNN) convolution holds besides its output
STEADY_CHUNKS = 2  # chunks a measured run generates once the cache is full
PLANNED_STEADY_CHUNKS = 1  # chunks the plan simulates once the cache is full (its decoder already warm)


# --------------------------------------------------------------------------- counting live tensors
class LiveBytes(TorchDispatchMode):
    """Bytes of every storage created under it while alive; the peak; marks that split the run."""

    def __init__(self, target: torch.device):
        super().__init__()
        self.target = torch.device(target)
        self.live = self.peak = self.window = 0
        self.marks: list[tuple[str, int, int]] = []  # (name, live at the mark, peak since the last mark)
        self._seen: set[int] = set()

    def mark(self, name: str) -> None:
        self.marks.append((name, self.live, self.window))
        self.window = self.live

    def _bump(self, n: int) -> None:
        self.live += n
        self.peak, self.window = max(self.peak, self.live), max(self.window, self.live)

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self._seen:
            return
        n = storage.nbytes()
        if self.target.type == "cuda":
            n = -(-n // CUDA_BLOCK) * CUDA_BLOCK
        self._seen.add(key)
        self._bump(n)
        weakref.finalize(storage, self._free, key, n)

    def _free(self, key: int, n: int) -> None:
        self._seen.discard(key)
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and args[0].device.type == "meta" \
                and torch.device(kwargs.get("device") or "meta").type == "cpu":  # frames to the host
            out = torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype, device="cpu")
        elif func is torch.ops.aten.copy_.default and args[0].device.type == "cpu" and args[1].device.type == "meta":
            return args[0]
        else:
            out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        if func is torch.ops.aten.convolution.default and self.target.type == "cpu":
            extra = CPU_CONV_TRANSIENTS * out.untyped_storage().nbytes()
            self._bump(extra)
            self.live -= extra
        return out


class _FusedAttention(TorchFunctionMode):
    """SDPA on meta tensors as a fused kernel allocates: the output, and a row log-sum-exp while it runs."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and args[0].device.type == "meta":
            q, _, v = args[:3]
            out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
            lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
            del lse
            return out
        return func(*args, **kwargs)


# --------------------------------------------------------------------------- the simulated run
@dataclasses.dataclass(frozen=True)
class Scenario:
    """What a run allocates depends on: sizes, dtype, policy, decoder, prompts, devices."""

    config: WanConfig
    latent_hw: tuple[int, int]
    dtype: torch.dtype
    policy: CachePolicy
    make_decoder: Callable[[torch.device], Any] | None  # builds the run's decoder on a device
    decoder_name: str = "none"
    chunk_frames: int = 3
    prompts: int = 1
    seed: int = 0
    total_chunks: int | None = None  # the video's length (only unbounded policies need it)
    extra: tuple[tuple[str, int], ...] = ()  # per-layer parts counted analytically (unmerged LoRA), bytes


class _Marked:
    """The run's decoder, marking the tracker around each decode (the decoder's own peak)."""

    def __init__(self, inner: Any, mark: Callable[[str], None]):
        self.inner, self._mark = inner, mark

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self._mark("denoised")
        frames = self.inner.decode(latents)
        self._mark("decoded")
        return frames


def chunks_to_simulate(s: Scenario) -> int:
    cap = s.policy.capacity_frames(s.chunk_frames)
    fill = math.ceil(cap / s.chunk_frames) if cap is not None else 1
    return fill + STEADY_CHUNKS


def run_scenario(s: Scenario, device: torch.device | str, mark: Callable[[str], None] = lambda name: None,
                 fill_without_passes: bool = False) -> StreamingGenerator:
    """The run, as ``memrope generate`` builds it (random weights): model, texts, decoder, generator, chunks.
    On ``meta`` this is the plan; on a real device under a memory profiler it is the measurement.

    ``fill_without_passes``: the chunks that fill the cache commit zero keys and values straight into
    it instead of running the model (the plan's shortcut: a meta pass costs about a second at the real
    size; a filling chunk's passes attend to less and allocate the same or less than a full one's)."""
    torch.manual_seed(s.seed)
    with torch.device(device):
        model = WanModel(s.config)
    model = model.to(s.dtype).eval().requires_grad_(False)  # as materialise() casts a checkpoint
    mark("weights")
    cfg = model.config
    with torch.no_grad():
        texts = [model.encode_text(torch.zeros(1, cfg.text_len, cfg.text_dim, device=device)) for _ in range(s.prompts)]
    mark("text")
    decoder = None if s.make_decoder is None else _Marked(s.make_decoder(torch.device(device)), mark)
    mark("decoder")
    gen = StreamingGenerator(model, s.policy, texts[0], GenerationConfig(s.latent_hw, s.chunk_frames, seed=s.seed),
                             decoder=decoder)
    mark("generator")
    fill = chunks_to_simulate(s) - STEADY_CHUNKS
    with torch.no_grad():
        if fill_without_passes:
            _commit_zeros(gen, fill)
            if decoder is not None:  # the decoder's first call of a stream is its smallest: warm it up
                decoder.inner.decode(torch.zeros(1, cfg.out_dim, s.chunk_frames, *s.latent_hw, dtype=s.dtype,
                                                 device=device))
            mark("warm")
        for _ in range(PLANNED_STEADY_CHUNKS if fill_without_passes else fill + STEADY_CHUNKS):
            gen.next_chunk()
            mark("chunk")
    return gen


def _commit_zeros(gen: StreamingGenerator, chunks: int) -> None:
    cache = gen.cache
    geo = cache.geometry
    kv = torch.zeros(geo.batch, geo.chunk_frames * geo.frame_tokens, geo.heads, geo.head_dim, dtype=geo.dtype,
                     device=geo.device)
    for _ in range(chunks):
        cache.begin_chunk(geo.chunk_frames)
        for layer in range(geo.num_layers):
            cache.update(layer, kv, kv, k_raw=kv, commit=True, q_raw=kv)
        cache.end_chunk()


# --------------------------------------------------------------------------- the plan
@dataclasses.dataclass
class MemoryPlan:
    """Bytes per component per device; ``peak`` is the simulated run's peak (decode after the passes),
    ``peak_overlapped`` adds the decoder's transient to the passes' (decode on a worker thread)."""

    description: dict[str, Any]
    devices: dict[str, dict[str, int]]  # device -> component -> bytes
    peaks: dict[str, dict[str, int]]  # device -> {"sequential", "overlapped"}
    notes: list[str]

    def peak(self, device: str, overlapped: bool) -> int:
        return self.peaks[device]["overlapped" if overlapped else "sequential"]


def simulate(s: Scenario, target: torch.device) -> dict[str, Any]:
    """Run ``s`` on meta and read the components off the tracker's marks."""
    tracker = LiveBytes(target)
    with _FusedAttention(), tracker:
        gen = run_scenario(s, "meta", tracker.mark, fill_without_passes=True)
        cache_bytes = gen.cache.nbytes()
        cache = gen.cache.parts()[0][1]
        cache_frames = cache.layers[0].capacity_tokens() // cache.geometry.frame_tokens  # allocated
    at = {}
    for name, live, _ in tracker.marks:
        at.setdefault(name, live)
    act_t = act_d = 0
    steady = 0
    fill = 0  # the filling chunks ran no passes (run_scenario's shortcut): every simulated chunk is full
    chunk = 0  # index of the chunk a mark belongs to
    previous = tracker.marks[0]
    for name, live, window in tracker.marks[1:]:
        if chunk >= fill:
            if name == "denoised" or (name == "chunk" and previous[0] != "decoded"):
                act_t = max(act_t, window - previous[1])
            elif name == "decoded":
                act_d = max(act_d, window - previous[1])
        if name == "chunk":
            chunk += 1
            steady = live
        previous = (name, live, window)
    decoder_state = 0
    if s.make_decoder is not None and hasattr(gen.decoder, "state_dict"):
        decoder_state = sum(t.untyped_storage().nbytes() for t in gen.decoder.state_dict().values())
    weights = at["weights"]
    parts = {
        "transformer weights": weights,
        "text context": at["text"] - at["weights"],
        "decoder weights": at["decoder"] - at["text"],
        "KV cache and policy state": cache_bytes,
        "fused binding": at["generator"] - at["decoder"] - cache_bytes,
        "decoder state": decoder_state,
    }
    parts["latents and other steady state"] = max(0, steady - sum(parts.values()))
    return {"parts": parts, "steady": steady, "act_transformer": act_t, "act_decoder": act_d, "peak": tracker.peak,
            "model": gen.model, "cache": gen.cache, "cache_frames": cache_frames}


LONGLIVE_LORA_RANK = 256  # LongLive's released lora.pt (PEFT rank 256, alpha 256; shared/REFERENCE.md)


def lora_bytes(config: WanConfig, rank: int, element_bytes: int) -> int:
    """Unmerged LoRA on every Linear of every block (LongLive's targets): A [r, in] and B [out, r] each, plus
    the fused path's stacked copy of q, k and v's A matrices."""
    d, f = config.dim, config.ffn_dim
    per_block = 8 * rank * 2 * d + rank * (d + f) * 2 + 3 * rank * d  # 8 attention linears, 2 FFN, stacked A
    return config.num_layers * per_block * element_bytes


def fp8_bytes(config: WanConfig) -> int:
    """Float8 copies of the six per-block matmul weights (one byte per element; scales negligible)."""
    d, f = config.dim, config.ffn_dim
    return config.num_layers * (3 * d * d + d * d + 2 * d * d + 2 * d * f)


def unbounded_cache_bytes(per_frame: int, chunk_frames: int, total_chunks: int) -> tuple[int, int]:
    """(final, transient while growing) of a cache that doubles when full (``LayerKV.grow``)."""
    cap = chunk_frames
    grow_peak = 0
    for k in range(1, total_chunks + 1):
        needed = k * chunk_frames
        if needed > cap:
            grow_peak = cap + max(needed, 2 * cap)  # old and new buffers during the copy
            cap = max(needed, 2 * cap)
    return cap * per_frame, grow_peak * per_frame


def make_plan(s: Scenario, devices: list[torch.device], decode_device: torch.device, fp8: str | None = None,
              stage_bounds: list[int] | None = None) -> MemoryPlan:
    """The plan of ``s`` on ``devices`` (one, or the stages of ``--split-blocks``), the decoder on
    ``decode_device``. Stages on one device add up on it; each device holding blocks is given the
    whole pass's activation peak (an upper bound for a stage: the stages run the same blocks)."""
    n = s.config.num_layers
    stage_bounds = stage_bounds or [round(n * j / len(devices)) for j in range(1, len(devices))]
    sim = simulate(s, devices[0])
    parts, notes = dict(sim["parts"]), []
    if fp8:
        parts["fp8 weights"] = fp8_bytes(s.config)
    parts.update(dict(s.extra))
    run_peak = sim["peak"] + sum(v for _, v in s.extra)
    if s.policy.capacity_frames(s.chunk_frames) is None and s.total_chunks:
        simulated = parts["KV cache and policy state"]
        final, growing = unbounded_cache_bytes(simulated // sim["cache_frames"],
                                               s.chunk_frames, s.total_chunks)
        parts["KV cache and policy state"] = final
        run_peak += growing - simulated
        notes.append(f"{s.policy.name} keeps every frame: its cache grows to {final / GIB:.2f} GiB by the end of "
                     f"the video ({growing / GIB:.2f} GiB while it last doubles)")
    decoder_parts = {k: parts.pop(k) for k in ("decoder weights", "decoder state")}
    share = _stage_shares(sim["model"], stage_bounds)
    rows: dict[str, dict[str, int]] = {}
    for j, dev in enumerate(devices):
        row = rows.setdefault(str(dev), {})
        for k, v in parts.items():
            if k == "transformer weights":
                v = share["weights"][j]
            elif k == "latents and other steady state":
                v = v if j == 0 else 0
            else:
                v = round(v * share["layers"][j])
            row[k] = row.get(k, 0) + v
        row["transformer activations (peak)"] = sim["act_transformer"]
    if s.make_decoder is not None:
        row = rows.setdefault(str(decode_device), {})
        row.update(decoder_parts)
        row["decoder activations (peak)"] = sim["act_decoder"]
    peaks = {}
    for key, row in rows.items():
        act_t, act_d = row.get("transformer activations (peak)", 0), row.get("decoder activations (peak)", 0)
        base = sum(row.values()) - act_t - act_d
        sequential, overlapped = base + max(act_t, act_d), base + act_t + act_d
        if len(rows) == 1:  # the simulated run's own peak (it also sees the model being built)
            sequential = max(sequential, run_peak)
            overlapped = max(overlapped, sequential)
        peaks[key] = {"sequential": sequential, "overlapped": overlapped}
    if len(devices) > 1:
        notes.append("each device holding blocks is given the whole pass's activation peak (an upper bound)")
    description = {"model": _size_name(s.config), "latent": list(s.latent_hw), "dtype": str(s.dtype)
                   .removeprefix("torch."), "policy": s.policy.name, "decoder": s.decoder_name, "prompts": s.prompts,
                   "devices": [str(d) for d in devices], "decode_device": str(decode_device), "fp8": fp8}
    return MemoryPlan(description, rows, peaks, notes)


def _size_name(cfg: WanConfig) -> str:
    from .models.wan_config import WAN_CONFIGS

    return next((n for n, c in WAN_CONFIGS.items() if c == cfg), f"{cfg.dim}x{cfg.num_layers}")


def _stage_shares(model: WanModel, bounds: list[int]) -> dict[str, list]:
    """Per stage: the bytes of the parameters it holds, and its share of the layers."""
    n = model.config.num_layers
    edges = [0, *bounds, n]
    weights = []
    for j in range(len(edges) - 1):
        mods = list(model.blocks[edges[j]:edges[j + 1]])
        if j == 0:
            mods += [model.patch_embedding, model.text_embedding, model.time_embedding, model.time_projection,
                     model.rope]
        if j == len(edges) - 2:
            mods.append(model.head)
        weights.append(sum(t.untyped_storage().nbytes() for m in mods
                           for t in (*m.parameters(), *m.buffers())))
    return {"weights": weights, "layers": [(edges[j + 1] - edges[j]) / n for j in range(len(edges) - 1)]}


# --------------------------------------------------------------------------- from a run's settings
def scenario_from_settings(settings: dict[str, Any], what_if: bool = False
                           ) -> tuple[Scenario, list[torch.device], torch.device]:
    """What ``memrope generate`` with these settings would build, without reading a weight: the model's
    size from the Wan folder's ``config.json`` (wan-1.3b without one; the loader checks the checkpoint's
    own shapes later), the decoder's from its config (the released TAEHV for ``--decoder taehv``).

    ``what_if`` (``memrope plan``): devices need not exist here and a real model needs no files: without
    ``--wan-dir`` the released Wan2.1-T2V-1.3B and Wan VAE sizes are planned (e.g. for a 24 GB card)."""
    from .models.bundle import (
        BundleOptions,
        check_decoder,
        resolve_decode_device,
        resolve_device,
        resolve_dtype,
        resolve_split,
    )
    from .models.wan_config import wan_config
    from .schedule import load_schedule, parse_inline, schedule_from_data

    options = BundleOptions(**settings["model"])
    check_decoder(options)
    if what_if:  # plan for devices this machine may not have
        devices = [torch.device(d.strip()) for d in options.split_blocks.split(",")] if options.split_blocks else \
            [torch.device("cuda" if options.device == "auto" and torch.cuda.is_available() else
                          "cpu" if options.device == "auto" else options.device)]
        decode_device = torch.device(options.decode_device) if options.decode_device else devices[-1]
    else:
        split = resolve_split(options.split_blocks, options.device)
        devices = split or [resolve_device(options.device)]
        decode_device = resolve_decode_device(options.decode_device, devices[-1])
    policy = make_policy(settings["policy"], settings["policy_options"])
    if settings.get("schedule") is not None:
        schedule = schedule_from_data(settings["schedule"], "saved schedule")
    elif settings.get("prompts_file"):
        schedule = load_schedule(settings["prompts_file"])
    else:
        schedule = parse_inline(settings["prompt"])
    chunk = settings["chunk_frames"]
    if options.model is None:
        from .models.toy.autoencoder import FrameAutoencoder, WorldDecoder
        from .models.toy.default import DEFAULT_CONFIG, DEFAULT_LATENT_HW

        config, latent_hw, stride = wan_config(DEFAULT_CONFIG), DEFAULT_LATENT_HW, WorldDecoder.temporal_stride
        dtype = torch.float32 if options.dtype == "auto" else resolve_dtype(options.dtype, devices[0])

        def make_decoder(device: torch.device) -> Any:
            with torch.device(device):
                return WorldDecoder(FrameAutoencoder())  # fp32 whatever the model dtype (load_default)

        decoder_name = "toy autoencoder"
    else:
        config, latent_hw, make_decoder, decoder_name, stride = _wan_parts(options, devices[0], what_if)
        dtype = resolve_dtype(options.dtype, devices[0])
    total = None
    if policy.capacity_frames(chunk) is None:
        n_latent = settings.get("latent_frames")
        if n_latent is None:
            seconds = settings.get("duration") or schedule.total_seconds or 10.0
            frames = max(1, math.ceil(seconds * settings["fps"]))
            n_latent = math.ceil((math.ceil((frames - 1) / stride) + 1) / chunk) * chunk
        total = n_latent // chunk
    extra = ()
    if options.lora is not None and getattr(options, "lora_mode", "merged") == "unmerged":
        rank = options.lora_rank or LONGLIVE_LORA_RANK
        extra = ((f"LoRA adapters (unmerged, rank {rank})", lora_bytes(config, rank, torch.finfo(dtype).bits // 8)),)
    scenario = Scenario(config, tuple(latent_hw), dtype, policy, make_decoder, decoder_name, chunk,
                        prompts=len(schedule.segments), seed=settings.get("seed", 0), total_chunks=total,
                        extra=extra)
    return scenario, devices, decode_device


def _wan_parts(options, device: torch.device, what_if: bool = False):
    """Config, latent size and decoder builder of a real Wan run, from the Wan folder's configs (the
    released sizes for a what-if plan without a folder)."""
    from .models.bundle import resolve_dtype
    from .models.taehv import TAEHVConfig, TAEHVDecoderNet, TAEHVStreamingDecoder
    from .models.vae import WanStreamingDecoder, WanVAEConfig, _build_vae
    from .models.wan_bundle import WanFolder, latent_size, original_vae_config
    from .models.wan_config import wan_config
    from .models.wan_layout import read_dit_config

    if (options.checkpoint is None or options.wan_dir is None) and not what_if:
        raise ValueError(f"--model {options.model} needs --checkpoint and --wan-dir")
    folder = WanFolder.inspect(options.wan_dir) if options.wan_dir is not None else None
    config = read_dit_config(folder.dit_config) if folder and folder.dit_config else wan_config("wan-1.3b")
    dtype = resolve_dtype(options.dtype, device)  # the loader gives the decoder the model's dtype
    if options.decoder == "taehv":
        taehv = TAEHVConfig()

        def make_decoder(dev: torch.device) -> Any:
            with torch.device(dev):
                return TAEHVStreamingDecoder(TAEHVDecoderNet(taehv), dev, dtype)

        factor, name = taehv.spatial_factor, "TAEHV"
    else:
        if folder is None:
            vae_config = WanVAEConfig()
        elif folder.vae_layout == "original":
            vae_config = original_vae_config(folder.root / "Wan2.1_VAE.pth")
        else:
            import json

            raw = json.loads((folder.root / "vae" / "config.json").read_text())
            vae_config = WanVAEConfig.from_diffusers_config(raw, folder.root / "vae" / "config.json")

        def make_decoder(dev: torch.device) -> Any:
            return WanStreamingDecoder(_build_vae(vae_config, dev), vae_config, device=dev, dtype=dtype)

        factor, name = vae_config.spatial_factor, "Wan VAE"
    latent_hw = latent_size(options.height, options.width, factor, config.patch)
    return config, latent_hw, make_decoder, name, 4


def plan_settings(settings: dict[str, Any], what_if: bool = False) -> MemoryPlan:
    """The plan of a ``memrope generate`` run; UserError for settings the run itself would refuse."""
    try:
        scenario, devices, decode_device = scenario_from_settings(settings, what_if)
        return make_plan(scenario, devices, decode_device, fp8=settings.get("fp8"))
    except ValueError as e:  # includes WeightFileError
        raise UserError(str(e)) from None


# --------------------------------------------------------------------------- fitting a device
def parse_size(text: str) -> int:
    """``20GiB``, ``500MB``, ``1.5G`` -> bytes (binary and decimal units; a bare number is bytes)."""
    import re

    units = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
             "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if m is None or m[2].lower() not in units:
        raise argparse.ArgumentTypeError(f"expected a size like 20GiB or 500MB, got {text!r}")
    return int(float(m[1]) * units[m[2].lower()])


def available_bytes(device: str) -> int | None:
    """Free memory of a device now: CUDA's free memory, the host's MemAvailable; None if unknown."""
    dev = torch.device(device.split(" ")[0])
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free * CUDA_HEADROOM)
    if dev.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def check_fits(plan: MemoryPlan, overlapped: bool, budget: int | None = None) -> None:
    """Raise UserError, saying what to change, when a device's peak exceeds its free memory (or ``budget``)."""
    for device, row in plan.devices.items():
        have = budget if budget is not None else available_bytes(device)
        need = plan.peak(device, overlapped)
        if have is None or need <= have:
            continue
        top = sorted(((v, k) for k, v in row.items() if v), reverse=True)[:3]
        biggest = ", ".join(f"{k} {human(v)}" for v, k in top)
        raise UserError(f"the memory plan needs {human(need)} on {device} but {human(have)} "
                        f"{'is the budget' if budget is not None else 'is free'} (largest: {biggest}); "
                        f"{_advice(plan, device, row)} (see memrope plan)")


def human(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def _advice(plan: MemoryPlan, device: str, row: dict[str, int]) -> str:
    d = plan.description
    tips = []
    if d["dtype"] == "float32" and torch.device(device.split(" ")[0]).type == "cuda":
        tips.append("--dtype bfloat16")
    if d["decoder"] == "Wan VAE" and row.get("decoder activations (peak)", 0):
        tips.append("--decoder taehv")
    real = d["decoder"] in ("Wan VAE", "TAEHV")
    if real and len(d["devices"]) == 1:
        tips.append("--split-blocks DEV,DEV or --decode-device DEV")
    if real:
        tips.append("a smaller --height/--width")
    if row.get("KV cache and policy state", 0):
        tips.append("a smaller cache (e.g. --policy-opt cache_size=N, window=N)")
    if d["prompts"] > 1:
        tips.append("fewer prompts")
    return "try " + (", ".join(tips[:-1]) + " or " if len(tips) > 1 else "") + tips[-1]


def format_plan(plan: MemoryPlan, overlapped: bool, budget: int | None = None) -> str:
    d = plan.description
    lines = [f"memory plan: {d['model']} latent {d['latent'][0]}x{d['latent'][1]}, {d['dtype']}, policy {d['policy']}, "
             f"decoder {d['decoder']}, {d['prompts']} prompt(s), devices {', '.join(d['devices'])}"
             + (f", fp8 {d['fp8']}" if d["fp8"] else "") + " (computed on the meta device)", ""]
    for device, row in plan.devices.items():
        have = budget if budget is not None else available_bytes(device)
        need = plan.peak(device, overlapped)
        lines += [f"| {device} | MiB |", "|---|---|"]
        lines += [f"| {k} | {v / 2**20:.1f} |" for k, v in row.items()]
        verdict = "" if have is None else (" fits" if need <= have else " DOES NOT FIT") + \
            f" ({have / 2**20:.0f} MiB {'budget' if budget is not None else 'free'})"
        lines += [f"| **peak{' (decode overlapped)' if overlapped else ''}** | **{need / 2**20:.1f}**{verdict} |", ""]
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines).rstrip()
