"""Transformer weights of Self-Forcing, LongLive (+ PEFT LoRA) and diffusers-format Wan -> :class:`WanModel`.

Users arrive with one of these, all Wan2.1-T2V-1.3B underneath:

- Self-Forcing ``self_forcing_dmd.pt``: ``{"generator": sd, "generator_ema": sd, "critic": sd}``; the
  generator is a ``WanDiffusionWrapper`` so keys read ``model.blocks.0.self_attn.q.weight``; FSDP-saved
  derivatives insert ``_fsdp_wrapped_module.`` (activation checkpointing ``_checkpoint_wrapped_module.``,
  ``torch.compile`` ``_orig_mod.``). The EMA generator is the released model.
- LongLive 1.0 ``longlive_base.pt`` (``{"generator": sd, ...}`` or a bare state dict) plus ``lora.pt``:
  ``{"generator_lora": peft_sd, "critic_lora": ..., "step": n}`` where ``peft_sd`` is PEFT's
  ``get_peft_model_state_dict`` of the transformer wrapped by ``peft.get_peft_model``, so keys read
  ``base_model.model.blocks.0.self_attn.q.lora_A.weight`` (``NVlabs/LongLive`` ``trainer/distillation.py``:
  ``_configure_lora_for_model`` targets every ``nn.Linear`` inside each ``CausalWanAttentionBlock``,
  ``_gather_lora_state_dict`` saves; ``single_prompt_inference.py`` loads with ``set_peft_model_state_dict``).
  A raw ``state_dict()`` keeps the adapter name (``.lora_A.default.weight``); both are accepted.
- a diffusers ``WanTransformer3DModel`` (folder or one ``.safetensors``): renamed keys (REFERENCE.md 2),
  converted back to the original layout here.

Every path builds the model on the meta device, validates *everything* (keys, shapes, model size,
finite values, LoRA completeness and rank) and only then materialises it with
``load_state_dict(assign=True)``: a bad file raises :class:`WeightFileError` naming the file, the format
that was expected and the first offending keys, and nothing is ever half-loaded.
"""

from __future__ import annotations

import functools
import json
import math
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType

import torch

from .rope import Rope3D
from .wan import WanModel
from .wan_config import WAN_CONFIGS, WanConfig, wan_config
from .weight_files import (
    KEYS_SHOWN_IN_ERRORS,
    SAFETENSORS_SUFFIX,
    WeightFileError,
    check_state_dict,
    read_state_dict,
    read_weight_folder,
)

CHECKPOINT_KINDS = ("self-forcing", "longlive", "diffusers")
DEFAULT_SIZE = "wan-1.3b"

SELF_FORCING_FORMAT = (
    "a Self-Forcing checkpoint (self_forcing_dmd.pt: a dict with generator_ema / generator / critic state "
    "dicts; keys like model.blocks.0.self_attn.q.weight)"
)
LONGLIVE_FORMAT = (
    "a LongLive base checkpoint (longlive_base.pt: a dict with a generator state dict, or a bare state dict; "
    "keys like model.blocks.0.self_attn.q.weight)"
)
LORA_FORMAT = (
    "a LongLive / PEFT LoRA file (lora.pt: {'generator_lora': {...}} or a bare dict, or a PEFT adapter "
    "folder; keys like base_model.model.blocks.0.self_attn.q.lora_A.weight and .lora_B.weight on every "
    "Linear of every block)"
)
DIFFUSERS_FORMAT = (
    "a diffusers WanTransformer3DModel (folder with config.json + diffusion_pytorch_model.safetensors or a "
    "shard index, or one .safetensors file; keys like blocks.0.attn1.to_q.weight)"
)
FORMATS = {"self-forcing": SELF_FORCING_FORMAT, "longlive": LONGLIVE_FORMAT, "diffusers": DIFFUSERS_FORMAT}

# Name segments inserted by training wrappers: FSDP, activation checkpointing, torch.compile.
WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
# Self-Forcing / LongLive save the ``WanDiffusionWrapper``, which holds the transformer as ``.model``.
GENERATOR_PREFIX = "model."
# ``peft.get_peft_model`` wraps the transformer as ``PeftModel.base_model (LoraModel).model``.
PEFT_PREFIX = "base_model.model."
# Which entry of a training checkpoint holds the generator, by kind (first present wins).
SELF_FORCING_EMA_KEY, SELF_FORCING_KEY = "generator_ema", "generator"
LONGLIVE_KEYS = ("generator", "model")  # LongLive's trainer accepts both
LORA_CONTAINER_KEY = "generator_lora"
# Keys some Wan forks register as buffers; the RoPE table is recomputed from the config here.
IGNORED_KEYS = frozenset({"freqs"})
# Scalars a LoRA file may carry next to its tensors, and PEFT's adapter folder layout.
LORA_ALPHA_KEYS, LORA_RANK_KEYS = ("lora_alpha", "alpha"), ("r", "rank", "lora_rank")
PEFT_ADAPTER_STEM, PEFT_ADAPTER_CONFIG = "adapter_model", "adapter_config.json"

# LoRA targets inside one block: every nn.Linear of a Wan attention block.
LORA_TARGETS = tuple(f"{a}.{p}" for a in ("self_attn", "cross_attn") for p in "qkvo") + ("ffn.0", "ffn.2")
_LORA_KEY = re.compile(
    r"(?P<module>blocks\.\d+\.(?:(?:self_attn|cross_attn)\.[qkvo]|ffn\.[02]))"
    r"\.lora_(?P<side>[AB])(?:\.(?P<adapter>[A-Za-z0-9_\-]+))?\.weight"
)


# --------------------------------------------------------------------------------------------- reading
def _preview(items) -> str:
    items = sorted(items)
    more = len(items) - KEYS_SHOWN_IN_ERRORS
    return ", ".join(items[:KEYS_SHOWN_IN_ERRORS]) + (f" (+{more} more)" if more > 0 else "")


def read_checkpoint(path: str | Path, expected_format: str) -> Mapping:
    """A training checkpoint's top-level object: a (possibly nested) dict, never an executed pickle.

    ``weight_files.read_state_dict`` insists on a *flat* dict of tensors; training checkpoints nest state
    dicts and carry ints (``step``), which ``torch.load(weights_only=True)`` reads safely too.
    """
    path = Path(path)
    if path.is_dir():
        raise WeightFileError(f"{path}: is a folder, expected a file: {expected_format}")
    if path.suffix == SAFETENSORS_SUFFIX or not path.is_file():
        return read_state_dict(path, expected_format)  # flat by construction; also the missing-file error
    try:  # zip-format checkpoints (torch >= 1.6) are memory-mapped: a 1.3B fp32 dict is not read twice
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as err:  # UnpicklingError, RuntimeError, EOFError, ... depending on the damage
        raise WeightFileError(
            f"{path}: not a loadable PyTorch checkpoint ({type(err).__name__}: {str(err)[:200]}); "
            f"expected {expected_format}. Only weights are read (torch.load weights_only=True)."
        ) from err
    if not isinstance(obj, Mapping):
        raise WeightFileError(f"{path}: holds a {type(obj).__name__}, not a dict; expected {expected_format}")
    if not obj:
        raise WeightFileError(f"{path}: holds an empty dict; expected {expected_format}")
    return obj


def _tensor_dict(obj: Mapping, source: str, expected_format: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise WeightFileError(f"{source}: holds a {type(obj).__name__}, not a state dict; expected {expected_format}")
    bad = [str(k) for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise WeightFileError(
            f"{source}: not a flat state dict of tensors (other entries: {_preview(bad)}); expected {expected_format}"
        )
    return dict(obj)


def select_generator(obj: Mapping, path: Path, kind: str, use_ema: bool) -> dict[str, torch.Tensor]:
    """The generator's state dict inside a training checkpoint (or the checkpoint itself when bare)."""
    fmt = FORMATS[kind]
    if kind == "self-forcing":
        wanted = SELF_FORCING_EMA_KEY if use_ema else SELF_FORCING_KEY
        if wanted in obj:
            return _tensor_dict(obj[wanted], f"{path}[{wanted!r}]", fmt)
        other = SELF_FORCING_KEY if use_ema else SELF_FORCING_EMA_KEY
        if other in obj:
            hint = "pass --no-ema to load `generator`" if use_ema else "drop --no-ema to load `generator_ema`"
            raise WeightFileError(f"{path}: has no {wanted!r} entry (found {_preview(map(str, obj))}); {hint}")
    else:
        for key in LONGLIVE_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                return _tensor_dict(obj[key], f"{path}[{key!r}]", fmt)
    return _tensor_dict(obj, str(path), fmt)  # bare state dict


def normalise_original_keys(state: Mapping[str, torch.Tensor], source: str, fmt: str) -> dict[str, torch.Tensor]:
    """Strip wrapper segments and the wrapper's ``model.`` prefix; drop recomputed buffers."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key
        for segment in WRAPPER_SEGMENTS:
            name = name.replace(segment, "")
        name = name.removeprefix(GENERATOR_PREFIX)
        if name in IGNORED_KEYS:
            continue
        if name in out:
            raise WeightFileError(f"{source}: two entries map to {name!r} after prefix stripping; expected {fmt}")
        out[name] = value
    return out


# --------------------------------------------------------------------------------------------- layouts
_DIFFUSERS_TOP = {
    "time_embedding.0.": "condition_embedder.time_embedder.linear_1.",
    "time_embedding.2.": "condition_embedder.time_embedder.linear_2.",
    "time_projection.1.": "condition_embedder.time_proj.",
    "text_embedding.0.": "condition_embedder.text_embedder.linear_1.",
    "text_embedding.2.": "condition_embedder.text_embedder.linear_2.",
    "head.head.": "proj_out.",
    "head.modulation": "scale_shift_table",
    "patch_embedding.": "patch_embedding.",
}
_DIFFUSERS_BLOCK = {
    "self_attn.": "attn1.",
    "cross_attn.": "attn2.",
    "norm3.": "norm2.",
    "ffn.0.": "ffn.net.0.proj.",
    "ffn.2.": "ffn.net.2.",
    "modulation": "scale_shift_table",
}
_DIFFUSERS_ATTN = {
    "q.": "to_q.",
    "k.": "to_k.",
    "v.": "to_v.",
    "o.": "to_out.0.",
    "norm_q.": "norm_q.",
    "norm_k.": "norm_k.",
}


def _rename_prefix(name: str, table: Mapping[str, str]) -> str | None:
    for old, new in table.items():
        if name.startswith(old):
            return new + name[len(old) :]
    return None


def diffusers_key(original: str) -> str:
    """diffusers ``WanTransformer3DModel`` name of one original-layout parameter (REFERENCE.md 2)."""
    if (m := re.fullmatch(r"blocks\.(\d+)\.(.+)", original)) is None:
        if (renamed := _rename_prefix(original, _DIFFUSERS_TOP)) is not None:
            return renamed
        raise KeyError(original)
    index, rest = m[1], m[2]
    if rest.startswith(("self_attn.", "cross_attn.")):
        attn, _, param = rest.partition(".")
        inner = _rename_prefix(param, _DIFFUSERS_ATTN)
        if inner is None:
            raise KeyError(original)
        return f"blocks.{index}.{_DIFFUSERS_BLOCK[attn + '.']}{inner}"
    if (renamed := _rename_prefix(rest, _DIFFUSERS_BLOCK)) is not None:
        return f"blocks.{index}.{renamed}"
    raise KeyError(original)


def original_key(diffusers: str) -> str:
    """Inverse of :func:`diffusers_key`; ``KeyError`` for a name the original layout does not have."""
    if (m := re.fullmatch(r"blocks\.(\d+)\.(.+)", diffusers)) is None:
        if diffusers == _DIFFUSERS_TOP["head.modulation"]:
            return "head.modulation"
        for old, new in _DIFFUSERS_TOP.items():
            if new.endswith(".") and diffusers.startswith(new):
                return old + diffusers[len(new) :]
        raise KeyError(diffusers)
    index, rest = m[1], m[2]
    for attn in ("self_attn.", "cross_attn."):
        new_attn = _DIFFUSERS_BLOCK[attn]
        if rest.startswith(new_attn):
            param = rest[len(new_attn) :]
            for old, new in _DIFFUSERS_ATTN.items():
                if param.startswith(new):
                    return f"blocks.{index}.{attn}{old}{param[len(new) :]}"
            raise KeyError(diffusers)
    for old, new in _DIFFUSERS_BLOCK.items():
        if old not in ("self_attn.", "cross_attn.") and (rest == new or (new.endswith(".") and rest.startswith(new))):
            return f"blocks.{index}.{old}{rest[len(new) :]}"
    raise KeyError(diffusers)


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


# --------------------------------------------------------------------------------------------- checks
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
        raise WeightFileError(f"{source}: non-floating-point tensors {_preview(not_float)}; expected {fmt}")
    bad = [k for k, v in state.items() if not _all_finite(v)]
    if bad:
        raise WeightFileError(f"{source}: {len(bad)} tensors hold NaN or inf: {_preview(bad)}; expected {fmt}")


# --------------------------------------------------------------------------------------------- LoRA
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
        state = _tensor_dict({k: v for k, v in inner.items() if k not in scalars}, str(path), LORA_FORMAT)
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
        name = key
        for segment in WRAPPER_SEGMENTS:
            name = name.replace(segment, "")
        name = name.removeprefix(PEFT_PREFIX).removeprefix(GENERATOR_PREFIX)
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
            f"{_preview(unknown)}; "
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
        parts = [f"no LoRA for {len(missing)} Linears: {_preview(missing)}"] if missing else []
        parts += [f"only one of lora_A / lora_B for {_preview(half)}"] if half else []
        parts += [f"LoRA for modules this model lacks: {_preview(extra)}"] if extra else []
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
    """
    merged = dict(state)
    for name, pair in modules.items():
        key = f"{name}.weight"
        a, b = (pair[s].to(device=device, dtype=torch.float32) for s in ("A", "B"))
        weight = state[key].to(device=device, dtype=torch.float32)
        merged[key] = (weight + lora.scale * (b @ a)).to(dtype)  # [out, r] @ [r, in] -> [out, in]
    return merged


# --------------------------------------------------------------------------------------------- loading
def _read_diffusers(path: Path) -> tuple[dict[str, torch.Tensor], WanConfig | None]:
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise WeightFileError(f"{config_file}: no such file (expected {DIFFUSERS_FORMAT})")
        raw_class = json.loads(config_file.read_text()).get("_class_name", "WanTransformer3DModel")
        if raw_class != "WanTransformer3DModel":
            raise WeightFileError(f"{config_file}: describes {raw_class}, expected WanTransformer3DModel")
        state = read_weight_folder(path, ("diffusion_pytorch_model",), DIFFUSERS_FORMAT)
        return state, read_dit_config(config_file)
    return read_state_dict(path, DIFFUSERS_FORMAT), None


def _diffusers_to_original(
    state: Mapping[str, torch.Tensor], source: Path, fallback: WanConfig | None, size: WanConfig | None
) -> tuple[dict, WanConfig]:
    """Rename a diffusers state dict into the original layout after checking it in *its own* names."""
    renamed = {}
    for key, value in state.items():  # only to read the size off the shapes; the check below is exact
        try:
            renamed[original_key(key)] = value
        except KeyError:
            pass
    if size is not None:
        check_size(renamed, size, str(source), DIFFUSERS_FORMAT)
    cfg = size or infer_config(renamed, str(source), DIFFUSERS_FORMAT, fallback)
    shapes = expected_shapes(cfg)
    to_file = {k: diffusers_key(k) for k in shapes}
    check_state_dict(
        state,
        {to_file[k]: s for k, s in shapes.items()},
        source,
        f"{DIFFUSERS_FORMAT} of size {size_name(cfg)}",
    )
    return {k: state[f] for k, f in to_file.items()}, cfg


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


def load_transformer(
    kind: str,
    checkpoint: str | Path,
    *,
    lora: str | Path | None = None,
    lora_rank: int | None = None,
    lora_alpha: float | None = None,
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
    """
    if kind not in CHECKPOINT_KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; choose one of {CHECKPOINT_KINDS}")
    if lora is not None and kind != "longlive":
        raise ValueError(f"--lora applies to LongLive checkpoints only, not {kind!r}")
    path = Path(checkpoint)
    cfg = wan_config(size) if isinstance(size, str) else size
    fmt = FORMATS[kind]
    if kind == "diffusers":
        state, folder_cfg = _read_diffusers(path)
        state, cfg = _diffusers_to_original(state, path, folder_cfg or config_fallback, cfg)
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
        state = merge_lora(state, modules, scale, device, dtype)
    return materialise(cfg, state, device, dtype)
