"""``memrope compare``: the same model, prompts and seeds under several cache policies, in one report.

A study (``--study FILE``, :mod:`memrope.compare_study`; or the same from flags) names the bases
(model and checkpoint, with any ``memrope generate`` option), policies, prompt suite, seeds and
horizons. Every (base, policy, prompt, seed) video is made by ``memrope generate``'s code path as a
resumable run directory named by its settings (:mod:`memrope.compare_runs`), then every (video,
horizon) is evaluated on whole segments (:mod:`memrope.compare_eval`), and the records are merged
into one report (:mod:`memrope.eval.study_report`). Under ``torchrun`` the videos and then the
evaluations are sharded over the ranks (:mod:`memrope.sharding`), and rank 0 writes the report;
``--merge`` writes it again from the records alone.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from ..errors import UserError
from .study import SET_BY_STUDY, Study

DEFAULT_POLICIES = "sliding_window,attention_sink,infinity_rope,deep_forcing,memrope"
DEFAULT_SECONDS = 30.0
STUDY_FLAGS = ("policies", "policy_opt", "prompts", "prompt", "seeds", "duration", "latent_frames", "horizons",
               "weights_dir", "segment_seconds", "prompt_format", "switch_frame_indices")


def add_compare_parser(sub) -> argparse.ArgumentParser:
    from ..errors.parser import Parser, positive_float, positive_int
    from ..generate_options import add_generate_arguments
    from ..prompt_suites import FORMATS

    p = sub.add_parser("compare", help="generate with several policies (same prompts and seeds) and report",
                       description="Generate every (policy, prompt, seed) video of a study, resumably, evaluate "
                                   "each horizon and write one report. Runs under torchrun to shard the work.")
    p.add_argument("--study", type=Path, metavar="FILE", help="a study file (.yaml or .toml): bases, policies, "
                   "prompts, seeds, horizons; the flags below are the same for a study without a file")
    p.add_argument("--out", type=Path, help="output folder (videos/, eval/, report/); default: the study's `out`")
    p.add_argument("--dry-run", action="store_true", help="check the study and list its videos (done, to continue, "
                   "to make); nothing is loaded or written")
    p.add_argument("--merge", action="store_true", help="only build the report from the evaluations made")
    p.add_argument("--backend", default="gloo", choices=("gloo", "nccl", "mpi"), help="torch.distributed backend")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    s = p.add_argument_group("a study from flags (instead of --study)")
    s.add_argument("--policies", help=f"comma-separated policies or presets (default: {DEFAULT_POLICIES})")
    s.add_argument("--prompts", type=Path, metavar="FILE", help="the prompt suite: one video per prompt")
    s.add_argument("--prompt-format", choices=FORMATS, help="format of --prompts (default: by its name: .jsonl "
                   "longlive, .yaml/.json yaml, else lines)")
    s.add_argument("--switch-frame-indices", metavar="F,F", help="longlive suites: latent frames of the switches")
    s.add_argument("--prompt", action="append", help="a prompt (repeatable; may be an inline schedule)")
    s.add_argument("--policy-opt", action="append", metavar="POLICY:KEY=VALUE",
                   help="an option of one of --policies (repeatable), e.g. memrope:ema_alpha_long=0.02")
    s.add_argument("--seeds", type=positive_int, help="seeds per prompt, 0..N-1 (default 1)")
    length = s.add_mutually_exclusive_group()
    length.add_argument("--horizons", help="comma-separated lengths: presets 30s, 60s, 240s, 1h, or seconds")
    length.add_argument("--duration", type=positive_float, help=f"one horizon in seconds (default {DEFAULT_SECONDS:g})")
    length.add_argument("--latent-frames", type=positive_int, metavar="N", help="one horizon in latent frames")
    s.add_argument("--weights-dir", type=Path, help="local VBench weights for the network metrics")
    s.add_argument("--segment-seconds", type=positive_float, help="drift segment length (default 2)")
    g = p.add_argument_group("generate options (as `memrope generate`; for every video)")
    template = add_generate_arguments(Parser(prog="memrope compare", add_help=False))
    for action in template._actions:
        if action.dest not in SET_BY_STUDY and action.option_strings and action.dest != "help":
            g._add_action(action)
    p.set_defaults(func=cmd_compare, _generate_dests=[a.dest for a in g._group_actions])
    return p


def _generate_options(args: argparse.Namespace) -> dict:
    """The generate options given on the command line, as a study's mapping (long name -> value)."""
    from ..errors.parser import Parser
    from ..generate_options import add_generate_arguments, option_name

    actions = {a.dest: a for a in add_generate_arguments(Parser(add_help=False))._actions}
    out = {}
    for dest in args._generate_dests:
        value = getattr(args, dest)
        if value is None:
            continue
        action = actions[dest]
        key = option_name(dest)[2:] if action.nargs == 0 else action.option_strings[0][2:]
        out[key] = True if action.nargs == 0 else [str(v) for v in value] if isinstance(value, list) else str(value)
    return out


def study_from_args(args: argparse.Namespace) -> Study:
    from .study import build_study, load_study

    generate = _generate_options(args)
    if args.study is not None:
        given = [f"--{k.replace('_', '-')}" for k in STUDY_FLAGS if getattr(args, k) is not None]
        given += [f"--{k}" for k in generate]
        if given:
            raise UserError(f"--study {args.study} sets the study; {', '.join(given)} belong in it (or leave out "
                            f"--study)")
        return load_study(args.study, args.out)
    if args.out is None:
        raise UserError("--out is required without --study (the folder of the videos and the report)")
    if args.prompts is not None and args.prompt:
        raise UserError("give the prompts with --prompts FILE or with --prompt, not both")
    from ..generate_options import DEFAULT_PROMPT

    prompts = {"file": str(args.prompts)} if args.prompts is not None else list(args.prompt or [DEFAULT_PROMPT])
    if args.prompts is not None:
        if args.prompt_format:
            prompts["format"] = args.prompt_format
        if args.switch_frame_indices:
            prompts["switch_frame_indices"] = args.switch_frame_indices
    elif args.prompt_format or args.switch_frame_indices:
        raise UserError("--prompt-format and --switch-frame-indices describe a --prompts FILE")
    horizons = [h for h in args.horizons.split(",") if h.strip()] if args.horizons else \
        [args.duration or DEFAULT_SECONDS]
    data = {"name": "memrope compare", "generate": generate, "policies": _policies(args),
            "prompts": prompts, "seeds": args.seeds or 1, "horizons": horizons}
    if args.segment_seconds:
        data["segment_seconds"] = args.segment_seconds
    if args.weights_dir:
        data["weights_dir"] = str(args.weights_dir)
    study = build_study(data, "memrope compare", Path.cwd(), args.out)
    if args.latent_frames:
        from .study import parse_horizon

        study = replace(study, horizons=(parse_horizon({"latent_frames": args.latent_frames}, "--latent-frames",
                                                       study.clock),))
    return study


def _policies(args: argparse.Namespace) -> list:
    """--policies with the --policy-opt POLICY:KEY=VALUE that name them, as a study's policies list."""
    names = [p.strip() for p in (args.policies or DEFAULT_POLICIES).split(",") if p.strip()]
    options: dict[str, dict[str, str]] = {}
    for item in args.policy_opt or []:
        name, sep, pair = item.partition(":")
        key, eq, value = pair.partition("=")
        if not (sep and eq and key.strip()):
            raise UserError(f"--policy-opt {item!r}: write POLICY:KEY=VALUE, e.g. memrope:ema_alpha_long=0.02")
        if name not in names:
            raise UserError(f"--policy-opt {item!r}: {name!r} is not one of --policies ({', '.join(names)})")
        options.setdefault(name, {})[key.strip()] = value.strip()
    return [{"policy": n, "options": options[n]} if n in options else n for n in names]


def dry_run(study: Study) -> int:
    """What a run would do, video by video: nothing is loaded or written."""
    from ..session import MANIFEST
    from ..sharding import is_done
    from .runs import StudyVideos

    videos = StudyVideos(study)
    counts: dict[str, int] = {}
    for i, name in enumerate(videos.names):
        path = videos.path(i)
        state = "done" if is_done(path, videos.identity(i, name)) else \
            "to continue" if (path.with_name(path.name + ".run") / MANIFEST).is_file() else "to make"
        counts[state] = counts.get(state, 0) + 1
        print(f"{state:12s} {path}")
    horizons = ", ".join(h.label for h in study.horizons)
    print(f"memrope compare: study {study.name!r} is valid: {len(study.bases)} base(s) x {len(study.policies)} "
          f"policies x {len(study.prompts)} prompts x {len(study.seeds)} seeds = {len(videos.names)} videos "
          f"({', '.join(f'{v} {k}' for k, v in counts.items())}); horizons {horizons}; checkpoint every "
          f"{study.checkpoint_every} chunks; report in {study.out / 'report' / 'report.html'}")
    return 0


def _pin_local_device(world: int) -> None:
    """Under torchrun, rank r's "cuda" (and "auto") is GPU LOCAL_RANK: one GPU per process on each node."""
    import os

    import torch

    local = os.environ.get("LOCAL_RANK")
    if world > 1 and local is not None and torch.cuda.is_available():
        torch.cuda.set_device(int(local) % torch.cuda.device_count())


def check_study(study: Study) -> None:
    """Every video's settings (through generate's own checks) and every base's files, before any write."""
    from pathlib import Path

    from ..cache import make_policy, parse_options
    from ..errors.paths import check_input_file
    from .runs import StudyVideos, job_settings

    videos = StudyVideos(study)  # every video's settings parsed and validated by generate's parser
    for policy in study.policies:
        try:
            make_policy(policy.policy, parse_options(list(policy.options)))  # its options, checked by the policy
        except ValueError as e:
            raise UserError(f"policy {policy.label}: {e}") from None
    per_base = len(videos.jobs) // len(study.bases)
    for job in videos.jobs[::per_base]:  # the first video of each base
        model = job_settings(study, job)[0]["model"]
        for key, option in (("checkpoint", "--checkpoint"), ("wan_dir", "--wan-dir"), ("lora", "--lora"),
                            ("decoder_weights", "--decoder-weights")):
            path = model.get(key)
            if path is not None and not Path(path).exists():
                raise UserError(f"base {job.base.name}: {option} {path} does not exist")
            if path is not None and key in ("lora", "decoder_weights"):
                check_input_file(path, f"base {job.base.name}: {option}")


def check_memory(study: Study) -> None:
    """``memrope generate``'s memory gate, once per base with a real model (on the meta device: nothing
    is loaded): a study that cannot fit stops before its first video, not in the middle of the night."""
    from ..memory_plan import check_fits, plan_settings
    from .runs import StudyVideos, job_settings

    videos = StudyVideos(study)
    for job in videos.jobs[:: len(videos.jobs) // len(study.bases)]:
        settings = job_settings(study, job)[0]
        if settings["model"]["model"] is not None:
            check_fits(plan_settings(settings), settings["overlap_decode"])


def cmd_compare(args: argparse.Namespace) -> int:
    from .runs import GenerateStopped, check_videos_dir

    study = study_from_args(args)
    check_study(study)
    if args.dry_run:
        return dry_run(study)
    if not args.merge:
        check_memory(study)
    check_videos_dir(study)
    import torch.distributed as dist

    from ..sharding import env_rank_world, init_process_group
    from .evaluation import evaluate_study, merge

    rank, world = env_rank_world()
    _pin_local_device(world)
    created = init_process_group(args.backend)
    try:
        if not args.merge:
            try:
                from .runs import generate_videos

                made = generate_videos(study, progress=not args.no_progress)
            except GenerateStopped as e:
                return e.status
            print(f"memrope compare: rank {rank}/{world}: videos made or continued {len(made.generated)}, "
                  f"already done {len(made.skipped)}", file=sys.stderr)
            done = evaluate_study(study, progress=not args.no_progress)
            print(f"memrope compare: rank {rank}/{world}: evaluations made {len(done.generated)}, already done "
                  f"{len(done.skipped)}", file=sys.stderr)
        if rank == 0:
            report = merge(study)
            print(f"memrope compare: report in {report}", file=sys.stderr)
    finally:
        if created:
            dist.destroy_process_group()
    return 0
