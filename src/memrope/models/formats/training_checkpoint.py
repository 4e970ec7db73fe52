"""Self-Forcing and LongLive training checkpoints: where the generator sits and how its keys are wrapped.

- Self-Forcing ``self_forcing_dmd.pt``: ``{"generator": sd, "generator_ema": sd, "critic": sd}``; the
  generator is a ``WanDiffusionWrapper`` so keys read ``model.blocks.0.self_attn.q.weight``; FSDP-saved
  derivatives insert ``_fsdp_wrapped_module.`` (activation checkpointing ``_checkpoint_wrapped_module.``,
  ``torch.compile`` ``_orig_mod.``). The EMA generator is the released model (guandeh17/Self-Forcing@33593df
  ``inference.py``: ``generator_ema`` with ``--use_ema``).
- LongLive 1.0 ``longlive_base.pt``: ``{"generator": sd, ...}`` or a bare state dict, same key layout
  (NVlabs/LongLive@2462895, v1.0, ``inference.py``: ``generator_ema`` / ``generator``, else ``model``).

What this module knows is the layout of those dicts; reading the file is :mod:`memrope.models.weight_files`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ..weight_files import WeightFileError, preview, tensor_dict

SELF_FORCING_FORMAT = (
    "a Self-Forcing checkpoint (self_forcing_dmd.pt: a dict with generator_ema / generator / critic state "
    "dicts; keys like model.blocks.0.self_attn.q.weight)"
)
LONGLIVE_FORMAT = (
    "a LongLive base checkpoint (longlive_base.pt: a dict with a generator state dict, or a bare state dict; "
    "keys like model.blocks.0.self_attn.q.weight)"
)
# Name segments inserted by training wrappers: FSDP, activation checkpointing, torch.compile.
WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
# Self-Forcing / LongLive save the ``WanDiffusionWrapper``, which holds the transformer as ``.model``.
GENERATOR_PREFIX = "model."
# Which entry of a training checkpoint holds the generator, by kind (first present wins).
SELF_FORCING_EMA_KEY, SELF_FORCING_KEY = "generator_ema", "generator"
LONGLIVE_KEYS = ("generator", "model")  # LongLive's trainer accepts both
# Keys some Wan forks register as buffers; the RoPE table is recomputed from the config here.
IGNORED_KEYS = frozenset({"freqs"})
TRAINING_FORMATS = {"self-forcing": SELF_FORCING_FORMAT, "longlive": LONGLIVE_FORMAT}


def strip_wrappers(key: str) -> str:
    """``key`` without the segments training wrappers insert (FSDP, checkpointing, compile)."""
    for segment in WRAPPER_SEGMENTS:
        key = key.replace(segment, "")
    return key


def select_generator(obj: Mapping, path: Path, kind: str, use_ema: bool) -> dict[str, torch.Tensor]:
    """The generator's state dict inside a training checkpoint (or the checkpoint itself when bare)."""
    fmt = TRAINING_FORMATS[kind]
    if kind == "self-forcing":
        wanted = SELF_FORCING_EMA_KEY if use_ema else SELF_FORCING_KEY
        if wanted in obj:
            return tensor_dict(obj[wanted], f"{path}[{wanted!r}]", fmt)
        other = SELF_FORCING_KEY if use_ema else SELF_FORCING_EMA_KEY
        if other in obj:
            hint = "pass --no-ema to load `generator`" if use_ema else "drop --no-ema to load `generator_ema`"
            raise WeightFileError(f"{path}: has no {wanted!r} entry (found {preview(map(str, obj))}); {hint}")
    else:
        for key in LONGLIVE_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                return tensor_dict(obj[key], f"{path}[{key!r}]", fmt)
    return tensor_dict(obj, str(path), fmt)  # bare state dict


def normalise_original_keys(state: Mapping[str, torch.Tensor], source: str, fmt: str) -> dict[str, torch.Tensor]:
    """Strip wrapper segments and the wrapper's ``model.`` prefix; drop recomputed buffers."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = strip_wrappers(key).removeprefix(GENERATOR_PREFIX)
        if name in IGNORED_KEYS:
            continue
        if name in out:
            raise WeightFileError(f"{source}: two entries map to {name!r} after prefix stripping; expected {fmt}")
        out[name] = value
    return out
