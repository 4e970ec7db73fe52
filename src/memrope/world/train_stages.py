"""What the trainer of the embedded default model computes: its config, learning-rate schedule, batches
and the loss of each stage (see :mod:`memrope.world.train` for the stages and the run around them).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..cache import KVCache, make_policy
from ..models.toy.autoencoder import FrameAutoencoder
from ..models.wan import WanModel
from ..models.wan_config import wan_config
from ..sampling import SamplerConfig, denoising_timesteps, shifted_sigma
from .clips import ClipConfig, ClipSource, to_model_range
from .raster import render_clip
from .world import WorldSpec, WorldState, position_bounds

AE_WARMUP = 50
CHUNK_FRAMES = 3


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    # stage 1: autoencoder
    ae_steps: int = 1500
    ae_batch: int = 32  # frames per step
    ae_lr: float = 2e-3
    ae_latent_noise: float = 0.1  # std of training noise on the latent, relative to its std
    # stage 2: transformer
    steps: int = 6000
    batch: int = 16  # clips per step
    window: int = 12  # latent frames per training clip (= video frames: the autoencoder is per frame)
    lr: float = 6e-4
    weight_decay: float = 0.01
    warmup: int = 200
    grad_clip: float = 1.0
    ema: float = 0.999
    inference_t_prob: float = 0.5  # share of chunks noised to one of the 4 warped inference levels
    context_noise: float = 0.1  # committed context = x0 + U(0, context_noise) * N(0, 1), labelled t=0
    context_degrade: float = 0.0  # committed context blurred and faded by U(0, context_degrade) (see degrade)
    max_objects: int = 4
    canonical_share: float = 0.35  # share of stage-2 clips that start from the prompt's canonical state
    canonical_from_step: int = 0  # stage-2 step from which the canonical/masked mixture is used
    # stage 3: decoder fine-tuning with the encoder frozen (the latents of stage 2 do not change)
    dec_steps: int = 6000
    dec_batch: int = 32
    dec_lr: float = 1e-3
    dec_latent_noise: float = 0.05  # relative to the latent std: robustness to imperfect latents
    dec_object_weight: float = 4.0  # extra loss weight on pixels far from the frame's median colour
    dec_minutes: float = 25.0  # stage 3's own wall-clock budget, after stages 1-2; 0 = none
    # bookkeeping
    max_minutes: float = 55.0  # wall-clock budget for both stages; 0 = none
    ae_share: float = 0.2  # fraction of the budget stage 1 may use
    log_every: int = 50
    ckpt_every: int = 500
    model_size: str = "toy"
    text_roles: bool = True  # world text encoder with phrase roles (False: the first default's words-only one)

    def __post_init__(self) -> None:
        if self.window % CHUNK_FRAMES:
            raise ValueError(f"--window must be a multiple of the chunk size {CHUNK_FRAMES}, "
                             f"got {self.window}")
        for name in ("ae_steps", "steps", "batch", "ae_batch"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0")


SMOKE = dict(ae_steps=3, ae_batch=4, steps=4, batch=2, window=6, warmup=1, log_every=1, ckpt_every=0,
             max_minutes=0.0, dec_steps=3, dec_batch=4, dec_minutes=0.0)
SALIENT = 0.5
"""Model-range distance from the frame's median colour above which a pixel counts as an object
pixel in stage 3's weighting (objects are bright palette colours on dark backgrounds)."""


# --------------------------------------------------------------------------- schedule
class LRSchedule:
    """Linear warm-up, then cosine decay to ``floor * peak`` over a progress in [0, 1].

    progress = max(step / max_steps, elapsed / budget): under a wall-clock budget the decay follows
    time, so a run cut by its budget still ends annealed however loaded the machine is. Every rate
    used is recorded (``used``); replaying that list (``--replay``) reproduces the run step for step
    with no timing involved.
    """

    def __init__(self, peak: float, warmup: int, max_steps: int, budget_s: float | None = None,
                 replay: list[float] | None = None, floor: float = 0.05, progress0: float = 0.0):
        self.peak, self.warmup, self.max_steps, self.floor = peak, max(1, warmup), max_steps, floor
        self.budget_s, self.replay, self.progress0 = budget_s, replay, progress0
        self.start = time.monotonic()
        self.used: list[float] = []
        self.progress = progress0

    def lr(self, step: int) -> float | None:
        """Rate for ``step``, or None when the schedule is over (steps, budget or replay exhausted)."""
        if self.replay is not None:
            return self.replay[step] if step < len(self.replay) else None
        progress = step / max(1, self.max_steps)
        if self.budget_s is not None:
            elapsed = (time.monotonic() - self.start) / self.budget_s
            progress = max(progress, self.progress0 + (1 - self.progress0) * elapsed)
        if progress >= 1.0:
            return None
        self.progress = progress
        return self.peak * min(1.0, (step + 1) / self.warmup) * (
            self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress)))


# --------------------------------------------------------------------------- data
def clip_batch(source: ClipSource, step: int, batch: int) -> tuple[torch.Tensor, list[str]]:
    """Clips ``step*batch ... step*batch + batch - 1`` of ``source``: video [B, T, 3, H, W], prompts."""
    clips = [source.clip(step * batch + i) for i in range(batch)]
    return torch.stack([c.video for c in clips]), [c.prompt for c in clips]


def frame_batch(source: ClipSource, step: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    """``batch`` frames [N, 3, H, W], one random frame from each of ``batch`` clips."""
    video, _ = clip_batch(source, step, batch)  # [B, T, 3, H, W]
    idx = torch.randint(0, video.shape[1], (batch,), generator=gen)
    return video[torch.arange(batch), idx]


CANONICAL_SLOTS = ((0.3, 0.3), (0.3, 0.7), (0.7, 0.3), (0.7, 0.7))
"""Start centres (fractions of the frame) of objects 1-4 in a canonical start: quadrant slots."""
CANONICAL_SIGNS = ((1.0, 1.0), (1.0, -1.0), (-1.0, 1.0), (-1.0, -1.0))
"""Start directions (y, x) of objects 1-4 in a canonical start."""


def canonical_state(spec: WorldSpec) -> WorldState:
    """The start a prompt alone determines: object k in quadrant slot k, moving diagonally at the
    centre of its speed band. Why: a few-step, non-distilled sampler cannot pick random positions
    for the first chunk (with nothing in the cache it predicts their average: a blur), so the first
    chunk must be predictable from the prompt; every later chunk is predictable from the cache."""
    lo, hi = position_bounds(spec)
    sides = np.array([spec.height, spec.width], dtype=np.float64)
    pos = np.clip(np.array(CANONICAL_SLOTS[: len(spec.objects)]) * sides, lo, hi)
    band_lo, band_hi = spec.speed_band()
    vel = np.array(CANONICAL_SIGNS[: len(spec.objects)]) * (band_lo + band_hi) / 2
    return WorldState.from_arrays(pos, vel)


def stage2_batch(source: ClipSource, step: int,
                 cfg: TrainConfig) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """Video [B, T, 3, H, W], prompts and a [B] bool mask "the first chunk is scored".

    A share of the clips starts from the canonical state of its prompt (first chunk scored); the
    others start from a random state (``initial_state``) and only their later chunks are scored,
    with the first chunk as clean context: they teach the dynamics everywhere in the frame without
    teaching an empty cache to expect a random start.
    """
    clips = [source.clip(step * cfg.batch + i) for i in range(cfg.batch)]
    if step < cfg.canonical_from_step:
        video = torch.stack([c.video for c in clips])
        return video, [c.prompt for c in clips], torch.ones(cfg.batch, dtype=torch.bool)
    rng = np.random.default_rng([cfg.seed, step, 17])
    canonical = rng.random(cfg.batch) < cfg.canonical_share
    videos = []
    for clip, canon in zip(clips, canonical, strict=True):
        if canon:
            frames = render_clip(clip.spec, canonical_state(clip.spec), cfg.window).frames
            videos.append(to_model_range(frames))
        else:
            videos.append(clip.video)
    return torch.stack(videos), [c.prompt for c in clips], torch.from_numpy(canonical)


# --------------------------------------------------------------------------- stage 1
def autoencoder_loss(ae: FrameAutoencoder, frames: torch.Tensor, latent_noise: float,
                     gen: torch.Generator | None) -> torch.Tensor:
    z = ae.encode_raw(frames)
    if latent_noise > 0:
        noise = torch.randn(z.shape, generator=gen) if gen is not None else torch.randn_like(z)
        z = z + latent_noise * z.detach().std() * noise
    rec = ae.decode_raw(z)
    return F.mse_loss(rec, frames) + 0.5 * F.l1_loss(rec, frames)


def train_autoencoder(cfg: TrainConfig, log, budget_s: float | None,
                      replay: list[float] | None = None) -> tuple[FrameAutoencoder, list, list[float]]:
    torch.manual_seed(cfg.seed)
    ae = FrameAutoencoder()
    source = ClipSource(ClipConfig(n_frames=cfg.window, max_objects=cfg.max_objects), seed=cfg.seed + 1)
    opt = torch.optim.AdamW(ae.parameters(), lr=cfg.ae_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    history = []
    schedule = LRSchedule(cfg.ae_lr, AE_WARMUP, cfg.ae_steps, budget_s, replay)
    step = 0
    while (lr := schedule.lr(step)) is not None:
        schedule.used.append(lr)
        for g in opt.param_groups:
            g["lr"] = lr
        frames = frame_batch(source, step, cfg.ae_batch, gen)
        loss = autoencoder_loss(ae, frames, cfg.ae_latent_noise, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.log_every == 0:
            history.append({"step": step, "loss": round(loss.item(), 6)})
            log(f"ae step {step} loss {loss.item():.5f} lr {lr:.2e}")
        step += 1
    ae.eval()
    stats_frames = torch.cat([frame_batch(source, 10**6 + i, 64, gen) for i in range(4)])
    ae.set_latent_stats(stats_frames)
    return ae, history, schedule.used


# --------------------------------------------------------------------------- stage 3
def salient(frames: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] -> [N, 1, H, W] float mask of pixels far from their frame's median colour."""
    median = frames.flatten(2).median(dim=2).values[:, :, None, None]  # [N, 3, 1, 1]
    return ((frames - median).abs().amax(dim=1, keepdim=True) > SALIENT).float()


def finetune_decoder(cfg: TrainConfig, ae: FrameAutoencoder, log, budget_s: float | None,
                     replay: list[float] | None = None) -> tuple[list, list[float]]:
    """Sharpen the decoder with the encoder frozen: object pixels weigh more, latents get a little
    noise. The latent space (what the transformer models) is unchanged."""
    torch.manual_seed(cfg.seed + 5)
    source = ClipSource(ClipConfig(n_frames=cfg.window, max_objects=cfg.max_objects), seed=cfg.seed + 6)
    gen = torch.Generator().manual_seed(cfg.seed + 7)
    ae.requires_grad_(False)
    ae.decoder.requires_grad_(True)
    ae.train()
    opt = torch.optim.AdamW(ae.decoder.parameters(), lr=cfg.dec_lr, weight_decay=0.0)
    schedule = LRSchedule(cfg.dec_lr, AE_WARMUP, cfg.dec_steps, budget_s, replay)
    history, step = [], 0
    while (lr := schedule.lr(step)) is not None:
        schedule.used.append(lr)
        for g in opt.param_groups:
            g["lr"] = lr
        frames = frame_batch(source, step, cfg.dec_batch, gen)
        with torch.no_grad():
            z = ae.encode_raw(frames)
        z = z + cfg.dec_latent_noise * z.std() * torch.randn(z.shape, generator=gen)
        err = ae.decode_raw(z) - frames
        weight = 1 + cfg.dec_object_weight * salient(frames)
        loss = (weight * (err.square() + 0.5 * err.abs())).mean() / weight.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.log_every == 0:
            history.append({"step": step, "loss": round(loss.item(), 6)})
            log(f"decoder step {step} loss {loss.item():.5f} lr {lr:.2e}")
        step += 1
    ae.eval().requires_grad_(False)
    return history, schedule.used


def run_decoder_stage(cfg: TrainConfig, ae: FrameAutoencoder, log, replay: dict | None) -> dict:
    t0 = time.monotonic()
    if cfg.dec_steps == 0 and not (replay and replay.get("dec_lrs")):
        return {}  # stage 3 skipped (or run beside stage 2 with --stage decoder, then --stage assemble)
    budget = cfg.dec_minutes * 60.0 if cfg.dec_minutes > 0 and replay is None else None
    hist, lrs = finetune_decoder(cfg, ae, log, budget, replay and replay.get("dec_lrs"))
    return {"dec_history": hist, "dec_lrs": lrs, "dec_steps_done": len(lrs),
            "dec_seconds": round(time.monotonic() - t0, 1)}


# --------------------------------------------------------------------------- stage 2
def sample_timesteps(batch: int, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """[B] model timesteps in (0, 1000]: inference levels w.p. ``inference_t_prob``, else shift-5."""
    levels = torch.tensor(denoising_timesteps(SamplerConfig()), dtype=torch.float32)
    pick = levels[torch.randint(0, len(levels), (batch,), generator=gen)]
    u = torch.rand(batch, generator=gen).clamp_min(1e-3)
    cont = 1000.0 * shifted_sigma(u, SamplerConfig().shift)
    use_levels = torch.rand(batch, generator=gen) < cfg.inference_t_prob
    return torch.where(use_levels, pick, cont)


def _fresh_cache_tensors(cache: KVCache) -> None:
    """Out-of-place copies of each layer's tensors, so the next in-place write by the cache does not
    invalidate what earlier passes saved for backward (the cache is written in place by design)."""
    for layer in cache.layers:
        layer.k, layer.v = layer.k.clone(), layer.v.clone()
        if layer.k_raw is not None:
            layer.k_raw = layer.k_raw.clone()


def diffusion_loss(model: WanModel, latents: torch.Tensor, context: torch.Tensor, cfg: TrainConfig,
                   gen: torch.Generator, first_scored: torch.Tensor | None = None) -> torch.Tensor:
    """Chunk-wise causal flow-matching loss of latents [B, C, F, h, w] with text ``context``.

    Chunk by chunk, as at inference: noisy pass (read-only, its velocity is scored), then the
    clean commit pass at t=0 that writes the chunk into a ``full`` cache for the next chunks.
    """
    b, _, n_frames, lh, lw = latents.shape
    text = model.encode_text(context)
    cache = KVCache(make_policy("full"), model.cache_geometry(b, (lh, lw), CHUNK_FRAMES), model.rope)
    losses = []
    for start in range(0, n_frames, CHUNK_FRAMES):
        x0 = latents[:, :, start:start + CHUNK_FRAMES]
        t = sample_timesteps(b, cfg, gen)
        sigma = (t / 1000.0).view(b, 1, 1, 1, 1)
        eps = torch.randn(x0.shape, generator=gen)
        x_t = (1 - sigma) * x0 + sigma * eps
        cache.begin_chunk(CHUNK_FRAMES)
        _fresh_cache_tensors(cache)
        v = model(x_t, t, text, cache, commit=False)
        if start == 0 and first_scored is not None and not bool(first_scored.all()):
            if bool(first_scored.any()):  # first chunk scored only where the clip starts canonically
                per_sample = (v.float() - (eps - x0)).square().flatten(1).mean(dim=1)  # [B]
                losses.append(per_sample[first_scored].mean())
        else:
            losses.append(F.mse_loss(v.float(), eps - x0))
        _fresh_cache_tensors(cache)
        if start + CHUNK_FRAMES < n_frames:  # the last chunk's commit feeds nothing: no graph for it
            level = cfg.context_noise * torch.rand(b, 1, 1, 1, 1, generator=gen)
            ctx = x0 + level * torch.randn(x0.shape, generator=gen)
            if cfg.context_degrade > 0:  # drawn only when on, so that older runs replay exactly
                ctx = degrade(ctx, cfg.context_degrade * torch.rand(b, 1, 1, 1, 1, generator=gen))
            model(ctx, torch.zeros(b), text, cache, commit=True)
        else:
            with torch.no_grad():
                model(x0, torch.zeros(b), text, cache, commit=True)
        cache.end_chunk()
    return torch.stack(losses).mean()


def degrade(latents: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """Latents [B, C, F, h, w] blurred (3x3 mean) and faded towards their spatial mean by
    ``strength`` [B, 1, 1, 1, 1] in [0, 1]: what the model's own uncertain frames look like (objects
    smeared and washing out). Committed as context, with the clean next chunk as the target, it
    teaches the model to restore objects from its own imperfect past instead of fading with it."""
    blurred = F.avg_pool3d(latents, (1, 3, 3), stride=1, padding=(0, 1, 1), count_include_pad=False)
    faded = torch.lerp(blurred, blurred.mean(dim=(3, 4), keepdim=True), 0.5)
    return torch.lerp(latents, faded, strength)


@torch.no_grad()
def encode_clips(ae: FrameAutoencoder, video: torch.Tensor) -> torch.Tensor:
    """video [B, T, 3, H, W] -> normalised latents [B, C, T, h, w]."""
    b, t = video.shape[:2]
    z = ae.encode(video.flatten(0, 1))  # [B*T, C, h, w]
    return z.unflatten(0, (b, t)).transpose(1, 2).contiguous()


def build_transformer(cfg: TrainConfig) -> WanModel:
    torch.manual_seed(cfg.seed + 3)
    return WanModel(wan_config(cfg.model_size))
