"""memrope: unbounded streaming video generation with bounded, comparable KV-cache policies.

Exit statuses: 0 done; 2 a user error (one line on stderr; checked before any file is created or
changed); 3 the run stopped on non-finite latents (last good state kept); 4 the disk filled up
(last good state kept: free space, then --resume); 130 interrupted (saved, resumable).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__
from .errors import UserError, guarded
from .errors.parser import Parser
from .generate_options import add_generate_arguments, settings_from_args


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__.split("\n\n")
    parser = Parser(prog="memrope", description=doc[0], epilog=" ".join(doc[1].split()))
    parser.add_argument("--version", action="version", version=f"memrope {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser("generate", help="generate a video chunk by chunk",
                         description="Generate a video chunk by chunk (in constant memory for bounded policies).",
                         epilog=" ".join(doc[1].split()))
    add_generate_arguments(gen)
    memory = gen.add_argument_group("memory plan (memrope plan)")
    memory.add_argument("--dry-run", action="store_true", default=None,
                        help="print the memory plan and stop (nothing is loaded)")
    memory.add_argument("--no-memory-plan", action="store_true", default=None,
                        help="start without checking that the memory plan fits the device")
    plan = sub.add_parser("plan", help="memory per component (weights, KV cache, text, decoder, activations) of a "
                          "generate run, computed on the meta device; takes generate's options (devices need not "
                          "exist here; --model without --wan-dir plans the released Wan2.1-1.3B sizes)")
    add_generate_arguments(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    for p in (memory, plan):
        p.add_argument("--memory-budget", type=_size, metavar="SIZE",
                       help="plan against this much memory per device (e.g. 24GiB) instead of what is free now")

    sub.add_parser("policies", help="list cache policies and presets with their papers and defaults")
    sub.add_parser("vocabulary", help="the words the embedded toy model knows (its prompts may use only these)")
    enc = sub.add_parser("encode-prompts", help="fill the prompt-embedding cache with umT5, so that runs never "
                         "hold umT5 and the transformer in memory together")
    enc.add_argument("--wan-dir", type=Path, required=True, help="Wan2.1-T2V-1.3B folder (original or diffusers)")
    enc_src = enc.add_mutually_exclusive_group(required=True)
    enc_src.add_argument("--prompt", action="append", help="a prompt or inline schedule (repeatable)")
    enc_src.add_argument("--prompts", type=Path, metavar="FILE",
                         help="a list of prompts, one video each (as for generate-many and compare): one per line "
                              "(# comments), or a .json/.yaml list; each may be an inline schedule")
    enc_src.add_argument("--schedule", type=Path, metavar="FILE", help="one video's schedule file (as for generate)")
    enc.add_argument("--prompt-cache", type=Path, metavar="DIR", help="cache folder (default: inside --wan-dir)")
    enc.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    enc.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="umT5 dtype")
    for name, target, text in (
        ("bench", "memrope.bench:bench_main", "per-chunk latency, FPS, memory, TFLOP/s and cost model per policy"),
        ("generate-many", "memrope.distributed:generate_many_main",
         "one video per prompt, sharded over torchrun ranks, resumable per prompt"),
        ("serve", "memrope.serve.app:serve_main",
         "a local web app: start live streams, watch them in the browser, change the prompt while they run"),
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
    from .eval.weights_check import add_weights_parser

    add_weights_parser(sub)
    return parser


def cmd_generate(args: argparse.Namespace) -> int:
    from .generate_options import request_from_args, resume_request
    from .run import generate, open_run, resume_outputs

    progress = not args.no_progress
    if args.resume is not None:
        if args.dry_run:
            raise UserError("--dry-run plans a new run; a resumed run keeps the memory it was started with")
        opened = open_run(args.resume)
        settings, length = resume_request(args, opened.manifest.settings)
        outputs = resume_outputs(args.resume, settings, args.out, args.stats)
        return generate(settings, outputs, resume=opened, length=length, progress=progress)
    if args.dry_run:
        from .memory_plan import format_plan, plan_settings  # nothing is loaded or written

        settings = settings_from_args(args)
        print(format_plan(plan_settings(settings), settings["overlap_decode"], args.memory_budget))
        return 0
    settings, outputs = request_from_args(args)
    if not args.no_memory_plan and needs_plan(settings, args.memory_budget):
        from .memory_plan import check_fits, plan_settings  # before anything is loaded or written

        check_fits(plan_settings(settings), settings["overlap_decode"], args.memory_budget)
    return generate(settings, outputs, progress=progress)


def needs_plan(settings: dict, budget: int | None) -> bool:
    """The gate runs where a plan can fail: a real model, a CUDA device, or a given budget. The embedded
    model on the CPU needs ~13 MB in all, and planning costs seconds (torch's dispatch machinery loads)."""
    model = settings["model"]
    on_cuda = any(str(d).startswith("cuda") for d in (model["device"], model.get("split_blocks") or "",
                                                      model.get("decode_device") or ""))
    return budget is not None or model["model"] is not None or on_cuda or (
        model["device"] == "auto" and _cuda_available())


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def cmd_plan(args: argparse.Namespace) -> int:
    import json

    from .memory_plan import format_plan, plan_settings

    settings = settings_from_args(args)  # a plan writes nothing: no --out needed
    plan = plan_settings(settings, what_if=True)
    if args.json:
        print(json.dumps({"plan": plan.description, "devices": plan.devices, "peaks": plan.peaks,
                          "notes": plan.notes}, indent=1))
    else:
        print(format_plan(plan, settings["overlap_decode"], args.memory_budget))
    return 0


def _size(value: str) -> int:
    from .memory_plan import parse_size

    return parse_size(value)


def cmd_policies(args: argparse.Namespace) -> int:
    from .cache.registry import describe_policies

    for row in describe_policies():
        defaults = ", ".join(f"{k}={v}" for k, v in row["defaults"].items()) or "(no options)"
        print(f"{row['name']}\n    {row['paper']}\n    code: {row['source']}\n    {defaults}")
    return 0


def cmd_vocabulary(args: argparse.Namespace) -> int:
    from .vocabulary import vocabulary_text

    print("The embedded toy model knows these words (case and commas do not matter); an object is\n"
          "[size] colour shape, e.g. \"a red disc and a large blue square bounce on a navy gradient, fast\".\n")
    print(vocabulary_text())
    return 0


def _forward(target: str, argv: list[str]) -> int:
    """Hand the rest of the command line to a sub-tool with its own parser (`memrope bench --help`)."""
    import importlib

    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)(argv)


def cmd_encode_prompts(args: argparse.Namespace) -> int:
    from .errors.paths import check_output_dir
    from .schedule import load_prompt_list, load_schedule, parse_inline

    try:
        if args.schedule is not None:
            schedules = [load_schedule(args.schedule)]
        else:
            schedules = [parse_inline(p) for p in (load_prompt_list(args.prompts) if args.prompts else args.prompt)]
    except ValueError as e:
        raise UserError(str(e)) from None
    prompts = sorted({seg.prompt for sched in schedules for seg in sched.segments})
    from .models.bundle import resolve_device, resolve_dtype
    from .models.wan_bundle import WanFolder, default_prompt_cache, encode_prompts_to_cache

    try:
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype, device)
        folder = WanFolder.inspect(args.wan_dir)
        check_output_dir(args.prompt_cache or default_prompt_cache(folder.root),
                         "--prompt-cache" if args.prompt_cache else "the prompt cache inside --wan-dir (or give "
                         "--prompt-cache)")
        paths = encode_prompts_to_cache(args.wan_dir, prompts, args.prompt_cache, device=device, dtype=dtype)
    except (ValueError, RuntimeError) as e:
        raise UserError(str(e)) from None
    for prompt, path in zip(prompts, paths):
        print(f"{path}\t{prompt}")
    return 0


COMMANDS = {"generate": cmd_generate, "policies": cmd_policies, "vocabulary": cmd_vocabulary,
            "encode-prompts": cmd_encode_prompts, "plan": cmd_plan}


OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def main(argv: list[str] | None = None) -> int:
    for key, value in OFFLINE_ENV.items():  # weights come from local files only, never from a hub
        os.environ.setdefault(key, value)
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = COMMANDS.get(args.command) or args.func
    return guarded(lambda: handler(args))


if __name__ == "__main__":
    sys.exit(main())
