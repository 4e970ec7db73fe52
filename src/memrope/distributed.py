"""``memrope generate-many``: one video per prompt, sharded over ``torchrun`` ranks, resumable per prompt.

Sharding, done markers and the closing manifest are :mod:`memrope.sharding`; this module is the command
around them. ``memrope generate-many --prompts FILE --out-dir DIR [-- generate options]`` (or ``torchrun
... -m memrope.distributed``) generates each prompt with ``memrope generate``'s code path and the
remaining options, and ``--seed`` = base seed + index.

Every check runs before the first file: the generate options (parsed and validated once), every
prompt (for the toy model: its vocabulary), the output folder. Each output's name and done marker
carry the hash of the settings that define it (``generate_options.settings_hash``), and the folder's
``manifest.json`` records the settings common to all: a rerun with the same command skips what is
done, and a rerun with other settings (another policy, length, model, ...) into the same folder is
refused instead of mixing videos of two settings.

The optional two-GPU split (decoder on its own device) is ``memrope generate --decode-device``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import UserError, guarded
from .errors.parser import Parser
from .generate_options import add_generate_arguments, request_from_args, settings_hash, video_suffix
from .sharding import MANIFEST, run_sharded

SET_PER_PROMPT = ("--prompt", "--prompts", "--schedule", "--out", "--seed", "--resume", "--run-dir")
HASH_CHARS = 12  # of the settings hash, in each output's name


class GenerateStopped(Exception):
    """A prompt's run ended without finishing (interrupted, non-finite latents): its exit status."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


class ManyRuns:
    """The generate options shared by every prompt, parsed and checked once."""

    def __init__(self, generate_args: Sequence[str], base_seed: int):
        self.args, self.base_seed = list(generate_args), base_seed
        self.parser = add_generate_arguments(Parser(prog="memrope generate-many ... --", add_help=False))
        common, _ = self.request(0, "a red disc")  # validates every option once, with a placeholder prompt
        self.suffix = video_suffix(common)
        shared = {k: v for k, v in common.items() if k not in ("schedule", "seed")}
        self.common = {**shared, "base_seed": base_seed}
        self.common_hash = settings_hash(self.common)

    def request(self, index: int, prompt: str, out: str | None = None):
        argv = [*self.args, "--prompt", prompt, "--seed", str(self.base_seed + index),
                "--out", out or f"placeholder{'.mkv' if '--lossless' in self.args else '.mp4'}"]
        return request_from_args(self.parser.parse_args(argv))

    def identity(self, index: int, prompt: str) -> str:
        return settings_hash(self.request(index, prompt)[0])

    def output_name(self, index: int, prompt: str) -> str:
        return f"{index:06d}_{self.identity(index, prompt)[:HASH_CHARS]}{self.suffix}"

    def generate_one(self, index: int, prompt: str, path: Path) -> None:
        from .run import generate

        settings, outputs = self.request(index, prompt, str(path))
        status = generate(settings, outputs, progress=False)
        if status:
            raise GenerateStopped(status)


def check_prompts(prompts: list[str], toy: bool) -> None:
    from .schedule import parse_inline
    from .vocabulary import check_toy_prompt

    for i, prompt in enumerate(prompts):
        try:
            for seg in parse_inline(prompt).segments:
                if toy:
                    check_toy_prompt(seg.prompt)
        except ValueError as e:
            raise UserError(f"--prompts line {i + 1}: {e}") from None


def check_out_dir(out: Path, runs: ManyRuns) -> None:
    from .errors.paths import check_output_dir

    check_output_dir(out, "--out-dir")
    manifest = out / MANIFEST
    if not manifest.is_file():
        return
    try:
        recorded = json.loads(manifest.read_text()).get("settings_hash")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise UserError(f"{manifest} is not a generate-many manifest; choose another --out-dir") from None
    if recorded != runs.common_hash:
        try:
            old = json.loads(manifest.read_text()).get("settings", {})
        except (json.JSONDecodeError, AttributeError):
            old = {}
        changed = sorted(k for k in set(old) | set(runs.common) if old.get(k) != runs.common.get(k))
        raise UserError(f"{out} holds videos made with other settings (differing: {', '.join(changed) or 'unknown'}); "
                        f"use another --out-dir, or the same options to continue that set")


def cli_generate_one(generate_args: Sequence[str], base_seed: int) -> Callable[[int, str, Path], None]:
    """Each prompt through ``memrope generate``'s code path with ``generate_args`` and seed ``base_seed + index``."""
    return ManyRuns(generate_args, base_seed).generate_one


def build_parser() -> Parser:
    p = Parser(prog="memrope generate-many",
               description="generate one video per prompt, sharded over torchrun ranks, resumable per prompt")
    p.add_argument("--prompts", type=Path, required=True, metavar="FILE",
                   help="a list of prompts, one video each: one per line (# comments), or a .json/.yaml list; each "
                        "may be an inline schedule")
    p.add_argument("--out-dir", type=Path, required=True, metavar="DIR",
                   help="folder of the videos (NNNNNN_<settings hash>.mp4 + .done markers) and manifest.json")
    p.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i")
    p.add_argument("--backend", default="gloo", choices=("gloo", "nccl", "mpi"),
                   help="torch.distributed backend (gloo works on CPU)")
    p.add_argument("generate_args", nargs="*", metavar="-- GENERATE OPTIONS",
                   help="after --: options passed to `memrope generate` (not --prompt/--out/--seed)")
    return p


def generate_many_main(argv: list[str] | None = None) -> int:
    """``memrope generate-many --prompts FILE --out-dir DIR [--seed N] [-- generate options]``."""
    p = build_parser()
    args = p.parse_args(argv)
    extra = [a for a in args.generate_args if a != "--"]
    for banned in SET_PER_PROMPT:
        if banned in extra:
            raise UserError(f"{banned} is set per prompt by generate-many; remove it from the generate options")
    from .schedule import load_prompt_list

    try:
        prompts = load_prompt_list(args.prompts)
    except ValueError as e:
        raise UserError(str(e)) from None
    runs = ManyRuns(extra, args.seed)
    check_prompts(prompts, toy=runs.common["model"]["model"] is None)
    check_out_dir(args.out_dir, runs)
    try:
        report = run_sharded(prompts, args.out_dir, runs.generate_one, backend=args.backend,
                             output_name=runs.output_name, identity=runs.identity,
                             manifest_extra={"settings": runs.common, "settings_hash": runs.common_hash})
    except GenerateStopped as e:
        return e.status
    print(f"memrope generate-many: rank {report.rank}/{report.world}: generated {len(report.generated)}, "
          f"skipped {len(report.skipped)} of {len(report.assigned)} assigned")
    return 0


if __name__ == "__main__":
    raise SystemExit(guarded(generate_many_main, prog="memrope generate-many"))
