"""Train the embedded default model on the toy world: ``python -m memrope.models.toy.train``.

Three stages, all on clips drawn on the fly from the procedural world (``clips.ClipSource``, so no
data is stored and every batch is a pure function of the seed and the step):

1. ``FrameAutoencoder``: 64x64 frames -> 8x8x8 latents, MSE + L1 on pixels, with a little noise on
   the latent during training so that the decoder tolerates the diffusion model's imprecision.
   Latent statistics are then measured and frozen (normalised latents for stage 2).
2. The causal Wan transformer (``toy`` config) with a chunk-wise causal flow-matching objective on
   windows of ``--window`` latent frames (default 12 = 4 chunks of 3, MemRoPE's cache size): for
   each chunk of a clip, noise it to a random level (half the time one of the four warped inference
   timesteps, otherwise the shift-5 schedule), predict velocity while the clean previous chunks sit
   in a ``full`` KV cache, MSE on velocity; then commit the clean chunk with a t=0 pass, exactly as
   at inference. Gradients flow through the committed keys/values too. AdamW, cosine decay, an EMA
   of the weights (the EMA is what ships). From ``--canonical-from-step`` on, a share of the clips
   starts from the prompt's canonical state (``canonical_state``) and is scored on every chunk; the
   others start anywhere and are scored from their second chunk on (see ``stage2_batch``).
3. Decoder fine-tuning with the encoder frozen (so stage 2's latents stay valid): object pixels
   weigh more. It does not depend on stage 2 and may run beside it (``--stage decoder``, then
   ``--stage assemble``).

Positions beyond the training window are out of distribution, as for the real models.

A wall-clock budget (``--max-minutes``, stage 1 gets ``--ae-share`` of it) ends training cleanly
and saves; the learning-rate decay follows the budget, so a run on a loaded machine still ends
annealed. The rates actually used are recorded in ``<ckpt-dir>/train_record.json``, and
``--replay <that file>`` reproduces the run step for step without any timing (same seeds, same
data, same rates). Checkpoints are written every ``--ckpt-every`` steps; ``--resume`` continues.
``--smoke`` is a few tiny steps for tests.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ...cache import KVCache, make_policy
from ...sampling import SamplerConfig, denoising_timesteps, shifted_sigma
from ..wan import WanModel
from ..wan_config import wan_config
from .autoencoder import FrameAutoencoder
from .clips import ClipConfig, ClipSource, to_model_range
from .default import section
from .raster import render_clip
from .text import WorldTextEncoder
from .world import WorldSpec, WorldState, position_bounds

WEIGHTS_PATH = Path(__file__).with_name("toy_world.safetensors")
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


def chain_summary(record: dict) -> dict:
    """Runs and transformer steps of a record and the warm starts nested in it."""
    runs, steps = 0, 0
    while record is not None:
        runs, steps = runs + 1, steps + (record.get("steps_done") or 0)
        record = record.get("init")
    return {"runs": runs, "transformer_steps": steps}


def weights_meta(cfg: TrainConfig, record: dict, text_encoder: str) -> dict:
    return {"model_size": cfg.model_size, "seed": cfg.seed, "steps_done": record.get("steps_done"),
            "chain": chain_summary(record),
            "ae_steps_done": record.get("ae_steps_done"), "dec_steps_done": record.get("dec_steps_done"),
            "text_encoder": text_encoder}


def save_weights(path: Path, model: WanModel, ae: FrameAutoencoder, meta: dict, record: dict | None = None) -> None:
    tensors = {f"transformer.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"autoencoder.{k}": v.detach().contiguous() for k, v in ae.state_dict().items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    metadata = {"memrope": json.dumps(meta)}
    if record is not None:  # everything --replay needs travels with the weights
        metadata["record"] = json.dumps(record)
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.chmod(0o644)
    tmp.replace(path)


def train(cfg: TrainConfig, out: Path, ckpt_dir: Path, resume: bool = False, log=print,
          replay: dict | None = None, init: Path | None = None) -> dict:
    """Run the stages; writes ``out`` (EMA weights + metadata) and returns the training record.

    ``replay``: a previous run's record; its learning rates (hence step counts) are reused exactly.
    ``init``: a weights file to continue from (a warm start): its autoencoder is kept as it is
    (stages 1 and 3 are skipped) and its transformer starts both the trained weights and their EMA;
    the optimiser starts fresh. Its record travels inside this run's record (``init``), so that a
    replay rebuilds the whole chain.
    """
    t0 = time.monotonic()
    budget = cfg.max_minutes * 60.0 if cfg.max_minutes > 0 and replay is None else None
    deadline = None if budget is None else t0 + budget
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    record: dict = {"config": asdict(cfg), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "machine": platform.platform(), "processor": platform.processor() or platform.machine()}

    ae_path = ckpt_dir / "autoencoder.safetensors"
    init_tensors = None
    if init is not None:
        init_tensors = load_file(str(init))
        ae = FrameAutoencoder()
        ae.load_state_dict(section(init_tensors, "autoencoder."))
        record.update({"init": read_record(init), "ae_lrs": [], "ae_steps_done": 0})
        log(f"warm start from {init}: its autoencoder and transformer")
    elif resume and ae_path.exists():
        ae = FrameAutoencoder()
        ae.load_state_dict(load_file(str(ae_path)))
        record.update(json.loads((ckpt_dir / "autoencoder.json").read_text()))
        log("resumed autoencoder from checkpoint")
    else:
        ae_budget = None if budget is None else cfg.ae_share * budget
        ae, ae_hist, ae_lrs = train_autoencoder(cfg, log, ae_budget, replay and replay["ae_lrs"])
        ae_stats = {"ae_history": ae_hist, "ae_steps_done": len(ae_lrs), "ae_lrs": ae_lrs,
                    "ae_seconds": round(time.monotonic() - t0, 1)}
        save_file({k: v.contiguous() for k, v in ae.state_dict().items()}, str(ae_path))
        (ckpt_dir / "autoencoder.json").write_text(json.dumps(ae_stats))
        record.update(ae_stats)
    ae.eval().requires_grad_(False)

    model = build_transformer(cfg)
    if init_tensors is not None:
        model.load_state_dict(section(init_tensors, "transformer."))
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    encoder = WorldTextEncoder(model.config.text_len, model.config.text_dim, roles=cfg.text_roles)
    source = ClipSource(ClipConfig(n_frames=cfg.window, max_objects=cfg.max_objects), seed=cfg.seed + 4)
    history: list[dict] = []
    state_path = ckpt_dir / "transformer_state.pt"
    step, lrs, progress0 = 0, [], 0.0
    if resume and state_path.exists():
        state = torch.load(state_path, weights_only=True)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step, history = state["step"], json.loads(state["history"])
        lrs, progress0 = json.loads(state["lrs"]), state["progress"]
        log(f"resumed transformer at step {step}")
    remaining = None if deadline is None else max(1.0, deadline - time.monotonic())
    schedule = LRSchedule(cfg.lr, cfg.warmup, cfg.steps, remaining, replay and replay["lrs"],
                          progress0=progress0)
    schedule.used = lrs
    start_step, stage2_t0 = step, time.monotonic()
    model.train()
    running, n_running = 0.0, 0
    while (lr := schedule.lr(step)) is not None:
        schedule.used.append(lr)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        for g in opt.param_groups:
            g["lr"] = lr
        video, prompts, first_scored = stage2_batch(source, step, cfg)
        latents = encode_clips(ae, video)
        loss = diffusion_loss(model, latents, encoder.encode(prompts), cfg, gen, first_scored)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        decay = min(cfg.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
        running += loss.item()
        n_running += 1
        step += 1
        if step % cfg.log_every == 0:
            elapsed = time.monotonic() - stage2_t0
            history.append({"step": step, "loss": round(running / n_running, 6), "lr": lr,
                            "minutes": round((time.monotonic() - t0) / 60, 2)})
            log(f"step {step} loss {running / n_running:.5f} lr {lr:.2e} "
                f"{elapsed / (step - start_step):.3f} s/step")
            running, n_running = 0.0, 0
        if cfg.ckpt_every and step % cfg.ckpt_every == 0:
            torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                        "step": step, "history": json.dumps(history), "lrs": json.dumps(schedule.used),
                        "progress": schedule.progress}, state_path)
    steps_done = step
    if replay is not None:
        stopped_by = "replay"
    elif steps_done >= cfg.steps:
        stopped_by = "max steps"
    else:
        stopped_by = "wall-clock budget (learning rate annealed over the budget)"
    if running and n_running:
        history.append({"step": step, "loss": round(running / n_running, 6), "lr": schedule.used[-1],
                        "minutes": round((time.monotonic() - t0) / 60, 2)})
    record.update({
        "steps_done": steps_done, "stopped_by": stopped_by, "history": history, "lrs": schedule.used,
        "final_loss": history[-1]["loss"] if history else None,
        "transformer_seconds": round(time.monotonic() - stage2_t0, 1),
        "total_seconds": round(time.monotonic() - t0, 1),
        "params_transformer": sum(p.numel() for p in model.parameters()),
        "params_autoencoder": sum(p.numel() for p in ae.parameters()),
    })
    if init is None:
        record.update(run_decoder_stage(cfg, ae, log, replay))
    record["total_seconds"] = round(time.monotonic() - t0, 1)
    save_weights(out, ema, ae, weights_meta(cfg, record, encoder.identity), record)
    (ckpt_dir / "train_record.json").write_text(json.dumps(record, indent=1))
    log(f"saved {out} after {steps_done} steps ({record['total_seconds']:.0f} s)")
    return record


def record_config(record: dict) -> TrainConfig:
    """A recorded run's configuration without its timing (for replays). Records written before the
    text encoder had phrase roles lack ``text_roles``: they used the words-only encoder."""
    return TrainConfig(**{"text_roles": False, **record["config"], "max_minutes": 0.0, "dec_minutes": 0.0})


def replay_chain(record: dict, out: Path, ckpt_dir: Path, log) -> dict:
    """Reproduce a recorded run, first rebuilding the run it was warm-started from (recursively)."""
    init = None
    if "init" in record:
        init = ckpt_dir / "init" / "weights.safetensors"
        replay_chain(record["init"], init, ckpt_dir / "init", log)
    cfg = record_config(record)
    log(f"replaying: {len(record.get('ae_lrs', []))} + {len(record['lrs'])} + "
        f"{len(record.get('dec_lrs', []))} steps" + (" (warm start)" if init else ""))
    return train(cfg, out, ckpt_dir, log=log, replay=record, init=init)


def read_record(path: Path) -> dict:
    """A run's record: ``train_record.json``, or the weights file it was stored in."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return json.loads(f.metadata()["record"])
    return json.loads(path.read_text())


def assemble(out: Path, ckpt_dir: Path, cfg: TrainConfig, log) -> None:
    """Weights of stages 1-2 (``out``) + the stage-3 decoder run beside them -> ``out``."""
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        meta = json.loads(f.metadata()["memrope"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tuned = load_file(str(ckpt_dir / "autoencoder_finetuned.safetensors"))
    tensors.update({f"autoencoder.{k}": v for k, v in tuned.items()})
    record = json.loads((ckpt_dir / "train_record.json").read_text())
    record.update(json.loads((ckpt_dir / "decoder.json").read_text()))
    record["config"] = {**record["config"], **{k: v for k, v in asdict(cfg).items() if k.startswith("dec_")}}
    meta["dec_steps_done"] = record["dec_steps_done"]
    tmp = out.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"memrope": json.dumps(meta), "record": json.dumps(record)})
    tmp.chmod(0o644)
    tmp.replace(out)
    (ckpt_dir / "train_record.json").write_text(json.dumps(record, indent=1))
    log(f"assembled {out} with the stage-3 decoder ({record['dec_steps_done']} steps)")


def _yes_no(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m memrope.models.toy.train", description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="a few steps on tiny batches (seconds)")
    p.add_argument("--out", type=Path, default=WEIGHTS_PATH, help="weights file (default: the shipped one)")
    p.add_argument("--ckpt-dir", type=Path, default=Path("toy_train_ckpt"))
    p.add_argument("--resume", action="store_true")
    p.add_argument("--stage", choices=("all", "decoder", "assemble"), default="all",
                   help="all: stages 1-3 in order (default). decoder: only stage 3, from <ckpt-dir>'s stage-1 "
                   "autoencoder (it does not depend on stage 2, so it may run beside it). assemble: put "
                   "stage 3's decoder into --out and its record into <ckpt-dir>/train_record.json")
    p.add_argument("--init-from", type=Path, help="warm start: continue training the transformer of this "
                   "weights file (its autoencoder is kept); the record keeps the chain for --replay")
    p.add_argument("--replay", type=Path, help="train_record.json of a run: reuse its exact learning rates "
                   "(hence step counts), without any wall-clock dependence; reproduces that run")
    defaults = TrainConfig()
    for name, value in asdict(defaults).items():
        if name == "model_size":
            continue
        kind = _yes_no if isinstance(value, bool) else type(value)
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None)
    args = p.parse_args(argv)
    overrides = dict(SMOKE) if args.smoke else {}
    overrides.update({k: v for k, v in vars(args).items() if k in asdict(defaults) and v is not None})
    cfg = TrainConfig(**overrides)
    if args.smoke and args.out == WEIGHTS_PATH:
        raise SystemExit("--smoke must not overwrite the shipped weights: pass --out")

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    log(f"config: {json.dumps(asdict(cfg))}")
    replay = read_record(args.replay) if args.replay else None
    if replay is not None and args.stage == "all":  # the recorded run's own configuration, without timing
        log(f"replaying {args.replay}")
        replay_chain(replay, args.out, args.ckpt_dir, log)
    elif args.stage == "all":
        train(cfg, args.out, args.ckpt_dir, resume=args.resume, log=log, init=args.init_from)
    elif args.stage == "decoder":
        if replay is not None:
            cfg = record_config(replay)
        ae = FrameAutoencoder()
        ae.load_state_dict(load_file(str(args.ckpt_dir / "autoencoder.safetensors")))
        stats = run_decoder_stage(cfg, ae, log, replay)
        save_file({k: v.contiguous() for k, v in ae.state_dict().items()},
                  str(args.ckpt_dir / "autoencoder_finetuned.safetensors"))
        (args.ckpt_dir / "decoder.json").write_text(json.dumps(stats))
        log(f"decoder stage: {stats['dec_steps_done']} steps in {stats['dec_seconds']} s")
    else:
        assemble(args.out, args.ckpt_dir, cfg, log)


if __name__ == "__main__":
    main()
