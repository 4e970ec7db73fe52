"""--split-blocks: the transformer's blocks and their cache layers over two devices. On the CPU both
"devices" are the CPU, which runs every part of the plumbing (per-device caches, the hidden state
handed on, per-device text and modulation, state with global layer indices); two GPUs are a GPU test."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from memrope.cache import make_policy
from memrope.cache.split import SplitKVCache
from memrope.generate import GenerationConfig, StreamingGenerator, json_roundtrip
from memrope.models.bundle import resolve_split
from memrope.models.wan import WanModel
from memrope.models.wan_config import WanConfig
from tests.conftest import TINY_LATENT_HW

REPO_ROOT = Path(__file__).resolve().parents[1]
FOUR = WanConfig(dim=48, num_layers=4, num_heads=4, ffn_dim=96, freq_dim=16, text_dim=24, text_len=8, in_dim=4,
                 out_dim=4)
CPU2 = [torch.device("cpu"), torch.device("cpu")]


def model(split: list | None = None, boundaries=None) -> WanModel:
    torch.manual_seed(0)
    m = WanModel(FOUR).eval().requires_grad_(False)
    if split:
        m.split_blocks(split, boundaries)
    return m


def text_for(m: WanModel, n: int = 2):
    gen = torch.Generator().manual_seed(1)
    return [m.encode_text(torch.randn(1, 8, 24, generator=gen)) for _ in range(n)]


def generate(m: WanModel, policy: str, chunks: int, fused: bool = True, switch_at: int | None = None):
    texts = text_for(m)
    gen = StreamingGenerator(m, make_policy(policy), texts[0], GenerationConfig(TINY_LATENT_HW), fused=fused)
    switches = {switch_at: (texts[1], False)} if switch_at else None
    return [r.latents for r in gen.stream(chunks, switches)], gen


@pytest.mark.parametrize("policy", ["memrope", "sliding_window", "attention_sink", "deep_forcing", "infinity_rope",
                                    "ema_sink", "memrope_adaptive", "deep_forcing_sink_only"])
def test_split_equals_one_device(policy):
    whole, _ = generate(model(), policy, 10, switch_at=6)
    split, gen = generate(model(CPU2), policy, 10, switch_at=6)
    assert isinstance(gen.cache, SplitKVCache) and [(s.first, s.last) for s in gen.cache.stages] == [(0, 2), (2, 4)]
    assert all(torch.equal(a, b) for a, b in zip(whole, split, strict=True))
    assert gen.cache.nbytes() == generate(model(), policy, 1)[1].cache.nbytes()


def test_module_path_and_uneven_split():
    whole, _ = generate(model(), "memrope", 6, fused=False)
    split, gen = generate(model(CPU2, boundaries=[1]), "memrope", 6, fused=False)
    assert [(s.first, s.last) for s in gen.cache.stages] == [(0, 1), (1, 4)]
    assert all(torch.equal(a, b) for a, b in zip(whole, split, strict=True))


def test_state_moves_between_split_and_unsplit_runs():
    ref, _ = generate(model(), "memrope", 8)
    for first, second in ((CPU2, None), (None, CPU2)):
        m1 = model(first)
        texts = text_for(m1)
        g1 = StreamingGenerator(m1, make_policy("memrope"), texts[0], GenerationConfig(TINY_LATENT_HW))
        list(g1.stream(5))
        tensors, data = g1.state_dict()
        assert {k.split(".")[1] for k in tensors if k.startswith("cache.")} >= {"0", "3"}  # global layer indices
        m2 = model(second)
        g2 = StreamingGenerator(m2, make_policy("memrope"), text_for(m2)[0], GenerationConfig(TINY_LATENT_HW))
        g2.load_state_dict(tensors, json_roundtrip(data))
        assert all(torch.equal(r.latents, x) for r, x in zip(g2.stream(8), ref[5:], strict=True))


def test_split_passes_are_not_captured():
    from tests.models.test_graphs import TapeBackend

    m = model(CPU2)
    gen = StreamingGenerator(m, make_policy("memrope"), text_for(m)[0], GenerationConfig(TINY_LATENT_HW),
                             graph_backend=TapeBackend())
    assert gen.graphs.backend is None and gen.graphs.reason == "passes over split blocks cross devices and are not " \
        "captured"
    list(gen.stream(6))
    assert gen.cache.pass_signature() is None


def test_moving_the_whole_model_undoes_the_split():
    m = model(CPU2)
    assert len(m.stages()) == 2
    m.to(torch.float32)
    assert [(s.first, s.last) for s in m.stages()] == [(0, 4)]


def test_split_errors():
    with pytest.raises(ValueError, match="--split-blocks needs two or more devices, got 1"):
        model([torch.device("cpu")])
    with pytest.raises(ValueError, match=r"--split-blocks: 2 devices cannot share 4 blocks at \[4\]"):
        model(CPU2, boundaries=[4])
    with pytest.raises(ValueError, match="--split-blocks takes two devices separated by a comma"):
        resolve_split("cpu", "auto")
    with pytest.raises(ValueError, match="--split-blocks: 'gpu0' is not a device"):
        resolve_split("gpu0,cpu", "auto")
    with pytest.raises(ValueError, match="--device cuda:1 conflicts with --split-blocks cpu,cpu"):
        resolve_split("cpu,cpu", "cuda:1")
    if torch.cuda.device_count() < 2:
        with pytest.raises(ValueError, match=rf"--split-blocks cuda:0,cuda:1 requested but this machine has "
                                             rf"{torch.cuda.device_count()} CUDA device"):
            resolve_split("cuda:0,cuda:1", "auto")


def _run(tmp_path: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
    out = tmp_path / f"{name}.mp4"
    return subprocess.run([sys.executable, "-m", "memrope.cli", "generate", "--latent-frames", "12", "--out", str(out),
                           "--stats", str(tmp_path / f"{name}.json"), "--no-progress", *extra],
                          capture_output=True, text=True, cwd=REPO_ROOT)


def test_cli_split_video_equals_the_unsplit_one(tmp_path):
    for name, extra in (("one", ()), ("split", ("--split-blocks", "cpu,cpu"))):
        proc = _run(tmp_path, name, "--checkpoint-every", "2", *extra)
        assert proc.returncode == 0, proc.stderr
    shas = {n: [c["frames_sha256"] for c in json.loads((tmp_path / f"{n}.json").read_text())["chunks"]]
            for n in ("one", "split")}
    assert shas["one"] == shas["split"] and len(shas["one"]) == 4
    assert hashlib.sha256((tmp_path / "one.mp4").read_bytes()).digest() == \
        hashlib.sha256((tmp_path / "split.mp4").read_bytes()).digest()


def test_cli_bad_split_is_one_line(tmp_path):
    proc = _run(tmp_path, "bad", "--split-blocks", "cpu")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "memrope: error: --split-blocks takes two devices separated by a comma (e.g. cuda:0,cuda:1), got 'cpu'"]
    assert not (tmp_path / "bad.mp4").exists()


@pytest.mark.gpu
def test_two_gpus_equal_one():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    gpus = [torch.device("cuda:0"), torch.device("cuda:1")]
    one = model().to("cuda:0")
    whole, _ = generate(one, "memrope", 8)
    split, gen = generate(model(gpus), "memrope", 8)
    assert gen.cache.parts()[1][1].layers[0].k.device == gpus[1]
    for a, b in zip(whole, split, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
