"""memrope: unbounded streaming video generation with bounded, comparable KV-cache policies.

User errors (bad values, impossible sizes) print one line and exit with status 2, without a
traceback and before any output file is created.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__
from .errors import EXIT_RUN_FAILURE, EXIT_USER_ERROR, RunFailure, UserError
from .generate_options import add_generate_arguments, settings_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memrope", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"memrope {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate a video chunk by chunk")
    add_generate_arguments(gen)

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
        print(f"{row['name']}\n    {row['paper']}\n    code: {row['source']}\n    {defaults}")
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
