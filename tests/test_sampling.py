import pytest
import torch

from memrope.sampling import (
    SamplerConfig,
    denoising_timesteps,
    renoise,
    schedule_timesteps,
    shifted_sigma,
    x0_from_velocity,
)


def test_warped_steps_are_the_shift5_closed_form():
    t = denoising_timesteps(SamplerConfig())
    assert t == pytest.approx([1000.0, 937.5, 2500 / 3, 625.0], abs=1e-9)
    # sigma(s) = 5 s / (1 + 4 s) at s = 1, .75, .5, .25
    assert [shifted_sigma(s, 5.0) for s in (1, 0.75, 0.5, 0.25)] == pytest.approx([x / 1000 for x in t])


def test_schedule_table_is_decreasing_and_starts_at_1000():
    table = schedule_timesteps(5.0)
    assert len(table) == 1000 and table[0] == 1000 and bool((table[1:] < table[:-1]).all())


def test_unwarped_steps_pass_through():
    assert denoising_timesteps(SamplerConfig(warp=False)) == [1000.0, 750.0, 500.0, 250.0]


def test_x0_and_renoise_invert_the_flow_interpolation():
    x0, eps = torch.randn(2, 3), torch.randn(2, 3)
    t = 833.0
    x_t = renoise(x0, eps, t)  # (1 - s) x0 + s eps
    velocity = eps - x0  # the exact flow velocity
    assert torch.allclose(x0_from_velocity(x_t, velocity, t), x0, atol=1e-6)
    assert torch.equal(renoise(x0, eps, 0.0), x0)


@pytest.mark.parametrize("kwargs,message", [
    ({"steps": ()}, "at least one"),
    ({"steps": (250, 500)}, "strictly decreasing"),
    ({"steps": (2000,)}, "must lie in"),
    ({"shift": 0}, "shift must be > 0"),
])
def test_sampler_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplerConfig(**kwargs)
