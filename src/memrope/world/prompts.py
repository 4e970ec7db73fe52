"""Prompts of the toy world: a tiny closed vocabulary whose words set scene attributes.

A prompt names the objects (``[size] colour shape``), the background (``on a <colour> <pattern>``)
and the speed, e.g. ``"a red disc and a large blue square bounce on a navy gradient, fast"``. The
vocabulary is closed so that a prompt means exactly one ``WorldSpec``: a text-conditioned model
trained on these prompts can then be checked against the spec its prompt describes.

Parsing rules (``parse_prompt``):

- case is ignored; commas and full stops separate words like spaces do;
- every word must be in ``VOCABULARY``, otherwise ValueError listing the vocabulary (nothing is
  silently ignored: a typo would otherwise change the scene without notice);
- an object is an optional size, an object colour, then a shape, in that order; size defaults to
  ``medium``; objects are listed back to front (later ones occlude earlier ones);
- background and speed words may appear anywhere, at most once each; defaults: black, plain
  (``background`` is the word for the plain pattern), normal speed;
- the words in ``FILLER_WORDS`` only make prompts read as English and carry no meaning.

``format_prompt`` writes the canonical text of a spec; ``parse_prompt(format_prompt(s)) == s``
and canonical texts survive ``format_prompt(parse_prompt(text)) == text``.

A prompt switch (``switch_world``) gives a running world a new prompt: every existing object
keeps its colour, shape, size, position and direction (identity persists; a prompt cannot remove
or alter an object), new colours add new objects in front, and background and speed follow the
new prompt. So a switch changes something visible while the old identities must survive it.
"""

from __future__ import annotations

import re

import numpy as np

from memrope.world.palette import BACKGROUND_COLOURS, OBJECT_COLOURS
from memrope.world.world import (
    MAX_OBJECTS,
    PATTERNS,
    PLACEMENT_ATTEMPTS,
    REFERENCE_SIDE,
    SHAPES,
    SIZE_FRACTIONS,
    SPEED_BANDS,
    BackgroundSpec,
    ObjectSpec,
    WorldSpec,
    WorldState,
    check_state,
    initial_state,
    position_bounds,
)

PATTERN_WORDS: dict[str, str] = {"background": "plain", "gradient": "gradient", "checker": "checker"}
"""Prompt word -> background pattern; ``plain`` reads badly in a sentence, so it is 'background'."""

FILLER_WORDS = frozenset({"a", "an", "and", "on", "bounce", "bounces", "move", "moves"})
"""Words that are allowed but carry no attribute."""

DEFAULT_SIZE = "medium"
"""Size of an object whose phrase has no size word; omitted by ``format_prompt``."""

VOCABULARY: dict[str, tuple[str, ...]] = {
    "size": tuple(SIZE_FRACTIONS),
    "object colour": tuple(OBJECT_COLOURS),
    "shape": SHAPES,
    "background colour": tuple(BACKGROUND_COLOURS),
    "background pattern": tuple(PATTERN_WORDS),
    "speed": tuple(SPEED_BANDS),
    "filler": tuple(sorted(FILLER_WORDS)),
}
"""Every word a prompt may contain, by role."""

_SEPARATORS = re.compile(r"[\s,.]+")


def _vocabulary_text() -> str:
    return "; ".join(f"{role}: {', '.join(words)}" for role, words in VOCABULARY.items())


def parse_prompt(text: str, height: int = REFERENCE_SIDE, width: int = REFERENCE_SIDE) -> WorldSpec:
    """The ``WorldSpec`` a prompt describes, for frames of ``height`` x ``width``."""
    words = [w for w in _SEPARATORS.split(text.lower()) if w]
    objects: list[ObjectSpec] = []
    size: str | None = None
    colour: str | None = None
    found: dict[str, str] = {}
    for word in words:
        if word in FILLER_WORDS:
            continue
        if word in SIZE_FRACTIONS:
            if size is not None or colour is not None:
                raise ValueError(f"in prompt {text!r}: size {word!r} must come before an object colour, once")
            size = word
        elif word in OBJECT_COLOURS:
            if colour is not None:
                raise ValueError(f"in prompt {text!r}: object colour {colour!r} has no shape after it")
            colour = word
        elif word in SHAPES:
            if colour is None:
                raise ValueError(f"in prompt {text!r}: shape {word!r} needs an object colour before it")
            objects.append(ObjectSpec(colour=colour, shape=word, size=size or DEFAULT_SIZE))
            size, colour = None, None
        elif word in BACKGROUND_COLOURS or word in PATTERN_WORDS or word in SPEED_BANDS:
            role = (
                "background"
                if word in BACKGROUND_COLOURS
                else "pattern"
                if word in PATTERN_WORDS
                else "speed"
            )
            if role in found:
                raise ValueError(f"in prompt {text!r}: {role} given twice ({found[role]!r}, {word!r})")
            found[role] = word
        else:
            raise ValueError(
                f"unknown word {word!r} in prompt {text!r}; the vocabulary is {_vocabulary_text()}"
            )
    if size is not None or colour is not None:
        raise ValueError(f"in prompt {text!r}: the last object phrase has no shape")
    if not objects:
        raise ValueError(f"prompt {text!r} names no object; write e.g. 'a red disc'")
    background = BackgroundSpec(
        colour=found.get("background", BackgroundSpec.colour),
        pattern=PATTERN_WORDS[found.get("pattern", "background")],
    )
    return WorldSpec(
        objects=tuple(objects),
        background=background,
        speed=found.get("speed", WorldSpec.speed),
        height=height,
        width=width,
    )


def format_prompt(spec: WorldSpec) -> str:
    """Canonical prompt text of a spec (frame size is not part of a prompt)."""
    pattern_word = {v: k for k, v in PATTERN_WORDS.items()}[spec.background.pattern]
    phrases = []
    for obj in spec.objects:
        size = "" if obj.size == DEFAULT_SIZE else f"{obj.size} "
        phrases.append(f"a {size}{obj.colour} {obj.shape}")
    verb = "bounces" if len(phrases) == 1 else "bounce"
    return f"{' and '.join(phrases)} {verb} on a {spec.background.colour} {pattern_word}, {spec.speed}"


def _generator(rng: np.random.Generator | int) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def sample_spec(
    rng: np.random.Generator | int,
    max_objects: int = MAX_OBJECTS,
    height: int = REFERENCE_SIDE,
    width: int = REFERENCE_SIDE,
) -> WorldSpec:
    """A uniformly random scene: 1..max_objects objects of distinct colours, any background, speed."""
    if not 1 <= max_objects <= MAX_OBJECTS:
        raise ValueError(f"max_objects must be in 1..{MAX_OBJECTS}, got {max_objects}")
    rng = _generator(rng)
    n = int(rng.integers(1, max_objects + 1))
    colours = rng.choice(np.array(list(OBJECT_COLOURS)), size=n, replace=False)
    objects = tuple(
        ObjectSpec(colour=str(c), shape=str(rng.choice(SHAPES)), size=str(rng.choice(list(SIZE_FRACTIONS))))
        for c in colours
    )
    background = BackgroundSpec(
        colour=str(rng.choice(list(BACKGROUND_COLOURS))), pattern=str(rng.choice(PATTERNS))
    )
    speed = str(rng.choice(list(SPEED_BANDS)))
    return WorldSpec(objects=objects, background=background, speed=speed, height=height, width=width)


def sample_prompt(rng: np.random.Generator | int, max_objects: int = MAX_OBJECTS) -> str:
    """A random canonical prompt (see ``sample_spec``)."""
    return format_prompt(sample_spec(rng, max_objects))


def build_world(
    prompt: str, seed: int, height: int = REFERENCE_SIDE, width: int = REFERENCE_SIDE
) -> tuple[WorldSpec, WorldState]:
    """The world a prompt describes, with start positions and velocities drawn from ``seed``."""
    spec = parse_prompt(prompt, height, width)
    return spec, initial_state(spec, seed)


def switch_world(spec: WorldSpec, state: WorldState, prompt: str, seed: int) -> tuple[WorldSpec, WorldState]:
    """Apply a new prompt to a running world (see the module docstring for the rules).

    Per-axis speeds are mapped linearly from the old speed band onto the new one, so an object
    keeps its relative speed and direction. New objects are placed, from ``seed``, where their
    circle (radius = half-extent, as in ``world.initial_state``) overlaps no existing object's.
    """
    check_state(spec, state)
    new = parse_prompt(prompt, spec.height, spec.width)
    existing = {o.colour: o for o in spec.objects}
    added = []
    for obj in new.objects:
        if obj.colour not in existing:
            added.append(obj)
        elif existing[obj.colour] != obj:
            raise ValueError(
                f"prompt {prompt!r} changes the {obj.colour} object from {existing[obj.colour]} to {obj}; "
                "a switch keeps identities, so repeat existing objects unchanged or use a new colour"
            )
    switched = WorldSpec(
        objects=spec.objects + tuple(added),
        background=new.background,
        speed=new.speed,
        height=spec.height,
        width=spec.width,
    )
    old_lo, old_hi = spec.speed_band()
    new_lo, new_hi = switched.speed_band()
    velocities = state.velocities_array()
    unit = (np.abs(velocities) - old_lo) / (old_hi - old_lo)  # position inside the old band, [0, 1]
    velocities = np.sign(velocities) * (new_lo + unit * (new_hi - new_lo))
    positions = state.positions_array()
    if added:
        positions, velocities = _place_new(switched, positions, velocities, seed)
    return switched, WorldState.from_arrays(positions, velocities, frame=state.frame)


def _place_new(
    spec: WorldSpec, positions: np.ndarray, velocities: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Append positions/velocities for the objects of ``spec`` beyond the first ``len(positions)``."""
    rng = np.random.default_rng(seed)
    lo, hi = position_bounds(spec)
    reach = spec.radii()
    band_lo, band_hi = spec.speed_band()
    for k in range(len(positions), len(spec.objects)):
        for _ in range(PLACEMENT_ATTEMPTS):
            candidate = rng.uniform(lo[k], hi[k])
            gaps = np.linalg.norm(positions - candidate, axis=1) - (reach[: len(positions)] + reach[k])
            if np.all(gaps > 0):
                break
        else:
            raise ValueError(f"no free place for new object {spec.objects[k]}; add fewer or smaller objects")
        velocity = rng.choice(np.array([-1.0, 1.0]), size=2) * rng.uniform(band_lo, band_hi, size=2)
        positions = np.concatenate([positions, candidate[None]], axis=0)
        velocities = np.concatenate([velocities, velocity[None]], axis=0)
    return positions, velocities


def sample_switch_prompt(spec: WorldSpec, rng: np.random.Generator | int) -> str:
    """A prompt that keeps every object of ``spec`` and changes one thing a viewer can see.

    One of: a different speed, a different background (colour or pattern), or one more object
    (only while there is room for it). The existing objects are always repeated, so the text a
    model sees still describes every identity that must persist.
    """
    rng = _generator(rng)
    options = ["speed", "background"] + (["object"] if len(spec.objects) < MAX_OBJECTS else [])
    change = str(rng.choice(options))
    objects, background, speed = spec.objects, spec.background, spec.speed
    if change == "speed":
        speed = str(rng.choice([s for s in SPEED_BANDS if s != spec.speed]))
    elif change == "background":
        choices = [
            BackgroundSpec(colour=c, pattern=p)
            for c in BACKGROUND_COLOURS
            for p in PATTERNS
            if BackgroundSpec(colour=c, pattern=p) != spec.background
        ]
        background = choices[int(rng.integers(len(choices)))]
    else:
        free = [c for c in OBJECT_COLOURS if c not in {o.colour for o in spec.objects}]
        objects = objects + (
            ObjectSpec(
                colour=str(rng.choice(free)),
                shape=str(rng.choice(SHAPES)),
                size=str(rng.choice(list(SIZE_FRACTIONS))),
            ),
        )
    return format_prompt(
        WorldSpec(objects=objects, background=background, speed=speed, height=spec.height, width=spec.width)
    )
