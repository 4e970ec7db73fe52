"""LongLive's PEFT LoRA: reading ``lora.pt`` (or a PEFT adapter folder), checking it against the model, merging
(or, unmerged, :mod:`memrope.models.lora_linear`).

LongLive 1.0 ``lora.pt``: ``{"generator_lora": peft_sd, "critic_lora": ..., "step": n}`` where ``peft_sd`` is
PEFT's ``get_peft_model_state_dict`` of the transformer wrapped by ``peft.get_peft_model``, so keys read
``base_model.model.blocks.0.self_attn.q.lora_A.weight`` (NVlabs/LongLive@2462895, v1.0: ``utils/lora_utils.py``
``configure_lora_for_model`` targets every ``nn.Linear`` inside each ``CausalWanAttentionBlock``; ``inference.py``
loads it with ``peft.set_peft_model_state_dict``). A raw ``state_dict()`` keeps the adapter name
(``.lora_A.default.weight``); both are accepted.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..weight_files import (
    KEYS_SHOWN_IN_ERRORS,
    WeightFileError,
    preview,
    read_checkpoint,
    read_weight_folder,
    tensor_dict,
)
from .training_checkpoint import GENERATOR_PREFIX, strip_wrappers

LORA_FORMAT = (
    "a LongLive / PEFT LoRA file (lora.pt: {'generator_lora': {...}} or a bare dict, or a PEFT adapter "
    "folder; keys like base_model.model.blocks.0.self_attn.q.lora_A.weight and .lora_B.weight on every "
    "Linear of every block)"
)
# ``peft.get_peft_model`` wraps the transformer as ``PeftModel.base_model (LoraModel).model``.
PEFT_PREFIX = "base_model.model."
LORA_CONTAINER_KEY = "generator_lora"
# Scalars a LoRA file may carry next to its tensors, and PEFT's adapter folder layout.
LORA_ALPHA_KEYS, LORA_RANK_KEYS = ("lora_alpha", "alpha"), ("r", "rank", "lora_rank")
PEFT_ADAPTER_STEM, PEFT_ADAPTER_CONFIG = "adapter_model", "adapter_config.json"

# LoRA targets inside one block: every nn.Linear of a Wan attention block.
LORA_TARGETS = tuple(f"{a}.{p}" for a in ("self_attn", "cross_attn") for p in "qkvo") + ("ffn.0", "ffn.2")
_LORA_KEY = re.compile(
    r"(?P<module>blocks\.\d+\.(?:(?:self_attn|cross_attn)\.[qkvo]|ffn\.[02]))"
    r"\.lora_(?P<side>[AB])(?:\.(?P<adapter>[A-Za-z0-9_\-]+))?\.weight"
)


@dataclass(frozen=True)
class LoraScale:
    """Resolved LoRA hyper-parameters; PEFT scales ``B A`` by ``alpha / r`` (rsLoRA: ``alpha / sqrt(r)``)."""

    rank: int
    alpha: float
    rslora: bool = False

    def __post_init__(self) -> None:
        if self.rank < 1 or not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ValueError(f"LoRA rank must be >= 1 and alpha > 0, got rank {self.rank}, alpha {self.alpha}")

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


def _scalar(value, source: str, name: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WeightFileError(f"{source}: entry {name!r} is not a number; expected {LORA_FORMAT}")
    return float(value)


def read_lora(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, float], str]:
    """LoRA tensors (PEFT naming), any rank / alpha the file carries, and the name to quote in errors."""
    path = Path(path)
    carried: dict[str, float] = {}
    if path.is_dir():  # PEFT ``save_pretrained`` folder
        state = read_weight_folder(path, (PEFT_ADAPTER_STEM,), LORA_FORMAT)
        config_file = path / PEFT_ADAPTER_CONFIG
    else:
        obj = read_checkpoint(path, LORA_FORMAT)
        for key in (*LORA_ALPHA_KEYS, *LORA_RANK_KEYS):
            if key in obj and not isinstance(obj[key], Mapping):
                carried["alpha" if key in LORA_ALPHA_KEYS else "rank"] = _scalar(obj[key], str(path), key)
        inner = obj.get(LORA_CONTAINER_KEY, obj)
        if not isinstance(inner, Mapping):
            raise WeightFileError(f"{path}: {LORA_CONTAINER_KEY!r} is not a dict; expected {LORA_FORMAT}")
        scalars = set(LORA_ALPHA_KEYS) | set(LORA_RANK_KEYS) if inner is obj else set()
        state = tensor_dict({k: v for k, v in inner.items() if k not in scalars}, str(path), LORA_FORMAT)
        config_file = path.with_name(PEFT_ADAPTER_CONFIG)
    if config_file.is_file():
        try:
            cfg = json.loads(config_file.read_text())
        except json.JSONDecodeError as err:
            raise WeightFileError(f"{config_file}: not valid JSON ({err})") from err
        carried.setdefault("rank", float(cfg.get("r", 0)) or None)
        carried.setdefault("alpha", cfg.get("lora_alpha"))
        carried["rslora"] = float(bool(cfg.get("use_rslora", False)))
        carried = {k: v for k, v in carried.items() if v is not None}
    return state, carried, str(path)


def parse_lora(state: Mapping[str, torch.Tensor], source: str) -> dict[str, dict[str, torch.Tensor]]:
    """``{module: {"A": [r, in], "B": [out, r]}}`` in original module names; every key must parse."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    adapters: set[str] = set()
    unknown = []
    for key, value in state.items():
        name = strip_wrappers(key).removeprefix(PEFT_PREFIX).removeprefix(GENERATOR_PREFIX)
        m = _LORA_KEY.fullmatch(name)
        if m is None:
            unknown.append(key)
            continue
        adapters.add(m["adapter"] or "")
        slot = modules.setdefault(m["module"], {})
        if m["side"] in slot:
            raise WeightFileError(f"{source}: two lora_{m['side']} tensors for {m['module']}; expected {LORA_FORMAT}")
        slot[m["side"]] = value
    if unknown:
        raise WeightFileError(
            f"{source}: {len(unknown)} keys are not LoRA A/B weights of a Wan block Linear: "
            f"{preview(unknown)}; "
            f"expected {LORA_FORMAT}"
        )
    if len(adapters) > 1:
        raise WeightFileError(f"{source}: holds several adapters {sorted(adapters)}; merge one at a time")
    return modules


def resolve_lora(
    modules: Mapping[str, Mapping[str, torch.Tensor]],
    shapes: Mapping[str, torch.Size],
    carried: Mapping[str, float],
    rank: int | None,
    alpha: float | None,
    source: str,
) -> LoraScale:
    """Check the LoRA covers every block Linear with consistent shapes; settle rank and alpha.

    The rank is what the tensors say (a contradicting ``rank`` flag or file entry is an error). Alpha comes
    from the file when it carries one, else the flag, else LongLive's rule ``alpha = rank`` (256 / 256 for
    the released ``lora.pt``); a flag that contradicts the file is an error, never silently preferred.
    """
    n_layers = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("blocks."))
    expected = {f"blocks.{i}.{t}" for i in range(n_layers) for t in LORA_TARGETS}
    missing = sorted(expected - set(modules))
    half = sorted(m for m, s in modules.items() if set(s) != {"A", "B"})
    extra = sorted(set(modules) - expected)
    if missing or half or extra:
        parts = [f"no LoRA for {len(missing)} Linears: {preview(missing)}"] if missing else []
        parts += [f"only one of lora_A / lora_B for {preview(half)}"] if half else []
        parts += [f"LoRA for modules this model lacks: {preview(extra)}"] if extra else []
        raise WeightFileError(f"{source}: " + "; ".join(parts) + f"; expected {LORA_FORMAT}")
    ranks, wrong = set(), []
    for name in sorted(modules):
        a, b = modules[name]["A"], modules[name]["B"]
        out_f, in_f = shapes[f"{name}.weight"]
        ranks.add(a.shape[0])
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != in_f or b.shape[0] != out_f or b.shape[1] != a.shape[0]:
            wrong.append(f"{name} A {tuple(a.shape)} B {tuple(b.shape)} for weight {(out_f, in_f)}")
    if wrong:
        raise WeightFileError(
            f"{source}: {len(wrong)} LoRA pairs do not fit the model (wrong model size?): "
            f"{'; '.join(wrong[:KEYS_SHOWN_IN_ERRORS])}; expected {LORA_FORMAT}"
        )
    if len(ranks) != 1:
        raise WeightFileError(f"{source}: LoRA ranks differ between modules {sorted(ranks)}; expected one rank")
    found = ranks.pop()
    for what, value in (("--lora-rank", rank), ("the file's rank entry", carried.get("rank"))):
        if value is not None and int(value) != found:
            raise WeightFileError(f"{source}: {what} says rank {int(value)} but the LoRA tensors have rank {found}")
    file_alpha = carried.get("alpha")
    if file_alpha is not None and alpha is not None and float(alpha) != file_alpha:
        raise WeightFileError(
            f"{source}: the file carries lora_alpha {file_alpha:g} but --lora-alpha {alpha:g} was given; drop one"
        )
    chosen = file_alpha if file_alpha is not None else alpha if alpha is not None else float(found)
    return LoraScale(rank=found, alpha=float(chosen), rslora=bool(carried.get("rslora", 0.0)))


def merge_lora(
    state: dict[str, torch.Tensor],
    modules: Mapping[str, Mapping[str, torch.Tensor]],
    lora: LoraScale,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """``W + scale * B @ A`` per module, computed in fp32 on ``device`` and cast to ``dtype`` right away.

    Casting module by module keeps the fp32 copy of at most one weight alive (5 GB fewer for 1.3B in bf16).
    Exact in exact arithmetic only: LongLive runs the adapters unmerged in bf16 (PEFT), and a bf16 merged
    weight rounds otherwise (``--lora-mode unmerged``, :mod:`memrope.models.lora_linear`, reproduces PEFT).
    """
    merged = dict(state)
    for name, pair in modules.items():
        key = f"{name}.weight"
        a, b = (pair[s].to(device=device, dtype=torch.float32) for s in ("A", "B"))
        weight = state[key].to(device=device, dtype=torch.float32)
        merged[key] = (weight + lora.scale * (b @ a)).to(dtype)  # [out, r] @ [r, in] -> [out, in]
    return merged
