"""`memrope weights check DIR`: which evaluation networks a weights folder provides, which files are
missing, the names memrope looks for and where each file comes from. Nothing is loaded or downloaded
(use ``--load`` to also build each found network, which validates its keys and shapes).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from memrope.errors import UserError
from memrope.eval.weight_sources import ALL_SOURCES, NetworkSource, WeightsMissing, locate, searched

# The loaders of `--load`, by source name (imported lazily: they pull in torch networks and transformers).
LOADERS = {
    "musiq_spaq": ("memrope.eval.nets.musiq", "load_musiq"),
    "raft_things": ("memrope.eval.nets.raft", "load_raft"),
    "amt_s": ("memrope.eval.nets.amt", "load_amt_s"),
    "viclip_l14": ("memrope.eval.nets.viclip", "load_viclip"),
    "clip_bpe_vocab": ("memrope.eval.nets.viclip", "load_tokenizer"),
    "dino_vitb16": ("memrope.eval.weights", "load_dino"),
    "clip_vitb32": ("memrope.eval.weights", "load_clip_vision"),
    "clip_vitl14": ("memrope.eval.weights", "load_clip_vision"),
    "laion_aesthetic_vitl14": ("memrope.eval.weights", "load_aesthetic_head"),
}
TAKES_LOCATED = ("dino_vitb16", "clip_vitb32", "clip_vitl14", "laion_aesthetic_vitl14")


@dataclass(frozen=True)
class CheckRow:
    source: NetworkSource
    found: Path | None
    kind: str | None
    error: str | None = None


def check_weights(weights_dir: Path, load: bool = False) -> list[CheckRow]:
    rows = []
    for source in ALL_SOURCES:
        try:
            located = locate(weights_dir, source)
        except WeightsMissing:
            rows.append(CheckRow(source, None, None))
            continue
        error = None
        if load:
            import importlib

            module, name = LOADERS[source.name]
            loader = getattr(importlib.import_module(module), name)
            try:
                loader(located if source.name in TAKES_LOCATED else located.path)
            except (ValueError, OSError) as e:  # CheckpointMismatch is a ValueError
                error = str(e)
        rows.append(CheckRow(source, located.path, located.kind, error))
    return rows


def dimension_status(rows: list[CheckRow]) -> dict[str, str]:
    """Each dimension: 'computed' when all its files are found (and loaded, with --load), else what is missing."""
    need: dict[str, list[CheckRow]] = {}
    for row in rows:
        for dim in row.source.dimensions:
            need.setdefault(dim, []).append(row)
    out = {}
    for dim, items in need.items():
        missing = [r.source.name for r in items if r.found is None]
        broken = [r.source.name for r in items if r.error]
        out[dim] = ("skipped: missing " + ", ".join(missing)) if missing else (
            ("skipped: unloadable " + ", ".join(broken)) if broken else "computed")
    return out


def format_report(weights_dir: Path, rows: list[CheckRow]) -> str:
    lines = [f"weights folder {weights_dir}"]
    for row in rows:
        s = row.source
        if row.found is not None:
            state = f"found ({row.kind}) {row.found}" + (f"  FAILS TO LOAD: {row.error}" if row.error else "")
        else:
            state = "missing"
        lines.append(f"{s.name:<24}{state}")
        lines.append(f"{'':<24}for: {', '.join(s.dimensions)}")
        if row.found is None:
            lines.append(f"{'':<24}expected one of: {', '.join(searched(s))}")
        lines.append(f"{'':<24}from: {s.origin}")
    lines.append("dimensions:")
    lines += [f"  {dim:<24}{status}" for dim, status in dimension_status(rows).items()]
    return "\n".join(lines)


def add_weights_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("weights", help="check a folder of evaluation weights (nothing is downloaded)")
    sub = p.add_subparsers(dest="weights_command", required=True)
    check = sub.add_parser("check", help="which networks are found, which files are missing and where they come from")
    check.add_argument("weights_dir", type=Path, metavar="DIR")
    check.add_argument("--load", action="store_true", help="also build each found network (validates its shapes)")
    check.set_defaults(func=run_weights_check)
    return p


def run_weights_check(args: argparse.Namespace) -> int:
    if not args.weights_dir.is_dir():
        raise UserError(f"weights folder {args.weights_dir} does not exist or is not a folder")
    print(format_report(args.weights_dir, check_weights(args.weights_dir, load=args.load)))
    return 0
