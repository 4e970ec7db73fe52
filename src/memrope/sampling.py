"""Few-step flow matching as used by Self-Forcing and its descendants: pure functions.

The model predicts velocity v at noise level sigma; x_t = (1 - sigma) x0 + sigma eps, so
x0 = x_t - sigma v. Four warped steps (t = 1000, 937.5, 833.3, 625 for shift 5) denoise a chunk;
between steps x0 is re-noised to the next level with fresh noise. One last pass at t = 0 on the
clean x0 writes the chunk's K/V into the cache (the only pass that commits).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NUM_TRAIN_TIMESTEPS = 1000
"""Training timesteps of Wan's flow-matching scheduler."""


@dataclass(frozen=True)
class SamplerConfig:
    steps: tuple[int, ...] = (1000, 750, 500, 250)  # Self-Forcing denoising_step_list
    shift: float = 5.0
    warp: bool = True  # map steps through the shifted schedule (Self-Forcing warp_denoising_step)
    context_t: float = 0.0  # timestep of the committing pass (context_noise)

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("SamplerConfig.steps must list at least one denoising step")
        if any(not 0 < s <= NUM_TRAIN_TIMESTEPS for s in self.steps):
            raise ValueError(f"SamplerConfig.steps must lie in (0, {NUM_TRAIN_TIMESTEPS}], got {self.steps}")
        if list(self.steps) != sorted(self.steps, reverse=True) or len(set(self.steps)) != len(self.steps):
            raise ValueError(f"SamplerConfig.steps must be strictly decreasing, got {self.steps}")
        if self.shift <= 0:
            raise ValueError(f"SamplerConfig.shift must be > 0, got {self.shift}")
        if not 0 <= self.context_t < NUM_TRAIN_TIMESTEPS:
            raise ValueError(f"SamplerConfig.context_t must be in [0, {NUM_TRAIN_TIMESTEPS}), got {self.context_t}")


def shifted_sigma(s: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """sigma(s) = shift s / (1 + (shift - 1) s): the shifted flow-matching noise level."""
    return shift * s / (1 + (shift - 1) * s)


def schedule_timesteps(shift: float) -> torch.Tensor:
    """The scheduler's 1000 timesteps: 1000 sigma(s), s in linspace(1, 0, 1001)[:-1] (fp64)."""
    s = torch.linspace(1.0, 0.0, NUM_TRAIN_TIMESTEPS + 1, dtype=torch.float64)[:-1]
    return NUM_TRAIN_TIMESTEPS * shifted_sigma(s, shift)


def denoising_timesteps(cfg: SamplerConfig) -> list[float]:
    """Model timesteps of the denoising passes, e.g. [1000, 937.5, 833.33, 625] for shift 5."""
    if not cfg.warp:
        return [float(s) for s in cfg.steps]
    table = schedule_timesteps(cfg.shift)
    return [float(table[NUM_TRAIN_TIMESTEPS - s]) for s in cfg.steps]


def sigma_of(t: float) -> float:
    return t / NUM_TRAIN_TIMESTEPS


def x0_from_velocity(x_t: torch.Tensor, v: torch.Tensor, t: float) -> torch.Tensor:
    """x0 = x_t - sigma v (computed in fp32)."""
    return (x_t.float() - sigma_of(t) * v.float()).to(x_t.dtype)


def renoise(x0: torch.Tensor, noise: torch.Tensor, t: float) -> torch.Tensor:
    """x_t = (1 - sigma) x0 + sigma eps."""
    s = sigma_of(t)
    return ((1 - s) * x0.float() + s * noise.float()).to(x0.dtype)


# --- the reference pipelines' arithmetic (``--noise reference``) ---------------------------------------
# guandeh17/Self-Forcing@33593df and YoungRaeKimm/MemRoPE@b89bf5b: ``utils/scheduler.py``
# ``FlowMatchScheduler(shift, sigma_min=0.0, extra_one_step=True).set_timesteps(1000)`` builds its tables
# in fp32; ``pipeline/causal_inference.py`` feeds ``timesteps[1000 - step]`` (fp32) to the model, and
# ``utils/wan_wrapper.py`` ``_convert_flow_pred_to_x0`` / ``add_noise`` look sigma up by the nearest
# timestep. The functions above compute the same quantities in fp64 / fp32 and differ by rounding only.


def reference_steps(cfg: SamplerConfig) -> list[tuple[float, float]]:
    """``(t, sigma)`` of each denoising pass as the reference computes them: fp32 tables, sigma by the
    nearest table timestep (exact fp32 values, as Python floats)."""
    s = torch.linspace(1.0, 0.0, NUM_TRAIN_TIMESTEPS + 1, dtype=torch.float32)[:-1]
    sigmas = cfg.shift * s / (1 + (cfg.shift - 1) * s)
    table = sigmas * NUM_TRAIN_TIMESTEPS
    if cfg.warp:
        ts = torch.cat((table, torch.zeros(1)))[NUM_TRAIN_TIMESTEPS - torch.tensor(cfg.steps)]
    else:
        ts = torch.tensor(cfg.steps, dtype=torch.float32)
    index = (table[None, :] - ts[:, None]).abs().argmin(dim=1)
    return [(float(t), float(sigmas[i])) for t, i in zip(ts, index)]


def reference_x0(x_t: torch.Tensor, v: torch.Tensor, sigma: float) -> torch.Tensor:
    """x0 = x_t - sigma v in fp64, cast to the prediction's dtype (``_convert_flow_pred_to_x0``)."""
    return (x_t.double() - sigma * v.double()).to(v.dtype)


def reference_renoise(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """(1 - sigma) x0 + sigma eps in fp32, cast to the noise's dtype (``FlowMatchScheduler.add_noise``).
    ``sigma`` is an fp32 value: 1 - sigma is exact in fp64, and torch rounds the scalar to fp32 as the
    reference's fp32 ``1 - sigma`` does."""
    return ((1 - sigma) * x0.float() + sigma * noise.float()).to(noise.dtype)
