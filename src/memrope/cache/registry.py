"""Name -> policy lookup, option parsing (strings from the command line or a preset file) and presets.

Unknown names and unknown option keys are errors that list what exists: a typo must never fall
back silently to a default.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .attention_sink import AttentionSink, AttentionSinkConfig
from .deep_forcing import DeepForcing, DeepForcingConfig
from .ema_sink import EMASink, EMASinkConfig
from .full import FullCache, FullConfig
from .infinity_rope import InfinityRoPE, InfinityRoPEConfig
from .lol import LoL, LoLConfig
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
    LoL.name: (LoL, LoLConfig),
    EMASink.name: (EMASink, EMASinkConfig),
}


@dataclass(frozen=True)
class Preset:
    """A named configuration of a policy; ``source`` says where it comes from (its policy's otherwise)."""

    base: str
    options: dict[str, Any]
    source: str = ""


PRESETS: dict[str, Preset] = {
    # The paper's memory ablation, all at the same cache size (12) and sink (3).
    "memrope_no_memory": Preset("memrope", {"memory": "none"}, "MemRoPE paper ablation: sink + FIFO, slot positions"),
    "memrope_long_only": Preset("memrope", {"memory": "long"}, "MemRoPE paper ablation: long memory only"),
    "memrope_short_only": Preset("memrope", {"memory": "short"}, "MemRoPE paper ablation: short memory only"),
    "memrope_both": Preset("memrope", {"memory": "both"}, "MemRoPE paper ablation: both memories (= memrope)"),
    # The reference code's memory behaviour (frames 3-4 dropped, bf16 accumulators).
    "memrope_reference": Preset("memrope", {"faithful": True, "ema_dtype": "cache"},
                                "YoungRaeKimm/MemRoPE@b89bf5b wan/modules/causal_model.py as shipped"),
    # The reference code's adaptive mode (ema_adaptive, off in its configs).
    "memrope_adaptive": Preset("memrope", {"reduction": "spatial", "ema_adaptive": True},
                               "YoungRaeKimm/MemRoPE@b89bf5b wan/modules/causal_model.py ema_adaptive=True"),
    # Prompt-switch alternatives to memrope's keep-sink-and-memories (measured by the switch benchmark).
    "memrope_switch_reset": Preset("memrope", {"switch": "reset"}, "this project: memories reset at a switch"),
    "memrope_switch_keep": Preset("memrope", {"switch": "keep"}, "this project: nothing re-encoded at a switch"),
    # Diagnostic: the sink seen 1000 positions back (as an attention sink at absolute positions sees
    # it late in a video), everything else as memrope.
    "memrope_far_sink": Preset("memrope", {"sink_gap": 1000}, "this project's diagnostic (world benchmark)"),
    "deep_forcing_sink_only": Preset("deep_forcing", {"compression": False, "sink": 14},
                                     "Nizben/Spectral_C@ea9961a DS_inference.sh (--is_ds_only 1, sink 14) "
                                     "wan/modules/causal_model_DS.py"),
    "attention_sink_infinite": Preset("attention_sink", {"rope": "relative"},
                                      "NVlabs/LongLive@2462895 wan/modules/causal_model_infinity.py "
                                      "(use_infinite_attention: sink + window + re-RoPE)"),
    "infinity_rope_paper_flush": Preset("infinity_rope", {"flush_keep": 1},
                                        "infinity-RoPE paper (arXiv 2511.20649): KV Flush keeps the sink + 1 frame"),
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
        preset = PRESETS[name]
        name, opts = preset.base, {**preset.options, **opts}
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
    """Every policy and preset with its paper, the code it follows and its defaults (``memrope policies``)."""
    rows = []
    for name in policy_names():
        policy = make_policy(name)
        preset = PRESETS.get(name)
        rows.append({"name": name, "paper": policy.paper,
                     "source": f"preset of {preset.base}: {preset.source}" if preset else policy.source,
                     "defaults": dataclasses.asdict(policy.config)})
    return rows
