"""memrope: unbounded streaming video generation with bounded, comparable KV-cache policies.

User errors (bad values, impossible sizes) print one line and exit with status 2, without a
traceback and before any output file is created.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .errors import EXIT_RUN_FAILURE, EXIT_USER_ERROR, RunFailure, UserError

ATTENTION_CHOICES = ("default", "auto", "flash", "efficient", "cudnn", "math")
"""``models.attention.CHOICES``, spelled out so that ``--help`` does not import torch (a test holds them equal)."""

DEFAULT_PROMPT = "a red disc and a blue square bounce on a navy gradient"  # in the toy world's vocabulary


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
    gen.add_argument("--out", help="output .mp4 (fragmented, written as chunks decode)")
    gen.add_argument("--stats", help="write per-chunk statistics and a summary as JSON")
    gen.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    session = gen.add_argument_group("resumable runs")
    session.add_argument("--checkpoint-every", type=_positive_int, metavar="N",
                         help="save the whole generator state every N chunks (and on SIGINT/SIGTERM) in a run "
                              "directory; the video is written as segments and assembled into --out")
    session.add_argument("--run-dir", type=Path, help="run directory (default: OUT.run)")
    session.add_argument("--resume", type=Path, metavar="DIR", help="continue the run saved in DIR exactly")
    session.add_argument("--save-latents", action="store_true", help="also keep the clean latents per segment")
    gen.add_argument("--attention", choices=ATTENTION_CHOICES, default="default",
                     help="SDPA kernel the transformer prefers: default (PyTorch's rules), auto (the fastest "
                          "of those that serve this stream's shapes, timed at the start), or one by name")
    gen.add_argument("--no-overlap-decode", dest="overlap_decode", action="store_false",
                     help="decode each chunk before generating the next (default: decode chunk k on a worker "
                     "thread while the transformer runs chunk k+1; same output)")
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
    model.add_argument("--decode-device", default=None,
                       help="device of the video decoder, e.g. cuda:1: the transformer and the VAE each on "
                            "their own GPU, working at the same time (default: the model's device)")
    model.add_argument("--prompt-cache", type=Path, help="folder of cached prompt embeddings")

    sub.add_parser("policies", help="list cache policies and presets with their papers and defaults")
    enc = sub.add_parser("encode-prompts", help="fill the prompt-embedding cache with umT5, so that runs never "
                         "hold umT5 and the transformer in memory together")
    enc.add_argument("--wan-dir", type=Path, required=True, help="Wan2.1-T2V-1.3B folder (original or diffusers)")
    enc_src = enc.add_mutually_exclusive_group(required=True)
    enc_src.add_argument("--prompt", action="append", help="a prompt or inline schedule (repeatable)")
    enc_src.add_argument("--prompts", type=Path, help="schedule file, or one prompt per line")
    enc.add_argument("--prompt-cache", type=Path, help="cache folder (default: inside --wan-dir)")
    enc.add_argument("--device", default="auto")
    enc.add_argument("--dtype", default="bfloat16", help="umT5 dtype (bfloat16 | float32)")
    for name, target, text in (
        ("bench", "memrope.bench:bench_main", "per-chunk latency, FPS, memory, TFLOP/s and cost model per policy"),
        ("generate-many", "memrope.distributed:generate_many_main",
         "one video per prompt, sharded over torchrun ranks, resumable per prompt"),
    ):
        forward = sub.add_parser(name, help=text, add_help=False, prefix_chars="\0")
        forward.add_argument("args", nargs=argparse.REMAINDER)
        forward.set_defaults(func=lambda a, target=target: _forward(target, a.args))
    from .compare import add_compare_parser

    add_compare_parser(sub)
    try:
        from .eval.cli import add_eval_parser
    except ImportError:  # evaluation extras are optional
        pass
    else:
        add_eval_parser(sub)
    return parser


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The run's settings as plain data (stored in a run directory's manifest for --resume)."""
    from .cache import parse_options

    out = Path(args.out)
    if out.suffix.lower() != ".mp4":
        raise UserError(f"--out must name an .mp4 file, got {out}")
    if args.resume is None and args.checkpoint_every and args.run_dir is None:
        args.run_dir = out.with_name(out.name + ".run")
    try:
        policy_options = parse_options(args.policy_opt)
    except ValueError as e:
        raise UserError(str(e)) from None
    path = lambda p: None if p is None else str(Path(p).resolve())  # noqa: E731
    return {
        "policy": args.policy, "policy_options": policy_options, "seed": args.seed,
        "prompt": args.prompt, "prompts_file": path(args.prompts), "schedule": None,
        "latent_frames": args.latent_frames, "duration": args.duration,
        "chunk_frames": args.chunk_frames, "fps": args.fps,
        "out": str(out.resolve()), "stats": path(args.stats), "run_dir": path(args.run_dir),
        "checkpoint_every": args.checkpoint_every or 0, "save_latents": args.save_latents,
        "overlap_decode": args.overlap_decode, "attention": args.attention,
        "model": {"model": args.model, "checkpoint": path(args.checkpoint), "wan_dir": path(args.wan_dir),
                  "lora": path(args.lora), "lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha,
                  "use_ema": args.use_ema, "height": args.height, "width": args.width,
                  "device": args.device, "dtype": args.dtype, "prompt_cache": path(args.prompt_cache),
                  "decode_device": args.decode_device},
    }


def cmd_generate(args: argparse.Namespace) -> int:
    from .run import generate

    if args.resume is not None:
        return generate({}, resume=args.resume, progress=not args.no_progress)
    if args.out is None:
        raise UserError("--out is required (or --resume DIR to continue a run)")
    return generate(settings_from_args(args), progress=not args.no_progress)


def cmd_policies(args: argparse.Namespace) -> int:
    from .cache.registry import describe_policies

    for row in describe_policies():
        defaults = ", ".join(f"{k}={v}" for k, v in row["defaults"].items()) or "(no options)"
        print(f"{row['name']}\n    {row['paper']}\n    {defaults}")
    return 0


def _forward(target: str, argv: list[str]) -> int:
    """Hand the rest of the command line to a sub-tool with its own parser (`memrope bench --help`)."""
    import importlib

    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)(argv)


def cmd_encode_prompts(args: argparse.Namespace) -> int:
    from .models.bundle import resolve_device, resolve_dtype
    from .schedule import load_schedule, parse_inline

    try:
        schedules = [load_schedule(args.prompts)] if args.prompts else [parse_inline(p) for p in args.prompt]
        prompts = sorted({seg.prompt for sched in schedules for seg in sched.segments})
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype, device)
        from .models.wan_bundle import encode_prompts_to_cache

        paths = encode_prompts_to_cache(args.wan_dir, prompts, args.prompt_cache, device=device, dtype=dtype)
    except ValueError as e:
        raise UserError(str(e)) from None
    for prompt, path in zip(prompts, paths):
        print(f"{path}\t{prompt}")
    return 0


COMMANDS = {"generate": cmd_generate, "policies": cmd_policies, "encode-prompts": cmd_encode_prompts}


OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def main(argv: list[str] | None = None) -> int:
    for key, value in OFFLINE_ENV.items():  # weights come from local files only, never from a hub
        os.environ.setdefault(key, value)
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = COMMANDS.get(args.command) or args.func
    try:
        return handler(args)
    except UserError as e:
        print(f"memrope: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RunFailure as e:
        print(f"memrope: error: {e}", file=sys.stderr)
        return EXIT_RUN_FAILURE
    except KeyboardInterrupt:
        print("memrope: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
