"""Slow, independent re-implementations of every cache method, written from the released code's
semantics (each class cites what it follows), for ``test_released_semantics.py``.

Nothing here uses memrope's cache machinery (plans, slots, storage, RoPE tables): every layer holds
an explicit list of tokens (unrotated keys, values, the temporal position each token is seen at and
its spatial index in its frame), each method edits that list the way its release edits its cache,
and every pass attends to the list rotated afresh in float64 from the RoPE formula at those explicit
positions. A ``Reference`` speaks the protocol the generator drives (``begin_chunk``, ``update``,
``end_chunk``, ``switch``, ``begin_replay``), so the same engine, model and noise run over either.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from memrope.rope import RopeFreqs

THETA = 10000.0


# --------------------------------------------------------------------------- RoPE from its formula
def axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Wan's channels per axis: d - 4 (d // 6) temporal, 2 (d // 6) each spatial."""
    spatial = 2 * (head_dim // 6)
    return head_dim - 2 * spatial, spatial, spatial


def angles(pos: torch.Tensor, tok: torch.Tensor, grid: tuple[int, int], head_dim: int, heads: int,
           head_theta: torch.Tensor | None) -> torch.Tensor:
    """float64 angles [B, n, H, D/2] of tokens at temporal ``pos`` [B, n] and spatial index ``tok`` [B, n]."""
    dt, dh, dw = axis_dims(head_dim)
    row, col = (tok // grid[1]).double(), (tok % grid[1]).double()
    theta_t = head_theta if head_theta is not None else torch.full((heads,), THETA, dtype=torch.float64)
    inv_t = 1.0 / theta_t[:, None] ** (torch.arange(0, dt, 2, dtype=torch.float64) / dt)  # [H, dt/2]
    inv_h = 1.0 / THETA ** (torch.arange(0, dh, 2, dtype=torch.float64) / dh)
    inv_w = 1.0 / THETA ** (torch.arange(0, dw, 2, dtype=torch.float64) / dw)
    a_t = pos.double()[..., None, None] * inv_t  # [B, n, H, dt/2]
    a_h = (row[..., None] * inv_h)[:, :, None].expand(-1, -1, heads, -1)
    a_w = (col[..., None] * inv_w)[:, :, None].expand(-1, -1, heads, -1)
    return torch.cat([a_t, a_h, a_w], dim=-1)


def rotate(x: torch.Tensor, pos: torch.Tensor, tok: torch.Tensor, grid: tuple[int, int],
           head_theta: torch.Tensor | None = None) -> torch.Tensor:
    """x [B, n, H, D] rotated in float64 at explicit positions, returned as fp32."""
    b, n, h, d = x.shape
    a = angles(pos, tok, grid, d, h, head_theta)
    pairs = torch.view_as_complex(x.double().reshape(b, n, h, d // 2, 2).contiguous())
    return torch.view_as_real(pairs * torch.polar(torch.ones_like(a), a)).reshape(b, n, h, d).float()


# --------------------------------------------------------------------------- the protocol
class Reference:
    """Per layer: k, v [B, T, H, D] (unrotated keys), pos [B, T] (float64), tok [B, T], frame [T]
    (-1: not a frame), uses [B, T] (Deep Forcing's selection counts). Subclasses decide."""

    relative = False  # positions = frame slot in the list (infinity-RoPE style) instead of ``pos``
    recaches = False

    def __init__(self, batch: int, heads: int, head_dim: int, grid: tuple[int, int], layers: int, chunk: int):
        self.batch, self.heads, self.head_dim, self.grid, self.chunk = batch, heads, head_dim, grid, chunk
        self.ft = grid[0] * grid[1]
        self.geometry = SimpleNamespace(grid=grid, frame_tokens=self.ft, device=torch.device("cpu"),
                                        num_layers=layers)
        self.clock = SimpleNamespace(chunks=0, frames=0)
        self.policy = SimpleNamespace(recaches_on_switch=self.recaches)
        self.cache = [self.empty() for _ in range(layers)]
        self.plan = None
        self.cut = None  # query positions of the chunk after a RoPE cut

    def empty(self) -> dict:
        b, h, d = self.batch, self.heads, self.head_dim
        return {"k": torch.zeros(b, 0, h, d), "v": torch.zeros(b, 0, h, d), "pos": torch.zeros(b, 0).double(),
                "tok": torch.zeros(b, 0, dtype=torch.long), "frame": torch.zeros(0, dtype=torch.long),
                "uses": torch.zeros(b, 0, dtype=torch.long)}

    # -- what a subclass describes
    def frames_cached(self) -> list[int]:
        return [int(f) for f in self.cache[0]["frame"][:: self.ft] if f >= 0]

    def n_frames_cached(self, layer: int = 0) -> int:
        return self.cache[layer]["k"].shape[1] // self.ft

    def query_positions(self, n: int) -> list[int]:
        if self.cut is not None:
            return self.cut
        if self.relative:
            return [self.n_frames_after_prepare(n) + j for j in range(n)]
        return [self.first + j for j in range(n)]

    def n_frames_after_prepare(self, n: int) -> int:
        return self.n_frames_cached()

    def prepare(self, layer: int, k_raw: torch.Tensor, q_raw: torch.Tensor) -> None:
        """First pass of a chunk, before attention: what the release does to its cache."""

    def head_theta(self) -> torch.Tensor | None:
        return None

    # -- generator protocol
    @property
    def slots(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(frame_idx=f) for f in self.frames_cached()]

    def nbytes(self) -> int:
        return 0

    def parts(self) -> list[tuple[int, Reference]]:
        return [(0, self)]  # (first layer, cache): every layer on one device

    def begin_chunk(self, n: int, replay: tuple[int, ...] = ()) -> SimpleNamespace:
        self.replay = replay
        self.first = replay[0] if replay else self.clock.frames
        self.positions = self.replay_positions(replay) if replay else self.query_positions(n)
        self.prepared = [bool(replay)] * len(self.cache)
        tok = torch.arange(self.ft).repeat(n)[None]  # [1, n * ft]
        pos = torch.tensor(self.positions, dtype=torch.float64).repeat_interleave(self.ft)[None]
        a = angles(pos, tok, self.grid, self.head_dim, self.heads, self.head_theta())[0]  # [L, H, D/2]
        if self.head_theta() is None:
            a = a[:, 0]
        self.query_freqs = RopeFreqs(cos=a.cos().float(), sin=a.sin().float())
        self.plan = SimpleNamespace(chunk_index=self.clock.chunks, first_frame=self.first, n_frames=n,
                                    n_past=self.n_frames_cached(), max_frame_pos=max(self.positions),
                                    query_pos=tuple(self.positions), evicted=())
        return self.plan

    def replay_positions(self, frames: tuple[int, ...]) -> list[int]:
        n = self.n_frames_cached()
        return [n + j for j in range(len(frames))] if self.relative else list(frames)

    def begin_replay(self, frames: tuple[int, ...]) -> SimpleNamespace:
        return self.begin_chunk(len(frames), replay=tuple(frames))

    def on_pass(self, layer: int, q_raw: torch.Tensor) -> None:
        """Every pass, before anything else (Deep Forcing keeps its queries)."""

    def update(self, layer, k_rot, v, k_raw=None, commit=False, q_raw=None):
        self.on_pass(layer, q_raw)
        if not self.prepared[layer]:
            self.prepare(layer, k_raw, q_raw)
            self.prepared[layer] = True
        c = self.cache[layer]
        if self.relative:  # every entry is a whole frame: its slot is its position
            past_pos = (torch.arange(c["k"].shape[1]) // self.ft).double()[None].expand(self.batch, -1)
        else:
            past_pos = c["pos"]
        theta = self.head_theta()
        keys = torch.cat([rotate(c["k"], past_pos, c["tok"], self.grid, theta), self.rotate_chunk(k_raw, theta)], 1)
        values = torch.cat([c["v"], v.float()], 1)
        if commit:
            self.commit(layer, k_raw, v)
        return keys, values

    def rotate_chunk(self, k_raw: torch.Tensor, theta) -> torch.Tensor:
        n = len(self.positions)
        pos = torch.tensor(self.positions, dtype=torch.float64).repeat_interleave(self.ft)[None].expand(self.batch, -1)
        tok = torch.arange(self.ft).repeat(n)[None].expand(self.batch, -1)
        return rotate(k_raw, pos, tok, self.grid, theta)

    def commit(self, layer: int, k_raw: torch.Tensor, v: torch.Tensor) -> None:
        n = len(self.positions)
        frames = self.replay or tuple(range(self.first, self.first + n))
        self.append(layer, k_raw, v, torch.tensor(frames, dtype=torch.float64), torch.tensor(frames))

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, frame: torch.Tensor) -> None:
        """Whole frames at positions ``pos`` [F] labelled ``frame`` [F]."""
        c, ft = self.cache[layer], self.ft
        n = k.shape[1] // ft
        c["k"], c["v"] = torch.cat([c["k"], k.float()], 1), torch.cat([c["v"], v.float()], 1)
        c["pos"] = torch.cat([c["pos"], pos.repeat_interleave(ft)[None].expand(self.batch, -1)], 1)
        c["tok"] = torch.cat([c["tok"], torch.arange(ft).repeat(n)[None].expand(self.batch, -1)], 1)
        c["frame"] = torch.cat([c["frame"], frame.repeat_interleave(ft)])
        c["uses"] = torch.cat([c["uses"], torch.zeros(self.batch, n * ft, dtype=torch.long)], 1)

    def keep_frames(self, layer: int, frames: list[int]) -> None:
        """Keep frame blocks (by their index in the list), in this order."""
        idx = torch.cat([torch.arange(i * self.ft, (i + 1) * self.ft) for i in frames]) if frames \
            else torch.zeros(0, dtype=torch.long)
        self.keep_tokens(layer, idx[None].expand(self.batch, -1))

    def keep_tokens(self, layer: int, idx: torch.Tensor) -> None:
        """Keep tokens ``idx`` [B, n] (per sample), in this order."""
        c = self.cache[layer]
        g = idx[:, :, None, None].expand(-1, -1, self.heads, self.head_dim)
        c["k"], c["v"] = torch.gather(c["k"], 1, g), torch.gather(c["v"], 1, g)
        for key in ("pos", "tok", "uses"):
            c[key] = torch.gather(c[key], 1, idx)
        c["frame"] = c["frame"][idx[0]]

    def end_chunk(self) -> SimpleNamespace:
        plan, self.plan = self.plan, None
        if not self.replay:
            self.clock.chunks += 1
            self.clock.frames += plan.n_frames
            self.cut = None
        return plan

    def switch(self, cut: bool = False) -> SimpleNamespace:
        return SimpleNamespace(keep=tuple(range(self.n_frames_cached())), recache=(), action="keep", pos_shift=0)

    def drop_for_replay(self, frames: list[int]) -> None:
        """Remove the frames about to be re-encoded (they come back, re-encoded, at the end)."""
        for layer in range(len(self.cache)):
            labels = self.frames_by_slot(layer)
            self.keep_frames(layer, [i for i, f in enumerate(labels) if f not in frames])

    def frames_by_slot(self, layer: int) -> list[int]:
        return [int(f) for f in self.cache[layer]["frame"][:: self.ft]]


# --------------------------------------------------------------------------- the methods
class Full(Reference):
    """Self-Forcing with ``local_attn_size = -1`` (guandeh17/Self-Forcing@33593df): everything, absolute."""


class Window(Reference):
    """Self-Forcing's rolling window / LongLive's frame sink (NVlabs/LongLive@2462895
    ``wan/modules/causal_model.py``): when the cache plus the chunk exceeds ``window`` frames, the
    oldest frames after the ``sink`` roll out. ``relative``: ``causal_model_infinity.py``. A prompt
    switch is LongLive's ``_recache_after_switch`` with ``global_sink``: the last min(window, t) frames
    in one pass, sink slots protected only when the pass starts after frame 0."""

    recaches = True

    def __init__(self, *a, window: int, sink: int, relative: bool = False, **kw):
        super().__init__(*a, **kw)
        self.window, self.sink, self.relative = window, sink, relative

    def n_frames_after_prepare(self, n: int) -> int:
        return min(self.n_frames_cached(), self.window - n)

    def prepare(self, layer, k_raw, q_raw):
        n = self.n_frames_cached(layer)
        over = n + self.chunk - self.window
        if over > 0:
            self.keep_frames(layer, list(range(self.sink)) + list(range(self.sink + over, n)))

    def switch(self, cut=False):
        t = self.clock.frames
        frames = self.frames_cached()
        protect = self.sink if t > self.window else 0  # recompute starts after frame 0: sink protected
        recache = frames[protect:]
        self.drop_for_replay(recache)
        return SimpleNamespace(keep=tuple(range(protect)), recache=tuple(recache), action="recache", pos_shift=0)


class LoL(Window):
    """LoL (arXiv 2601.16914, paper only): LongLive's frame sink with a per-head temporal RoPE base
    theta (1 + jitter u_h), u_h uniform in [-1, 1] from the seed."""

    def __init__(self, *a, jitter: float, seed: int, **kw):
        super().__init__(*a, **kw)
        u = torch.rand(self.heads, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        self.theta = THETA * (1.0 + jitter * (2.0 * u - 1.0))

    def head_theta(self):
        return self.theta


class InfinityRoPE(Window):
    """yesiltepe-hidir/infinity-rope@63d7b84: block-relativistic window (6, sink 1); ``kv_flush`` keeps
    the sink and the last 2 frames at every switch; a cut rotates the next chunk at 45, 46, 47."""

    recaches = False

    def __init__(self, *a, flush_keep: int = 2, cut_at: int = 45, **kw):
        super().__init__(*a, relative=True, **kw)
        self.flush_keep, self.cut_at = flush_keep, cut_at

    def switch(self, cut=False):
        n = self.n_frames_cached()
        keep = list(range(min(self.sink, n))) + list(range(max(self.sink, n - self.flush_keep), n))
        for layer in range(len(self.cache)):
            self.keep_frames(layer, keep)
        if cut:
            self.cut = [self.cut_at + j for j in range(self.chunk)]
        return SimpleNamespace(keep=tuple(keep), recache=(), action="cut" if cut else "keep",
                               pos_shift=self.cut_at - len(keep) if cut else 0)


class EMASink(Window):
    """Reward Forcing (copy of the release in wangbei1/rlbaseline@48bbb96,
    ``Reward-Forcing-main/wan/modules/causal_model.py``): window 9, sink 3, relative positions; at an
    eviction, sink token j of frame i <- alpha sink + (1 - alpha) evicted token j of frame i."""

    recaches = False

    def __init__(self, *a, alpha: float, **kw):
        super().__init__(*a, relative=True, **kw)
        self.alpha = alpha

    def prepare(self, layer, k_raw, q_raw):
        n = self.n_frames_cached(layer)
        over = n + self.chunk - self.window
        if over <= 0:
            return
        c, s = self.cache[layer], self.sink * self.ft
        for key in ("k", "v"):
            ev = c[key][:, s:s + over * self.ft]
            c[key] = torch.cat([self.alpha * c[key][:, :s] + (1 - self.alpha) * ev, c[key][:, s:]], 1)
        c["frame"] = torch.cat([torch.full((s,), -1), c["frame"][s:]])
        self.keep_frames(layer, list(range(self.sink)) + list(range(self.sink + over, n)))

    def switch(self, cut=False):
        return Reference.switch(self, cut)


class MemRoPE(Reference):
    """YoungRaeKimm/MemRoPE@b89bf5b ``wan/modules/causal_model.py`` (``compression_method: ema``):
    [sink 3 | long | short | recent | chunk], 12 slots, positions by slot; evicted frames folded by
    EMA (global mean, or per position; ``adaptive``: the short alpha per position from the keys'
    motion); ``faithful``: at the first eviction the two slots after the sink are overwritten unfolded
    (memrope's default folds them too). Switch (this project's): keep the sink (+ memories unless
    ``reset``), re-encode the recent frames in one pass."""

    relative = True
    recaches = True

    def __init__(self, *a, spatial=False, adaptive=False, faithful=False, reset=False, a_long=0.01, a_short=0.1,
                 **kw):
        super().__init__(*a, **kw)
        self.spatial, self.adaptive, self.faithful, self.reset = spatial, adaptive, faithful, reset
        self.a_long, self.a_short, self.sink, self.size = a_long, a_short, 3, 12
        self.memory = [None] * len(self.cache)  # per layer: {"long": (k, v), "short": (k, v)} [B, 1 or ft, H, D]

    def n_frames_after_prepare(self, n):
        return min(self.n_frames_cached(), self.size - n)

    def reduce(self, frames: torch.Tensor) -> torch.Tensor:  # [B, m * ft, H, D] -> [B, 1 or ft, H, D]
        x = frames.unflatten(1, (-1, self.ft))
        return x.mean(1) if self.spatial else x.mean((1, 2))[:, None]

    def prepare(self, layer, k_raw, q_raw):
        n = self.n_frames_cached(layer)
        if n + self.chunk <= self.size:
            return
        c, ft, s = self.cache[layer], self.ft, self.sink
        mem = self.memory[layer]
        recent = self.size - s - 2 - self.chunk
        if mem is None:  # first eviction: frames after the sink, all but the last `recent`
            first_folded = s + 2 if self.faithful else s
            e_k, e_v = (self.reduce(c[key][:, first_folded * ft:(n - recent) * ft]) for key in ("k", "v"))
            mem = {"long": (e_k, e_v), "short": (e_k, e_v)}
            kept = list(range(n - recent, n))
        else:  # memories sit at slots s, s + 1; the oldest `chunk` recent frames leave
            e_k, e_v = (self.reduce(c[key][:, (s + 2) * ft:(s + 2 + self.chunk) * ft]) for key in ("k", "v"))
            alpha_s = self.a_short
            if self.adaptive:
                motion = (e_k - mem["short"][0]).norm(dim=-1).mean(dim=-1)  # [B, ft]
                scaled = motion / (motion.max(-1, keepdim=True).values + 1e-8)
                alpha_s = (self.a_short * (0.1 + 4.9 * scaled))[..., None, None]
            mem = {kind: (a * e_k + (1 - a) * mem[kind][0], a * e_v + (1 - a) * mem[kind][1])
                   for kind, a in (("long", self.a_long), ("short", alpha_s))}
            kept = list(range(s + 2 + self.chunk, n))
        self.memory[layer] = mem
        self.keep_frames(layer, list(range(s)) + kept)
        for j, kind in enumerate(("long", "short")):  # insert the memory frames right after the sink
            k, v = (x.expand(-1, ft, -1, -1) for x in mem[kind])
            self.insert_frame(layer, s + j, k, v)

    def insert_frame(self, layer, at, k, v):
        c, ft = self.cache[layer], self.ft
        cut = at * ft
        c["k"] = torch.cat([c["k"][:, :cut], k, c["k"][:, cut:]], 1)
        c["v"] = torch.cat([c["v"][:, :cut], v, c["v"][:, cut:]], 1)
        for key, fill in (("pos", 0.0), ("tok", None), ("uses", 0)):
            new = torch.arange(ft)[None].expand(self.batch, -1) if key == "tok" else \
                torch.full((self.batch, ft), fill, dtype=c[key].dtype)
            c[key] = torch.cat([c[key][:, :cut], new, c[key][:, cut:]], 1)
        c["frame"] = torch.cat([c["frame"][:cut], torch.full((ft,), -1), c["frame"][cut:]])

    def switch(self, cut=False):
        labels = self.frames_by_slot(0)
        recache = [f for i, f in enumerate(labels) if i >= self.sink and f >= 0]
        for layer in range(len(self.cache)):
            if self.reset:  # memories go: the next eviction starts them again
                labels_l = self.frames_by_slot(layer)
                self.keep_frames(layer, [i for i, f in enumerate(labels_l) if f >= 0])
                self.memory[layer] = None
        self.drop_for_replay(recache)
        return SimpleNamespace(keep=(), recache=tuple(recache), action="recache", pos_shift=0)


class DeepForcing(Reference):
    """Nizben/Spectral_C@ea9961a (the authors' release): ``causal_model.py`` (PC) and
    ``causal_model_DS.py`` (``is_ds_only``), literally: a FIFO of the last ``recent`` frames' worth of
    rotated queries of every pass; a compression at the first pass of a chunk that would overflow
    ``window``, scoring [cache, chunk] tokens between the sink and the last ``recent`` frames with the
    FIFO (sum over heads and channels, / sqrt(D) H), excluding tokens selected ``max_reuse`` times,
    keeping sink + top-C + recent; the sink moved to (t - budget) at compressions, the first move
    hard-wired to window - budget; DS: roll, the sink at (t - window) with the base taken at the first
    roll."""

    def __init__(self, *a, window=21, sink=10, budget=16, recent=4, max_reuse=7, compression=True, **kw):
        super().__init__(*a, **kw)
        self.window, self.sink, self.budget, self.recent = window, sink, budget, recent
        self.max_reuse, self.compression = max_reuse, compression
        self.fifo = [torch.zeros(self.batch, 0, self.heads, self.head_dim) for _ in self.cache]
        self.base = [None] * len(self.cache)

    def on_pass(self, layer, q_raw):
        q = self.rotate_chunk(q_raw, None)
        self.fifo[layer] = torch.cat([self.fifo[layer], q], 1)[:, -self.recent * self.ft:]

    def prepare(self, layer, k_raw, q_raw):
        c, ft = self.cache[layer], self.ft
        n_tok = c["k"].shape[1]
        new = self.chunk * ft
        if n_tok + new <= self.window * ft:
            return
        t = self.first
        if not self.compression:
            over = n_tok + new - self.window * ft
            n = n_tok // ft
            self.keep_frames(layer, list(range(self.sink)) + list(range(self.sink + over // ft, n)))
            desired = t - (self.window - self.sink) - self.sink
            delta = 0 if self.base[layer] is None else desired - self.base[layer]
        else:
            k_aug = torch.cat([rotate(c["k"], c["pos"], c["tok"], self.grid), self.rotate_chunk(k_raw, None)], 1)
            total = k_aug.shape[1]
            q_sum = self.fifo[layer].sum(1).flatten(1)  # [B, H * D]
            score = torch.einsum("bc,btc->bt", q_sum.double(), k_aug.flatten(2).double())
            score = score / (math.sqrt(self.head_dim) * self.heads)
            lo, hi = self.sink * ft, total - self.recent * ft
            top = (self.budget - self.sink - self.recent) * ft
            keep = []
            for b in range(self.batch):
                cand = torch.arange(lo, hi)
                cand = cand[c["uses"][b, lo:hi] < self.max_reuse]
                best = cand[score[b, cand].topk(top).indices].sort().values
                keep.append(torch.cat([torch.arange(lo), best, torch.arange(hi, n_tok)]))
                c["uses"][b, best] += 1
            self.keep_tokens(layer, torch.stack(keep))
            c["frame"][lo:lo + top] = -1
            desired = t - (self.budget - self.sink) - self.sink
            delta = self.window - self.budget if self.base[layer] is None else desired - self.base[layer]
        self.base[layer] = desired
        c["pos"][:, :self.sink * ft] += delta
