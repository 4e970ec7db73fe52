"""The memory plan: computed on the meta device, checked against the CPU allocator's own peak.

How the peak is measured: ``torch.profiler`` with ``profile_memory=True`` records every allocation and
free of PyTorch's CPU allocator with the allocator's running total of allocated bytes; the measured
peak is the largest running total over a whole run (model built inside the profiled region, so
everything the run holds counts: weights, cache, text, decoder, activations, kernel buffers). The
plan never sees a real allocation: it follows tensors on the meta device.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

import memrope.cli as cli
from memrope.cache import make_policy
from memrope.memory_plan import (
    STEADY_CHUNKS,
    Scenario,
    make_plan,
    parse_size,
    run_scenario,
    unbounded_cache_bytes,
)
from memrope.models.toy.autoencoder import FrameAutoencoder, WorldDecoder
from memrope.models.toy.decoder import ToyDecoder
from memrope.models.wan_config import wan_config

REPO_ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
TOLERANCE = 0.10  # the bar: the plan's peak within 10% of the measured one


def measured_peak(scenario: Scenario) -> int:
    """The CPU allocator's peak over a real run of the scenario (see module doc)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run_scenario(scenario, "cpu")
    peak, stack = 0, list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.typed[0] == _EventType.Allocation:
            peak = max(peak, node.typed[1].total_allocated)
        stack.extend(node.children)
    return peak


def scenario(config: str, policy: str) -> Scenario:
    cfg = wan_config(config)
    if config == "tiny":  # the tiny shape: latent 4x4, the weight-free toy decoder (CPU-side)
        def make(device):
            with torch.device(device):
                return ToyDecoder(cfg.in_dim)
        return Scenario(cfg, (4, 4), torch.float32, make_policy(policy), make, "toy decoder")

    def make_world(device):  # the toy shape: the embedded model's size and its convolutional decoder
        with torch.device(device):
            return WorldDecoder(FrameAutoencoder(cfg.in_dim))
    return Scenario(cfg, (8, 8), torch.float32, make_policy(policy), make_world, "toy autoencoder")


@pytest.mark.parametrize(("config", "policy"), [("tiny", "memrope"), ("tiny", "sliding_window"),
                                                ("tiny", "deep_forcing"), ("toy", "memrope"),
                                                ("toy", "attention_sink"), ("tiny", "ema_sink"),
                                                ("toy", "memrope_adaptive")])
def test_plan_peak_within_ten_percent_of_the_measured_peak(config, policy):
    torch.set_num_threads(1)
    s = scenario(config, policy)
    plan = make_plan(s, [CPU], CPU).peak("cpu", overlapped=False)
    measured = measured_peak(s)
    print(f"\n{config} {policy}: plan {plan} B, measured {measured} B, plan / measured {plan / measured:.4f}")
    assert abs(plan / measured - 1) <= TOLERANCE


def test_components_are_the_run_s_own_tensors():
    s = scenario("toy", "memrope")
    row = make_plan(s, [CPU], CPU).devices["cpu"]
    gen = run_scenario(s, "cpu")
    model = gen.model
    assert row["transformer weights"] == sum(t.untyped_storage().nbytes() for t in (*model.parameters(),
                                                                                      *model.buffers()))
    assert row["KV cache and policy state"] == gen.cache.nbytes()
    text = 4 * 2 * 32 * 128 * 4  # 4 layers x (k, v) x 32 tokens x dim 128 x fp32
    assert row["text context"] == text
    ae = gen.decoder.inner.autoencoder
    assert row["decoder weights"] == sum(t.untyped_storage().nbytes() for t in (*ae.parameters(), *ae.buffers()))
    assert row["transformer activations (peak)"] > 0 and row["decoder activations (peak)"] > 0


def test_more_prompts_more_text_and_split_devices_add_up():
    one = make_plan(scenario("tiny", "memrope"), [CPU], CPU)
    s3 = Scenario(**{**scenario("tiny", "memrope").__dict__, "prompts": 3})
    three = make_plan(s3, [CPU], CPU)
    assert three.devices["cpu"]["text context"] == 3 * one.devices["cpu"]["text context"]
    split = make_plan(scenario("tiny", "memrope"), [CPU, CPU], CPU)  # two stages on one device add up
    for k, v in one.devices["cpu"].items():
        assert split.devices["cpu"][k] == pytest.approx(v, abs=2), k


def test_unbounded_cache_follows_the_doubling_of_its_buffers():
    from memrope.cache.plan import CacheGeometry
    from memrope.cache.policy import LayerKV

    geo = CacheGeometry(num_layers=1, batch=1, heads=1, head_dim=6, grid=(1, 1), chunk_frames=3)
    layer = LayerKV.allocate(geo, 3, with_raw=False)
    peak = 0
    for k in range(1, 41):
        needed = 3 * k
        if needed > layer.capacity_tokens():
            old = layer.capacity_tokens()
            layer.grow(max(needed, 2 * old))
            peak = old + layer.capacity_tokens()
    final, growing = unbounded_cache_bytes(1, 3, 40)
    assert (final, growing) == (layer.capacity_tokens(), peak)


def test_parse_size():
    assert parse_size("24GiB") == 24 * 2**30 and parse_size("500MB") == 500 * 10**6 and parse_size("7") == 7
    with pytest.raises(Exception, match="expected a size like 20GiB or 500MB, got '12 parsecs'"):
        parse_size("12 parsecs")


def _cli(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "memrope.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_plan_command_and_dry_run_write_nothing(tmp_path):
    proc = _cli("plan", "--latent-frames", "12", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["plan"]["model"] == "toy" and out["plan"]["policy"] == "memrope"
    assert set(out["devices"]["cpu"]) >= {"transformer weights", "KV cache and policy state", "text context",
                                          "decoder weights", "transformer activations (peak)"}
    video = tmp_path / "v.mp4"
    proc = _cli("generate", "--dry-run", "--out", str(video), "--latent-frames", "12", "--memory-budget", "1GiB")
    assert proc.returncode == 0 and "| **peak (decode overlapped)** |" in proc.stdout and " fits (1024 MiB budget)" \
        in proc.stdout
    assert not video.exists() and not list(tmp_path.iterdir())


def test_generate_refuses_before_loading_anything(tmp_path, monkeypatch, capsys):
    import memrope.models.loading as loading

    def must_not_load(*a, **k):
        raise AssertionError("the model was loaded although the plan does not fit")

    monkeypatch.setattr(loading, "load_bundle", must_not_load)
    video = tmp_path / "v.mp4"
    status = cli.main(["generate", "--out", str(video), "--latent-frames", "12", "--memory-budget", "5MB",
                       "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1
    assert err[0].startswith("memrope: error: the memory plan needs ") and " on cpu but 4.8 MiB is the budget " \
        "(largest: transformer weights 4.9 MiB" in err[0] and err[0].endswith("(see memrope plan)")
    assert not video.exists()


def test_bad_memory_budget_is_a_usage_error(tmp_path):
    proc = _cli("generate", "--out", str(tmp_path / "v.mp4"), "--memory-budget", "lots")
    assert proc.returncode == 2 and "expected a size like 20GiB or 500MB, got 'lots'" in proc.stderr


@pytest.mark.gpu
def test_plan_against_the_cuda_allocator():
    dev = torch.device("cuda")
    cfg = wan_config("toy")
    s = Scenario(cfg, (8, 8), torch.bfloat16, make_policy("memrope"), None, "none")
    plan = make_plan(s, [dev], dev).peak("cuda", overlapped=False)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    run_scenario(s, dev)
    measured = torch.cuda.max_memory_allocated(dev) - base
    print(f"\ncuda toy: plan {plan} B, measured {measured} B ({STEADY_CHUNKS} steady chunks)")
    assert abs(plan / measured - 1) <= TOLERANCE


@pytest.mark.parametrize("decoder", ["vae", "taehv"])
def test_real_wan_run_is_planned_from_its_folder(decoder, tmp_path):
    """A tiny real-layout Wan stack: the plan reads the folder's configs only; its weights and cache are
    those of the model the loader then builds."""
    from memrope.generate_options import settings_from_args
    from memrope.memory_plan import plan_settings
    from memrope.models.bundle import BundleOptions
    from memrope.models.loading import load_bundle
    from memrope.models.taehv import TAEW21_FILE
    from tests.models.test_taehv import random_net, released_file_state
    from tests.models.tiny_wan_files import PIXELS, TINY_REAL, random_wan, self_forcing_dict, write_wan_dir

    wan = write_wan_dir(tmp_path / "wan", "original")
    torch.save(released_file_state(random_net()), wan / TAEW21_FILE)
    ckpt = tmp_path / "sf.pt"
    torch.save(self_forcing_dict(*(random_wan(TINY_REAL, k) for k in range(3))), ckpt)
    argv = ["plan", "--model", "self-forcing", "--checkpoint", str(ckpt), "--wan-dir", str(wan), "--height",
            str(PIXELS), "--width", str(PIXELS), "--device", "cpu", "--decoder", decoder]
    args = cli.build_parser().parse_args(argv)
    args.out = str(tmp_path / "x.mp4")
    settings = settings_from_args(args)
    plan = plan_settings(settings)
    row = plan.devices["cpu"]
    bundle = load_bundle(BundleOptions(**settings["model"]))
    model = bundle.model
    assert row["transformer weights"] == sum(t.untyped_storage().nbytes() for t in (*model.parameters(),
                                                                                      *model.buffers()))
    assert plan.description["decoder"] == {"vae": "Wan VAE", "taehv": "TAEHV"}[decoder]
    assert row["decoder weights"] > 0 and row["decoder activations (peak)"] > 0


def test_unmerged_lora_bytes_are_the_adapters_the_model_holds():
    from memrope.memory_plan import lora_bytes
    from memrope.models.formats.lora import LORA_TARGETS
    from memrope.models.lora_linear import attach_lora
    from memrope.models.wan import WanModel

    cfg, rank = wan_config("tiny"), 4
    model = WanModel(cfg).eval().requires_grad_(False)
    pairs = {}
    for i in range(cfg.num_layers):
        for target in LORA_TARGETS:
            lin = model.get_submodule(f"blocks.{i}.{target}")
            pairs[f"blocks.{i}.{target}"] = {"A": torch.randn(rank, lin.in_features),
                                             "B": torch.randn(lin.out_features, rank)}
    attach_lora(model, pairs, 1.0)
    adapters = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    stacked = sum(b.lora.qkv.a.numel() for b in model.fused_params().blocks)
    assert lora_bytes(cfg, rank, 4) == 4 * (adapters + stacked)


def test_an_unbounded_cache_is_planned_at_the_video_s_end():
    """``full`` keeps every frame: the plan extrapolates its cache to the end of the video (the buffers
    double, ``LayerKV.grow``), where a real run of that length holds exactly that many bytes."""
    base = scenario("tiny", "full")
    chunks = 9
    planned = make_plan(Scenario(**{**base.__dict__, "total_chunks": chunks}), [CPU], CPU)
    gen = run_scenario(base, "cpu")
    with torch.no_grad():
        while gen.cache.clock.chunks < chunks:
            gen.next_chunk()
    assert planned.devices["cpu"]["KV cache and policy state"] == gen.cache.nbytes()
    assert any("grows to" in note for note in planned.notes)
