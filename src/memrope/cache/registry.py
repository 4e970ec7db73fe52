"""Name -> policy lookup, option parsing (strings from the command line or a preset file) and presets.

Unknown names and unknown option keys are errors that list what exists: a typo must never fall
back silently to a default.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

from .attention_sink import AttentionSink, AttentionSinkConfig
from .deep_forcing import DeepForcing, DeepForcingConfig
from .full import FullCache, FullConfig
from .infinity_rope import InfinityRoPE, InfinityRoPEConfig
from .memrope import MemRoPE, MemRoPEConfig
from .policy import CachePolicy
from .sliding_window import SlidingWindow, SlidingWindowConfig

POLICIES: dict[str, tuple[type[CachePolicy], type]] = {
    FullCache.name: (FullCache, FullConfig),
    SlidingWindow.name: (SlidingWindow, SlidingWindowConfig),
    AttentionSink.name: (AttentionSink, AttentionSinkConfig),
    MemRoPE.name: (MemRoPE, MemRoPEConfig),
    DeepForcing.name: (DeepForcing, DeepForcingConfig),
    InfinityRoPE.name: (InfinityRoPE, InfinityRoPEConfig),
}

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    # The paper's memory ablation, all at the same cache size (12) and sink (3).
    "memrope_no_memory": ("memrope", {"memory": "none"}),
    "memrope_long_only": ("memrope", {"memory": "long"}),
    "memrope_short_only": ("memrope", {"memory": "short"}),
    "memrope_both": ("memrope", {"memory": "both"}),
    # Reproduces the reference code's memory behaviour (frames 3-4 dropped, bf16 accumulators).
    "memrope_reference": ("memrope", {"faithful": True, "ema_dtype": "cache"}),
    # Diagnostic: the sink seen 1000 positions back (as an attention sink at absolute positions sees
    # it late in a video), everything else as memrope.
    "memrope_far_sink": ("memrope", {"sink_gap": 1000}),
}


def policy_names() -> list[str]:
    return sorted(POLICIES) + sorted(PRESETS)


def _convert(name: str, field: dataclasses.Field, value: Any, policy: str) -> Any:
    kind = typing.get_type_hints(POLICIES[policy][1])[name]
    if not isinstance(value, str):
        return value
    try:
        if kind is bool:
            lowered = value.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return lowered in ("true", "1", "yes")
        return kind(value)
    except ValueError:
        raise ValueError(f"{policy}: option {name}={value!r} is not a valid {kind.__name__}") from None


def make_policy(name: str, options: Mapping[str, Any] | None = None) -> CachePolicy:
    """Build a policy by name (or preset) with options; values may be strings (parsed by type)."""
    opts = dict(options or {})
    if name in PRESETS:
        base, preset_opts = PRESETS[name]
        name, opts = base, {**preset_opts, **opts}
    if name not in POLICIES:
        raise ValueError(f"unknown cache policy {name!r}; choose one of: {', '.join(policy_names())}")
    cls, config_cls = POLICIES[name]
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(opts) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields)) or "(none)"
        raise ValueError(f"{name}: unknown option(s) {', '.join(unknown)}; known options: {known}")
    values = {k: _convert(k, fields[k], v, name) for k, v in opts.items()}
    return cls(config_cls(**values))


def parse_options(pairs: list[str]) -> dict[str, str]:
    """``["window=21", "sink=3"]`` -> ``{"window": "21", "sink": "3"}``."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"policy option {pair!r} must look like key=value")
        out[key.strip()] = value.strip()
    return out


def describe_policies() -> list[dict[str, Any]]:
    """Every policy and preset with its paper and defaults (for ``memrope policies``)."""
    rows = []
    for name in policy_names():
        policy = make_policy(name)
        rows.append({"name": name, "paper": policy.paper, "defaults": dataclasses.asdict(policy.config)})
    return rows
