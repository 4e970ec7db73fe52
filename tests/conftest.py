"""Shared fixtures: tiny models on CPU, deterministic seeds, GPU tests skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from memrope.models.wan import WanModel
from memrope.models.wan_config import wan_config

TINY_LATENT_HW = (4, 4)  # 2x2 tokens per frame after the (1, 2, 2) patch: fast yet spatial


def pytest_collection_modifyitems(config, items):
    """`gpu` tests skip without CUDA; `slow` tests (minutes each) run only with `-m slow`."""
    run_slow = "slow" in (config.getoption("-m") or "")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_slow = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)


@pytest.fixture(scope="session")
def tiny_model() -> WanModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = WanModel(wan_config("tiny"))
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def tiny_text(tiny_model):
    cfg = tiny_model.config
    gen = torch.Generator().manual_seed(1)
    return tiny_model.encode_text(torch.randn(1, cfg.text_len, cfg.text_dim, generator=gen))
