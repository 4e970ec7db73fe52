"""Reading a checkpoint file and holding it against a network's shapes before loading it.

Every network of ``memrope.eval.nets`` is built twice: once on the meta device, where building costs
nothing, to list the keys and shapes the checkpoint must provide; then for real, only if the file
matched. A missing, unexpected or mis-shaped key is one line naming the file and the first offenders
(`CheckpointMismatch`, a user error: the file is the user's), never a silent partial load.
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from memrope.errors import UserError

# Keys reported per kind of mismatch; the message stays one line.
REPORTED_KEYS = 4
# BatchNorm's step counter: absent from older checkpoints, unused in evaluation (PyTorch fills it in).
OPTIONAL_SUFFIXES = ("num_batches_tracked",)

StateDict = dict[str, torch.Tensor]


class CheckpointMismatch(UserError, ValueError):
    """A checkpoint whose keys or shapes are not the network's: one line naming the file."""


def read_checkpoint(path: Path) -> dict:
    """A checkpoint file as the object it stores: safetensors, a TorchScript archive (OpenAI CLIP
    ``.pt``), or a pickle read with ``weights_only=True`` (tensors, dicts and numbers only)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(str(path))
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            scripted = any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
        if scripted:
            with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript; the format is OpenAI's
                warnings.simplefilter("ignore", DeprecationWarning)
                return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle holding code, a truncated file, not a checkpoint at all
        raise CheckpointMismatch(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {e})") from None


def tensors_under(obj: object, path: Path, *keys: str) -> StateDict:
    """The state dict inside a checkpoint object: the first of `keys` that holds a dict, else the object."""
    if not isinstance(obj, Mapping):
        raise CheckpointMismatch(f"{path}: expected a state dict, found {type(obj).__name__}")
    for key in keys:
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            obj = inner
            break
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointMismatch(f"{path}: entries that are not tensors: {sorted(map(str, bad))[:REPORTED_KEYS]}")
    return dict(obj)


def strip_prefix(sd: StateDict, prefix: str) -> StateDict:
    """Keys without a leading `prefix` (DataParallel's ``module.``), as the upstream loaders strip it."""
    return {k.removeprefix(prefix): v for k, v in sd.items()}


def expected_shapes(build: Callable[[], nn.Module]) -> dict[str, torch.Size]:
    """The state-dict keys and shapes of the network `build` makes, built on the meta device."""
    with torch.device("meta"):
        model = build()
    return {k: v.shape for k, v in model.state_dict().items()}


def check_against(expected: Mapping[str, torch.Size], sd: Mapping[str, torch.Tensor], path: Path, what: str) -> None:
    """Raise CheckpointMismatch (one line) unless `sd` has exactly the expected keys and shapes."""
    missing = sorted(k for k in expected if k not in sd and not k.endswith(OPTIONAL_SUFFIXES))
    unexpected = sorted(k for k in sd if k not in expected)
    shaped = sorted(
        f"{k} {tuple(sd[k].shape)} (expected {tuple(expected[k])})"
        for k in expected
        if k in sd and tuple(sd[k].shape) != tuple(expected[k])
    )
    problems = [
        f"{label} {items[:REPORTED_KEYS]}" + (f" and {len(items) - REPORTED_KEYS} more" * (len(items) > REPORTED_KEYS))
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", shaped))
        if items
    ]
    if problems:
        raise CheckpointMismatch(f"{path}: not a {what} checkpoint: " + "; ".join(problems))


def load_checked(build: Callable[[], nn.Module], sd: StateDict, path: Path, what: str) -> nn.Module:
    """Validate `sd` against `build()`'s shapes on the meta device, then build and load it (float32, eval)."""
    check_against(expected_shapes(build), sd, path, what)
    model = build()
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=False)
    return model.float().eval().requires_grad_(False)
