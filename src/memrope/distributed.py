"""``memrope generate-many``: one video per prompt, sharded over ``torchrun`` ranks, resumable per prompt.

Sharding, done markers and the closing manifest are :mod:`memrope.sharding`; this module is the command
around them. ``memrope generate-many --prompts FILE --out-dir DIR [-- generate options]`` (or ``torchrun
... -m memrope.distributed``) generates each prompt with ``memrope generate`` and the remaining options and
``--seed`` = base seed + index.

The optional two-GPU split (decoder on its own device) is ``memrope generate --decode-device``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from .sharding import read_prompts, run_sharded


# --------------------------------------------------------------------------- command line
def cli_generate_one(generate_args: Sequence[str], base_seed: int) -> Callable[[int, str, Path], None]:
    """Each prompt through ``memrope generate`` with ``generate_args`` and seed ``base_seed + index``."""

    def generate_one(index: int, prompt: str, path: Path) -> None:
        from .cli import main as cli_main

        rc = cli_main(["generate", *generate_args, "--prompt", prompt, "--seed", str(base_seed + index),
                       "--out", str(path), "--no-progress"])
        if rc:
            raise RuntimeError(f"memrope generate failed (exit {rc}) for prompt {index}: {prompt[:60]!r}")

    return generate_one


def generate_many_main(argv: list[str] | None = None) -> int:
    """``memrope generate-many --prompts FILE --out-dir DIR [--seed N] [-- generate options]``."""
    p = argparse.ArgumentParser(prog="memrope generate-many",
                                description="generate one video per prompt, sharded over torchrun ranks")
    p.add_argument("--prompts", type=Path, required=True, help=".txt (one per line) or .json list")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i")
    p.add_argument("--backend", default="gloo", help="torch.distributed backend (gloo works on CPU)")
    p.add_argument("generate_args", nargs=argparse.REMAINDER,
                   help="after --: options passed to `memrope generate` (not --prompt/--out/--seed)")
    args = p.parse_args(argv)
    extra = [a for a in args.generate_args if a != "--"]
    for banned in ("--prompt", "--prompts", "--out", "--seed"):
        if banned in extra:
            p.error(f"{banned} is set per prompt by generate-many; remove it from the generate options")
    report = run_sharded(read_prompts(args.prompts), args.out_dir, cli_generate_one(extra, args.seed),
                         backend=args.backend)
    print(f"memrope generate-many: rank {report.rank}/{report.world}: generated {len(report.generated)}, "
          f"skipped {len(report.skipped)} of {len(report.assigned)} assigned")
    return 0


if __name__ == "__main__":
    raise SystemExit(generate_many_main())
