"""The Wan transformer's parameter layout: expected shapes of a size, size inference, config files, checks,
and materialising a validated state dict into a :class:`WanModel`.

Every checkpoint format converts to this original layout first (``formats/``); everything here works on it.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from types import MappingProxyType

import torch

from ..rope import Rope3D
from .wan import WanModel
from .wan_config import WAN_CONFIGS, WanConfig, wan_config
from .weight_files import KEYS_SHOWN_IN_ERRORS, WeightFileError, check_state_dict, preview

DEFAULT_SIZE = "wan-1.3b"


@functools.lru_cache(maxsize=len(WAN_CONFIGS) + 2)
def expected_shapes(cfg: WanConfig) -> Mapping[str, torch.Size]:
    """Original-layout parameter shapes of a model of this size (built on meta: nothing allocated).

    Cached (read-only): building the 1.3B module tree takes ~0.7 s even on meta, and size inference
    consults every named config.
    """
    with torch.device("meta"):
        model = WanModel(cfg)
    return MappingProxyType({k: v.shape for k, v in model.state_dict().items()})


# --------------------------------------------------------------------------------------------- sizes
def _shape_signature(shapes: Mapping[str, tuple]) -> dict[str, tuple]:
    """The tensors that pin a model size down (all but the head count and text length)."""
    keys = (
        "patch_embedding.weight",
        "text_embedding.0.weight",
        "time_embedding.0.weight",
        "blocks.0.ffn.0.weight",
        "head.head.weight",
    )
    sig = {k: tuple(shapes[k]) for k in keys if k in shapes}
    sig["num_layers"] = (1 + max((int(m[1]) for k in shapes if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1),)
    sig["cross_attn_norm"] = ("blocks.0.norm3.weight" in shapes,)
    return sig


def size_name(cfg: WanConfig) -> str:
    return next((name for name, named in WAN_CONFIGS.items() if named == cfg), "the given config")


def check_size(state: Mapping[str, torch.Tensor], cfg: WanConfig, source: str, fmt: str, why: str = "") -> None:
    """Raise naming expected and found shapes when the file holds a model of another size."""
    found = _shape_signature({k: v.shape for k, v in state.items()})
    expected = _shape_signature(expected_shapes(cfg))
    if any(k not in found for k in expected):
        return  # not even a Wan transformer: the key check names what is missing and unexpected
    diff = [f"{k} {found.get(k)} != {v}" for k, v in expected.items() if found.get(k) != v]
    if diff:
        raise WeightFileError(
            f"{source}: wrong model size{why}: expected {fmt} of size {size_name(cfg)}; "
            f"found (file != expected): {'; '.join(diff[:KEYS_SHOWN_IN_ERRORS])}"
        )


def infer_config(
    state: Mapping[str, torch.Tensor], source: str, fmt: str, fallback: WanConfig | None = None
) -> WanConfig:
    """The size of an original-layout state dict: a named config whose shapes match, else ``fallback``.

    Shapes fix every size field but ``num_heads`` and ``text_len``, so a size no named config covers needs
    its ``config.json`` (``fallback``). With neither, the error compares the file to ``wan-1.3b``.
    """
    found = _shape_signature({k: v.shape for k, v in state.items()})
    matches = [name for name, cfg in WAN_CONFIGS.items() if _shape_signature(expected_shapes(cfg)) == found]
    if len(matches) == 1:
        return WAN_CONFIGS[matches[0]]
    if fallback is not None:
        check_size(state, fallback, source, fmt, " for its config.json")
        return fallback
    default = wan_config(DEFAULT_SIZE)
    check_size(state, default, source, fmt, f" (matches none of {', '.join(WAN_CONFIGS)})")
    check_state_dict(state, expected_shapes(default), source, f"{fmt} of size {DEFAULT_SIZE}")
    raise WeightFileError(f"{source}: matches several named sizes {matches}; pass the size explicitly")


def read_dit_config(path: str | Path) -> WanConfig:
    """A ``WanConfig`` from a DiT ``config.json``: Wan2.1 folder (original) or diffusers transformer."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise WeightFileError(f"{path}: not a readable DiT config.json ({err})") from err
    if "num_attention_heads" in raw:  # diffusers WanTransformer3DModel
        mapped = {
            "dim": raw["num_attention_heads"] * raw["attention_head_dim"],
            "num_heads": raw["num_attention_heads"],
            "num_layers": raw.get("num_layers"),
            "ffn_dim": raw.get("ffn_dim"),
            "freq_dim": raw.get("freq_dim"),
            "text_dim": raw.get("text_dim"),
            "in_dim": raw.get("in_channels"),
            "out_dim": raw.get("out_channels"),
            "patch": tuple(raw["patch_size"]) if "patch_size" in raw else None,
            "eps": raw.get("eps"),
            "cross_attn_norm": raw.get("cross_attn_norm"),
        }
        if raw.get("image_dim") or raw.get("added_kv_proj_dim"):
            raise WeightFileError(f"{path}: an image-conditioned Wan transformer; only text-to-video is supported")
    else:  # original Wan2.1 ``config.json`` (WanModel keyword arguments)
        known = {f.name for f in fields(WanConfig)}
        mapped = {k: (tuple(v) if k == "patch" else v) for k, v in raw.items() if k in known}
        if raw.get("model_type", "t2v") != "t2v":
            raise WeightFileError(f"{path}: model_type {raw['model_type']!r}; only t2v is supported")
    try:
        return WanConfig(**{k: v for k, v in mapped.items() if v is not None})
    except (TypeError, ValueError, KeyError) as err:
        raise WeightFileError(f"{path}: not a valid Wan DiT config ({err})") from err


def _all_finite(t: torch.Tensor) -> bool:
    """NaN / inf anywhere makes the fp32 sum non-finite; only then pay for the elementwise check.

    Summing is one pass with no [numel] bool temporary (about twice as fast as ``isfinite().all()`` on a
    CPU bf16 FFN weight); the elementwise check rules out a false alarm from a finite sum overflowing.
    """
    return bool(torch.isfinite(t.sum(dtype=torch.float32))) or bool(torch.isfinite(t).all())


def check_finite(state: Mapping[str, torch.Tensor], source: str | Path, fmt: str) -> None:
    """Reject integer tensors and NaN / inf weights before anything is loaded (a corrupt export)."""
    not_float = [k for k, v in state.items() if not v.is_floating_point()]
    if not_float:
        raise WeightFileError(f"{source}: non-floating-point tensors {preview(not_float)}; expected {fmt}")
    bad = [k for k, v in state.items() if not _all_finite(v)]
    if bad:
        raise WeightFileError(f"{source}: {len(bad)} tensors hold NaN or inf: {preview(bad)}; expected {fmt}")


def materialise(
    cfg: WanConfig, state: Mapping[str, torch.Tensor], device: torch.device | str, dtype: torch.dtype
) -> WanModel:
    """Build on meta, assign the (already validated) tensors, move; RoPE tables rebuilt in fp32.

    The tables are non-persistent buffers (in no file); ``Module.to(dtype)`` would round them to bf16
    (angles up to 1023 rad lose ~3 significant digits), so they are recreated after the cast.
    """
    with torch.device("meta"):
        model = WanModel(cfg)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    model.rope = Rope3D(cfg.head_dim, cfg.rope_max_positions)  # placeholder so .to() sees no meta tensor
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    model.rope = Rope3D(cfg.head_dim, cfg.rope_max_positions).to(device)
    return model
