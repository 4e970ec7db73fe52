"""``memrope bench``: per-chunk latency, FPS, peak memory and achieved TFLOP/s, per cache policy.

The model has random weights (timing does not depend on their values) at a named size
(``wan-1.3b`` at 832x480 -> latent 60x104 on a GPU; ``toy`` or ``tiny`` on a CPU). Every policy runs
the same chunk loop as generation (:meth:`StreamingGenerator.next_chunk`: 4 read passes, 1 commit
pass, optional decode), on the same model and text, from the same seed.

Reported per policy: the first chunk apart; steady-state median and p90 after ``warmup`` chunks (the
warm-up chunks, which fill the cache and compile, are excluded and the table says how many); two
FPS, never mixed: the *denoising loop* (the transformer's 4 read passes and commit pass of a chunk,
``denoise`` ms) and *end to end* (denoising plus decoding to pixels: the decode follows the passes,
or with ``--overlap-decode`` runs on a worker thread while the next chunk denoises, as ``memrope
generate`` does, and is timed from one yielded chunk to the next); video frames per chunk are the
decoder's own (``VIDEO_FRAMES_PER_LATENT`` x latent frames without a decoder, the Wan VAE's rate);
every table names the hardware, resolution, denoising steps and decoder. Peak memory
(CUDA ``max_memory_allocated`` per policy on a GPU; process peak RSS on the CPU, which is
process-wide); achieved TFLOP/s from the analytic FLOPs of each chunk (:mod:`memrope.cost_model`)
against a matmul peak measured in the same run (bf16 on a GPU, fp32 on the CPU). Ratios of every
policy to ``sliding_window`` and to the reference-style baseline (``memrope_reference_style``, see
:mod:`memrope.cache.reference_style`) are medians of per-chunk paired ratios and ratios of medians.

On a CPU shared with other work, policies run *interleaved* (chunk k of every policy, in an order that
rotates and reverses so that each policy runs first and follows each other equally often, then chunk
k + 1) so that load changes hit all of them alike; on a GPU they run one
after the other so that each has its own peak-memory reading.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import cost_model
from .cache import make_policy
from .cache.policy import CachePolicy
from .cache.reference_style import ReferenceStyle, install, is_reference_style, make_reference_style
from .generate import GenerationConfig, StreamingGenerator
from .host_memory import peak_rss_bytes
from .models.attention import CHOICES as ATTENTION_CHOICES
from .models.fp8 import FP8_MODES
from .models.wan import TextContext, WanModel
from .models.wan_config import wan_config

VIDEO_FRAMES_PER_LATENT = 4  # Wan VAE temporal stride (steady state: 4 video frames per latent frame)
REAL_LATENT_HW = cost_model.REAL_LATENT_HW
REAL_PIXELS_PER_LATENT = 8  # the Wan VAE's (and TAEHV's) spatial stride: the resolution a table states
DEFAULT_POLICIES = ("memrope", "sliding_window", "memrope_reference_style")
BASELINES = ("sliding_window", "memrope_reference_style")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# --------------------------------------------------------------------------- setup
def resolve(device: str, dtype: str | None) -> tuple[torch.device, torch.dtype]:
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but no CUDA device is available")
    if dtype in (None, "auto"):
        return dev, torch.bfloat16 if dev.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be auto or one of {sorted(DTYPES)}, got {dtype!r}")
    return dev, DTYPES[dtype]


def build_model(config_name: str, device: torch.device, dtype: torch.dtype, seed: int) -> WanModel:
    """Random-weight model built directly on ``device``; parameters cast to ``dtype`` except the
    LayerNorm affines, RoPE tables stay fp32 (``Module.to(dtype)`` would cast those buffers too)."""
    cfg = wan_config(config_name)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.device(device):
            model = WanModel(cfg)
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            continue  # WanLayerNorm normalises in fp32; its affine weights stay fp32 (CPU layer_norm
            # refuses an fp32 input with bf16 weights)
        for p in module.parameters(recurse=False):
            p.data = p.data.to(dtype)
    return model.eval().requires_grad_(False)


def random_text(model: WanModel, seed: int) -> TextContext:
    cfg = model.config
    gen = torch.Generator().manual_seed(seed + 1)
    ctx = torch.randn(1, cfg.text_len, cfg.text_dim, generator=gen)
    with torch.no_grad():
        return model.encode_text(ctx)


def bench_policy(name: str) -> CachePolicy:
    """A registered policy or preset, or ``<policy>_reference_style``."""
    if is_reference_style(name):
        return make_reference_style(name)
    return make_policy(name)


DECODERS = ("none", "toy", "wan", "taehv")


def make_decoder(kind: str, model: WanModel, device: torch.device):
    if kind == "none":
        return None
    if kind == "taehv":  # the released TAEHV architecture (taew2_1) with random weights
        from .models.taehv import TAEHVConfig, TAEHVDecoderNet, TAEHVStreamingDecoder

        config = TAEHVConfig()
        if model.config.in_dim != config.latent_channels:
            raise ValueError(f"TAEHV decodes {config.latent_channels} latent channels; model config has "
                             f"{model.config.in_dim} (use --config wan-1.3b)")
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        with torch.device(device):
            net = TAEHVDecoderNet(config)
        return TAEHVStreamingDecoder(net, device, dtype)
    if kind == "toy":
        from .models.toy.decoder import ToyDecoder

        return ToyDecoder(model.config.in_dim)
    if kind == "wan":  # the real Wan2.1 VAE architecture with random weights (needs diffusers)
        from .models.vae import WanStreamingDecoder, WanVAEConfig, _build_vae

        config = WanVAEConfig()
        if model.config.in_dim != config.z_dim:
            raise ValueError(f"the Wan VAE decodes {config.z_dim} latent channels; model config has "
                             f"{model.config.in_dim} (use --config wan-1.3b)")
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        return WanStreamingDecoder(_build_vae(config, device), config, device=device, dtype=dtype)
    raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {kind!r}")


# --------------------------------------------------------------------------- measurements
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype | None = None, n: int | None = None,
                min_seconds: float = 0.5) -> dict[str, Any]:
    """TFLOP/s of a timed large square matmul: bf16 8192^3 on a GPU, fp32 1024^3 on the CPU."""
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if n is None:
        n = 8192 if device.type == "cuda" else 1024
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    for _ in range(2):
        a @ b  # warm-up (cuBLAS heuristics, thread pools)
    sync(device)
    best, iters, total = math.inf, 0, 0.0
    while total < min_seconds or iters < 3:
        t0 = time.perf_counter()
        a @ b
        sync(device)
        dt = time.perf_counter() - t0
        best, iters, total = min(best, dt), iters + 1, total + dt
    flops = 2.0 * n**3
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "iters": iters,
            "best_tflops": flops / best / 1e12, "mean_tflops": flops * iters / total / 1e12}


def rss_bytes() -> dict[str, int]:
    peak = peak_rss_bytes()  # this process's own (ru_maxrss carries a parent's over exec)
    try:
        with open("/proc/self/statm") as f:
            current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        current = -1
    return {"rss_peak_bytes_process": peak, "rss_current_bytes": current}


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100])."""
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def chunk_flops(shape: cost_model.Shape, context_frames: int) -> float:
    reads = cost_model.pass_cost(shape, context_frames).total_flops
    return cost_model.PASSES_PER_CHUNK * reads


def summarise(name: str, chunks: list[dict], warmup: int, shape: cost_model.Shape,
              peak_tflops: float, intervals: list[float] | None = None) -> dict[str, Any]:
    """Per-policy numbers over the chunks after ``warmup``. ``ms`` of a chunk is its denoising plus,
    with a decoder, its decode; ``intervals``: wall time from one yielded chunk to the next (overlapped
    decode), the end-to-end time when given."""
    ms = [c["ms"] for c in chunks]
    steady = chunks[warmup:]
    if not steady:
        raise ValueError(f"{name}: {len(chunks)} chunks leave none after a warm-up of {warmup}")
    decoded = steady[0].get("decode_ms") is not None
    denoise = [c["ms"] - (c.get("decode_ms") or 0.0) for c in steady]
    end_to_end = intervals[warmup:] if intervals else [c["ms"] for c in steady]
    frames = statistics.median(c["video_frames"] for c in steady) if decoded else \
        VIDEO_FRAMES_PER_LATENT * shape.chunk_frames * shape.batch
    median = statistics.median(denoise)
    cpu = [c.get("cpu_ms") for c in steady]
    flops = statistics.mean(chunk_flops(shape, c["cache_frames"]) for c in steady)
    achieved = flops / (median / 1e3) / 1e12
    e2e = statistics.median(end_to_end) if decoded else None
    return {
        "policy": name,
        "first_chunk_ms": ms[0],
        "slowest_warmup_ms": max(ms[:warmup], default=None),
        "steady_chunks": len(steady),
        "video_frames_per_chunk": frames,
        "denoise_median_ms": median,
        "denoise_p90_ms": percentile(denoise, 90),
        "denoise_min_ms": min(denoise),
        # the denoising thread's own CPU time: what contention from other processes does not inflate
        "denoise_cpu_median_ms": statistics.median(cpu) if None not in cpu else None,
        "fps_denoise": frames / (median / 1e3),
        "decode_median_ms": statistics.median(c["decode_ms"] for c in steady) if decoded else None,
        "end_to_end_median_ms": e2e,
        "end_to_end_p90_ms": percentile(end_to_end, 90) if decoded else None,
        "fps_end_to_end": frames / (e2e / 1e3) if decoded else None,
        "tflop_per_chunk": flops / 1e12,
        "achieved_tflops": achieved,
        "fraction_of_matmul_peak": achieved / peak_tflops,
        "cache_bytes": chunks[-1]["cache_bytes"],
        "context_frames": steady[-1]["cache_frames"],
        "max_frame_pos": max(c["max_frame_pos"] for c in chunks),
        "chunk_ms": ms,
        "denoise_ms": [c["ms"] - (c.get("decode_ms") or 0.0) for c in chunks],
        "denoise_cpu_ms": [c.get("cpu_ms") for c in chunks],
    }


def ratios(results: dict[str, dict], baseline: str, warmup: int) -> dict[str, dict[str, float]]:
    """Per policy: ratio of steady denoising medians and median of per-chunk paired ratios vs ``baseline``."""
    if baseline not in results:
        return {}
    base = results[baseline]
    out = {}
    for name, r in results.items():
        if name == baseline:
            continue
        paired = [a / b for a, b in zip(r["denoise_ms"][warmup:], base["denoise_ms"][warmup:], strict=True)]
        out[name] = {"ratio_of_medians": r["denoise_median_ms"] / base["denoise_median_ms"],
                     "median_paired_ratio": statistics.median(paired)}
        if r.get("denoise_cpu_median_ms") and base.get("denoise_cpu_median_ms"):
            cpu = [a / b for a, b in zip(r["denoise_cpu_ms"][warmup:], base["denoise_cpu_ms"][warmup:], strict=True)]
            out[name].update(cpu_ratio_of_medians=r["denoise_cpu_median_ms"] / base["denoise_cpu_median_ms"],
                             cpu_median_paired_ratio=statistics.median(cpu))
    return out


def round_order(policies: list[str] | tuple[str, ...], k: int) -> list[str]:
    """The order of round ``k`` of an interleaved run: the rotations of the list, then the rotations of
    its reverse (a Williams design): no policy always runs first, and each follows every other equally
    often, so one that leaves the caches cold (the reference-style baseline) slows all others alike."""
    n = len(policies)
    order = list(policies) if (k // n) % 2 == 0 else list(reversed(policies))
    r = k % n
    return order[r:] + order[:r]


# --------------------------------------------------------------------------- the run
def run_bench(policies: list[str] | tuple[str, ...] = DEFAULT_POLICIES, config_name: str = "toy",
              latent_hw: tuple[int, int] = (8, 8), chunks: int = 16, warmup: int = 5,
              device: str = "auto", dtype: str | None = None, seed: int = 0, decoder: str = "none",
              order: str = "auto", matmul_n: int | None = None, matmul_seconds: float = 0.5,
              fused: bool = True, attention: str = "default", progress: bool = False, compile: bool = False,
              cuda_graphs: bool = False, fp8: str | None = None, split_blocks: list[str] | None = None,
              overlap_decode: bool = False) -> dict[str, Any]:
    """Benchmark ``policies`` on a random-weight model; returns a JSON-ready dict (see module doc)."""
    if chunks <= warmup:
        raise ValueError(f"chunks ({chunks}) must exceed warmup ({warmup}) to leave steady-state chunks")
    if not policies:
        raise ValueError("name at least one policy")
    if overlap_decode and decoder == "none":
        raise ValueError("--overlap-decode needs a decoder (--decoder toy, wan or taehv)")
    dev, dt = resolve(device, dtype)
    if order == "auto":
        order = "sequential" if dev.type == "cuda" or overlap_decode else "interleaved"
    if order not in ("sequential", "interleaved"):
        raise ValueError(f"order must be auto, sequential or interleaved, got {order!r}")
    if overlap_decode and order != "sequential":
        raise ValueError("--overlap-decode times each policy's own stream: use --order sequential")
    built = {name: bench_policy(name) for name in policies}  # fail on a bad name before any work
    model = build_model(config_name, dev, dt, seed)
    if split_blocks:
        model.split_blocks([torch.device(d) for d in split_blocks])
    text = random_text(model, seed)
    gen_cfg = GenerationConfig(latent_hw=tuple(latent_hw), chunk_frames=3, seed=seed)
    shape = cost_model.shape_for(config_name, tuple(latent_hw), gen_cfg.chunk_frames,
                                 dtype_bytes=torch.finfo(dt).bits // 8)
    peak = matmul_peak(dev, n=matmul_n, min_seconds=matmul_seconds)

    kernels: dict[str, dict[str, Any]] = {}  # per policy: the attention kernel its generator chose
    gens_made: dict[str, StreamingGenerator] = {}

    def generator(name: str) -> StreamingGenerator:
        decode_dev = torch.device(split_blocks[-1]) if split_blocks else dev
        g = StreamingGenerator(model, built[name], text, gen_cfg, decoder=make_decoder(decoder, model, decode_dev),
                               fused=fused, attention=attention, compile=compile, cuda_graphs=cuda_graphs, fp8=fp8)
        kernels[name] = {"kernel": g.attention.name, "auto_timings_ms": g.attention.timings_ms}
        gens_made[name] = g
        return install(g) if isinstance(built[name], ReferenceStyle) else g

    per_chunk: dict[str, list[dict]] = {}
    intervals: dict[str, list[float]] = {}
    memory: dict[str, dict[str, int]] = {}
    steady_state: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    with torch.inference_mode():
        if order == "interleaved":
            gens = {name: generator(name) for name in policies}
            per_chunk = {name: [] for name in policies}
            for k in range(chunks):
                for name in round_order(policies, k):
                    per_chunk[name].append(gens[name].next_chunk().stats)
                if progress:
                    print(f"bench: chunk {k + 1}/{chunks}", file=sys.stderr)
            for name in policies:
                memory[name] = rss_bytes() if dev.type == "cpu" else \
                    {"cuda_max_allocated_bytes_all_policies": torch.cuda.max_memory_allocated(dev)}
            del gens
        else:
            for name in policies:
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(dev)
                g = generator(name)
                if overlap_decode:  # as memrope generate runs: decode of chunk k during chunk k + 1
                    per_chunk[name], stamps = [], [time.perf_counter()]
                    for result in g.stream(chunks, overlap_decode=True):
                        per_chunk[name].append(result.stats)
                        stamps.append(time.perf_counter())
                    intervals[name] = [1e3 * (b - a) for a, b in zip(stamps, stamps[1:])]
                else:
                    per_chunk[name] = [g.next_chunk().stats for _ in range(chunks)]
                memory[name] = {"cuda_max_allocated_bytes": torch.cuda.max_memory_allocated(dev)} \
                    if dev.type == "cuda" else rss_bytes()
                if progress:
                    print(f"bench: {name} done", file=sys.stderr)
                del g
    for name, g in gens_made.items():
        steady_state[name] = {"kernels": g.kernels.name, "cuda_graphs": g.graphs.describe()}
    results = {name: {**summarise(name, per_chunk[name], warmup, shape, peak["best_tflops"], intervals.get(name)),
                      **memory[name], "attention": kernels[name], "steady_state": steady_state[name]}
               for name in policies}
    grid = shape.grid
    return {
        "settings": {"policies": list(policies), "config": config_name, "latent_hw": list(latent_hw),
                     "grid": list(grid), "pixels": [REAL_PIXELS_PER_LATENT * x for x in latent_hw],
                     "chunks": chunks, "warmup": warmup, "device": str(dev),
                     "dtype": str(dt).removeprefix("torch."), "seed": seed, "decoder": decoder,
                     "order": order, "chunk_frames": gen_cfg.chunk_frames,
                     "denoising_steps": len(gen_cfg.sampler.steps),
                     "model_path": "fused" if fused else "module", "attention": attention,
                     "compile": compile, "cuda_graphs": cuda_graphs, "fp8": fp8, "split_blocks": split_blocks,
                     "overlap_decode": overlap_decode, "passes_per_chunk": cost_model.PASSES_PER_CHUNK},
        "machine": machine_info(dev),
        "matmul_peak": peak,
        "results": results,
        "ratios": {f"vs_{b}": ratios(results, b, warmup) for b in BASELINES if b in results},
        "wall_seconds": time.perf_counter() - started,
    }


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                            "cpu_count": os.cpu_count(), "cpu": cpu_name()}
    try:
        info["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def format_table(report: dict[str, Any]) -> str:
    """Markdown table of a :func:`run_bench` report; its header names hardware, resolution, steps, decoder."""
    s, m = report["settings"], report["machine"]
    peak = report["matmul_peak"]
    hardware = m.get("gpu") or f"{m['cpu']} ({m['threads']} thread(s) of {m['cpu_count']} cores)"
    fast = [f for f, on in (("compiled", s.get("compile")), ("CUDA graphs", s.get("cuda_graphs")),
                            (f"fp8 {s.get('fp8')}", s.get("fp8")),
                            (f"split over {s.get('split_blocks')}", s.get("split_blocks"))) if on]
    lines = [f"hardware: {hardware}, torch {m['torch']}, {s['device']} {s['dtype']}; load {m.get('load_average')}",
             f"resolution: {s['config']} at latent {s['latent_hw'][0]}x{s['latent_hw'][1]} "
             f"(= {s['pixels'][1]}x{s['pixels'][0]} pixels through an 8x decoder); {s['denoising_steps']} denoising "
             f"steps + 1 commit pass per {s['chunk_frames']}-latent-frame chunk; decoder: {s['decoder']}"
             + (" (overlapped with the next chunk)" if s.get("overlap_decode") else
                " (after the passes)" if s["decoder"] != "none" else ""),
             f"{s['chunks']} chunks per policy, the first {s['warmup']} excluded as warm-up (cache fill"
             + (", compilation" if s.get("compile") else "") + (", graph capture" if s.get("cuda_graphs") else "")
             + f"); order {s['order']}; {s.get('model_path', 'fused')} path"
             + (f" ({', '.join(fast)})" if fast else "")
             + f"; matmul peak {peak['best_tflops']:.3f} TFLOP/s ({peak['dtype']} {peak['n']}^3)",
             "",
             "| policy | first ms | slowest warm-up ms | denoise median ms | p90 ms | denoise CPU ms | denoise FPS | "
             "decode ms | end-to-end ms | end-to-end FPS | TFLOP/s | % peak | vs sliding_window (CPU time) | "
             "vs reference-style |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    vs_sw = report["ratios"].get("vs_sliding_window", {})
    vs_ref = report["ratios"].get("vs_memrope_reference_style", {})

    def num(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    for name, r in report["results"].items():
        def fmt(d: dict) -> str:
            if not d:
                return "-"
            cpu = f" ({d['cpu_median_paired_ratio']:.3f})" if "cpu_median_paired_ratio" in d else ""
            return f"{d['ratio_of_medians']:.3f} (paired {d['median_paired_ratio']:.3f}){cpu}"
        lines.append(f"| {name} | {r['first_chunk_ms']:.1f} | {num(r['slowest_warmup_ms'], '.1f')} | "
                     f"{r['denoise_median_ms']:.2f} | {r['denoise_p90_ms']:.2f} | "
                     f"{num(r['denoise_cpu_median_ms'], '.2f')} | {r['fps_denoise']:.1f} | "
                     f"{num(r['decode_median_ms'], '.2f')} | {num(r['end_to_end_median_ms'], '.2f')} | "
                     f"{num(r['fps_end_to_end'], '.1f')} | {r['achieved_tflops']:.4f} | "
                     f"{100 * r['fraction_of_matmul_peak']:.1f}% | {fmt(vs_sw.get(name, {}))} | "
                     f"{fmt(vs_ref.get(name, {}))} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line
def _hw(value: str) -> tuple[int, int]:
    try:
        h, w = (int(x) for x in value.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 60x104), got {value!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"expected HxW with both sides >= 1, got {value!r}")
    return h, w


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    from .errors.parser import Parser, non_negative_int, positive_int
    from .models.wan_config import WAN_CONFIGS

    p = parser or Parser(prog="memrope bench", description=__doc__.splitlines()[0])
    p.add_argument("--policies", default=",".join(DEFAULT_POLICIES),
                   help="comma-separated policies/presets; <policy>_reference_style for the reference-style "
                        "baseline")
    p.add_argument("--config", default=None, choices=sorted(WAN_CONFIGS),
                   help="model size (default: wan-1.3b on CUDA, toy on CPU)")
    p.add_argument("--latent", type=_hw, default=None, metavar="HxW",
                   help="latent HxW (default: 60x104 = 832x480 for wan-1.3b, 8x8 otherwise)")
    p.add_argument("--chunks", type=positive_int, default=16, help="chunks per policy")
    p.add_argument("--warmup", type=non_negative_int, default=5,
                   help="chunks excluded from steady state (cache fill); fewer than --chunks")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", choices=("auto", *DTYPES),
                   help="auto: bfloat16 on CUDA, float32 on the CPU")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights, text and noise")
    p.add_argument("--decoder", choices=DECODERS, default="none",
                   help="include a streaming decode in each chunk, for end-to-end FPS (default: transformer only); "
                        "wan and taehv are the real architectures with random weights")
    p.add_argument("--overlap-decode", action="store_true",
                   help="decode chunk k on a worker thread during chunk k + 1, as generate does (end to end from "
                        "one yielded chunk to the next)")
    p.add_argument("--compile", action="store_true", help="torch.compile the fused path (used once the cache is full)")
    p.add_argument("--cuda-graphs", action="store_true", help="replay each pass as a CUDA graph once the cache is full")
    p.add_argument("--fp8", choices=FP8_MODES, default=None, help="float8 matmul weights (torchao)")
    p.add_argument("--split-blocks", type=lambda v: v.split(","), default=None, metavar="DEV,DEV",
                   help="the blocks over two devices (e.g. cuda:0,cuda:1)")
    p.add_argument("--order", choices=["auto", "interleaved", "sequential"], default="auto",
                   help="policies chunk by chunk (interleaved) or one after the other; auto: sequential on CUDA")
    p.add_argument("--matmul-n", type=positive_int, default=None, metavar="N",
                   help="size of the peak-FLOP/s matmul (default: 8192 on CUDA, 1024 on the CPU)")
    p.add_argument("--module-path", action="store_true",
                   help="run the model's module path instead of the fused inference path (to measure "
                        "what fusing saves)")
    p.add_argument("--attention", choices=ATTENTION_CHOICES, default="default",
                   help="SDPA kernel the passes prefer (auto: the fastest for each policy's shapes)")
    p.add_argument("--cost-model", action="store_true",
                   help="also print the cost model at the real shape (no compute)")
    p.add_argument("--out", type=Path, help="also write the full report as JSON here (tables go to stdout)")
    return p


def bench_main(argv: list[str] | None = None) -> int:
    """Tables on stdout, progress on stderr, the JSON report only into ``--out``; every argument checked
    before the model is built."""
    from .errors import UserError
    from .errors.paths import check_output_file

    args = build_parser().parse_args(argv)
    if args.chunks <= args.warmup:
        raise UserError(f"--chunks ({args.chunks}) must exceed --warmup ({args.warmup}) to leave steady-state chunks")
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if not policies:
        raise UserError("--policies names no policy")
    try:
        for name in policies:
            bench_policy(name)
        dev, _ = resolve(args.device, args.dtype)
        if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
            raise ValueError(f"--device {args.device} requested but this machine has {torch.cuda.device_count()} "
                             f"CUDA device(s)")
    except (ValueError, RuntimeError) as e:
        raise UserError(str(e)) from None
    if args.out is not None:
        check_output_file(args.out, "--out")
    config = args.config or ("wan-1.3b" if dev.type == "cuda" else "toy")
    latent = args.latent or (REAL_LATENT_HW if config == "wan-1.3b" else (8, 8))
    try:
        report = run_bench(policies, config, latent, chunks=args.chunks, warmup=args.warmup, device=args.device,
                           dtype=args.dtype, seed=args.seed, decoder=args.decoder, order=args.order,
                           matmul_n=args.matmul_n, fused=not args.module_path, attention=args.attention,
                           progress=True, compile=args.compile, cuda_graphs=args.cuda_graphs, fp8=args.fp8,
                           split_blocks=args.split_blocks, overlap_decode=args.overlap_decode)
    except ValueError as e:  # shapes the model or a policy refuses (e.g. a latent its patch does not divide)
        raise UserError(str(e)) from None
    if args.cost_model:
        real = cost_model.shape_for("wan-1.3b", REAL_LATENT_HW)
        plain = [p for p in policies if not is_reference_style(p)]
        report["cost_model_real_shape"] = cost_model.compare([bench_policy(p) for p in plain], real, names=plain)
        print(cost_model.format_table(report["cost_model_real_shape"]))
        print()
    print(format_table(report))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"bench: report in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from .errors import guarded

    raise SystemExit(guarded(bench_main, prog="memrope bench"))
