"""Prompt schedules: several prompts with durations in one run, soft switches or hard cuts.

Inline syntax (``--prompt``): segments separated by ``|``, each an optional ``[DURATION]`` tag at
its end: ``"a cat walks[10s] | the cat sleeps[20s]"``; ``#`` in the tag marks a hard scene cut at
the start of that segment: ``"... | a new street[5s#]"``. The last segment may omit its duration
(it runs to the end). Files: JSON or YAML, a list of ``{prompt, seconds, cut}`` (or the inline
syntax as plain text). Durations are turned into chunk boundaries: a switch happens between two
chunks, at the chunk boundary closest to its time.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

TAG = re.compile(r"\[\s*(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>s|ms|min)?\s*(?P<cut>#)?\s*\]\s*$")
UNIT_SECONDS = {"s": 1.0, "ms": 1e-3, "min": 60.0, None: 1.0}
MAX_PROMPT_CHARS = 4096


@dataclass(frozen=True)
class PromptSegment:
    prompt: str
    seconds: float | None = None  # None: until the end of the video
    cut: bool = False  # a hard scene cut at the start of this segment

    def __post_init__(self) -> None:
        if not self.prompt.strip():
            raise ValueError("prompt schedule: a segment has an empty prompt")
        if len(self.prompt) > MAX_PROMPT_CHARS:
            raise ValueError(f"prompt schedule: a prompt is longer than {MAX_PROMPT_CHARS} characters")
        if self.seconds is not None and not (self.seconds > 0 and math.isfinite(self.seconds)):
            raise ValueError(f"prompt schedule: duration must be a positive number of seconds, got {self.seconds}")


@dataclass(frozen=True)
class PromptSchedule:
    segments: tuple[PromptSegment, ...]

    def __post_init__(self) -> None:
        if not self.segments:
            raise ValueError("prompt schedule: no prompts given")
        if any(s.seconds is None for s in self.segments[:-1]):
            raise ValueError("prompt schedule: every segment but the last needs a duration like [10s]")
        if self.segments[0].cut:
            raise ValueError("prompt schedule: the first segment cannot start with a cut (#)")

    @property
    def total_seconds(self) -> float | None:
        if self.segments[-1].seconds is None:
            return None
        return sum(s.seconds for s in self.segments)

    def start_chunks(self, seconds_per_chunk: float) -> list[int]:
        """Chunk index at which each segment starts (the first at 0); strictly increasing."""
        starts, t = [0], 0.0
        for seg in self.segments[:-1]:
            t += seg.seconds
            starts.append(max(starts[-1] + 1, round(t / seconds_per_chunk)))
        return starts

    def segment_at(self, chunk: int, starts: list[int]) -> int:
        return max(i for i, s in enumerate(starts) if s <= chunk)


def parse_inline(text: str) -> PromptSchedule:
    segments = []
    for part in text.split("|"):
        part = part.strip()
        match = TAG.search(part)
        if match:
            seconds = float(match["num"]) * UNIT_SECONDS[match["unit"]]
            segments.append(PromptSegment(part[: match.start()].strip(), seconds, bool(match["cut"])))
        elif "[" in part and part.rstrip().endswith("]"):
            raise ValueError(f"prompt schedule: cannot read the duration tag in {part!r}; write e.g. [10s] or [5s#]")
        else:
            segments.append(PromptSegment(part))
    return PromptSchedule(tuple(segments))


def read_text_file(path: Path, label: str, missing: str) -> str:
    """A user's UTF-8 text file, or a ValueError naming ``label`` and what is wrong (``missing``: the
    message when it is not a file)."""
    if not path.is_file():
        raise ValueError(missing)
    if not os.access(path, os.R_OK):
        raise ValueError(f"{label} {path} cannot be read (no permission)")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{label} {path} is not a text file (UTF-8)") from None
    except OSError as e:
        raise ValueError(f"{label} {path} cannot be read ({e.strerror})") from None


def load_schedule(path: str | Path) -> PromptSchedule:
    path = Path(path)
    text = read_text_file(path, "prompt schedule", f"prompt schedule file {path} does not exist")
    if path.suffix.lower() in (".json", ".yaml", ".yml"):
        if path.suffix.lower() == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"prompt schedule {path}: not valid JSON ({e})") from None
        else:
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise ValueError(f"prompt schedule {path}: not valid YAML ({e})") from None
        return schedule_from_data(data, str(path))
    return parse_inline(" | ".join(line.strip() for line in text.splitlines() if line.strip()))


def schedule_from_data(data: object, source: str = "schedule") -> PromptSchedule:
    items = data.get("prompts") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ValueError(f"prompt schedule {source}: expected a list of {{prompt, seconds, cut}} entries")
    segments = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = {"prompt": item}
        if not isinstance(item, dict):
            raise ValueError(f"prompt schedule {source}: entry {i} must be a mapping or a string")
        unknown = set(item) - {"prompt", "seconds", "cut"}
        if unknown:
            raise ValueError(f"prompt schedule {source}: entry {i} has unknown key(s) {sorted(unknown)}; "
                             "known: prompt, seconds, cut")
        prompt, seconds, cut = item.get("prompt"), item.get("seconds"), item.get("cut", False)
        if not isinstance(prompt, str):
            raise ValueError(f"prompt schedule {source}: entry {i} needs a text 'prompt'")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))):
            raise ValueError(f"prompt schedule {source}: entry {i} 'seconds' must be a number")
        if not isinstance(cut, bool):
            raise ValueError(f"prompt schedule {source}: entry {i} 'cut' must be true or false")
        segments.append(PromptSegment(prompt, None if seconds is None else float(seconds), cut))
    return PromptSchedule(tuple(segments))


def load_prompt_list(path: str | Path) -> list[str]:
    """A list of prompts, one video each (``--prompts FILE`` of every command that takes one).

    A ``.json`` or ``.yaml`` list of strings (or of ``{"prompt": ...}``), or text with one prompt per
    line (blank lines and lines starting with ``#`` skipped). Each prompt may be an inline schedule
    (``"a red disc[5s] | a blue ring"``): that video's own prompt changes.
    """
    path = Path(path)
    text = read_text_file(path, "--prompts", f"--prompts {path} does not exist or is not a file")
    if path.suffix.lower() in (".json", ".yaml", ".yml"):
        import yaml

        try:
            items = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise ValueError(f"--prompts {path}: not valid {path.suffix[1:].upper()} ({e})".splitlines()[0]) from None
        if not isinstance(items, list):
            raise ValueError(f"--prompts {path}: expected a list of prompts")
        prompts = [item.get("prompt") if isinstance(item, dict) else item for item in items]
        if not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError(f"--prompts {path}: every entry must be a non-empty prompt string (or {{prompt: ...}})")
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"--prompts {path} holds no prompt (one per line; # starts a comment)")
    for prompt in prompts:
        parse_inline(prompt)  # each one a valid prompt or inline schedule
    return prompts
