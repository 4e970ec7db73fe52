"""Prompt suites in the formats the field ships them in, each turned into one schedule per video.

A suite is a file of prompts, one video each; ``load_suite`` reads it in one of four formats and
returns every video's prompt schedule as :class:`~memrope.schedule.PromptSegment` lists, with an id
for the report.

``lines``
    One prompt per line, blank lines and ``#`` comments skipped: the MovieGen and VBench lists of
    guandeh17/Self-Forcing@33593df ``prompts/MovieGenVideoBench_extended.txt`` and
    YoungRaeKimm/MemRoPE@b89bf5b's prompt files. A line may be our inline schedule
    (``a cat[10s] | a dog[5s#]``: ``#`` is a cut at the *start* of the segment carrying it).
``longlive``
    NVlabs/LongLive@2462895575c5's interactive JSONL (``utils/dataset.py`` ``MultiTextDataset``):
    one JSON object a line whose ``prompts`` is a list of strings, every line the same length. The
    switch points are not in the file there but in the config (``configs/longlive_interactive_inference.yaml``
    ``switch_frame_indices: 40, 80, ...``): latent frame indices, one fewer than the prompts;
    NVlabs/LongLive@2462895575c5 ``pipeline/interactive_causal_inference.py`` switches at the first
    block whose start frame is ``>=`` the index, i.e. at chunk ``ceil(index / chunk_frames)``. Here
    they are given with the suite (``switch_frame_indices``) or, an extension of ours, per line as the
    object's own ``switch_frame_indices`` key. LongLive's switches are soft (its KV re-cache), never cuts.
``infinity_rope``
    yesiltepe-hidir/infinity-rope@63d7b84's timed syntax (``pipeline/causal_inference.py``
    ``_parse_scene_durations``): ``action[10s] | action2[10s#]; subtitle | subtitle``. Everything after
    the first ``;`` is subtitles (``inference.py``) and is dropped. A scene lasts
    ``max(1, int(seconds * fps / (4 * chunk_frames)))`` blocks (floor, not round; 16 fps and the Wan
    VAE's 4x in the release), a scene without a tag the default 14 blocks; and a ``#`` in scene i marks
    a cut at the *end* of scene i (its ``scene_cut_flags[i]`` is "scene i+1 starts with a cut"), so
    the last scene's ``#`` does nothing. This is the opposite of our syntax's ``#``: the converter
    moves each cut to the next scene. Durations become whole chunks exactly as the release counts them.
``yaml``
    Our YAML (or JSON): a list whose items are a prompt string, ``{prompt: ...}``, or one video's
    schedule ``{schedule: [{prompt, seconds, cut}, ...]}``; an ``id`` key names the video.

Every format ends its last segment open (``seconds: None``): the study's horizon decides the length,
and the last prompt runs to it.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .schedule import PromptSchedule, PromptSegment, parse_inline, schedule_from_data

FORMATS = ("lines", "longlive", "infinity_rope", "yaml")
INFINITY_ROPE_DEFAULT_BLOCKS = 14  # _parse_scene_durations' default_blocks_per_scene
_INFINITY_TAG = re.compile(r"\[(\d+\.?\d*)\s*s#?\]")  # the release's own pattern


@dataclass(frozen=True)
class SuitePrompt:
    """One video of a suite: an id (for names and the report) and its schedule."""

    id: str
    segments: tuple[PromptSegment, ...]

    @property
    def text(self) -> str:
        return " | ".join(s.prompt for s in self.segments)


@dataclass(frozen=True)
class ChunkClock:
    """How the generator counts time: ``chunk_frames`` latent frames a chunk, each ``stride`` video frames."""

    chunk_frames: int
    fps: int
    stride: int

    @property
    def seconds_per_chunk(self) -> float:
        return self.chunk_frames * self.stride / self.fps


def open_last(segments: list[PromptSegment]) -> tuple[PromptSegment, ...]:
    last = segments[-1]
    return (*segments[:-1], PromptSegment(last.prompt, None, last.cut))


def _from_chunks(prompts: list[str], starts: list[int], cuts: list[bool], clock: ChunkClock) -> tuple:
    """Segments whose boundaries land on exactly these chunks (our schedule rounds cumulative seconds)."""
    spc = clock.seconds_per_chunk
    segments = [PromptSegment(p, (b - a) * spc if b is not None else None, c)
                for p, a, b, c in zip(prompts, starts, [*starts[1:], None], cuts)]
    PromptSchedule(tuple(segments))
    return tuple(segments)


def infinity_rope_line(line: str, clock: ChunkClock) -> tuple[PromptSegment, ...]:
    """One infinity-RoPE prompt line -> our segments (cuts moved to the scene after the ``#``)."""
    scenes = [part.strip() for part in line.split(";")[0].split("|")]
    prompts, blocks, cut_after = [], [], []
    for scene in scenes:
        cut_after.append("#" in scene)  # the release: '#' anywhere in the scene's text
        match = _INFINITY_TAG.search(scene)
        if match:
            seconds = float(match.group(1))
            blocks.append(max(1, int(seconds * clock.fps / (clock.stride * clock.chunk_frames))))
            scene = _INFINITY_TAG.sub("", scene).strip()
        else:
            blocks.append(INFINITY_ROPE_DEFAULT_BLOCKS)
        if not scene:
            raise ValueError("an infinity-RoPE scene has no text before its [duration] tag")
        prompts.append(scene)
    starts = [sum(blocks[:i]) for i in range(len(blocks))]
    cuts = [False, *cut_after[:-1]]
    return _from_chunks(prompts, starts, cuts, clock)


def longlive_line(prompts: list[str], switch_frame_indices: list[int], clock: ChunkClock) -> tuple:
    """LongLive's prompts and switch frame indices (latent frames) -> our segments."""
    if len(switch_frame_indices) != len(prompts) - 1:
        raise ValueError(f"{len(prompts)} prompts need {len(prompts) - 1} switch_frame_indices, got "
                         f"{len(switch_frame_indices)} (LongLive: one fewer than the prompts)")
    starts = [0, *(math.ceil(f / clock.chunk_frames) for f in switch_frame_indices)]
    if any(b <= a for a, b in zip(starts, starts[1:])):
        raise ValueError(f"switch_frame_indices {switch_frame_indices} must increase by at least one chunk "
                         f"({clock.chunk_frames} latent frames) each, starting after 0")
    return _from_chunks(prompts, starts, [False] * len(prompts), clock)


def parse_switch_indices(value) -> list[int]:
    """LongLive's config value: an int, a list, or the comma-separated string of its YAML."""
    if isinstance(value, bool):
        raise ValueError("switch_frame_indices must be latent frame numbers")
    items = [value] if isinstance(value, int) else value if isinstance(value, list) else \
        [x for x in str(value).split(",") if x.strip()]
    try:
        out = [int(str(x).strip()) for x in items]
    except ValueError:
        raise ValueError(f"switch_frame_indices {value!r}: expected whole latent frame numbers, e.g. "
                         f"\"40, 80, 120\"") from None
    if any(f < 1 for f in out):
        raise ValueError(f"switch_frame_indices {value!r}: every index must be >= 1")
    return out


def _read(path: Path) -> str:
    if not path.is_file():
        raise ValueError(f"prompt suite {path} does not exist or is not a file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"prompt suite {path} cannot be read (no permission)")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"prompt suite {path} is not a text file (UTF-8)") from None
    except OSError as e:
        raise ValueError(f"prompt suite {path} cannot be read ({e.strerror})") from None


def _lines(text: str) -> list[tuple[int, str]]:
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]


def load_suite(path: str | Path, fmt: str, clock: ChunkClock, switch_frame_indices=None) -> list[SuitePrompt]:
    """Every video of the suite file (``ValueError`` naming the file and line on bad input)."""
    path = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"prompt suite format {fmt!r} is not one of {', '.join(FORMATS)}")
    if switch_frame_indices is not None and fmt != "longlive":
        raise ValueError("switch_frame_indices belong to the longlive format (its interactive JSONL)")
    text = _read(path)
    out: list[SuitePrompt] = []
    if fmt == "yaml":
        import yaml

        try:
            items = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"prompt suite {path}: not valid YAML ({e})".splitlines()[0]) from None
        if not isinstance(items, list) or not items:
            raise ValueError(f"prompt suite {path}: expected a non-empty list of prompts")
        for i, item in enumerate(items):
            where = f"prompt suite {path} entry {i}"
            if isinstance(item, str):
                item = {"prompt": item}
            if not isinstance(item, dict) or set(item) - {"id", "prompt", "schedule"} or \
                    ("prompt" in item) == ("schedule" in item):
                raise ValueError(f"{where}: give a prompt string, {{prompt: ...}} or {{schedule: [...]}} "
                                 f"(with an optional id)")
            sched = parse_inline(item["prompt"]) if "prompt" in item else \
                schedule_from_data(item["schedule"], where)
            out.append(SuitePrompt(str(item.get("id", f"p{i:02d}")), open_last(list(sched.segments))))
    else:
        indices = None if switch_frame_indices is None else parse_switch_indices(switch_frame_indices)
        for k, (n, line) in enumerate(_lines(text)):
            where = f"prompt suite {path} line {n}"
            try:
                if fmt == "lines":
                    segments = open_last(list(parse_inline(line).segments))
                elif fmt == "infinity_rope":
                    segments = open_last(list(infinity_rope_line(line, clock)))
                else:
                    segments = _longlive(line, indices, clock)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
            out.append(SuitePrompt(f"p{k:02d}", segments))
    if not out:
        raise ValueError(f"prompt suite {path} holds no prompt")
    ids = [p.id for p in out]
    if len(set(ids)) != len(ids):
        raise ValueError(f"prompt suite {path}: ids must be unique, got {sorted({i for i in ids if ids.count(i) > 1})}")
    bad = [i for i in ids if not re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", i)]
    if bad:
        raise ValueError(f"prompt suite {path}: id {bad[0]!r} must be 1-40 letters, digits, '_', '.' or '-'")
    return out


def _longlive(line: str, indices: list[int] | None, clock: ChunkClock) -> tuple[PromptSegment, ...]:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not a JSON object ({e})") from None
    prompts = item.get("prompts") if isinstance(item, dict) else None
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError("expected {\"prompts\": [\"...\", ...]} (LongLive's interactive JSONL)")
    own = item.get("switch_frame_indices")
    if own is not None:
        indices = parse_switch_indices(own)
    if indices is None:
        if len(prompts) > 1:
            raise ValueError(f"{len(prompts)} prompts but no switch_frame_indices (give them with the suite, as "
                             f"LongLive's config does, or on the line)")
        indices = []
    return open_last(list(longlive_line(prompts, indices, clock)))
