"""diffusers ``WanTransformer3DModel``: its key names, read and converted to the original Wan layout.

Key renames original -> diffusers (huggingface/diffusers@7d56827 ``scripts/convert_wan_to_diffusers.py``,
``TRANSFORMER_KEYS_RENAME_DICT``):
``time_embedding.0/.2`` -> ``condition_embedder.time_embedder.linear_1/linear_2``, ``time_projection.1`` ->
``condition_embedder.time_proj``, ``text_embedding.0/.2`` -> ``condition_embedder.text_embedder.linear_1/2``,
``self_attn``/``cross_attn`` -> ``attn1``/``attn2`` with ``q,k,v,o`` -> ``to_q,to_k,to_v,to_out.0``, ``norm3`` ->
``norm2``, ``ffn.0``/``ffn.2`` -> ``ffn.net.0.proj``/``ffn.net.2``, ``modulation`` -> ``scale_shift_table``,
``head.head`` -> ``proj_out``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ..wan_config import WanConfig
from ..wan_layout import check_size, expected_shapes, infer_config, read_dit_config, size_name
from ..weight_files import WeightFileError, check_state_dict, read_state_dict, read_weight_folder

DIFFUSERS_FORMAT = (
    "a diffusers WanTransformer3DModel (folder with config.json + diffusion_pytorch_model.safetensors or a "
    "shard index, or one .safetensors file; keys like blocks.0.attn1.to_q.weight)"
)

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
    """diffusers ``WanTransformer3DModel`` name of one original-layout parameter (the renames above)."""
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


def read_diffusers(path: Path) -> tuple[dict[str, torch.Tensor], WanConfig | None]:
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


def diffusers_to_original(
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
