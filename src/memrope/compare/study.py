"""A study: the one file (YAML or TOML) - or the flags - that says everything ``memrope compare`` runs.

::

    name: memrope-240s
    out: runs/memrope-240s            # relative to the study file
    generate: {device: cuda, lossless: true}        # memrope generate's options, for every base
    bases:                            # one table set per base (a model and its files)
      - {name: self-forcing, model: self-forcing, checkpoint: ckpt/self_forcing_dmd.pt, wan-dir: Wan2.1-T2V-1.3B}
    policies: [memrope, {label: df, policy: deep_forcing, options: {sink_size: 3}}]
    prompts: {file: prompts.txt, format: lines}     # lines | longlive | infinity_rope | yaml
    seeds: 2                          # 0..N-1, or a list
    horizons: [30s, 240s]             # presets 30s 60s 240s 1h, seconds, or {latent_frames: N}
    segment_seconds: 2
    weights_dir: vbench-weights

Every key of ``generate`` and of a base is a ``memrope generate`` option by its long name (``wan-dir``
or ``wan_dir``; ``true`` for a flag, a list for a repeated option), parsed and checked by generate's
own parser: a study can set anything a generate command can, and a bad one is named with its file.
What the study sets itself per video (policy, seed, prompt, length, destinations) is refused there.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..errors.parser import Parser
from ..prompt_suites import FORMATS, ChunkClock, SuitePrompt, load_suite

HORIZON_PRESETS = {"30s": 30.0, "60s": 60.0, "240s": 240.0, "1h": 3600.0}
"""The papers' protocols: 30 s and 60 s (Self-Forcing, LongLive), 240 s (MemRoPE, Deep Forcing), 1 h."""
SET_BY_STUDY = ("policy", "policy_opt", "latent_frames", "duration", "seed", "prompt", "schedule", "prompts",
                "out", "stats", "checkpoint_every", "run_dir", "resume", "no_progress")
STUDY_KEYS = {"name", "out", "generate", "bases", "policies", "prompts", "seeds", "horizons", "segment_seconds",
              "weights_dir", "checkpoint_seconds", "reference", "grid_videos"}
DEFAULT_CHECKPOINT_SECONDS = 30.0  # a checkpoint every ~30 s of video: a kill loses at most that
DEFAULT_GRID_VIDEOS = 2  # (prompt, seed) units shown as thumbnail grids per base
NAME = re.compile(r"[A-Za-z0-9_.-]{1,40}")


@dataclass(frozen=True)
class Horizon:
    """A length the tables report: seconds, or (``--latent-frames``) an exact latent length."""

    seconds: float
    latent_frames: int | None = None

    @property
    def label(self) -> str:
        if self.latent_frames is not None:
            return f"{self.latent_frames} latent frames ({self.seconds:.4g} s)"
        return "1 h" if self.seconds == 3600 else f"{self.seconds:g} s"


@dataclass(frozen=True)
class Base:
    name: str
    argv: tuple[str, ...]  # its generate options, checked
    toy: bool


@dataclass(frozen=True)
class PolicySpec:
    label: str
    policy: str
    options: tuple[str, ...]  # KEY=VALUE, as --policy-opt takes them


@dataclass(frozen=True)
class Study:
    name: str
    out: Path
    bases: tuple[Base, ...]
    policies: tuple[PolicySpec, ...]
    prompts: tuple[SuitePrompt, ...]
    seeds: tuple[int, ...]
    horizons: tuple[Horizon, ...]
    clock: ChunkClock
    segment_seconds: float
    weights_dir: Path | None
    checkpoint_every: int  # chunks
    reference: str
    grid_videos: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "bases": [{"name": b.name, "argv": list(b.argv)} for b in self.bases],
                "policies": [vars(p) | {"options": list(p.options)} for p in self.policies],
                "prompts": [{"id": p.id, "segments": [vars(s) for s in p.segments]} for p in self.prompts],
                "seeds": list(self.seeds), "horizons": [vars(h) for h in self.horizons],
                "segment_seconds": self.segment_seconds, "reference": self.reference}


class _OptionParser(Parser):
    """generate's parser whose errors name the study file instead of exiting."""

    where = "the study"

    def error(self, message: str):
        raise UserError(f"{self.where}: generate options: {message}")


def generate_parser(where: str) -> Parser:
    from ..generate_options import add_generate_arguments

    parser = add_generate_arguments(_OptionParser(prog="memrope compare", add_help=False))
    parser.where = where
    return parser


def options_to_argv(options: dict[str, Any], where: str) -> list[str]:
    """A mapping of generate options (long names) -> argv, refusing what the study sets per video."""
    actions = {s: a for a in generate_parser(where)._actions for s in a.option_strings}
    argv: list[str] = []
    for key, value in options.items():
        flag = "--" + str(key).replace("_", "-")
        action = actions.get(flag)
        if action is None:
            raise UserError(f"{where}: {key!r} is not a memrope generate option (see `memrope generate --help`)")
        if action.dest in SET_BY_STUDY:
            raise UserError(f"{where}: {key!r} is set by the study per video (policies, seeds, prompts, horizons, "
                            f"out); remove it")
        if action.nargs == 0:
            if value is not True:
                raise UserError(f"{where}: {key!r} is a switch: write `{key}: true` or leave it out")
            argv.append(flag)
        else:
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, (dict, list)) or item is None:
                    raise UserError(f"{where}: {key!r} needs a value like `{key}: VALUE`, got {item!r}")
                argv += [flag, str(item).lower() if isinstance(item, bool) else str(item)]
    return argv


def parse_horizon(value: Any, where: str, clock: ChunkClock) -> Horizon:
    """A preset, seconds (90, "90s", "5min", "1h") or ``{latent_frames: N}`` (an exact generator length, as
    the reference configs' ``num_output_frames``: N latent frames are 1 + stride (N - 1) video frames)."""
    if isinstance(value, dict):
        n = value.get("latent_frames")
        if set(value) != {"latent_frames"} or isinstance(n, bool) or not isinstance(n, int) or n < 1 or \
                n % clock.chunk_frames:
            raise UserError(f"{where}: horizon {value!r}: write {{latent_frames: N}} with N a multiple of the "
                            f"chunk ({clock.chunk_frames})")
        return Horizon((1 + clock.stride * (n - 1)) / clock.fps, n)
    if isinstance(value, str) and value.strip() in HORIZON_PRESETS:
        return Horizon(HORIZON_PRESETS[value.strip()])
    seconds = value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|min|h)?\s*", value)
        seconds = float(m[1]) * {"s": 1, "min": 60, "h": 3600, None: 1}[m[2]] if m else None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (0 < seconds < math.inf):
        raise UserError(f"{where}: horizon {value!r} is not a length: use a preset ({', '.join(HORIZON_PRESETS)}) "
                        f"or seconds such as 90 or \"5min\"")
    return Horizon(float(seconds))


def _policies(items: Any, where: str) -> tuple[PolicySpec, ...]:
    from ..cache import policy_names

    if isinstance(items, str):
        items = [p.strip() for p in items.split(",") if p.strip()]
    if not isinstance(items, list) or not items:
        raise UserError(f"{where}: policies must be a non-empty list of policy names or {{label, policy, options}}")
    out = []
    for item in items:
        if isinstance(item, str):
            item = {"policy": item}
        if not isinstance(item, dict) or "policy" not in item or set(item) - {"label", "policy", "options"}:
            raise UserError(f"{where}: a policy entry is a name or {{label, policy, options}}, got {item!r}")
        if item["policy"] not in policy_names():
            raise UserError(f"unknown policies [{item['policy']!r}]; choose from {', '.join(policy_names())}")
        options = item.get("options") or {}
        if not isinstance(options, dict):
            raise UserError(f"{where}: options of policy {item['policy']!r} must be a mapping KEY: VALUE")
        label = str(item.get("label", item["policy"]))
        if not NAME.fullmatch(label):
            raise UserError(f"{where}: policy label {label!r} must be 1-40 letters, digits, '_', '.' or '-'")
        out.append(PolicySpec(label, item["policy"], tuple(f"{k}={v}" for k, v in options.items())))
    labels = [p.label for p in out]
    if len(set(labels)) != len(labels):
        raise UserError(f"{where}: two policies share a label; give each a distinct `label`")
    return tuple(out)


def _seeds(value: Any, where: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return tuple(range(value))
    if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) for s in value) \
            and len(set(value)) == len(value):
        return tuple(value)
    raise UserError(f"{where}: seeds must be a count >= 1 or a list of distinct whole numbers, got {value!r}")


def _clock(bases: tuple[Base, ...], argvs: list[list[str]]) -> ChunkClock:
    from ..generate_options import DEFAULTS
    from ..models.toy.decoder import WAN_TEMPORAL_STRIDE

    clocks = set()
    for base, argv in zip(bases, argvs):
        args = generate_parser(base.name).parse_args(argv)
        clocks.add(ChunkClock(args.chunk_frames or DEFAULTS["chunk_frames"], args.fps or DEFAULTS["fps"],
                              1 if base.toy else WAN_TEMPORAL_STRIDE))
    if len(clocks) != 1:
        raise UserError("every base of a study must share chunk-frames, fps and the kind of model (the prompt "
                        "suite's switch times and the horizons are counted in its chunks)")
    return clocks.pop()


def build_study(data: dict[str, Any], where: str, root: Path, out: Path | None) -> Study:
    """A checked :class:`Study` from a study file's mapping (paths relative to ``root``)."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: a study is a mapping of keys ({', '.join(sorted(STUDY_KEYS))})")
    unknown = set(data) - STUDY_KEYS
    if unknown:
        raise UserError(f"{where}: unknown key(s) {sorted(unknown)}; known: {', '.join(sorted(STUDY_KEYS))}")
    for key in ("policies", "prompts", "horizons"):
        if key not in data:
            raise UserError(f"{where}: '{key}' is missing")
    name = str(data.get("name", "study"))
    common = data.get("generate") or {}
    raw_bases = data.get("bases") or [{"name": "base"}]
    if not isinstance(common, dict) or not isinstance(raw_bases, list) or not all(isinstance(b, dict) and
                                                                                   "name" in b for b in raw_bases):
        raise UserError(f"{where}: 'generate' is a mapping of generate options and 'bases' a list of them, each "
                        f"with a 'name'")
    bases, argvs = [], []
    for raw in raw_bases:
        bname = str(raw["name"])
        if not NAME.fullmatch(bname):
            raise UserError(f"{where}: base name {bname!r} must be 1-40 letters, digits, '_', '.' or '-'")
        options = {**common, **{k: v for k, v in raw.items() if k != "name"}}
        for key in ("checkpoint", "wan-dir", "wan_dir", "lora", "prompt-cache", "prompt_cache", "decoder-weights",
                    "decoder_weights"):
            if isinstance(options.get(key), str):
                options[key] = str(root / Path(options[key]).expanduser())
        argv = options_to_argv(options, f"{where}, base {bname}")
        args = generate_parser(f"{where}, base {bname}").parse_args(argv)
        bases.append(Base(bname, tuple(argv), args.model is None))
        argvs.append(argv)
    if len({b.name for b in bases}) != len(bases):
        raise UserError(f"{where}: two bases share a name")
    bases = tuple(bases)
    clock = _clock(bases, argvs)
    prompts = _prompts(data["prompts"], where, root, clock, bases)
    horizons_raw = data["horizons"] if isinstance(data["horizons"], list) else [data["horizons"]]
    horizons = tuple(sorted({parse_horizon(h, where, clock) for h in horizons_raw}, key=lambda h: h.seconds))
    segment = data.get("segment_seconds", 2.0)
    if isinstance(segment, bool) or not isinstance(segment, (int, float)) or not 0 < segment < math.inf:
        raise UserError(f"{where}: segment_seconds must be a number of seconds > 0, got {segment!r}")
    every_s = data.get("checkpoint_seconds", DEFAULT_CHECKPOINT_SECONDS)
    if isinstance(every_s, bool) or not isinstance(every_s, (int, float)) or not 0 < every_s < math.inf:
        raise UserError(f"{where}: checkpoint_seconds must be seconds of video > 0, got {every_s!r}")
    policies = _policies(data["policies"], where)
    reference = str(data.get("reference", "memrope" if "memrope" in [p.label for p in policies] else
                             policies[0].label))
    if reference not in [p.label for p in policies]:
        raise UserError(f"{where}: reference {reference!r} is not one of the policies' labels")
    grid = data.get("grid_videos", DEFAULT_GRID_VIDEOS)
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 0:
        raise UserError(f"{where}: grid_videos must be a whole number >= 0")
    weights = data.get("weights_dir")
    if out is None:
        if "out" not in data:
            raise UserError(f"{where}: no output folder: give 'out' in the study or --out DIR")
        out = root / Path(str(data["out"])).expanduser()
    return Study(name, Path(out), bases, policies, tuple(prompts), _seeds(data.get("seeds", 1), where), horizons,
                 clock, float(segment), None if weights is None else root / Path(str(weights)).expanduser(),
                 max(1, math.ceil(every_s / clock.seconds_per_chunk)), reference, grid)


def _prompts(spec: Any, where: str, root: Path, clock: ChunkClock, bases: tuple[Base, ...]) -> list[SuitePrompt]:
    from ..schedule import parse_inline
    from ..vocabulary import check_toy_prompt

    try:
        if isinstance(spec, list):
            if not spec or not all(isinstance(p, str) and p.strip() for p in spec):
                raise ValueError(f"{where}: prompts is a list of prompt strings or {{file, format}}")
            from ..prompt_suites import open_last

            suite = [SuitePrompt(f"p{i:02d}", open_last(list(parse_inline(p).segments))) for i, p in enumerate(spec)]
        elif isinstance(spec, dict) and "file" in spec and not set(spec) - {"file", "format", "switch_frame_indices"}:
            path = root / Path(str(spec["file"])).expanduser()
            fmt = spec.get("format") or suite_format(path)
            suite = load_suite(path, fmt, clock, spec.get("switch_frame_indices"))
        else:
            raise ValueError(f"{where}: prompts is a list of prompts or {{file, format ({', '.join(FORMATS)}), "
                             f"switch_frame_indices}}")
        if any(b.toy for b in bases):
            for p in suite:
                for seg in p.segments:
                    check_toy_prompt(seg.prompt)
    except ValueError as e:
        raise UserError(str(e)) from None
    return suite


def suite_format(path: Path) -> str:
    """The format a suite file's name implies: .jsonl LongLive's, .yaml/.yml/.json ours, else lines."""
    suffix = path.suffix.lower()
    return "longlive" if suffix == ".jsonl" else "yaml" if suffix in (".yaml", ".yml", ".json") else "lines"


def read_study_file(path: Path) -> dict[str, Any]:
    from ..errors.paths import check_input_file

    check_input_file(path, "--study")
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".toml":
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"--study {path}: not valid TOML ({e})") from None
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise UserError(f"--study {path}: a study file is .yaml, .yml or .toml")
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f"--study {path}: not valid YAML ({str(e).splitlines()[0]})") from None


def load_study(path: Path, out: Path | None = None) -> Study:
    return build_study(read_study_file(path), f"--study {path}", path.resolve().parent, out)
