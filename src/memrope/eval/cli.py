"""`memrope eval VIDEO... --out DIR [--weights-dir DIR] [--text PROMPT] [--segment-seconds S]`.

add_eval_parser(subparsers) registers the subcommand on memrope's top-level argparse parser; the
handler checks every argument (each video readable, the output folder writable, one label and one
prompt id per video) before anything is written, then evaluates the videos and writes the report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from memrope.errors import UserError, guarded
from memrope.errors.parser import Parser, non_negative_float, positive_float, positive_int
from memrope.eval.config import VBENCH_LONG_CLIP_SECONDS, EvalConfig


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Register `eval` on an argparse subparsers object; sets `func` to the handler."""
    p = subparsers.add_parser(
        "eval",
        help="evaluate videos: drift over time, VBench-style metrics, HTML report",
        description="Evaluate one or more videos (per segment and whole) and write metrics.json, CSV, "
        "plots and report.html. Network metrics run only from --weights-dir; nothing is downloaded.",
    )
    p.add_argument("videos", nargs="+", type=Path, metavar="VIDEO", help="video files (.mp4, .mkv, ...)")
    p.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    p.add_argument(
        "--weights-dir",
        type=Path,
        default=None,
        help="local folder with the VBench networks' weights (VBench's cache layout, the original files, or "
        "HF folders for DINO/CLIP); see `memrope weights check DIR`",
    )
    p.add_argument(
        "--segment-seconds",
        type=positive_float,
        default=VBENCH_LONG_CLIP_SECONDS,
        help="segment length for drift curves (VBench-Long's clips)",
    )
    p.add_argument("--labels", default=None, help="comma-separated method label per video (default: file names)")
    p.add_argument("--prompt-ids", default=None, metavar="IDS",
                   help="comma-separated prompt id per video, to pair methods (default: one pair per video)")
    p.add_argument(
        "--text",
        action="append",
        default=None,
        metavar="PROMPT",
        help="the prompt text of a video, for overall consistency (once for all videos, or once per video in order)",
    )
    p.add_argument(
        "--feature-fps",
        type=non_negative_float,
        default=None,
        help="frames per second fed to DINO/CLIP (default 2; 0 = every frame, VBench-exact)",
    )
    p.add_argument("--seam-period", type=positive_int, default=None, metavar="FRAMES",
                   help="known chunk length in frames (default: found from the video)")
    p.add_argument("--max-seconds", type=positive_float, default=None, help="evaluate only the first S seconds")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_eval)
    return p


def _split(value: str | None, n: int, what: str) -> list[str] | None:
    if value is None:
        return None
    items = [s.strip() for s in value.split(",")]
    if len(items) != n:
        raise UserError(f"--{what}: got {len(items)} values for {n} videos; give one per video, comma-separated")
    return items


def check_video(path: Path) -> None:
    """A readable video file, or a one-line ``UserError`` saying what it is instead."""
    import av

    from memrope.errors.paths import check_input_file
    from memrope.eval.reader import probe_video

    check_input_file(path, "video")
    try:
        probe_video(path)
    except (ValueError, av.error.FFmpegError) as e:
        raise UserError(f"{path} is not a readable video ({str(e).splitlines()[0]})") from None


def run_eval(args: argparse.Namespace) -> int:
    """Handler for `memrope eval`."""
    from memrope.errors.paths import check_output_dir

    overrides = {}
    if args.feature_fps is not None:
        overrides["feature_fps"] = None if args.feature_fps == 0 else args.feature_fps
    try:
        config = EvalConfig(
            segment_seconds=args.segment_seconds,
            seam_period=args.seam_period,
            max_seconds=args.max_seconds,
            **overrides,
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    n = len(args.videos)
    labels = _split(args.labels, n, "labels")
    prompt_ids = _split(args.prompt_ids, n, "prompt-ids")
    texts = args.text
    if texts is not None and len(texts) not in (1, n):
        raise UserError(f"--text: got {len(texts)} prompts for {n} videos (give one, or one per video)")
    if texts is not None and len(texts) == 1:
        texts = texts * n
    for video in args.videos:
        check_video(video)
    check_output_dir(args.out, "--out")
    from memrope.eval.evaluate import evaluate_videos

    ev = evaluate_videos(
        args.videos,
        args.out,
        weights_dir=args.weights_dir,
        labels=labels,
        prompts=prompt_ids,
        config=config,
        texts=texts,
        progress=not args.no_progress,
    )
    for v in ev.videos:
        a = v.analysis
        print(
            f"{a.label}: {a.seconds_evaluated:.1f} s of video in {a.elapsed_s:.1f} s, {a.n_segments} segments"
        )
    for name, reason in ev.skipped.items():
        print(f"skipped {name}: {reason}")
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (python -m memrope.eval.cli)."""
    parser = Parser(prog="memrope")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return guarded(lambda: args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
