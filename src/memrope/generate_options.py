"""The options of ``memrope generate``, shared by every command that generates (generate, compare).

``add_generate_arguments`` puts them on a parser; ``settings_from_args`` turns the parsed options into
the run's plain, JSON-serialisable settings (what a run directory's manifest stores for ``--resume``).
Both commands import this module; neither imports the other.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from .errors import UserError

ATTENTION_CHOICES = ("default", "auto", "flash", "efficient", "cudnn", "math")
"""``models.attention.CHOICES``, spelled out so that ``--help`` does not import torch (a test holds them equal)."""
NOISE_CHOICES = ("chunk", "reference")  # generate.NOISE_MODES
PIXEL_CHOICES = ("truncate", "round")  # models.pixels.PIXEL_MODES
LORA_MODE_CHOICES = ("merged", "unmerged")  # models.lora_linear.LORA_MODES

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


def add_generate_arguments(gen: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Every option of ``memrope generate`` on ``gen`` (a parser or a sub-parser)."""
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
    gen.add_argument("--noise", choices=NOISE_CHOICES, default="chunk",
                     help="chunk: one CPU generator per (seed, chunk); reference: the MemRoPE reference's draws "
                          "(one generator, the whole video's initial noise first, then every re-noise) and its "
                          "sampler arithmetic, drawn chunk by chunk in constant memory")
    gen.add_argument("--pixels", choices=PIXEL_CHOICES, default="truncate",
                     help="uint8 quantisation of the decoded frames: truncate (Wan's and Self-Forcing's "
                          "videos) or round")
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
    model.add_argument("--lora", type=Path, help="LongLive lora.pt")
    model.add_argument("--lora-mode", choices=LORA_MODE_CHOICES, default="merged",
                       help="merged: W + s B A folded into the weights (fastest); unmerged: adapters computed "
                            "as PEFT does in the run dtype (LongLive's and the reference's values)")
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
    return gen


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
        "prompt": args.prompt, "prompts_file": path(args.prompts), "schedule": None, "noise": args.noise,
        "latent_frames": args.latent_frames, "duration": args.duration,
        "chunk_frames": args.chunk_frames, "fps": args.fps,
        "out": str(out.resolve()), "stats": path(args.stats), "run_dir": path(args.run_dir),
        "checkpoint_every": args.checkpoint_every or 0, "save_latents": args.save_latents,
        "overlap_decode": args.overlap_decode, "attention": args.attention,
        "model": {"model": args.model, "checkpoint": path(args.checkpoint), "wan_dir": path(args.wan_dir),
                  "lora": path(args.lora), "lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha,
                  "use_ema": args.use_ema, "height": args.height, "width": args.width,
                  "device": args.device, "dtype": args.dtype, "prompt_cache": path(args.prompt_cache),
                  "decode_device": args.decode_device, "pixels": args.pixels, "lora_mode": args.lora_mode},
    }
