"""Long-horizon drift benchmark of cache policies on the trained toy world model.

``python -m memrope.world.benchmark --out DIR`` generates, for every cache policy, one video
per seed with the embedded default model, scores every segment of it against the exact ground
truth of its prompt's world (``truth.evaluate``) and writes:

- ``results.json``: per policy, horizon, metric: first / last segment mean, 95% CI and n, plus the
  per-segment curves and every per-seed value;
- ``results.md``: the table (first vs last segment, mean +- 95% CI half-width over seeds);
- ``drift_<metric>.png``: per-segment mean over seeds vs time, one line per policy, CI band.

Two reference rows come first: ``(ground truth)``, each prompt's world rendered exactly (the ideal
values), and ``(autoencoder round trip)``, the same frames through the model's autoencoder: the
best a perfect transformer could score through this decoder.

Seeds: seed ``i`` is a scene (``sample_spec(i)``, its canonical prompt) and a noise stream. All
seeds run as one batch (element ``i`` has prompt ``i``); the batch draws its noise from the
generator of ``--noise-seed``, so seed ``i`` is reproducible as batch element ``i``.

Horizons are in latent frames (= video frames: the default decoder is per frame). Generation is
causal and chunk noise depends only on (seed, chunk index), so the video of a shorter horizon is
exactly the prefix of the longest one: each policy runs once to the longest horizon and every
horizon is scored on its prefix (its last segment is the one ending at that horizon).
Segments are ``--segment-frames`` long (default: the training window, 12 frames), so the first
segment is the in-distribution window and later ones measure drift. Scored segments: the first, the
last one of every horizon and ``--log-points`` log-spaced ones in between (``scored_segments``);
only those are decoded and scored, each on its own.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..cache import make_policy, policy_names
from ..generate import GenerationConfig, StreamingGenerator
from ..models.bundle import ModelBundle
from ..models.toy.autoencoder import to_uint8
from ..models.toy.default import load_default
from .prompts import build_world, format_prompt, parse_prompt, sample_spec
from .truth import TruthConfig, evaluate

TRAINING_WINDOW = 12
# The ground truth is rendered with rounding (``raster.py``: ``np.rint``), so the benchmark rounds the model's
# frames too: truncation (the generator's default, as the reference pipelines quantise) would add half a
# level of darkening to every colour and background error; the published tables were computed so.
BENCHMARK_PIXELS = "round"
"""Latent frames per training clip of the shipped model (``train.TrainConfig.window``)."""

DEFAULT_HORIZON_FACTORS = (10, 100)
METRICS = ("identity", "present", "displacement", "speed_ratio", "stagnation", "off_world", "colour_error",
           "background_error", "spurious")
HIGHER_IS_BETTER = {"identity": True, "present": True, "stagnation": False, "off_world": False,
                    "colour_error": False, "background_error": False, "spurious": False}
PLOT_METRICS = ("identity", "present", "stagnation", "off_world", "colour_error", "background_error", "displacement")


@dataclass(frozen=True)
class BenchmarkConfig:
    policies: tuple[str, ...]
    horizons: tuple[int, ...]  # latent frames
    seeds: int = 8
    noise_seed: int = 0
    segment_frames: int = TRAINING_WINDOW
    chunk_frames: int = 3
    log_points: int = 8

    def __post_init__(self) -> None:
        if self.seeds < 2:
            raise ValueError("--seeds must be >= 2 for a confidence interval")
        if not self.horizons or min(self.horizons) < self.segment_frames:
            raise ValueError(f"horizons must be >= one segment ({self.segment_frames} frames)")
        for h in self.horizons:
            if h % self.chunk_frames:
                raise ValueError(f"horizon {h} is not a whole number of {self.chunk_frames}-frame chunks")


def t_quantile_975(dof: int) -> float:
    """Two-sided 95% Student-t quantile."""
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def mean_ci(values: np.ndarray) -> dict:
    """Mean and 95% CI half-width (Student t) over the non-NaN values."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    n = int(v.size)
    if n == 0:
        return {"mean": None, "ci95": None, "n": 0}
    mean = float(v.mean())
    half = float(t_quantile_975(n - 1) * v.std(ddof=1) / math.sqrt(n)) if n > 1 else None
    return {"mean": mean, "ci95": half, "n": n}


def seed_prompts(n: int) -> list[str]:
    return [format_prompt(sample_spec(i)) for i in range(n)]


def scored_segments(n_segments: int, horizons_in_segments: list[int], log_points: int = 8) -> list[int]:
    """Segments to score: the first, the last of every horizon and ``log_points`` log-spaced ones
    (drift is slow; scoring every segment of a 1200-frame video costs far more than generating it)."""
    ends = {h - 1 for h in horizons_in_segments}
    spaced = {int(round(x)) - 1 for x in np.geomspace(1, n_segments, log_points)}
    return sorted(s for s in {0} | ends | spaced if 0 <= s < n_segments)


def generate_latents(bundle: ModelBundle, policy: str, prompts: list[str], n_frames: int, noise_seed: int,
                     chunk_frames: int = 3) -> tuple[torch.Tensor, float]:
    """Clean latents [B, C, n_frames, h, w] for a batch of prompts, and the generation seconds."""
    model = bundle.model
    text = model.encode_text(bundle.text_encoder.encode(prompts))
    config = GenerationConfig(latent_hw=bundle.latent_hw, chunk_frames=chunk_frames, batch=len(prompts),
                              seed=noise_seed)
    gen = StreamingGenerator(model, make_policy(policy), text, config)
    start = time.perf_counter()
    chunks = [result.latents for result in gen.stream(n_frames // chunk_frames)]
    return torch.cat(chunks, dim=2), time.perf_counter() - start


def decode_segments(bundle: ModelBundle, latents: torch.Tensor, segments: list[int],
                    seg: int) -> np.ndarray:
    """uint8 [B, len(segments), seg, H, W, 3]: the frames of the scored segments only."""
    parts = [bundle.decoder.decode(latents[:, :, s * seg:(s + 1) * seg]).numpy() for s in segments]
    return np.stack(parts, axis=1)


def score(frames: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
    """frames [B, S, seg, H, W, 3] -> per metric [B, S]; each segment scored on its own (so its
    motion metrics use seg - 1 steps), per-object metrics averaged over the objects."""
    seg = frames.shape[2]
    truth = TruthConfig(segment_frames=seg)
    out = {m: np.full(frames.shape[:2], np.nan) for m in METRICS}
    for i, prompt in enumerate(prompts):
        spec = parse_prompt(prompt)
        for j in range(frames.shape[1]):
            summary = evaluate(frames[i, j], spec, truth).summary()
            for m in METRICS:
                out[m][i, j] = summary[m][0]
    return out


def reference_frames(bundle: ModelBundle, prompts: list[str], n_frames: int, seed: int,
                     segments: list[int], seg: int) -> dict[str, np.ndarray]:
    """Ceilings for the table: the true world of each prompt rendered exactly, and the same frames
    through the model's autoencoder (the best any latent the model writes can decode to)."""
    from .clips import to_model_range
    from .raster import render_clip

    truth, round_trip = [], []
    ae = bundle.decoder.autoencoder
    for i, prompt in enumerate(prompts):
        spec, state = build_world(prompt, seed + i)
        video = render_clip(spec, state, n_frames).frames  # uint8 [T, H, W, 3]
        picked = np.stack([video[s * seg:(s + 1) * seg] for s in segments])  # [S, seg, H, W, 3]
        truth.append(picked)
        with torch.no_grad():
            rec = ae.decode(ae.encode(to_model_range(picked.reshape(-1, *picked.shape[2:]))))
        round_trip.append(to_uint8(rec, BENCHMARK_PIXELS).numpy().reshape(picked.shape))
    return {"(ground truth)": np.stack(truth), "(autoencoder round trip)": np.stack(round_trip)}


def run_benchmark(cfg: BenchmarkConfig, bundle: ModelBundle | None = None, log=print,
                  references: bool = True, on_update=None) -> dict:
    """Run every policy (and the two references); ``on_update(result)`` after each one."""
    bundle = bundle or load_default(pixels=BENCHMARK_PIXELS)
    prompts = seed_prompts(cfg.seeds)
    seg = cfg.segment_frames
    longest = max(cfg.horizons)
    n_segments = longest // seg
    horizons_seg = [h // seg for h in cfg.horizons]
    segments = scored_segments(n_segments, horizons_seg, cfg.log_points)
    out: dict = {"config": {**cfg.__dict__, "prompts": prompts, "model": bundle.name,
                            "training_window": TRAINING_WINDOW, "torch_threads": torch.get_num_threads(),
                            "scored_segments": segments},
                 "policies": {}, "not_runnable": {}, "aliases": {}}
    t_all = time.perf_counter()
    refs = reference_frames(bundle, prompts, longest, cfg.noise_seed, segments, seg) if references else {}
    seen: dict[str, str] = {}
    for policy in (*refs, *cfg.policies):
        gen_s = dec_s = None
        if policy in refs:
            frames = refs[policy]
        else:
            key = alias_key(policy)
            if key in seen:
                out["aliases"][policy] = seen[key]
                log(f"{policy}: same configuration as {seen[key]}, not run again")
                continue
            seen[key] = policy
            try:
                latents, gen_s = generate_latents(bundle, policy, prompts, longest, cfg.noise_seed,
                                                  cfg.chunk_frames)
            except (ValueError, RuntimeError) as err:  # e.g. positions past the RoPE table
                out["not_runnable"][policy] = str(err)
                log(f"{policy}: not runnable: {err}")
                continue
            t_dec = time.perf_counter()
            frames = decode_segments(bundle, latents, segments, seg)
            dec_s = time.perf_counter() - t_dec
        t_eval = time.perf_counter()
        per_seed = score(frames, prompts)  # metric -> [seeds, scored segments]
        eval_s = time.perf_counter() - t_eval
        entry: dict = {"generation_seconds": None if gen_s is None else round(gen_s, 1),
                       "decode_seconds": None if dec_s is None else round(dec_s, 1),
                       "eval_seconds": round(eval_s, 1),
                       "batched_latent_fps": None if gen_s is None else round(len(prompts) * longest / gen_s, 1),
                       "horizons": {}}
        for horizon in cfg.horizons:
            last = horizon // seg - 1
            cols = [j for j, s in enumerate(segments) if s <= last]
            rows = {}
            for metric, values in per_seed.items():
                rows[metric] = {
                    "first": mean_ci(values[:, 0]), "last": mean_ci(values[:, cols[-1]]),
                    "curve": [{"segment": segments[j], **mean_ci(values[:, j])} for j in cols],
                    "per_seed_first": _plain(values[:, 0]), "per_seed_last": _plain(values[:, cols[-1]]),
                }
            entry["horizons"][str(horizon)] = rows
        out["policies"][policy] = entry
        what = "reference" if gen_s is None else f"generated in {gen_s:.1f} s, decoded in {dec_s:.1f} s"
        log(f"{policy}: {what}, scored in {eval_s:.1f} s")
        out["total_seconds"] = round(time.perf_counter() - t_all, 1)
        if on_update is not None:
            on_update(out)
    out["total_seconds"] = round(time.perf_counter() - t_all, 1)
    return out


def alias_key(policy: str) -> str:
    """What decides a policy's video without prompt switches: its description less the options that
    act only at a switch (``switch_options``), so such presets are not run twice."""
    p = make_policy(policy)
    described = {k: v for k, v in p.describe().items() if k not in p.switch_options}
    return json.dumps(described, sort_keys=True)


def merge(results: list[dict]) -> dict:
    """One result from runs that split the policies between processes (same settings otherwise):
    policies in the order given, reference rows from whichever run has them; ``total_seconds`` is the
    longest run's (they ran side by side), each run's kept in ``merged_from``."""
    first = results[0]["config"]
    same = {k: v for k, v in first.items() if k not in ("policies", "torch_threads")}
    for other in results[1:]:
        theirs = {k: v for k, v in other["config"].items() if k not in ("policies", "torch_threads")}
        if theirs != same:
            raise ValueError("merge: the runs differ in settings other than their policies")
    out = {"config": {**first, "policies": [p for r in results for p in r["config"]["policies"]]},
           "policies": {}, "not_runnable": {}, "aliases": {},
           "total_seconds": max(r["total_seconds"] for r in results),
           "merged_from": [{"command": r.get("command"), "total_seconds": r["total_seconds"]} for r in results]}
    refs = [r for r in results if any(p.startswith("(") for p in r["policies"])]
    for r in refs + [r for r in results if r not in refs]:
        for key in ("policies", "not_runnable", "aliases"):
            out[key].update(r[key])
    return out


def _plain(x: np.ndarray) -> list:
    return [None if np.isnan(v) else round(float(v), 5) for v in x]


def _fmt(stat: dict, digits: int = 3) -> str:
    if stat["mean"] is None:
        return "n/a"
    ci = "" if stat["ci95"] is None else f" ± {stat['ci95']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}{ci}"


TABLE_METRICS = ("identity", "present", "stagnation", "displacement", "off_world", "colour_error",
                 "background_error")


def markdown(result: dict, command: str) -> str:
    cfg = result["config"]
    lines = [
        "# Toy-world drift benchmark",
        "",
        f"Model: {cfg['model']}; training window {cfg['training_window']} latent frames; "
        f"{cfg['seeds']} seeds (scenes + noise); segments of {cfg['segment_frames']} frames; "
        "mean ± 95% CI half-width (Student t over seeds; n can be < seeds where a metric is undefined, "
        "e.g. identity when every frame of the segment is ambiguous).",
        "",
        f"Command: `{command}`  ",
        f"Total runtime: {result['total_seconds']:.0f} s on {cfg['torch_threads']} torch threads"
        + (" per process, processes side by side: "
           + "; ".join(f"`{m['command']}` {m['total_seconds']:.0f} s" for m in result["merged_from"])
           if result.get("merged_from") else "") + ".",
        "",
    ]
    for horizon in cfg["horizons"]:
        lines += [f"## Horizon {horizon} latent frames ({horizon // cfg['training_window']}x the training "
                  "window): first segment -> last segment", ""]
        header = "| policy | " + " | ".join(TABLE_METRICS) + " |"
        lines += [header, "|" + "---|" * (len(TABLE_METRICS) + 1)]
        for policy, entry in result["policies"].items():
            rows = entry["horizons"][str(horizon)]
            cells = [f"{_fmt(rows[m]['first'])} → {_fmt(rows[m]['last'])}" for m in TABLE_METRICS]
            lines.append(f"| {policy} | " + " | ".join(cells) + " |")
        lines.append("")
    if result["not_runnable"]:
        lines += ["## Not runnable", ""]
        lines += [f"- {p}: {why}" for p, why in result["not_runnable"].items()]
        lines.append("")
    if result.get("aliases"):
        lines += ["## Aliases (identical configuration, not run twice)", ""]
        lines += [f"- {p} = {q}" for p, q in result["aliases"].items()]
        lines.append("")
    lines += ["## Runtime per policy", "",
              "| policy | generation s (all seeds batched) | decode s | scoring s | latent frames/s (batched) |",
              "|---|---|---|---|---|"]
    for policy, entry in result["policies"].items():
        if entry["generation_seconds"] is None:
            continue
        lines.append(f"| {policy} | {entry['generation_seconds']} | {entry['decode_seconds']} | "
                     f"{entry['eval_seconds']} | {entry['batched_latent_fps']} |")
    lines += ["", "Metrics (truth.py): identity = matched / judged frames per object, i.e. right colour, shape "
              "and size with template IoU >= 0.75 (higher is better); present = judged frames where the "
              "object's own colour covers at least half its template area (higher); "
              "stagnation = share of steps moving < 0.5 px (lower); displacement = px per frame; "
              "off_world = share of pixels far from every valid colour (lower); colour_error / "
              "background_error = RGB distance to the nearest valid / true background colour (lower).", ""]
    return "\n".join(lines)


def plot(result: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result["config"]
    horizon = str(max(cfg["horizons"]))
    seg = cfg["segment_frames"]
    paths = []
    for metric in PLOT_METRICS:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        ax.set_prop_cycle(color=plt.cm.tab20.colors)  # every policy and preset its own colour (> 10 lines)
        for policy, entry in result["policies"].items():
            curve = entry["horizons"][horizon][metric]["curve"]
            x = np.array([c["segment"] for c in curve]) * seg + seg / 2
            mean = np.array([np.nan if c["mean"] is None else c["mean"] for c in curve])
            half = np.array([np.nan if c["ci95"] is None else c["ci95"] for c in curve])
            style = {"ls": "--", "lw": 1.0} if policy.startswith("(") else {"lw": 1.2}
            (line,) = ax.plot(x, mean, label=policy, **style)
            ax.fill_between(x, mean - half, mean + half, color=line.get_color(), alpha=0.12, lw=0)
        ax.set_xscale("log")
        ax.set_xlabel(f"latent frame (log scale; training window = {cfg['training_window']})")
        ax.set_ylabel(metric)
        ax.axvline(cfg["training_window"], color="grey", ls=":", lw=1)
        ax.set_title(f"{metric} per {seg}-frame segment, mean and 95% CI over {cfg['seeds']} seeds")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = out_dir / f"drift_{metric}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    import shlex
    import sys

    p = argparse.ArgumentParser(prog="python -m memrope.world.benchmark",
                                description=__doc__.split("\n")[0])
    p.add_argument("--policies", nargs="+", default=None, help="default: every registered policy and preset")
    p.add_argument("--horizons", nargs="+", type=int, default=None,
                   help=f"latent frames (default: {DEFAULT_HORIZON_FACTORS} x the training window)")
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--noise-seed", type=int, default=0)
    p.add_argument("--segment-frames", type=int, default=TRAINING_WINDOW)
    p.add_argument("--log-points", type=int, default=8, help="log-spaced segments scored between first and last")
    p.add_argument("--no-references", action="store_true", help="skip the ground-truth and round-trip rows")
    p.add_argument("--merge", nargs="+", type=Path, default=None, metavar="DIR",
                   help="combine the results.json of runs that split the policies (written to --out)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.merge:
        result = merge([json.loads((d / "results.json").read_text()) for d in args.merge])
        args.out.mkdir(parents=True, exist_ok=True)
        command = "python -m memrope.world.benchmark --merge " + " ".join(str(d) for d in args.merge)
        result["command"] = command
        (args.out / "results.json").write_text(json.dumps(result, indent=1))
        (args.out / "results.md").write_text(markdown(result, command))
        plot(result, args.out)
        return
    horizons = tuple(args.horizons or [f * TRAINING_WINDOW for f in DEFAULT_HORIZON_FACTORS])
    cfg = BenchmarkConfig(policies=tuple(args.policies or policy_names()), horizons=horizons,
                          seeds=args.seeds, noise_seed=args.noise_seed, segment_frames=args.segment_frames,
                          log_points=args.log_points)
    args.out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    given = argv if argv is not None else sys.argv[1:]
    command = "python -m memrope.world.benchmark " + " ".join(shlex.quote(a) for a in given)

    def write(result: dict) -> None:  # after every policy, so an interrupted run keeps its results
        result["command"] = command
        (args.out / "results.json").write_text(json.dumps(result, indent=1))
        (args.out / "results.md").write_text(markdown(result, command))
        plot(result, args.out)

    result = run_benchmark(cfg, log=log, on_update=write, references=not args.no_references)
    write(result)
    log(f"wrote {args.out}/results.json, results.md and drift plots ({result['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
