"""Prompt-switch benchmark on the toy world: what each cache policy does when the prompt changes.

``python -m memrope.world.switch_benchmark --scenes 32 --out DIR`` generates, for every policy, one
video per scene with the embedded default model, switches the prompt at ``--switch-frame`` (a chunk
boundary, long after the caches filled: MemRoPE's memories have folded a dozen evictions by then)
and scores the frames around the switch against the world's exact truth (``truth.py``).

Scene i: ``sample_spec(i)`` with at most three objects; prompt A is its canonical text. Prompt B
keeps every object, moves the background to another colour and pattern and adds one object of a
colour the scene lacks, in front: the world's rule for a switch (``prompts.switch_world``: identities
persist, new ones appear, the background follows the new prompt), so the truth after the switch is
B's spec and A's objects must survive it. Measured per scene:

- ``background_latency``: frames from the switch to the first frame whose background pixels (those
  nearer A's or B's background than any object colour) are mostly nearer B's background; a scene
  whose background never turns within ``--after-frames`` counts the horizon (censored) and not in
  ``background_turned``, the share of scenes where it did (exact Clopper-Pearson 95% CI);
- ``object_latency`` / ``object_appeared``: the same for the new object, per chunk: the first chunk
  in which it is present (``truth.py``: its colour covers half its template) in at least half the
  frames it can be judged on;
- the kept objects (A's) in the ``--window`` frames after the switch, against the same number of
  frames before it: ``present`` (their colour), ``shape_ok``, ``size_ok`` and ``identity``
  (``truth.py``), as the value after and the paired change (after - before).

Every policy sees the same scenes and the same noise (a function of seed and chunk), so each row
also gets its paired difference from the first policy (``memrope`` by default), mean and 95% CI
(Student t over scenes).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..cache import make_policy
from ..generate import GenerationConfig, StreamingGenerator
from ..models.bundle import ModelBundle
from ..models.toy.default import load_default
from .benchmark import BENCHMARK_PIXELS, mean_ci
from .palette import BACKGROUND_COLOURS, OBJECT_COLOURS, object_rgb
from .prompts import format_prompt, parse_prompt, sample_spec
from .raster import background_image
from .script import Timeline
from .truth import TruthConfig, evaluate
from .world import MAX_OBJECTS, PATTERNS, SHAPES, SIZE_FRACTIONS, BackgroundSpec, ObjectSpec, WorldSpec

DEFAULT_POLICIES = ("memrope", "memrope_switch_reset", "memrope_switch_keep", "attention_sink", "infinity_rope")
"""memrope's choice (keep sink and memories, recache the recent frames), resetting the memories too,
re-encoding nothing, LongLive's recache, infinity-RoPE's KV flush."""

TURNED = 0.5
"""A frame's background has turned when more than half its background pixels are nearer the new one;
the new object has appeared in the first chunk where it is present in at least half the judged frames."""

SCENE_SEED = 14
"""Mixed with the scene index to draw prompt B (prompt A is ``sample_spec(i)``, as in the drift benchmark)."""

KEPT_METRICS = ("present", "shape_ok", "size_ok", "identity")


@dataclass(frozen=True)
class SwitchBenchmarkConfig:
    policies: tuple[str, ...] = DEFAULT_POLICIES
    scenes: int = 32
    switch_frame: int = 48
    after_frames: int = 36
    window: int = 12  # frames before / after the switch compared for the kept objects
    noise_seed: int = 0
    chunk_frames: int = 3

    def __post_init__(self) -> None:
        if self.scenes < 2:
            raise ValueError("--scenes must be >= 2 for a confidence interval")
        for name in ("switch_frame", "after_frames"):
            if getattr(self, name) % self.chunk_frames or getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive whole number of "
                                 f"{self.chunk_frames}-frame chunks")
        if not 2 <= self.window <= min(self.switch_frame, self.after_frames) or self.window % self.chunk_frames:
            raise ValueError(f"--window must be whole {self.chunk_frames}-frame chunks that fit before and after "
                             "the switch")


def switch_prompts(scene: int) -> tuple[str, str]:
    """Prompts A (``sample_spec(scene)``, at most three objects) and B (module docstring)."""
    spec = sample_spec(scene, max_objects=MAX_OBJECTS - 1)
    rng = np.random.default_rng((SCENE_SEED, scene))
    colours = [c for c in BACKGROUND_COLOURS if c != spec.background.colour]
    background = BackgroundSpec(colour=str(rng.choice(colours)), pattern=str(rng.choice(PATTERNS)))
    free = [c for c in OBJECT_COLOURS if c not in {o.colour for o in spec.objects}]
    new = ObjectSpec(colour=str(rng.choice(free)), shape=str(rng.choice(SHAPES)),
                     size=str(rng.choice(list(SIZE_FRACTIONS))))
    after = WorldSpec(objects=spec.objects + (new,), background=background, speed=spec.speed,
                      height=spec.height, width=spec.width)
    return format_prompt(spec), format_prompt(after)


def generate(bundle: ModelBundle, policy: str, before: list[str], after: list[str],
             cfg: SwitchBenchmarkConfig) -> tuple[torch.Tensor, float]:
    """Latents [B, C, switch + after, h, w] with the prompt switched at ``switch_frame``; seconds."""
    model = bundle.model
    texts = [model.encode_text(bundle.text_encoder.encode(p)) for p in (before, after)]
    config = GenerationConfig(latent_hw=bundle.latent_hw, chunk_frames=cfg.chunk_frames, batch=len(before),
                              seed=cfg.noise_seed)
    gen = StreamingGenerator(model, make_policy(policy), texts[0], config)
    n_chunks = (cfg.switch_frame + cfg.after_frames) // cfg.chunk_frames
    start = time.perf_counter()
    chunks = [r.latents for r in gen.stream(n_chunks, {cfg.switch_frame // cfg.chunk_frames: (texts[1], False)})]
    return torch.cat(chunks, dim=2), time.perf_counter() - start


def new_background_share(frames: np.ndarray, old: WorldSpec, new: WorldSpec) -> np.ndarray:
    """Per frame of uint8 [T, H, W, 3]: share of background pixels nearer ``new``'s background than
    ``old``'s (NaN without background pixels)."""
    f = frames.astype(np.float64)
    d_old = np.linalg.norm(f - background_image(old).astype(np.float64), axis=-1)  # [T, H, W]
    d_new = np.linalg.norm(f - background_image(new).astype(np.float64), axis=-1)
    objects = np.stack([object_rgb(o.colour) for o in new.objects])  # [N, 3]
    d_obj = np.linalg.norm(f[..., None, :] - objects, axis=-1).min(axis=-1)
    background = np.minimum(d_old, d_new) < d_obj
    count = background.sum(axis=(1, 2))
    nearer = (background & (d_new < d_old)).sum(axis=(1, 2))
    return np.where(count > 0, nearer / np.maximum(count, 1), np.nan)


def first_turn(values: np.ndarray, step: int, horizon: int) -> tuple[float, bool]:
    """(frames until ``values`` first reaches ``TURNED``, whether it did); the horizon if never."""
    hits = np.flatnonzero(np.nan_to_num(values, nan=0.0) >= TURNED)
    return (float(hits[0] * step), True) if hits.size else (float(horizon), False)


def score_scene(frames: np.ndarray, before: str, after: str, cfg: SwitchBenchmarkConfig) -> dict[str, float]:
    """frames uint8 [window + after_frames, H, W, 3], starting ``window`` frames before the switch."""
    old, new = parse_prompt(before), parse_prompt(after)
    w, n_old = cfg.window, len(old.objects)
    timeline = Timeline(starts=(0, w), specs=(old, new))
    out: dict[str, float] = {}
    share = new_background_share(frames[w:], old, new)
    out["background_latency"], turned = first_turn(share, 1, cfg.after_frames)
    out["background_turned"] = float(turned)
    per_chunk = evaluate(frames, timeline, TruthConfig(segment_frames=cfg.chunk_frames))
    present_new = per_chunk.present[w // cfg.chunk_frames:, n_old]  # chunks after the switch
    out["object_latency"], appeared = first_turn(present_new, cfg.chunk_frames, cfg.after_frames)
    out["object_appeared"] = float(appeared)
    halves = evaluate(frames[: 2 * w], timeline, TruthConfig(segment_frames=w))  # before | after
    for metric in KEPT_METRICS:
        kept = getattr(halves, metric)[:, :n_old]  # [2, kept objects]
        pre, post = (float(np.nanmean(row)) if np.isfinite(row).any() else np.nan for row in kept)
        out[f"kept_{metric}"], out[f"kept_{metric}_change"] = post, post - pre
    return out


METRICS = ("background_turned", "background_latency", "object_appeared", "object_latency") + tuple(
    f"kept_{m}{suffix}" for m in KEPT_METRICS for suffix in ("", "_change"))
PAIRED = ("background_latency", "object_latency", "kept_present", "kept_identity")


def proportion_ci(successes: int, n: int) -> tuple[float, float]:
    """Exact (Clopper-Pearson) 95% interval of a proportion."""
    from scipy.stats import binomtest

    ci = binomtest(successes, n).proportion_ci(confidence_level=0.95, method="exact")
    return float(ci.low), float(ci.high)


def run(cfg: SwitchBenchmarkConfig, bundle: ModelBundle | None = None, log=print) -> dict:
    bundle = bundle or load_default(pixels=BENCHMARK_PIXELS)  # frames rounded as the truth is rendered
    scenes = [switch_prompts(i) for i in range(cfg.scenes)]
    before, after = [a for a, _ in scenes], [b for _, b in scenes]
    result: dict = {"config": {**asdict(cfg), "model": bundle.name, "prompts": scenes}, "policies": {}}
    start_all = time.perf_counter()
    per_scene: dict[str, dict[str, np.ndarray]] = {}
    for policy in cfg.policies:
        latents, seconds = generate(bundle, policy, before, after, cfg)
        lo = cfg.switch_frame - cfg.window
        frames = bundle.decoder.decode(latents[:, :, lo:]).numpy()  # [B, T, H, W, 3]
        rows = [score_scene(frames[i], before[i], after[i], cfg) for i in range(cfg.scenes)]
        values = {m: np.array([r[m] for r in rows]) for m in METRICS}
        per_scene[policy] = values
        entry = {m: mean_ci(v) for m, v in values.items()}
        for m in ("background_turned", "object_appeared"):
            k = int(values[m].sum())
            entry[m].update(successes=k, exact_ci95=proportion_ci(k, cfg.scenes))
        base = cfg.policies[0]
        entry["paired_vs_" + base] = {m: mean_ci(values[m] - per_scene[base][m]) for m in PAIRED}
        entry["generation_seconds"] = round(seconds, 1)
        entry["per_scene"] = {m: [None if np.isnan(x) else round(float(x), 4) for x in v] for m, v in values.items()}
        result["policies"][policy] = entry
        log(f"{policy}: generated in {seconds:.1f} s")
    result["total_seconds"] = round(time.perf_counter() - start_all, 1)
    return result


def _fmt(stat: dict, digits: int = 2) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.{digits}f}" + ("" if stat["ci95"] is None else f" ± {stat['ci95']:.{digits}f}")


def markdown(result: dict, command: str) -> str:
    cfg = result["config"]
    base = cfg["policies"][0]
    lines = [
        "# Toy-world prompt-switch benchmark", "",
        f"Model: {cfg['model']}; {cfg['scenes']} scenes; prompt switched at frame {cfg['switch_frame']}, "
        f"scored over the {cfg['after_frames']} frames after it (latencies censored there) and, for the kept "
        f"objects, the {cfg['window']} frames after against the {cfg['window']} before. Mean ± 95% CI "
        "half-width (Student t over scenes); shares with exact Clopper-Pearson 95% intervals.", "",
        f"Command: `{command}`  ", f"Total runtime: {result['total_seconds']:.0f} s.", "",
        "| policy | background turned | background latency (frames) | new object appeared | object latency (frames)"
        " | kept present after | Δ kept present | Δ kept shape_ok | Δ kept size_ok | Δ kept identity |",
        "|" + "---|" * 10,
    ]
    for policy, e in result["policies"].items():
        shares = [f"{e[m]['successes']}/{cfg['scenes']} [{e[m]['exact_ci95'][0]:.2f}, {e[m]['exact_ci95'][1]:.2f}]"
                  for m in ("background_turned", "object_appeared")]
        cells = [shares[0], _fmt(e["background_latency"], 1), shares[1], _fmt(e["object_latency"], 1),
                 _fmt(e["kept_present"]), _fmt(e["kept_present_change"]), _fmt(e["kept_shape_ok_change"]),
                 _fmt(e["kept_size_ok_change"]), _fmt(e["kept_identity_change"])]
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    lines += ["", f"Paired differences from {base} (same scenes, same noise), mean ± 95% CI:", "",
              "| policy | " + " | ".join(PAIRED) + " |", "|" + "---|" * (len(PAIRED) + 1)]
    for policy, e in result["policies"].items():
        if policy != base:
            paired = e["paired_vs_" + base]
            lines.append(f"| {policy} | " + " | ".join(_fmt(paired[m]) for m in PAIRED) + " |")
    return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> None:
    import shlex
    import sys

    p = argparse.ArgumentParser(prog="python -m memrope.world.switch_benchmark", description=__doc__.split("\n")[0])
    p.add_argument("--policies", nargs="+", default=list(DEFAULT_POLICIES))
    p.add_argument("--scenes", type=int, default=32)
    p.add_argument("--switch-frame", type=int, default=48)
    p.add_argument("--after-frames", type=int, default=36)
    p.add_argument("--window", type=int, default=12)
    p.add_argument("--noise-seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    cfg = SwitchBenchmarkConfig(policies=tuple(args.policies), scenes=args.scenes, switch_frame=args.switch_frame,
                                after_frames=args.after_frames, window=args.window, noise_seed=args.noise_seed)
    for policy in cfg.policies:
        make_policy(policy)  # an unknown name fails before any work
    args.out.mkdir(parents=True, exist_ok=True)
    given = argv if argv is not None else sys.argv[1:]
    command = "python -m memrope.world.switch_benchmark " + " ".join(shlex.quote(a) for a in given)
    result = run(cfg, log=lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True))
    result["command"] = command
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    (args.out / "results.md").write_text(markdown(result, command))
    print(markdown(result, command))


if __name__ == "__main__":
    main()
