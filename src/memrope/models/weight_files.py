"""Reading weight files safely and failing loudly.

Users hand memrope checkpoints in several layouts (original Wan ``.pth`` pickles, safetensors, diffusers /
transformers folders). Every loader needs the same four guarantees, so they live here once:

- a pickle is never executed: ``.pt``/``.pth`` go through ``torch.load(weights_only=True)``;
- a missing, truncated or foreign file raises :class:`WeightFileError` naming the file and the format that
  was expected, instead of a bare pickle / zip traceback;
- a state dict whose keys or shapes do not match the model raises with the first offending keys, before
  anything is copied into the model (nothing half-loaded);
- training checkpoints (nested dicts with counters) are read with the same safety (``read_checkpoint``);
- large files are memory-mapped where the format allows it, so a 11 GB umT5 checkpoint is not read twice.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors

# How many offending keys an error message lists before summarising the rest as a count.
KEYS_SHOWN_IN_ERRORS = 5

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"


class WeightFileError(ValueError):
    """A weight file is missing, unreadable, or does not hold the layout the caller expects."""


def preview(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:KEYS_SHOWN_IN_ERRORS])
    more = len(keys) - KEYS_SHOWN_IN_ERRORS
    return f"{shown}{f' (+{more} more)' if more > 0 else ''}"


def read_state_dict(path: str | Path, expected_format: str) -> dict[str, torch.Tensor]:
    """Load a flat ``{name: tensor}`` mapping from a ``.safetensors`` or pickle checkpoint on the CPU.

    ``expected_format`` is a short human description ("original Wan2.1 VAE state dict ...") quoted in
    every error so the user learns what the file should have been.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightFileError(f"{path}: no such file (expected {expected_format})")
    if path.suffix == SAFETENSORS_SUFFIX:
        try:
            obj = load_safetensors(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise WeightFileError(
                f"{path}: not a readable safetensors file ({err}); expected {expected_format}"
            ) from err
    else:
        # Zip-format checkpoints (torch >= 1.6) can be memory-mapped; legacy ones cannot.
        mmap = zipfile.is_zipfile(path)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ... per failure
            raise WeightFileError(
                f"{path}: not a loadable PyTorch checkpoint ({type(err).__name__}: {str(err)[:200]}); "
                f"expected {expected_format}. Only weights are read (torch.load weights_only=True)."
            ) from err
    if not isinstance(obj, Mapping):
        raise WeightFileError(
            f"{path}: holds a {type(obj).__name__}, not a state dict; expected {expected_format}"
        )
    non_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if non_tensors or not all(isinstance(k, str) for k in obj):
        raise WeightFileError(
            f"{path}: not a flat state dict of tensors (non-tensor entries: "
            f"{preview(map(str, non_tensors))}); expected {expected_format}"
        )
    if not obj:
        raise WeightFileError(f"{path}: empty state dict; expected {expected_format}")
    return dict(obj)


def read_weight_folder(
    folder: str | Path, stems: tuple[str, ...], expected_format: str
) -> dict[str, torch.Tensor]:
    """Load the weights of a diffusers / transformers model folder.

    ``stems`` are the file stems the library writes (``diffusion_pytorch_model`` for diffusers,
    ``model`` for transformers); a single file or a sharded ``<stem>.safetensors.index.json`` is accepted,
    safetensors preferred over pickles like the libraries themselves do.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightFileError(f"{folder}: no such folder (expected {expected_format})")
    for stem in stems:
        index = folder / f"{stem}{SAFETENSORS_SUFFIX}.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise WeightFileError(
                    f"{index}: not a valid shard index ({err}); expected {expected_format}"
                ) from err
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                state.update(read_state_dict(folder / shard, expected_format))
            return state
        for suffix in (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES):
            candidate = folder / f"{stem}{suffix}"
            if candidate.is_file():
                return read_state_dict(candidate, expected_format)
    wanted = ", ".join(f"{s}.safetensors" for s in stems)
    raise WeightFileError(
        f"{folder}: no weight file found (looked for {wanted}, shards, .bin); expected {expected_format}"
    )


def check_state_dict(
    found: Mapping[str, torch.Tensor],
    expected_shapes: Mapping[str, torch.Size],
    source: str | Path,
    expected_format: str,
) -> None:
    """Raise :class:`WeightFileError` unless ``found`` has exactly the expected keys and shapes.

    Both mappings use the *file's* key names, so the message points at what the user can inspect.
    """
    missing = set(expected_shapes) - set(found)
    unexpected = set(found) - set(expected_shapes)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {preview(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {preview(unexpected)}")
        raise WeightFileError(f"{source}: does not match {expected_format}; " + "; ".join(parts))
    wrong = [
        f"{k} {tuple(found[k].shape)} != {tuple(expected_shapes[k])}"
        for k in sorted(expected_shapes)
        if tuple(found[k].shape) != tuple(expected_shapes[k])
    ]
    if wrong:
        shown = "; ".join(wrong[:KEYS_SHOWN_IN_ERRORS])
        more = len(wrong) - KEYS_SHOWN_IN_ERRORS
        raise WeightFileError(
            f"{source}: {len(wrong)} tensors have the wrong shape for {expected_format} "
            f"(wrong model size?): {shown}{f' (+{more} more)' if more > 0 else ''}"
        )


def read_checkpoint(path: str | Path, expected_format: str) -> Mapping:
    """A training checkpoint's top-level object: a (possibly nested) dict, never an executed pickle.

    ``read_state_dict`` insists on a *flat* dict of tensors; training checkpoints nest state
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


def tensor_dict(obj: Mapping, source: str, expected_format: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise WeightFileError(f"{source}: holds a {type(obj).__name__}, not a state dict; expected {expected_format}")
    bad = [str(k) for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise WeightFileError(
            f"{source}: not a flat state dict of tensors (other entries: {preview(bad)}); expected {expected_format}"
        )
    return dict(obj)
