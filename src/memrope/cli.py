"""Command line: ``memrope generate | policies``.

User errors (bad values, impossible sizes) print one line and exit with status 2, without a
traceback and before any output file is created.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from . import __version__

EXIT_USER_ERROR = 2
DEFAULT_PROMPT = "a red disc and a blue square bounce on a dark background"
WARMUP_CHUNKS = 2  # chunks left out of the steady-state latency summary
DEFAULT_SECONDS = 10.0  # video length when neither a length nor a timed schedule is given


class UserError(Exception):
    """A problem with the user's input: reported as one line, exit status 2."""


def latent_frames_for(duration_s: float, fps: int, temporal_stride: int, chunk: int) -> int:
    """Smallest whole-chunk latent length whose video (1 + stride (T-1) frames) lasts >= duration."""
    frames = max(1, math.ceil(duration_s * fps))
    latent = math.ceil((frames - 1) / temporal_stride) + 1
    return math.ceil(latent / chunk) * chunk


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {n}")
    return n


def _positive_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not x > 0 or not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return x


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memrope", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"memrope {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate a video chunk by chunk")
    gen.add_argument("--policy", default="memrope", help="cache policy or preset (see `memrope policies`)")
    gen.add_argument("--policy-opt", action="append", default=[], metavar="KEY=VALUE",
                     help="policy option, repeatable (e.g. --policy-opt cache_size=12)")
    length = gen.add_mutually_exclusive_group()
    length.add_argument("--latent-frames", type=_positive_int, help="latent frames (a multiple of the chunk)")
    length.add_argument("--duration", type=_positive_float, help="seconds of video (rounded up to whole chunks)")
    gen.add_argument("--seed", type=int, default=0)
    prompt = gen.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default=DEFAULT_PROMPT,
                        help='a prompt, or a schedule: "a cat walks[10s] | the cat sleeps[20s]" ([5s#]: a hard cut)')
    prompt.add_argument("--prompts", type=Path, help="prompt schedule file (.json/.yaml list of "
                        "{prompt, seconds, cut}, or the inline syntax as text)")
    gen.add_argument("--chunk-frames", type=_positive_int, default=3)
    gen.add_argument("--fps", type=_positive_int, default=16)
    gen.add_argument("--out", required=True, help="output .mp4 (fragmented, written as chunks decode)")
    gen.add_argument("--stats", help="write per-chunk statistics and a summary as JSON")
    gen.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    model = gen.add_argument_group("model (default: the embedded toy model)")
    model.add_argument("--model", choices=["self-forcing", "longlive", "diffusers"],
                       help="real Wan2.1-T2V-1.3B generator to run")
    model.add_argument("--checkpoint", type=Path, help="self_forcing_dmd.pt, longlive_base.pt or a "
                       "diffusers transformer folder / .safetensors")
    model.add_argument("--wan-dir", type=Path, help="Wan2.1-T2V-1.3B folder (VAE, umT5, tokenizer), "
                       "original or diffusers layout")
    model.add_argument("--lora", type=Path, help="LongLive lora.pt (merged into the weights)")
    model.add_argument("--lora-rank", type=_positive_int, help="override the LoRA rank")
    model.add_argument("--lora-alpha", type=_positive_float, help="override the LoRA alpha")
    model.add_argument("--no-ema", dest="use_ema", action="store_false",
                       help="Self-Forcing: load `generator` instead of `generator_ema`")
    model.add_argument("--height", type=_positive_int, default=480)
    model.add_argument("--width", type=_positive_int, default=832)
    model.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    model.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16")
    model.add_argument("--prompt-cache", type=Path, help="folder of cached prompt embeddings")

    sub.add_parser("policies", help="list cache policies and presets with their papers and defaults")
    try:
        from .eval.cli import add_eval_parser
    except ImportError:  # evaluation extras are optional
        pass
    else:
        add_eval_parser(sub)
    return parser


def _write_json(path: Path, payload: Any) -> None:
    """Write atomically: a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _summary(chunks: list[dict], total_s: float) -> dict[str, Any]:
    steady = [c["ms"] for c in chunks[WARMUP_CHUNKS:]] or [c["ms"] for c in chunks]
    video_frames = sum(c["video_frames"] or 0 for c in chunks)
    return {
        "chunks": len(chunks),
        "latent_frames": sum(c["latent_frames"] for c in chunks),
        "video_frames": video_frames,
        "seconds": round(total_s, 3),
        "fps": round(video_frames / total_s, 2) if total_s > 0 else None,
        "first_chunk_ms": chunks[0]["ms"],
        "steady_median_ms": round(statistics.median(steady), 3),
        "cache_bytes_max": max(c["cache_bytes"] for c in chunks),
        "cache_bytes_final": chunks[-1]["cache_bytes"],
        "max_frame_pos": max(c["max_frame_pos"] for c in chunks),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from .cache import make_policy, parse_options
    from .cache.preflight import preflight
    from .generate import GenerationConfig, StreamingGenerator
    from .models.bundle import BundleOptions, load_bundle
    from .video import VideoWriter

    out = Path(args.out)
    if out.suffix.lower() != ".mp4":
        raise UserError(f"--out must name an .mp4 file, got {out}")
    try:
        policy = make_policy(args.policy, parse_options(args.policy_opt))
    except ValueError as e:
        raise UserError(str(e)) from None
    try:
        bundle = load_bundle(BundleOptions(
            model=args.model, checkpoint=args.checkpoint, wan_dir=args.wan_dir, lora=args.lora,
            lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, use_ema=args.use_ema, height=args.height,
            width=args.width, device=args.device, dtype=args.dtype, prompt_cache=args.prompt_cache))
    except ValueError as e:  # includes WeightFileError: names the file and what was expected
        raise UserError(str(e)) from None
    stride = bundle.decoder.temporal_stride
    from .schedule import load_schedule, parse_inline

    try:
        schedule = load_schedule(args.prompts) if args.prompts else parse_inline(args.prompt)
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.latent_frames is not None:
        n_latent = args.latent_frames
        if n_latent % args.chunk_frames:
            lo = n_latent - n_latent % args.chunk_frames
            raise UserError(f"--latent-frames must be a multiple of the chunk ({args.chunk_frames}); "
                            f"use {lo or args.chunk_frames} or {lo + args.chunk_frames}")
    else:
        seconds = args.duration or schedule.total_seconds or DEFAULT_SECONDS
        n_latent = latent_frames_for(seconds, args.fps, stride, args.chunk_frames)
    n_chunks = n_latent // args.chunk_frames
    starts = schedule.start_chunks(args.chunk_frames * stride / args.fps)
    if starts[-1] >= n_chunks:
        raise UserError(f"the prompt schedule starts segment {len(starts)} at chunk {starts[-1]}, but the "
                        f"video has only {n_chunks} chunks; lengthen --duration or shorten the schedule")
    config = GenerationConfig(latent_hw=bundle.latent_hw, chunk_frames=args.chunk_frames, seed=args.seed)
    try:
        texts, truncated = [], []
        for seg in schedule.segments:
            texts.append(bundle.model.encode_text(bundle.text_encoder.encode([seg.prompt])))
            truncated += bundle.text_encoder.truncated
        generator = StreamingGenerator(bundle.model, policy, texts[0], config, decoder=bundle.decoder)
        preflight(policy, bundle.model.rope, args.chunk_frames, n_chunks)
    except ValueError as e:
        raise UserError(str(e)) from None
    switches = {start: (texts[i], schedule.segments[i].cut) for i, start in enumerate(starts) if i > 0}
    for prompt in truncated:
        print(f"memrope: warning: prompt cut to the encoder's {bundle.text_encoder.text_len} tokens: "
              f"{prompt[:60]!r}...", file=sys.stderr)

    from tqdm import tqdm

    n_video = 1 + stride * (n_latent - 1)
    print(f"memrope: {bundle.name}, policy {args.policy}, {n_latent} latent frames = {n_video} frames "
          f"({n_video / args.fps:.1f} s at {args.fps} fps) -> {out}", file=sys.stderr)
    chunks: list[dict] = []
    start = time.perf_counter()
    with torch.inference_mode(), VideoWriter(out, fps=args.fps) as writer, \
            tqdm(total=n_chunks, unit="chunk", disable=args.no_progress, file=sys.stderr) as bar:
        for result in generator.stream(n_chunks, switches):
            writer.write(result.frames[0])
            chunks.append(result.stats)
            elapsed = time.perf_counter() - start
            bar.set_postfix(fps=f"{writer.frames_written / elapsed:.1f}", pos=result.stats["max_frame_pos"])
            bar.update(1)
    total = time.perf_counter() - start
    summary = _summary(chunks, total)
    print(f"memrope: wrote {writer.frames_written} frames in {total:.1f} s ({summary['fps']} fps), "
          f"peak RSS {summary['peak_rss_mb']} MB", file=sys.stderr)
    if args.stats:
        _write_json(Path(args.stats), {"memrope": __version__, "run": generator.describe(),
                                       "prompts": [vars(seg) for seg in schedule.segments], "prompt_starts": starts,
                                       "chunks": chunks, "summary": summary})
    return 0


def cmd_policies(args: argparse.Namespace) -> int:
    from .cache.registry import describe_policies

    for row in describe_policies():
        defaults = ", ".join(f"{k}={v}" for k, v in row["defaults"].items()) or "(no options)"
        print(f"{row['name']}\n    {row['paper']}\n    {defaults}")
    return 0


COMMANDS = {"generate": cmd_generate, "policies": cmd_policies}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = COMMANDS.get(args.command) or getattr(args, "handler", None)
    try:
        return handler(args)
    except UserError as e:
        print(f"memrope: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("memrope: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
