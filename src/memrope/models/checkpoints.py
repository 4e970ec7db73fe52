"""Transformer weights of Self-Forcing, LongLive (+ PEFT LoRA) and diffusers-format Wan -> :class:`WanModel`.

One entry point, :func:`load_transformer`, over one module per format (``formats/``): the Self-Forcing /
LongLive training dicts, LongLive's LoRA, diffusers. Files are read in one place
(:mod:`memrope.models.weight_files`); the Wan layout's shapes, size inference and checks are
:mod:`memrope.models.wan_layout`.

Every path builds the model on the meta device, validates *everything* (keys, shapes, model size,
finite values, LoRA completeness and rank) and only then materialises it with
``load_state_dict(assign=True)``: a bad file raises :class:`WeightFileError` naming the file, the format
that was expected and the first offending keys, and nothing is ever half-loaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .formats.diffusers import DIFFUSERS_FORMAT, diffusers_to_original, read_diffusers
from .formats.lora import LORA_FORMAT, merge_lora, parse_lora, read_lora, resolve_lora
from .formats.training_checkpoint import (
    TRAINING_FORMATS,
    normalise_original_keys,
    select_generator,
)
from .lora_linear import LORA_MODES, attach_lora
from .wan import WanModel
from .wan_config import WanConfig, wan_config
from .wan_layout import DEFAULT_SIZE, check_finite, check_size, expected_shapes, infer_config, materialise, size_name
from .weight_files import check_state_dict, read_checkpoint

CHECKPOINT_KINDS = ("self-forcing", "longlive", "diffusers")
FORMATS = {**TRAINING_FORMATS, "diffusers": DIFFUSERS_FORMAT}


def load_transformer(
    kind: str,
    checkpoint: str | Path,
    *,
    lora: str | Path | None = None,
    lora_rank: int | None = None,
    lora_alpha: float | None = None,
    lora_mode: str = "merged",
    use_ema: bool = True,
    size: WanConfig | str | None = DEFAULT_SIZE,
    config_fallback: WanConfig | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> WanModel:
    """Load a Self-Forcing / LongLive (+ LoRA) / diffusers transformer into a :class:`WanModel`.

    ``size`` pins the expected model size (a named config or a ``WanConfig``; a file of another size
    raises naming expected and found shapes); ``size=None`` infers it from the shapes (a named config
    that matches, else ``config_fallback``, e.g. the Wan folder's DiT ``config.json``).

    ``lora_mode``: ``merged`` folds the LoRA into the weights (W + s B A in fp32, cast to ``dtype``);
    ``unmerged`` keeps it as :class:`~memrope.models.lora_linear.LoraLinear` adapters in ``dtype``, computed
    as PEFT computes them (what LongLive and the MemRoPE reference run).
    """
    if lora_mode not in LORA_MODES:
        raise ValueError(f"--lora-mode must be one of {', '.join(LORA_MODES)}, got {lora_mode!r}")
    if kind not in CHECKPOINT_KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; choose one of {CHECKPOINT_KINDS}")
    if lora is not None and kind != "longlive":
        raise ValueError(f"--lora applies to LongLive checkpoints only, not {kind!r}")
    path = Path(checkpoint)
    cfg = wan_config(size) if isinstance(size, str) else size
    fmt = FORMATS[kind]
    if kind == "diffusers":
        state, folder_cfg = read_diffusers(path)
        state, cfg = diffusers_to_original(state, path, folder_cfg or config_fallback, cfg)
    else:
        state = select_generator(read_checkpoint(path, fmt), path, kind, use_ema)
        state = normalise_original_keys(state, str(path), fmt)
        if cfg is not None:
            check_size(state, cfg, str(path), fmt)
        cfg = cfg or infer_config(state, str(path), fmt, config_fallback)
        shapes = expected_shapes(cfg)
        check_state_dict(state, shapes, path, f"{fmt} of size {size_name(cfg)}")
    check_finite(state, path, fmt)
    if lora is not None:
        lora_state, carried, source = read_lora(lora)
        check_finite(lora_state, source, LORA_FORMAT)
        modules = parse_lora(lora_state, source)
        scale = resolve_lora(modules, expected_shapes(cfg), carried, lora_rank, lora_alpha, source)
        if lora_mode == "unmerged":
            return attach_lora(materialise(cfg, state, device, dtype), modules, scale.scale)
        state = merge_lora(state, modules, scale, device, dtype)
    return materialise(cfg, state, device, dtype)
