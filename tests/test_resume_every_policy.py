"""Resume, for every policy and preset: a stream saved at a chunk boundary and rebuilt continues exactly.

The ring cache of memrope had the only resume test; here every policy of the registry is saved and
rebuilt at several boundaries, before and right after a prompt switch and a hard cut, and past its
first evictions and compressions, through the same serialisation a run directory uses (safetensors
bytes, JSON). The run-level test interrupts ``memrope generate`` at chunk boundaries (the SIGINT path)
and resumes it: the prompt of the chunks after a switch comes from the run's schedule, not from the
generator's constructor.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load, load_file, save

from memrope import run as run_module
from memrope.cache import make_policy, policy_names
from memrope.cli import main
from memrope.generate import GenerationConfig, StreamingGenerator

from .conftest import TINY_LATENT_HW

CHUNKS = 12  # past deep_forcing's first compression (chunk 7) twice; every window evicts
SWITCH_AT, CUT_AT = 4, 7
KILLS = (2, SWITCH_AT, SWITCH_AT + 1, CUT_AT, CUT_AT + 1, 10)  # before / right after the switch and the cut


def texts(model, n):
    gen = torch.Generator().manual_seed(21)
    cfg = model.config
    return [model.encode_text(torch.randn(1, cfg.text_len, cfg.text_dim, generator=gen)) for _ in range(n)]


def saved(gen: StreamingGenerator) -> tuple[bytes, str]:
    """The state as a run directory stores it: tensors as safetensors bytes (copies), the rest as JSON."""
    tensors, data = gen.state_dict()
    return save({k: t.contiguous() for k, t in tensors.items()}), json.dumps(data, default=str)


@pytest.mark.parametrize("name", policy_names())
def test_every_policy_resumes_to_the_straight_stream(tiny_model, name):
    t = texts(tiny_model, 3)
    switches = {SWITCH_AT: (t[1], False), CUT_AT: (t[2], True)}
    config = GenerationConfig(latent_hw=TINY_LATENT_HW, seed=4)
    straight = StreamingGenerator(tiny_model, make_policy(name), t[0], config)
    states, latents = {}, []
    for result in straight.stream(CHUNKS, switches):
        latents.append(result.latents)
        states[result.index + 1] = saved(straight)
    for k in KILLS:
        blob, data = states[k]
        prompt = sum(1 for s in switches if s < k)  # the prompt of the last chunk made before the kill
        resumed = StreamingGenerator(tiny_model, make_policy(name), t[prompt], config)
        resumed.load_state_dict(load(blob), json.loads(data))
        assert resumed.chunks_emitted == k
        tail = [r.latents for r in resumed.stream(CHUNKS, switches)]
        assert len(tail) == CHUNKS - k
        for j, (a, b) in enumerate(zip(tail, latents[k:], strict=True)):
            assert torch.equal(a, b), f"{name}: resumed at {k}, chunk {k + j} differs by {(a - b).abs().max():.3g}"


# --------------------------------------------------------------------------- the run: schedule and SIGINT
SCHEDULE = "a red disc[0.75s] | a blue ring[0.5625s] | a blue disc[10s#]"  # 0.1875 s a chunk: switch 4, cut 7
RUN_CHUNKS = 10


def run_args(out: Path, policy: str) -> list[str]:
    return ["--policy", policy, "--prompt", SCHEDULE, "--latent-frames", str(3 * RUN_CHUNKS), "--out", str(out),
            "--checkpoint-every", "3", "--save-latents", "--seed", "6"]


def run_latents(run_dir: Path) -> torch.Tensor:
    files = sorted((run_dir / "segments").glob("*.latents.safetensors"))
    return torch.cat([load_file(str(f))["latents"] for f in files], dim=2)


def interrupted_at(argv: list[str], chunk: int) -> int:
    """``memrope generate ARGV`` interrupted (SIGINT) once chunk ``chunk`` is out: it saves and stops there."""
    real = run_module.generate

    def on_chunk(stats):
        if stats["index"] + 1 == chunk:
            signal.raise_signal(signal.SIGINT)

    with pytest.MonkeyPatch.context() as mp:  # the command imports run.generate when it runs
        mp.setattr(run_module, "generate", lambda *a, **kw: real(*a, **{**kw, "on_chunk": on_chunk}))
        return main(["generate", *argv, "--no-progress"])


@pytest.mark.parametrize("policy", ["memrope", "memrope_adaptive", "infinity_rope"])
def test_a_run_resumed_after_a_switch_and_a_cut_continues_with_the_schedules_prompts(tmp_path, policy):
    """memrope (ring, recache), memrope_adaptive (slot order, recache), infinity_rope (flush, cut):
    interrupted right after the switch and right after the cut, resumed each time, the run's latents
    equal the uninterrupted run's."""
    straight = tmp_path / "straight.mp4"
    assert main(["generate", *run_args(straight, policy), "--no-progress"]) == 0
    expected = run_latents(Path(str(straight) + ".run"))
    assert expected.shape[2] == 3 * RUN_CHUNKS
    for stops in ((SWITCH_AT + 1,), (CUT_AT + 1,), (SWITCH_AT, CUT_AT + 2)):
        out = tmp_path / f"v{'_'.join(map(str, stops))}.mp4"
        run_dir = Path(str(out) + ".run")
        argv = run_args(out, policy)
        for stop in stops:
            assert interrupted_at(argv, stop) == 130
            assert json.loads((run_dir / "manifest.json").read_text())["chunks_done"] == stop
            argv = ["--resume", str(run_dir)]
        assert main(["generate", "--resume", str(run_dir), "--no-progress"]) == 0
        got = run_latents(run_dir)
        assert torch.equal(got, expected), f"{policy}: stopped at {stops}: off by {(got - expected).abs().max():.3g}"
