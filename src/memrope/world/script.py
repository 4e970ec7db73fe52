"""Prompt scripts: a video whose prompt changes at given frames, and the timeline of its specs.

A ``Timeline`` says which ``WorldSpec`` holds from which frame. Because a switch only ever adds
objects (``prompts.switch_world``), the object list of every spec extends the previous one; the
metrics in ``truth.py`` rely on that to follow each identity across switches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from memrope.world.prompts import build_world, switch_world
from memrope.world.raster import render_clip
from memrope.world.world import REFERENCE_SIDE, WorldSpec, WorldState


@dataclass(frozen=True)
class Timeline:
    """Specs in force from frame ``starts[i]`` on; ``starts[0] == 0`` and strictly increasing."""

    starts: tuple[int, ...]
    specs: tuple[WorldSpec, ...]

    def __post_init__(self) -> None:
        if len(self.starts) != len(self.specs) or not self.specs:
            raise ValueError(
                f"Timeline needs one start per spec, got {len(self.starts)} and {len(self.specs)}"
            )
        if self.starts[0] != 0 or any(b <= a for a, b in zip(self.starts, self.starts[1:], strict=False)):
            raise ValueError(f"Timeline.starts must begin at 0 and increase strictly, got {self.starts}")
        for before, after in zip(self.specs, self.specs[1:], strict=False):
            if after.objects[: len(before.objects)] != before.objects:
                raise ValueError(
                    "each Timeline spec must keep the previous spec's objects, in order, and only append; "
                    f"{before.objects} -> {after.objects}"
                )
            if (after.height, after.width) != (before.height, before.width):
                raise ValueError("all Timeline specs must share one frame size")

    @classmethod
    def constant(cls, spec: WorldSpec) -> Timeline:
        """One spec for the whole video."""
        return cls(starts=(0,), specs=(spec,))

    @property
    def final(self) -> WorldSpec:
        """The last spec: its objects are every object that appears in the video."""
        return self.specs[-1]

    def index_per_frame(self, n_frames: int) -> np.ndarray:
        """Index into ``specs`` of the spec in force at each frame, int64 [n_frames]."""
        return np.searchsorted(np.asarray(self.starts), np.arange(n_frames), side="right") - 1


@dataclass(frozen=True, eq=False)
class ScriptedClip:
    """A rendered scripted video: frames uint8 [T, H, W, 3], labels int8 [T, H, W], its timeline."""

    frames: np.ndarray
    labels: np.ndarray
    timeline: Timeline
    prompts: tuple[str, ...]
    final_state: WorldState


def render_script(
    prompts: Sequence[tuple[int, str]],
    seed: int,
    n_frames: int,
    height: int = REFERENCE_SIDE,
    width: int = REFERENCE_SIDE,
) -> ScriptedClip:
    """Render ``n_frames`` frames where prompt ``p`` takes over at frame ``f`` for each (f, p).

    The first entry must start at frame 0; the world starts from ``seed`` and switch ``i`` places
    its new objects from a seed derived from (seed, i), so the clip is a pure function of its args.
    """
    if not prompts or prompts[0][0] != 0:
        raise ValueError(f"the first prompt must start at frame 0, got {list(prompts)[:1]}")
    starts = tuple(f for f, _ in prompts)
    if any(f >= n_frames for f in starts):
        raise ValueError(f"every prompt must start before n_frames={n_frames}, got starts {starts}")
    spec, state = build_world(prompts[0][1], seed, height, width)
    specs: list[WorldSpec] = [spec]
    frames, labels = [], []
    ends = starts[1:] + (n_frames,)
    for i, (start, end) in enumerate(zip(starts, ends, strict=True)):
        if i > 0:
            switch_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
            spec, state = switch_world(spec, state, prompts[i][1], switch_seed)
            specs.append(spec)
        clip = render_clip(spec, state, end - start + 1)  # one extra frame: the next segment's start
        frames.append(clip.frames[:-1])
        labels.append(clip.labels[:-1])
        state = clip.final_state()
    return ScriptedClip(
        frames=np.concatenate(frames, axis=0),
        labels=np.concatenate(labels, axis=0),
        timeline=Timeline(starts=starts, specs=tuple(specs)),
        prompts=tuple(p for _, p in prompts),
        final_state=state,
    )
