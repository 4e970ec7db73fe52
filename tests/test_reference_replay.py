"""``--noise reference`` with the ``memrope_reference`` preset gives the MemRoPE reference's latents.

:func:`replay` is the reference's sampling loop written out from its released code, in its order of
operations and its layout ([B, F, C, H, W]): YoungRaeKimm/MemRoPE@b89bf5b ``inference.py`` (one CPU
generator seeded with the seed, the whole video's initial noise drawn in bf16 first),
``pipeline/causal_inference.py`` (``CausalInferencePipeline.inference``: warped denoising steps, per
block the denoising passes, x0, a fresh ``torch.randn`` of ``pred_flat.shape`` from the same generator
and ``scheduler.add_noise`` between passes, the clean pass at ``context_noise``), ``utils/scheduler.py``
(``FlowMatchScheduler(shift, sigma_min=0.0, extra_one_step=True)``, 1000 steps, ``add_noise``) and
``utils/wan_wrapper.py`` (``_convert_flow_pred_to_x0`` in fp64). The network is memrope's (its
equivalence with Wan's is tested elsewhere), called once per pass as the reference calls its own; its
KV cache runs the ``memrope_reference`` policy. The reference runs the model in bf16, and so does this.
"""

from __future__ import annotations

import pytest
import torch

from memrope.cache import make_cache, make_policy
from memrope.generate import GenerationConfig, StreamingGenerator
from memrope.sampling import SamplerConfig, reference_renoise, reference_steps, reference_x0
from tests.models.test_wan_fused import random_model, text_for

from .conftest import TINY_LATENT_HW

NUM_FRAMES, BLOCK = 18, 3  # six chunks: the 12-slot memrope cache fills, evicts and folds its memories
SEED = 11


class ReferenceScheduler:
    """``FlowMatchScheduler(shift=5.0, sigma_min=0.0, extra_one_step=True)`` after ``set_timesteps(1000)``."""

    def __init__(self, shift=5.0, num_inference_steps=1000, num_train_timesteps=1000, sigma_max=1.0, sigma_min=0.0):
        sigma_start = sigma_min + (sigma_max - sigma_min) * 1.0  # denoising_strength = 1
        self.sigmas = torch.linspace(sigma_start, sigma_min, num_inference_steps + 1)[:-1]  # extra_one_step
        self.sigmas = shift * self.sigmas / (1 + (shift - 1) * self.sigmas)
        self.timesteps = self.sigmas * num_train_timesteps

    def add_noise(self, original_samples, noise, timestep):
        timestep_id = torch.argmin((self.timesteps.unsqueeze(0) - timestep.unsqueeze(1)).abs(), dim=1)
        sigma = self.sigmas[timestep_id].reshape(-1, 1, 1, 1)
        sample = (1 - sigma) * original_samples + sigma * noise
        return sample.type_as(noise)


def convert_flow_pred_to_x0(scheduler, flow_pred, xt, timestep):
    """``WanDiffusionWrapper._convert_flow_pred_to_x0``."""
    original_dtype = flow_pred.dtype
    flow_pred, xt, sigmas, timesteps = (t.double() for t in (flow_pred, xt, scheduler.sigmas, scheduler.timesteps))
    timestep_id = torch.argmin((timesteps.unsqueeze(0) - timestep.unsqueeze(1)).abs(), dim=1)
    sigma_t = sigmas[timestep_id].reshape(-1, 1, 1, 1)
    x0_pred = xt - sigma_t * flow_pred
    return x0_pred.to(original_dtype)


def replay(model, text, seed=SEED, num_output_frames=NUM_FRAMES, num_frame_per_block=BLOCK,
           denoising_step_list=(1000, 750, 500, 250), context_noise=0):
    """The reference's loop; returns its ``output`` latents [B, F, C, H, W]."""
    scheduler = ReferenceScheduler()
    step_list = torch.tensor(denoising_step_list, dtype=torch.long)
    timesteps = torch.cat((scheduler.timesteps.cpu(), torch.tensor([0], dtype=torch.float32)))
    step_list = timesteps[1000 - step_list]  # warp_denoising_step

    generator = torch.Generator(device="cpu").manual_seed(seed)  # inference.py
    latent_channels, (latent_h, latent_w) = model.config.in_dim, TINY_LATENT_HW
    noise = torch.randn([1, num_output_frames, latent_channels, latent_h, latent_w], generator=generator,
                        device="cpu", dtype=torch.bfloat16)

    def generator_call(noisy, timestep, commit):  # WanDiffusionWrapper.forward -> (flow_pred, x0)
        flow_pred = model(noisy.permute(0, 2, 1, 3, 4), timestep[:, 0], text, cache, commit=commit)
        flow_pred = flow_pred.permute(0, 2, 1, 3, 4)  # [B, F, C, H, W]
        x0 = convert_flow_pred_to_x0(scheduler, flow_pred.flatten(0, 1), noisy.flatten(0, 1), timestep.flatten(0, 1))
        return flow_pred, x0.unflatten(0, flow_pred.shape[:2])

    batch_size = noise.shape[0]
    cache = make_cache(make_policy("memrope_reference"),
                       model.cache_geometry(batch_size, TINY_LATENT_HW, num_frame_per_block), model.rope)
    output = torch.zeros_like(noise)
    current_start_frame = 0
    for _ in range(num_output_frames // num_frame_per_block):
        current_num_frames = num_frame_per_block
        cache.begin_chunk(current_num_frames)
        noisy_input = noise[:, current_start_frame:current_start_frame + current_num_frames]
        for index, current_timestep in enumerate(step_list):
            timestep = torch.ones([batch_size, current_num_frames], dtype=torch.int64) * current_timestep
            _, denoised_pred = generator_call(noisy_input, timestep, commit=False)
            if index < len(step_list) - 1:
                next_timestep = step_list[index + 1]
                pred_flat = denoised_pred.flatten(0, 1)
                intermediate_noise = torch.randn(pred_flat.shape, generator=generator, device="cpu",
                                                 dtype=pred_flat.dtype)
                noisy_input = scheduler.add_noise(
                    pred_flat, intermediate_noise,
                    next_timestep * torch.ones([batch_size * current_num_frames], dtype=torch.long),
                ).unflatten(0, denoised_pred.shape[:2])
        output[:, current_start_frame:current_start_frame + current_num_frames] = denoised_pred
        context_timestep = torch.ones_like(timestep) * context_noise
        generator_call(denoised_pred, context_timestep, commit=True)
        cache.end_chunk()
        current_start_frame += current_num_frames
    return output


def test_generate_with_reference_noise_gives_the_reference_latents():
    model = random_model(dtype=torch.bfloat16)
    text = text_for(model)
    with torch.no_grad():
        expected = replay(model, text)  # [1, F, C, H, W]
    config = GenerationConfig(latent_hw=TINY_LATENT_HW, chunk_frames=BLOCK, seed=SEED, noise="reference",
                              noise_frames=NUM_FRAMES)
    gen = StreamingGenerator(model, make_policy("memrope_reference"), text, config)
    ours = torch.cat([gen.next_chunk().latents for _ in range(NUM_FRAMES // BLOCK)], dim=2)  # [1, C, F, H, W]
    assert gen._fused is not None  # the generator's own (fused) path, as the replay's model calls
    assert ours.dtype == torch.bfloat16
    assert torch.equal(ours, expected.permute(0, 2, 1, 3, 4))
    per_chunk = StreamingGenerator(model, make_policy("memrope_reference"), text,
                                   GenerationConfig(latent_hw=TINY_LATENT_HW, chunk_frames=BLOCK, seed=SEED))
    assert not torch.equal(per_chunk.next_chunk().latents, ours[:, :, :BLOCK])  # the noise made the difference


@pytest.mark.parametrize("sampler", [SamplerConfig(), SamplerConfig(shift=8.0),
                                     SamplerConfig(steps=(1000, 500), warp=False),
                                     SamplerConfig(steps=(1000, 960, 333, 17), shift=3.0)])
def test_reference_steps_are_the_schedulers(sampler):
    scheduler = ReferenceScheduler(shift=sampler.shift)
    timesteps = torch.cat((scheduler.timesteps, torch.tensor([0], dtype=torch.float32)))
    steps = torch.tensor(sampler.steps, dtype=torch.long)
    ts = timesteps[1000 - steps] if sampler.warp else steps * torch.ones(1)
    ids = torch.argmin((scheduler.timesteps.unsqueeze(0) - ts.unsqueeze(1)).abs(), dim=1)
    assert reference_steps(sampler) == [(float(t), float(scheduler.sigmas[i])) for t, i in zip(ts, ids)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_arithmetic_is_the_wrappers(dtype):
    """x0 and the re-noise, value for value, on fp32 inputs too (where memrope's fp32 formulas differ)."""
    scheduler = ReferenceScheduler()
    gen = torch.Generator().manual_seed(0)
    x, v, eps = (torch.randn(6, 4, 5, 7, generator=gen).to(dtype) for _ in range(3))
    for t, sigma in reference_steps(SamplerConfig()):
        timestep = torch.full((6,), t)
        assert torch.equal(reference_x0(x, v, sigma), convert_flow_pred_to_x0(scheduler, v, x, timestep))
        assert torch.equal(reference_renoise(x, eps, sigma), scheduler.add_noise(x, eps, timestep))


def test_memrope_arithmetic_differs_from_the_references_at_real_sizes():
    """Why ``--noise reference`` also takes the reference's arithmetic: on one bf16 chunk of 832x480
    latents (16 x 3 x 60 x 104 values, N(0, 1)), memrope's own x0 (fp32, sigma = t / 1000 in fp64) and
    re-noise differ from the reference's by one bf16 step in a fraction of the values at the step
    whose sigma is not exact in fp32 (833.3). Prints the counts (the README quotes them)."""
    from memrope.sampling import denoising_timesteps, renoise, x0_from_velocity

    gen = torch.Generator().manual_seed(0)
    n = 16 * 3 * 60 * 104
    x, v, eps = (torch.randn(n, generator=gen).to(torch.bfloat16) for _ in range(3))
    differ = {}
    for (t, sigma), t_ours in zip(reference_steps(SamplerConfig()), denoising_timesteps(SamplerConfig())):
        x0 = (reference_x0(x, v, sigma) != x0_from_velocity(x, v, t_ours)).sum().item()
        noised = (reference_renoise(x, eps, sigma) != renoise(x, eps, t_ours)).sum().item()
        differ[round(t, 1)] = (x0, noised)
        print(f"\nt {t:.1f}: x0 differs in {x0} of {n} values ({x0 / n:.2%}), re-noise in {noised} ({noised / n:.2%})")
    assert differ[1000.0] == differ[937.5] == differ[625.0] == (0, 0)  # sigmas exact in fp32: no difference
    assert min(differ[833.3]) > 0
