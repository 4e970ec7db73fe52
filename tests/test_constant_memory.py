"""Unbounded runs hold and write a constant amount, however long they run.

What is tested is what the code holds, not RSS slack: every container reachable from a generator
(its cache, policy, memos), the size of its state, and the live Python objects of a whole ``memrope
generate`` run, at two lengths. The slow test measures host RSS and the time of a
checkpoint at 1,000 and 20,000 chunks of the embedded model, in fresh processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from memrope.cache import make_policy, policy_names
from memrope.cache.base import FREQS_MEMO_SIZE
from memrope.cache.ring import STEP_MEMO_SIZE
from memrope.generate import GenerationConfig, StreamingGenerator

from .conftest import TINY_LATENT_HW

SHORT, LONG = 80, 160  # chunks: both past every policy's fill-up and past the RoPE memo's bound
JSON_DIGITS_SLACK = 24  # the state's plain data may grow only by the digits of its counters
IN_FLIGHT = 20  # objects of one type that may come and go with timing (the decode thread's locks, futures)


def containers(obj, prefix: str = "", depth: int = 0, seen=None) -> dict[str, int]:
    """Length of every list / dict / tuple / set reachable through plain attributes (modules and tensors
    excluded: their sizes are fixed by the model and the cache's allocation)."""
    seen = set() if seen is None else seen
    out: dict[str, int] = {}
    if id(obj) in seen or depth > 4:
        return out
    seen.add(id(obj))
    for name, value in vars(obj).items():
        if isinstance(value, (torch.nn.Module, torch.Tensor)):
            continue
        if isinstance(value, (list, dict, tuple, set)):
            out[prefix + name] = len(value)
            items = value.values() if isinstance(value, dict) else value
            for i, item in enumerate(list(items)[:4]):
                if hasattr(item, "__dict__") and not isinstance(item, (torch.nn.Module, torch.Tensor)):
                    out.update(containers(item, f"{prefix}{name}[{i}].", depth + 1, seen))
        elif hasattr(value, "__dict__"):
            out.update(containers(value, prefix + name + ".", depth + 1, seen))
    return out


BOUNDED = [name for name in policy_names() if make_policy(name).capacity_frames(3) is not None]


@pytest.mark.parametrize("name", BOUNDED)
def test_the_generator_holds_the_same_after_twice_the_chunks(name, tiny_model, tiny_text):
    gen = StreamingGenerator(tiny_model, make_policy(name), tiny_text,
                             GenerationConfig(latent_hw=TINY_LATENT_HW, chunk_frames=3, seed=0))
    seen = {}
    for n in (SHORT, LONG):
        with torch.inference_mode():
            while gen.cache.clock.chunks < n:
                gen.next_chunk()
        tensors, data = gen.state_dict()
        seen[n] = {"containers": containers(gen), "state_bytes": sum(t.numel() * t.element_size()
                                                                     for t in tensors.values()),
                   "state_tensors": sorted((k.split(".")[0], tuple(t.shape)) for k, t in tensors.items()),
                   "state_json": len(json.dumps(data, default=str)),
                   "cache_bytes": gen.cache.nbytes()}
        # the clean latents held are exactly those of the cached frames a recache may re-encode
        cached = {slot.frame_idx for slot in gen.cache.slots if slot.frame_idx is not None}
        assert set(gen._latents) == (cached if gen.cache.policy.recaches_on_switch else set()), n
        assert gen._pending is None
    short, long = seen[SHORT], seen[LONG]
    grown = {k: (short["containers"].get(k), v) for k, v in long["containers"].items()
             if short["containers"].get(k) != v}
    memos = {"cache._freqs": FREQS_MEMO_SIZE, "cache._steps": STEP_MEMO_SIZE}  # cleared when full
    assert set(grown) <= set(memos), grown  # only the memos may change, and they are bounded
    assert all(v <= memos[k] for k, (_, v) in grown.items())
    assert long["state_bytes"] == short["state_bytes"] and long["state_tensors"] == short["state_tensors"]
    assert long["cache_bytes"] == short["cache_bytes"]
    assert 0 <= long["state_json"] - short["state_json"] <= JSON_DIGITS_SLACK


LIVE_OBJECTS = """
import collections, gc, json, sys
from memrope.errors.parser import Parser
from memrope.generate_options import add_generate_arguments, request_from_args
from memrope.run import generate

marks, counts = (40, 200), {}

def on_chunk(stats):
    if stats["index"] + 1 in marks:
        gc.collect()
        counts[stats["index"] + 1] = collections.Counter(type(o).__name__ for o in gc.get_objects())

args = add_generate_arguments(Parser()).parse_args(sys.argv[1:])
assert generate(*request_from_args(args), progress=False, on_chunk=on_chunk) == 0
print(json.dumps({k: (counts[40][k], v) for k, v in counts[200].items() if v != counts[40][k]}))
"""


@pytest.mark.parametrize("extra", [(), ("--checkpoint-every", "10")], ids=["direct", "run directory"])
def test_a_run_holds_no_more_python_objects_after_more_chunks(tmp_path, extra):
    """Live (garbage-collected) objects by type at chunk 40 and at chunk 200 of one run, in a fresh process:
    the previous code held every chunk's statistics (a dict, lists, strings: ~3.8 KB a chunk) in lists and
    the manifest, which would show here as +160 dicts and lists. (tracemalloc is no judge at this scale:
    CPython's free lists keep freed tuples and floats, attributed to their first user, up to a bound.)"""
    argv = ["--latent-frames", str(3 * 220), "--out", str(tmp_path / "v.mp4"), "--stats", str(tmp_path / "s.json"),
            *extra]
    proc = subprocess.run([sys.executable, "-c", LIVE_OBJECTS, *argv], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    changed = json.loads(proc.stdout.strip().splitlines()[-1])
    grown = {k: v for k, v in changed.items() if v[1] > v[0] + IN_FLIGHT}
    assert not grown, changed


def _measure(tmp_path, chunks: int, every: int) -> dict:
    out = tmp_path / f"v{chunks}.mp4"
    stats = tmp_path / f"s{chunks}.json"
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-m", "memrope.cli", "generate", "--latent-frames", str(3 * chunks),
                    "--checkpoint-every", str(every), "--out", str(out), "--stats", str(stats), "--no-progress"],
                   check=True, capture_output=True, env=env)
    summary = json.loads(stats.read_text())["summary"]
    manifest = (tmp_path / f"v{chunks}.mp4.run" / "manifest.json").stat().st_size
    return {**summary, "manifest_bytes": manifest}


@pytest.mark.slow
def test_host_rss_and_checkpoint_time_flat_from_1000_to_20000_chunks(tmp_path):
    """The embedded model, checkpointing every 100 chunks: peak RSS and the median checkpoint within 10%."""
    short, long = _measure(tmp_path, 1_000, 100), _measure(tmp_path, 20_000, 100)
    keys = ("peak_rss_mb", "checkpoint_median_ms", "checkpoint_p90_ms", "steady_median_ms", "manifest_bytes",
            "checkpoints_this_session", "seconds")
    print("\n" + "\n".join(f"{k}: {short[k]} -> {long[k]}" for k in keys))
    assert long["peak_rss_mb"] <= 1.10 * short["peak_rss_mb"]
    assert long["checkpoint_median_ms"] <= 1.10 * short["checkpoint_median_ms"]
    assert long["manifest_bytes"] - short["manifest_bytes"] < 64  # the digits of its counters
