"""FLOPs and bytes per chunk, counted from the config and the policy's own plan: no compute.

Everything here is derived from a :class:`~memrope.models.wan_config.WanConfig`, the latent grid and
the cache policy's *plan* (pure Python: which slots move, which frames are evicted, how many past
frames are attended), so it runs at the real Wan2.1-1.3B shape on any laptop.
:func:`meta_flops` cross-checks the analytic FLOPs by running the real forward on the ``meta``
device under ``torch.utils.flop_counter`` (shapes only, no data).

Traffic model ("fused minimum"): every operation reads its inputs once and writes its outputs once
in the cache dtype; attention is flash-style (scores never reach memory); a GELU is fused into its
matmul. Eager PyTorch moves more (fp32 temporaries of norms, modulation and RoPE), so real traffic is
higher for *both* the transformer and the cache work; the ratio is a like-for-like comparison.

A chunk is ``passes`` transformer calls (4 denoising reads + 1 committing pass at t = 0), each over
``chunk_frames * frame_tokens`` query tokens attending to ``context_frames * frame_tokens`` keys.
Cross-attention keys/values of the text are projected once per prompt, not per pass.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field

import torch

from .cache.plan import FRAME, SELECTED, CacheGeometry, ChunkPlan, Clock, after_chunk
from .cache.policy import CachePolicy
from .models.wan_config import WanConfig, wan_config

# 4 denoising passes + 1 committing pass (guandeh17/Self-Forcing@33593df pipeline/causal_inference.py)
PASSES_PER_CHUNK = 5
DTYPE_BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}
# Wan2.1-1.3B at 832x480 with a 12-frame context, counted by hand from the architecture (dim 1536, 30 blocks,
# 1560 tokens per latent frame): the anchors the cost model is checked against (tests/test_cost_model.py).
REFERENCE_TFLOP_PER_CALL = 28.3
REFERENCE_TFLOP_PER_CHUNK = 141.5
REAL_LATENT_HW = (60, 104)  # 480x832 pixels / the Wan VAE's spatial stride 8


@dataclass(frozen=True)
class Shape:
    """Sizes of one chunk's work."""

    config: WanConfig
    grid: tuple[int, int]  # tokens of one latent frame after patching: (h, w)
    chunk_frames: int = 3
    batch: int = 1
    dtype_bytes: int = 2  # bf16

    @property
    def frame_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def query_tokens(self) -> int:
        return self.batch * self.chunk_frames * self.frame_tokens

    def frame_bytes(self) -> int:
        """Bytes of one frame of one per-layer cache tensor ([B, frame_tokens, H, D])."""
        return self.batch * self.frame_tokens * self.config.dim * self.dtype_bytes


def shape_for(config_name: str, latent_hw: tuple[int, int], chunk_frames: int = 3, batch: int = 1,
              dtype_bytes: int = 2) -> Shape:
    cfg = wan_config(config_name)
    _, ph, pw = cfg.patch
    if latent_hw[0] % ph or latent_hw[1] % pw:
        raise ValueError(f"latent size {latent_hw} is not divisible by the patch {(ph, pw)}")
    return Shape(cfg, (latent_hw[0] // ph, latent_hw[1] // pw), chunk_frames, batch, dtype_bytes)


# --------------------------------------------------------------------------- parameters
def linear_params_per_block(cfg: WanConfig) -> dict[str, int]:
    """Weight elements (no biases) of the linears a pass runs per block, by group.

    Cross-attention k/v act on the text once per prompt and are not part of a pass.
    """
    d, f = cfg.dim, cfg.ffn_dim
    return {"self_attn": 4 * d * d, "cross_attn": 2 * d * d, "ffn": 2 * d * f}


@functools.lru_cache(maxsize=8)
def pass_weight_elements(cfg: WanConfig) -> int:
    """Parameter elements one pass reads: every parameter of a meta-device model except those that
    act on the text only (text embedding, cross-attention k/v and their norm), projected per prompt."""
    with torch.device("meta"):
        from .models.wan import WanModel

        model = WanModel(cfg)
    text_only = ("text_embedding.", "cross_attn.k.", "cross_attn.v.", "cross_attn.norm_k.")
    return sum(p.numel() for name, p in model.named_parameters() if not any(t in name for t in text_only))


# --------------------------------------------------------------------------- one transformer pass
@dataclass
class Cost:
    """FLOPs and bytes by category (plain dicts so they serialise to JSON)."""

    flops: dict[str, float] = field(default_factory=dict)
    bytes: dict[str, float] = field(default_factory=dict)

    @property
    def total_flops(self) -> float:
        return float(sum(self.flops.values()))

    @property
    def total_bytes(self) -> float:
        return float(sum(self.bytes.values()))

    def scaled(self, k: float) -> Cost:
        return Cost({n: v * k for n, v in self.flops.items()}, {n: v * k for n, v in self.bytes.items()})

    def plus(self, other: Cost) -> Cost:
        keys_f = set(self.flops) | set(other.flops)
        keys_b = set(self.bytes) | set(other.bytes)
        return Cost({k: self.flops.get(k, 0.0) + other.flops.get(k, 0.0) for k in sorted(keys_f)},
                    {k: self.bytes.get(k, 0.0) + other.bytes.get(k, 0.0) for k in sorted(keys_b)})

    def to_dict(self) -> dict:
        return {"flops": dict(self.flops), "bytes": dict(self.bytes), "total_flops": self.total_flops,
                "total_bytes": self.total_bytes}


def pass_cost(shape: Shape, context_frames: int, commit: bool = False, stores_raw_keys: bool = False) -> Cost:
    """One transformer call over a chunk attending to ``context_frames`` frames (chunk included).

    FLOPs: 2 per multiply-add of the linears (2 * tokens * weight elements), attention QK^T and PV
    (2 * Nq * Nk * dim each), cross-attention over the text, RoPE of q and k (6 FLOPs per channel
    pair). Bytes: the fused-minimum traffic described in the module docstring.
    """
    cfg, b = shape.config, shape.dtype_bytes
    n, d, f = shape.query_tokens, cfg.dim, cfg.ffn_dim
    nk = shape.batch * context_frames * shape.frame_tokens
    t = shape.batch * cfg.text_len
    layers = cfg.num_layers
    lin = linear_params_per_block(cfg)
    flops = {
        "linear": 2.0 * n * sum(lin.values()) * layers,
        "self_attention": 2.0 * 2.0 * n * nk * d * layers,  # QK^T + PV
        "cross_attention": 2.0 * 2.0 * n * t * d * layers,
        "rope": 2 * 3.0 * n * d * layers,  # q and k: 4 mul + 2 add per pair = 3 per channel
        "embed_head": 2.0 * n * (cfg.in_dim * math.prod(cfg.patch) * d
                                  + d * cfg.out_dim * math.prod(cfg.patch)),
        # timestep MLP and projection, once per sample when frames share a step (freq -> d -> d -> 6d);
        # a generator computes it once per timestep and reuses it (WanModel.condition), so this is
        # an upper bound for a pass that is handed a raw timestep
        "time_embedding": 2.0 * shape.batch * (cfg.freq_dim * d + d * d + 6 * d * d),
    }
    nd = n * d
    # Per block, in units of n*d elements (read + write), fused: norm1+modulate 2, fused QKV 4,
    # q/k norm + rope 4, scratch K/V write 2, attention q in + out 2, o-proj 2, gate+residual 3,
    # norm3 2, cross q 2, cross q-norm 2, cross attention q + out 2, cross o 2, residual 3,
    # norm2+modulate 2, ffn in 1 and out 1, gate+residual 3.
    act_nd = 2 + 4 + 4 + 2 + 2 + 2 + 3 + 2 + 2 + 2 + 2 + 2 + 3 + 2 + 1 + 1 + 3
    bytes_ = {
        "weights": float(pass_weight_elements(cfg) * b),
        "activations": float((act_nd * nd + 2 * n * f) * b * layers),  # + ffn hidden written and read
        "kv_read": float(2 * nk * d * b * layers),
        "text_kv_read": float(2 * t * d * b * layers),
    }
    if commit and stores_raw_keys:
        bytes_["raw_key_write"] = float(nd * b * layers)  # unrotated keys kept for re-indexing
    return Cost(flops, bytes_)


# --------------------------------------------------------------------------- the policy's plan
def steady_plan(policy: CachePolicy, chunk_frames: int = 3, max_chunks: int = 64) -> ChunkPlan:
    """The plan of a steady-state chunk, by running the policy's planning (pure Python) forward.

    Steady state: the first chunk whose plan has the same past length, moves and evictions as the
    chunk before it. Unbounded policies never settle; for them the plan at ``max_chunks`` is returned.
    """
    return steady_plans(policy, chunk_frames, max_chunks)[1]


def steady_plans(policy: CachePolicy, chunk_frames: int = 3, max_chunks: int = 64) -> tuple[ChunkPlan, ChunkPlan]:
    """(the chunk before, the steady chunk) of :func:`steady_plan`: the first tells where each slot of
    the second's past was seen before (what a ring buffer must shift)."""
    slots: tuple = ()
    clock = Clock()
    prev_sig = None
    previous = plan = None
    for _ in range(max_chunks):
        previous, plan = plan, policy.plan(slots, clock, chunk_frames)
        sig = (plan.n_past, plan.sources, plan.evicted, plan.dropped, tuple(s.kind for s in plan.past))
        if sig == prev_sig:
            return previous, plan
        prev_sig = sig
        slots, clock = after_chunk(plan, clock)
    return previous, plan


def fold_state_bytes(policy: CachePolicy, shape: Shape) -> float:
    """Bytes of one layer's policy state (``allocate_extra`` on the meta device): what a fold reads and
    writes once (MemRoPE's memories: one vector per head with ``global`` reduction, fp32 frames with
    ``spatial``; EMA-Sink's raw sink, three frames of keys and of values)."""
    cfg = shape.config
    dtype = {2: torch.bfloat16, 4: torch.float32}[shape.dtype_bytes]
    geo = CacheGeometry(num_layers=1, batch=shape.batch, heads=cfg.num_heads, head_dim=cfg.head_dim,
                        grid=shape.grid, chunk_frames=shape.chunk_frames, dtype=dtype, device="meta")
    return float(sum(t.numel() * t.element_size() for t in policy.allocate_extra(geo).values()))


def moved_slots(plan: ChunkPlan) -> int:
    return sum(1 for dst, src in enumerate(plan.sources) if src is not None and src != dst)


def runs_on_ring(policy: CachePolicy, chunk_frames: int = 3) -> bool:
    from .cache.ring import ring_supported

    return ring_supported(policy, chunk_frames)


def cache_work(policy: CachePolicy, plan: ChunkPlan, shape: Shape, previous: ChunkPlan | None = None) -> Cost:
    """Once-per-chunk cache maintenance of ``plan`` as the cache the policy runs on performs it
    (``cache.ring.make_cache``: the ring buffer where the policy supports it, else slot order);
    ``previous``: the chunk before (the positions the ring's frames were last seen at)."""
    if runs_on_ring(policy, shape.chunk_frames):
        return ring_work(policy, plan, shape, previous)
    return slot_order_work(policy, plan, shape, previous)


def _repositioned(plan: ChunkPlan, previous: ChunkPlan | None) -> int:
    """Frames of ``plan``'s past whose position differs from the one they were seen at in the chunk
    before (without ``previous``: those that moved slot)."""
    seen_at = None if previous is None else previous.past_pos + previous.query_pos
    return sum(1 for dst, src in enumerate(plan.sources) if src is not None and plan.past[dst].kind == FRAME
               and (src != dst if seen_at is None else plan.past_pos[dst] != seen_at[src]))


def slot_order_work(policy: CachePolicy, plan: ChunkPlan, shape: Shape, previous: ChunkPlan | None = None) -> Cost:
    """Cache work of ``base.KVCache`` (slot order):

    - compaction moves: every moved slot of every per-layer tensor (k, v, and the unrotated k_raw of
      ``rotate_at_read`` policies) is read and written once (fused minimum; the indexed copy in
      ``KVCache._move`` gathers into a temporary first, i.e. twice that).
    - rotation of the past (``rotate_at_read``): k_raw of every past slot read, k written.
    - memory (policies with memory slots): evicted frames' k_raw and v read for the EMA, the
      policy's state (the memories themselves, :func:`fold_state_bytes`) read and written, memory
      tokens written into their slots (k_raw and v).
    - the commit pass writes the unrotated keys of the chunk (``rotate_at_read``).
    - keys stored rotated whose planned position changed since the chunk before (Deep Forcing's
      phase-shifted sink, ``KVCache._reposition``): their temporal channel pairs read and written.
    - token selection (a ``deferred`` plan with selected slots, Deep Forcing's compression): the
      candidates' keys read once for the scores, the selected tokens' keys and values gathered
      (read and written); the scoring queries (a few frames' worth, per layer) are not counted.
    """
    from .rope import axis_split

    cfg, fb = shape.config, shape.frame_bytes()
    layers = cfg.num_layers
    raw = policy.rotate_at_read
    t_frac = axis_split(cfg.head_dim)[0] / cfg.head_dim
    shifted = 0 if raw else _repositioned(plan, previous)
    selected = sum(1 for s in plan.past if s.kind == SELECTED) if plan.deferred else 0
    tensors = 3 if raw else 2
    moved = moved_slots(plan)
    memory_slots = sum(1 for s in plan.past if s.kind != FRAME and s.kind != "selected")
    folded = [i for i in plan.evicted if i not in plan.dropped] if memory_slots else []
    bytes_ = {
        "moves": float(2 * moved * tensors * fb * layers),
        "rotate_past": float(2 * plan.n_past * fb * layers) if raw else 0.0,
        "ema_read": float(2 * len(folded) * fb * layers),
        "fold_state": float(2 * fold_state_bytes(policy, shape) * layers) if folded else 0.0,
        "memory_write": float(2 * memory_slots * fb * layers) if plan.evicted else 0.0,
        "raw_key_write": float(shape.chunk_frames * fb * layers) if raw else 0.0,
        "shift_temporal": float(2 * shifted * fb * t_frac * layers),
        "selection_scores": float(len(plan.evicted) * fb * layers) if selected else 0.0,
        "selection_gather": float(2 * 2 * selected * fb * layers),
    }
    ft_d = shape.batch * shape.frame_tokens * cfg.dim
    flops = {
        "rotate_past": float(3 * plan.n_past * ft_d * layers) if raw else 0.0,
        "ema": float(2 * len(folded) * ft_d * layers + 3 * 2 * memory_slots * cfg.dim * layers),
        "shift_temporal": float(3 * shifted * ft_d * t_frac * layers),
        "selection_scores": float(2 * len(plan.evicted) * ft_d * layers) if selected else 0.0,
    }
    return Cost(flops, bytes_)


def ring_work(policy: CachePolicy, plan: ChunkPlan, shape: Shape, previous: ChunkPlan | None = None) -> Cost:
    """Cache work of ``ring.RingKVCache``:

    - nothing moves (physical slots), no unrotated keys are kept;
    - past frames whose position changed since the chunk before have their temporal channel pairs
      rotated by the difference: read and written, a ``t / head_dim`` share of a frame's keys (with
      absolute positions, as for the sliding window and the attention sink, no frame ever changes;
      without ``previous``, every slot that moved in the logical plan counts as changed);
    - memory tokens written rotated (k) and as values (v) into their slots; the fold reads the
      policy's state and writes it back (:func:`fold_state_bytes`), and the evicted frames: with
      ``ring_fold == "means"`` their per-frame means (one fp32 vector per head and frame, for k and
      v), which the commit pass writes for the chunk's frames (only policies that fold evicted frames
      keep them); with ``"frames"`` (per-position folds) the frames' keys and values themselves, the
      keys un-rotated on the fly.
    """
    from .rope import axis_split

    cfg, fb = shape.config, shape.frame_bytes()
    layers = cfg.num_layers
    t_frac = axis_split(cfg.head_dim)[0] / cfg.head_dim
    shifted = _repositioned(plan, previous)
    memory_slots = sum(1 for s in plan.past if s.kind != FRAME)
    folded = [i for i in plan.evicted if i not in plan.dropped] if memory_slots else []
    mean_bytes = shape.batch * cfg.dim * 4  # one fp32 vector per head, all heads
    per_frame = policy.ring_storage and policy.ring_fold == "frames"
    # only policies that fold evicted frames from means keep them (RingKVCache.keeps_means)
    means = bool(folded) and not per_frame
    bytes_ = {
        "shift_temporal": float(2 * shifted * fb * t_frac * layers),
        "memory_write": float(2 * memory_slots * fb * layers) if plan.evicted else 0.0,
        "means": float(2 * (len(folded) + shape.chunk_frames) * mean_bytes * layers) if means else 0.0,
        "fold_read": float(2 * len(folded) * fb * layers) if per_frame else 0.0,
        "fold_state": float(2 * fold_state_bytes(policy, shape) * layers) if folded else 0.0,
    }
    ft_d = shape.batch * shape.frame_tokens * cfg.dim
    flops = {
        "shift_temporal": float(3 * shifted * ft_d * t_frac * layers),
        "memory_rotate": float(3 * memory_slots * ft_d * layers) if plan.evicted else 0.0,
        "fold_unrotate": float(3 * len(folded) * ft_d * layers) if per_frame else 0.0,
    }
    return Cost(flops, bytes_)


def reference_style_work(plan: ChunkPlan, shape: Shape, capacity_frames: int,
                         passes: int = PASSES_PER_CHUNK, syncs_per_layer: int = 5) -> dict:
    """Extra traffic per chunk of :class:`~memrope.cache.reference_style.ReferenceStyleCache`
    (eager, op by op as it runs), on top of the wrapped policy's own work.

    Per layer and pass: clone k_raw and v (whole capacity), write the chunk's raw keys into the
    clone, keys to float64, complex table assembled (complex128), complex multiply, concatenation
    with the (empty) tail, stack over samples, ``.float()`` and the cast back to the cache dtype.
    Host syncs: ``syncs_per_layer`` ``.item()`` plus one ``.tolist()`` per layer and pass.
    The queries and the chunk's keys are also rotated in float64 by the model's own ``apply_rope``
    (float64 tables); that work, the same size as the chunk, is not counted here.
    """
    cfg, b = shape.config, shape.dtype_bytes
    ctx = plan.n_past + plan.n_frames
    e = shape.batch * ctx * shape.frame_tokens * cfg.dim  # elements of the rotated context
    cap = capacity_frames * shape.frame_bytes()
    chunk = shape.chunk_frames * shape.frame_bytes()
    table = ctx * shape.frame_tokens * (cfg.head_dim // 2) * 16
    per = {
        "clone_k_raw_v": 2 * 2 * cap,
        "chunk_into_clone": 2 * chunk,
        "to_float64": e * (b + 8),
        "complex_table": table,
        "complex_multiply": 2 * e * 8 + table,
        "cat_tail": 2 * e * 8,
        "stack": 2 * e * 8,
        "to_float32": e * (8 + 4),
        "cast_back": e * (4 + b) if b != 4 else 0,
    }
    scale = passes * cfg.num_layers
    return {"bytes": {k: float(v * scale) for k, v in per.items()},
            "total_bytes": float(sum(per.values()) * scale),
            "host_syncs": (syncs_per_layer + 1) * scale}


# --------------------------------------------------------------------------- a chunk
def steady_cycle(policy: CachePolicy, chunk_frames: int = 3, max_chunks: int = 64,
                 max_period: int = 8) -> list[tuple[ChunkPlan, ChunkPlan]]:
    """(the chunk before, the chunk) for each chunk of one period of the steady state: policies whose
    steady chunks differ (Deep Forcing compresses every other chunk: 16 and 19 frames) are averaged
    over the period. Found after ``max_chunks`` chunks as the shortest period (up to ``max_period``)
    over which the plans repeat; an unbounded policy, which never repeats, gives its last chunk."""
    slots: tuple = ()
    clock = Clock()
    plans: list[ChunkPlan] = []
    for _ in range(max_chunks):
        plans.append(policy.plan(slots, clock, chunk_frames))
        slots, clock = after_chunk(plans[-1], clock)
    sigs = [(p.n_past, p.sources, p.evicted, p.dropped, p.deferred, tuple(s.kind for s in p.past),
             tuple(b - p.first_frame if b >= 0 else b for b in p.past_pos)) for p in plans]
    period = next((k for k in range(1, max_period + 1) if sigs[-k:] == sigs[-2 * k:-k]), 1)
    return [(plans[i - 1], plans[i]) for i in range(len(plans) - period, len(plans))]


def chunk_report(policy: CachePolicy, shape: Shape, passes: int = PASSES_PER_CHUNK) -> dict:
    """Steady-state FLOPs and bytes per chunk of ``policy`` at ``shape``: transformer and cache work,
    averaged over the steady cycle (:func:`steady_cycle`)."""
    cycle = steady_cycle(policy, shape.chunk_frames)
    contexts = [plan.n_past + plan.n_frames for _, plan in cycle]
    transformer, cache, call = Cost(), Cost(), Cost()
    for (previous, plan), context in zip(cycle, contexts, strict=True):
        reads = pass_cost(shape, context).scaled(passes - 1)
        commit = pass_cost(shape, context, commit=True, stores_raw_keys=False)
        transformer = transformer.plus(reads.plus(commit).scaled(1 / len(cycle)))
        cache = cache.plus(cache_work(policy, plan, shape, previous).scaled(1 / len(cycle)))
        call = call.plus(pass_cost(shape, context).scaled(1 / len(cycle)))
    plan = cycle[-1][1]
    ring = runs_on_ring(policy, shape.chunk_frames)
    return {
        "policy": policy.name,
        "storage": "ring" if ring else "slot order",
        "context_frames": max(contexts),
        "context_frames_cycle": contexts,
        "moved_slots": 0 if ring else moved_slots(plan),
        "evicted": len(plan.evicted),
        "transformer": transformer.to_dict(),
        "cache": cache.to_dict(),
        "cache_bytes_fraction": cache.total_bytes / transformer.total_bytes,
        # Sensitivity: against the traffic no fusion can remove (weights + K/V + text K/V reads).
        "cache_bytes_fraction_of_weights_and_kv": cache.total_bytes / (
            transformer.total_bytes - transformer.bytes["activations"]),
        "tflop_per_call": call.total_flops / 1e12,
        "tflop_per_chunk": transformer.total_flops / 1e12,
        "gb_per_chunk": transformer.total_bytes / 1e9,
        "reference_style": reference_style_work(plan, shape, policy.capacity_frames(shape.chunk_frames)
                                                or max(contexts), passes),
    }


def compare(policies: list[CachePolicy], shape: Shape, baseline: str = "sliding_window",
            names: list[str] | None = None) -> dict:
    """Per-policy chunk reports plus each policy's cache bytes in excess of ``baseline``'s; rows are
    keyed by ``names`` (presets share their policy's name) or the policies' names."""
    names = names or [p.name for p in policies]
    if len(set(names)) != len(names):
        raise ValueError(f"cost model: rows need distinct names, got {names}")
    rows = {n: chunk_report(p, shape) for n, p in zip(names, policies, strict=True)}
    base = rows.get(baseline)
    for row in rows.values():
        if base is not None:
            extra = row["cache"]["total_bytes"] - base["cache"]["total_bytes"]
            row[f"extra_bytes_vs_{baseline}"] = extra
            row[f"extra_bytes_vs_{baseline}_fraction"] = extra / row["transformer"]["total_bytes"]
    return {"shape": {"config": asdict(shape.config), "grid": list(shape.grid),
                      "chunk_frames": shape.chunk_frames, "batch": shape.batch,
                      "dtype_bytes": shape.dtype_bytes},
            "reference_check": {"reference_tflop_per_call": REFERENCE_TFLOP_PER_CALL,
                                "reference_tflop_per_chunk": REFERENCE_TFLOP_PER_CHUNK},
            "policies": rows}


# --------------------------------------------------------------------------- meta-device cross-check
def meta_flops(config_name: str, latent_hw: tuple[int, int], policy: CachePolicy, chunks: int = 1,
               chunk_frames: int = 3) -> list[float]:
    """FLOPs of one pass per chunk, counted by ``torch.utils.flop_counter`` on the meta device.

    Builds the real model (no storage), a real KVCache on ``meta`` and runs one read pass per chunk
    followed by a commit pass, counting matmul/attention FLOPs of the read pass only.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from .cache.ring import make_cache
    from .models.wan import WanModel

    cfg = wan_config(config_name)
    with torch.device("meta"):
        model = WanModel(cfg).eval().requires_grad_(False)
    geo = model.cache_geometry(1, latent_hw, chunk_frames)
    cache = make_cache(policy, geo, model.rope)
    text_ctx = torch.empty(1, cfg.text_len, cfg.text_dim, device="meta")
    out = []
    with torch.no_grad():
        text = model.encode_text(text_ctx)
        x = torch.empty(1, cfg.in_dim, chunk_frames, *latent_hw, device="meta")
        t = torch.empty(1, device="meta")
        for _ in range(chunks):
            cache.begin_chunk(chunk_frames)
            counter = FlopCounterMode(display=False)
            with counter:
                model(x, t, text, cache)
            out.append(float(counter.get_total_flops()))
            model(x, t, text, cache, commit=True)
            cache.end_chunk()
    return out


def format_table(report: dict) -> str:
    """Markdown table of a :func:`compare` report."""
    lines = ["| policy | storage | ctx frames | TFLOP/call | TFLOP/chunk | transformer GB/chunk | cache GB/chunk | "
             "cache / transformer | extra vs sliding_window |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["policies"].items():
        extra = r.get("extra_bytes_vs_sliding_window_fraction")
        ctx = "/".join(map(str, r.get("context_frames_cycle", [r["context_frames"]])))
        lines.append(
            f"| {name} | {r['storage']} | {ctx} | {r['tflop_per_call']:.2f} | "
            f"{r['tflop_per_chunk']:.1f} | "
            f"{r['gb_per_chunk']:.1f} | {r['cache']['total_bytes'] / 1e9:.2f} | "
            f"{100 * r['cache_bytes_fraction']:.2f}% | "
            f"{'n/a' if extra is None else f'{100 * extra:.2f}%'} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> None:
    """``python -m memrope.cost_model [--policies a,b] [--latent HxW]``: the table at Wan2.1-1.3B's
    shape for the named policies (default: every registered policy with a bounded cache)."""
    import argparse

    from .cache.registry import POLICIES, make_policy

    p = argparse.ArgumentParser(prog="python -m memrope.cost_model", description=main.__doc__)
    p.add_argument("--policies", help="comma-separated policy or preset names (default: every bounded policy)")
    p.add_argument("--latent", default="x".join(map(str, REAL_LATENT_HW)), help="latent grid HxW (default 60x104)")
    args = p.parse_args(argv)
    try:
        latent = tuple(int(v) for v in args.latent.lower().split("x"))
        if len(latent) != 2 or min(latent) < 1:
            raise ValueError
    except ValueError:
        p.error(f"--latent takes HxW with positive integers, e.g. 60x104; got {args.latent!r}")
    names = [n.strip() for n in args.policies.split(",")] if args.policies else sorted(POLICIES)
    try:
        policies = [make_policy(n) for n in names]
    except (KeyError, ValueError) as e:
        p.error(str(e).strip("'\""))
    shape = shape_for("wan-1.3b", latent)
    bounded = [(n, pol) for n, pol in zip(names, policies, strict=True)
               if pol.capacity_frames(shape.chunk_frames) is not None]
    print(format_table(compare([pol for _, pol in bounded], shape, names=[n for n, _ in bounded])))


if __name__ == "__main__":
    main()
