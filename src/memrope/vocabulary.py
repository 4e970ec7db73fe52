"""The embedded toy model's vocabulary, shown to users and enforced on their prompts.

The default model was trained only on prompts of the toy world (``memrope.world.prompts``); its text
encoder gives any other word a random vector the model never saw, so "a cat walks" would run and
produce a meaningless blob. A prompt for the toy model is therefore checked word by word, and a word
outside the vocabulary is an error that lists the nearest known words. (Word order and grammar are
left to the model, as a real text encoder would.)
"""

from __future__ import annotations

import difflib
import re

from .world.prompts import VOCABULARY

NEAREST = 3  # known words suggested per unknown word
SIMILARITY = 0.5  # difflib ratio below which a known word is no suggestion
_SEPARATORS = re.compile(r"[\s,.]+")  # as the toy text encoder splits words
KNOWN = tuple(dict.fromkeys(word for words in VOCABULARY.values() for word in words))


def vocabulary_text() -> str:
    """Every word the toy model knows, by role, one role per line."""
    width = max(len(role) for role in VOCABULARY)
    return "\n".join(f"{role:<{width}}  {', '.join(words)}" for role, words in VOCABULARY.items())


def unknown_words(prompt: str) -> list[str]:
    words = [w for w in _SEPARATORS.split(prompt.lower()) if w]
    return list(dict.fromkeys(w for w in words if w not in KNOWN))


def check_toy_prompt(prompt: str) -> None:
    """``ValueError`` naming each unknown word of ``prompt`` with its nearest known words."""
    unknown = unknown_words(prompt)
    if not unknown:
        return
    parts = []
    for word in unknown:
        near = difflib.get_close_matches(word, KNOWN, n=NEAREST, cutoff=SIMILARITY)
        parts.append(f"{word!r} (nearest: {', '.join(near)})" if near else f"{word!r} (no near word)")
    raise ValueError(f"the embedded toy model does not know {'; '.join(parts)} in prompt {prompt[:80]!r}: it "
                     f"knows only its toy world's words (`memrope vocabulary` lists them), e.g. \"a red disc and "
                     f"a large blue square bounce on a navy gradient, fast\"; a real model is --model")
