"""Captured passes replayed in the steady state: on the CPU through a backend that records a pass's ATen
operations and re-executes them on the very same tensors (what a CUDA graph does: fixed addresses, no
Python), so the static-input plumbing is tested for real; CUDA graphs themselves on a GPU."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import memrope.models.graphs as graphs_module
from memrope.cache import make_policy
from memrope.generate import GenerationConfig, StreamingGenerator
from memrope.models.wan import WanModel
from memrope.models.wan_config import wan_config
from tests.conftest import TINY_LATENT_HW


class Recorder(TorchDispatchMode):
    """Executes and records every ATen call: (op, args, kwargs, outputs, kind)."""

    def __init__(self, tape: list):
        super().__init__()
        self.tape = tape

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        schema = func._schema
        if any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments):
            kind = "mutate"  # in place: re-executed on the same tensors
        elif any(r.alias_info is not None for r in schema.returns):
            kind = "view"  # aliases its input: follows it without being re-executed
        else:
            kind = "compute"  # writes its recorded output again at replay
        self.tape.append((func, args, kwargs, out, kind))
        return out


class TapeBackend:
    """A CUDA graph's semantics on the CPU: replay re-runs the recorded kernels into recorded memory."""

    def __init__(self):
        self.captures = 0

    def warm(self, fn):
        return fn()

    def capture(self, fn):
        tape: list = []
        with Recorder(tape):
            out = fn()
        self.captures += 1

        def replay() -> None:
            for func, args, kwargs, recorded, kind in tape:
                if kind == "view":
                    continue
                result = func(*args, **kwargs)
                if kind == "compute":
                    for dst, src in zip(tree_leaves(recorded), tree_leaves(result), strict=True):
                        if isinstance(dst, torch.Tensor):
                            dst.copy_(src)

        return out, replay


class Refusing:
    def warm(self, fn):
        return fn()

    def capture(self, fn):
        raise RuntimeError("operation not permitted when stream is capturing")


@pytest.fixture(scope="module")
def model() -> WanModel:
    torch.manual_seed(0)
    return WanModel(wan_config("tiny")).eval().requires_grad_(False)


def texts(model: WanModel, n: int = 2):
    cfg = model.config
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        return [model.encode_text(torch.randn(1, cfg.text_len, cfg.text_dim, generator=gen)) for _ in range(n)]


def run(model, policy: str, chunks: int, backend=None, switches=None, seed: int = 0):
    text = texts(model)
    gen = StreamingGenerator(model, make_policy(policy), text[0], GenerationConfig(TINY_LATENT_HW, seed=seed),
                             graph_backend=backend)
    sw = {k: (text[1], False) for k in (switches or ())}
    return [r.latents for r in gen.stream(chunks, sw)], gen


@pytest.mark.parametrize("policy", ["memrope", "sliding_window", "attention_sink"])
def test_replayed_passes_equal_eager_passes(model, policy):
    eager, _ = run(model, policy, 12)
    replayed, gen = run(model, policy, 12, TapeBackend())
    for a, b in zip(eager, replayed, strict=True):
        assert torch.equal(a, b)
    counts = gen.graphs.counts
    # one graph per pass of a chunk: the ring's chunk slots are read from fixed index tensors
    assert counts["captured"] == len(gen.graphs.graphs) == len(gen.timesteps) + 1
    assert counts["replayed"] > counts["captured"]
    assert counts["eager"] > 0  # the chunks that fill the cache
    assert counts["eager"] + counts["warm"] + counts["captured"] + counts["replayed"] == 12 * 5


def test_the_query_positions_are_copied_in_before_each_replay(model, monkeypatch):
    """sliding_window keeps one layout while its absolute positions grow: without the copy of the
    query tables into the graph's static ones, replays attend at the positions of capture time."""
    eager, _ = run(model, "sliding_window", 10)
    monkeypatch.setattr(graphs_module, "_copy_freqs", lambda static, current: None)
    stale, _ = run(model, "sliding_window", 10, TapeBackend())
    assert not all(torch.equal(a, b) for a, b in zip(eager, stale, strict=True))


def test_a_refused_capture_falls_back_to_eager(model):
    eager, _ = run(model, "memrope", 8)
    fallback, gen = run(model, "memrope", 8, Refusing())
    assert all(torch.equal(a, b) for a, b in zip(eager, fallback, strict=True))
    assert gen.graphs.graphs == {} and gen.graphs.failed
    assert all(v == "RuntimeError: operation not permitted when stream is capturing"
               for v in gen.graphs.failed.values())


def test_a_prompt_switch_drops_the_graphs(model):
    eager, _ = run(model, "memrope", 12, switches=(7,))
    replayed, gen = run(model, "memrope", 12, TapeBackend(), switches=(7,))
    assert all(torch.equal(a, b) for a, b in zip(eager, replayed, strict=True))
    assert gen.graphs.counts["replayed"] > 0


def test_without_cuda_the_generator_runs_eagerly_and_says_why(model):
    text = texts(model, 1)[0]
    gen = StreamingGenerator(model, make_policy("memrope"), text, GenerationConfig(TINY_LATENT_HW), cuda_graphs=True)
    assert gen.graphs.backend is None
    assert gen.graphs.reason == "CUDA graphs need a CUDA device; the model is on cpu: passes run eagerly"
    off = StreamingGenerator(model, make_policy("memrope"), text, GenerationConfig(TINY_LATENT_HW))
    assert off.graphs.reason == "not requested"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graphs_equal_eager_on_the_gpu(dtype):
    torch.manual_seed(0)
    cuda_model = WanModel(wan_config("tiny")).eval().requires_grad_(False).to("cuda", dtype)
    text = texts(cuda_model, 1)[0]
    out = {}
    for graphs in (False, True):
        gen = StreamingGenerator(cuda_model, make_policy("memrope"), text, GenerationConfig(TINY_LATENT_HW),
                                 cuda_graphs=graphs)
        out[graphs] = [r.latents for r in gen.stream(12)]
        if graphs:
            assert gen.graphs.counts["replayed"] > 0, gen.graphs.describe()
    for a, b in zip(out[False], out[True], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
