"""Continuing a true clip of the toy world from ``--init``, scored against the world's own truth.

    python -m memrope.world.continuation [--seeds 16] [--context-chunks 4] [--frames 48] [--policy memrope]

Seed ``i`` is the world of prompt ``i`` (``benchmark.seed_prompts``) with its start drawn from seed
``i``, simulated and rendered exactly for ``C + N`` frames (``C`` = ``--context-chunks`` chunks). Its
first ``C`` frames become clean context through the model's own encoder, exactly as ``memrope
generate --init`` makes it (:func:`memrope.context.encode_frames`), committed into the cache by a
:class:`memrope.stream.LiveStream`; the model then generates the next ``N`` frames. The same ``N``
frames are generated without the context (the stream starting from noise at chunk 0, as a plain
``generate`` does): both runs draw the same noise for every chunk (it depends on the seed and the
chunk index only), so each seed is a paired comparison. Scored against the rendered truth of
frames ``C .. C + N``:

- ``identity``: :func:`memrope.world.truth.evaluate` over the ``N`` frames (one segment);
- ``track_px``: over the first ``--track-frames`` continued frames, the distance in pixels between
  the centroid of each object's colour and where the world has it (:func:`truth.object_centroids`;
  frames where the colour shows and the truth object is not hidden), averaged. Without context
  the model cannot know where the objects are, so this measures what the context carried; with
  context it is the error of continuing the motion.

A reference row scores the truth's continuation through the autoencoder (the best the decoder can
show). Per seed values, mean and 95% Student-t interval over seeds, and the paired Wilcoxon
signed-rank test of context vs none (scipy; exact for small n without ties) are printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

import numpy as np
import torch

from ..cache import make_policy
from ..context import encode_frames
from ..generate import GenerationConfig, StreamingGenerator
from ..models.toy.autoencoder import to_uint8
from ..models.toy.default import load_default
from ..stream import LiveStream, PromptSpan
from .benchmark import BENCHMARK_PIXELS, mean_ci, seed_prompts
from .clips import to_model_range
from .prompts import build_world
from .raster import render_clip
from .truth import TruthConfig, evaluate, object_centroids

CHUNK_FRAMES = 3  # the embedded model's chunk (generate's default)
ROWS = ("with context", "without context", "(autoencoder round trip)")


@dataclass(frozen=True)
class ContinuationConfig:
    seeds: int = 16
    context_chunks: int = 4
    frames: int = 48
    track_frames: int = 12
    policy: str = "memrope"

    def __post_init__(self) -> None:
        if not 2 <= self.seeds <= 256:
            raise ValueError(f"--seeds must be 2..256 (an interval needs two), got {self.seeds}")
        if not 1 <= self.context_chunks <= 64:
            raise ValueError(f"--context-chunks must be 1..64, got {self.context_chunks}")
        if self.frames < CHUNK_FRAMES or self.frames % CHUNK_FRAMES:
            raise ValueError(f"--frames must be a positive multiple of the chunk ({CHUNK_FRAMES}), got {self.frames}")
        if not 1 <= self.track_frames <= self.frames:
            raise ValueError(f"--track-frames must be 1..--frames ({self.frames}), got {self.track_frames}")


def generate(bundle, prompts: list[str], context: dict[int, torch.Tensor], chunks: int, policy: str) -> np.ndarray:
    """uint8 [B, chunks * CHUNK_FRAMES, H, W, 3]: the stream's frames, context chunks included."""
    text = bundle.model.encode_text(bundle.text_encoder.encode(prompts))
    config = GenerationConfig(latent_hw=bundle.latent_hw, chunk_frames=CHUNK_FRAMES, batch=len(prompts), seed=0)
    gen = StreamingGenerator(bundle.model, make_policy(policy), text, config)
    stream = LiveStream(gen, lambda prompt: text, [PromptSpan(0, "the seeds' prompts")], texts={0: text},
                        context=context, until=chunks, overlap_decode=False)
    with torch.inference_mode():
        latents = torch.cat([result.latents for result in stream], dim=2)  # [B, C, chunks * 3, h, w]
    return bundle.decoder.decode(latents).numpy()


def track_px(frames: np.ndarray, truth_frames: np.ndarray, spec) -> float:
    """Mean distance (px) from the centroid of each object's colour in ``frames`` to the object's
    place in the truth, over the frames where the colour shows and the truth matches it (not hidden
    there); NaN if none. (Not only matched frames: the model's shapes rarely match their template
    exactly, see ``identity``, while where an object's colour is says where it is.)"""
    ours, _ = object_centroids(frames, spec)
    true, true_ok = object_centroids(truth_frames, spec)
    both = ~np.isnan(ours).any(axis=-1) & true_ok  # [T, N]
    if not both.any():
        return float("nan")
    return float(np.linalg.norm(ours - true, axis=-1)[both].mean())


def run(cfg: ContinuationConfig, log=print) -> dict:
    from scipy.stats import wilcoxon

    bundle = load_default(pixels=BENCHMARK_PIXELS)
    prompts = seed_prompts(cfg.seeds)
    c_frames = cfg.context_chunks * CHUNK_FRAMES
    worlds = [build_world(p, i) for i, p in enumerate(prompts)]
    truths = [render_clip(spec, state, c_frames + cfg.frames).frames for spec, state in worlds]  # [T, H, W, 3]
    encoder = bundle.decoder.encoder()
    per_seed = [encode_frames(t[:c_frames], encoder, CHUNK_FRAMES) for t in truths]  # chunks of [1, C, 3, h, w]
    context = {k: torch.cat([chunks[k] for chunks in per_seed]) for k in range(cfg.context_chunks)}
    total = cfg.context_chunks + cfg.frames // CHUNK_FRAMES
    log(f"{cfg.seeds} seeds: {cfg.context_chunks} context chunks ({c_frames} frames), then {cfg.frames} frames")
    videos = {ROWS[0]: generate(bundle, prompts, context, total, cfg.policy),
              ROWS[1]: generate(bundle, prompts, {}, total, cfg.policy)}
    ae = bundle.decoder.autoencoder
    with torch.no_grad():
        videos[ROWS[2]] = np.stack([np.concatenate([t[:c_frames], to_uint8(
            ae.decode(ae.encode(to_model_range(t[c_frames:]))), BENCHMARK_PIXELS).numpy()]) for t in truths])
    truth_cfg = TruthConfig(segment_frames=cfg.frames)
    rows: dict = {}
    for row, video in videos.items():
        identity, track = [], []
        for i, (spec, _) in enumerate(worlds):
            continued, true = video[i, c_frames:], truths[i][c_frames:]
            identity.append(float(np.nanmean(evaluate(continued, spec, truth_cfg).identity[0])))
            track.append(track_px(continued[:cfg.track_frames], true[:cfg.track_frames], spec))
        rows[row] = {"identity": {**mean_ci(np.array(identity)), "per_seed": identity},
                     "track_px": {**mean_ci(np.array(track)), "per_seed": track}}
        log(f"{row}: identity {rows[row]['identity']['mean']:.3f}, track {rows[row]['track_px']['mean']:.2f} px")
    tests = {}
    for metric in ("identity", "track_px"):
        a, b = (np.array(rows[r][metric]["per_seed"]) for r in ROWS[:2])
        keep = ~(np.isnan(a) | np.isnan(b)) & (a != b)
        tests[metric] = {"n_differing": int(keep.sum()),
                         "wilcoxon_p": float(wilcoxon(a[keep], b[keep]).pvalue) if keep.sum() >= 1 else None}
    return {"config": cfg.__dict__, "prompts": prompts, "rows": rows, "with_vs_without": tests}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m memrope.world.continuation", description=__doc__.splitlines()[0])
    d = ContinuationConfig()
    p.add_argument("--seeds", type=int, default=d.seeds)
    p.add_argument("--context-chunks", type=int, default=d.context_chunks)
    p.add_argument("--frames", type=int, default=d.frames, help="frames generated after the context")
    p.add_argument("--track-frames", type=int, default=d.track_frames)
    p.add_argument("--policy", default=d.policy)
    args = p.parse_args(argv)
    try:
        cfg = ContinuationConfig(args.seeds, args.context_chunks, args.frames, args.track_frames, args.policy)
        make_policy(cfg.policy)
    except ValueError as e:
        p.error(str(e))
    result = run(cfg, log=lambda s: print(s, file=sys.stderr))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
