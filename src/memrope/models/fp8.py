"""FP8 matmuls for the fused path, through torchao (optional: ``pip install 'memrope[fp8]'``).

Self-Forcing's demo offers FP8 (``guandeh17/Self-Forcing@33593df demo.py``: torchao's
``Float8DynamicActivationFloat8WeightConfig(granularity=PerTensor())`` on every Linear of the
transformer) and LongLive reports 24.8 FPS with FP8 against 20.7 in bf16 on an H100; other projects
found FP8 with ``torch.compile`` slower than bf16 there. memrope makes it an option to measure:

- ``dynamic``: the weights and, per call, the activations in float8 (e4m3), one scale per tensor
  as in Self-Forcing's demo; the matmul runs in FP8 (CUDA compute capability >= 8.9: Ada, Hopper);
- ``weight``: float8 weights only, dequantised for a high-precision matmul: runs anywhere (the CPU
  included), so it is what the CPU tests exercise; it saves no time.

What is quantised: the six matmuls a pass runs per block (fused q/k/v, self-attention output,
cross-attention query and output, both feed-forward layers) in the fused path's bound parameters
(:class:`~memrope.models.wan_fused.FusedParams`), as torchao tensor subclasses that
``F.linear`` dispatches on. Kept in the model dtype: the patch embedding and the head (small,
first and last), norms, biases, the modulation, and the text key/value projections (once per
prompt, not part of a pass). The module weights stay as they are (the module path and the text
projections use them), so FP8 here is about speed, not memory.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn

from .wan_fused import FusedBlock, FusedParams

FP8_MODES = ("dynamic", "weight")
MATMUL_WEIGHTS = ("w_qkv", "w_o", "w_cq", "w_co", "w_ffn1", "w_ffn2")  # FusedBlock fields quantised
FP8_MIN_CAPABILITY = (8, 9)  # float8 tensor cores: Ada (8.9) and Hopper (9.0) and later
# torchao's import logs a warning per CUDA extension it cannot load on a machine without them, and torch
# one per enum torchao registers: a user error must stay one line, so they are quiet while it loads
_IMPORT_LOGGERS = ("torchao", "torch.utils._pytree")


@contextlib.contextmanager
def _quiet_import() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _IMPORT_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def check_fp8(mode: str, device: torch.device) -> None:
    """Raise ValueError with what to change when ``mode`` cannot run on ``device``."""
    if mode not in FP8_MODES:
        raise ValueError(f"--fp8 must be one of {', '.join(FP8_MODES)}, got {mode!r}")
    try:
        with _quiet_import():
            import torchao  # noqa: F401
    except ImportError:
        raise ValueError("--fp8 needs torchao: pip install 'memrope[fp8]'") from None
    if mode == "dynamic":
        capable = device.type == "cuda" and torch.cuda.get_device_capability(device) >= FP8_MIN_CAPABILITY
        if not capable:
            where = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
            raise ValueError(f"--fp8 dynamic needs a CUDA GPU with compute capability >= "
                             f"{'.'.join(map(str, FP8_MIN_CAPABILITY))} (Ada, Hopper), not {where}; "
                             f"use --fp8 weight (float8 weights only) or leave --fp8 off")


def _config(mode: str):
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Float8WeightOnlyConfig, PerTensor

    if mode == "dynamic":
        return Float8DynamicActivationFloat8WeightConfig(granularity=PerTensor())
    return Float8WeightOnlyConfig()


def quantize_weight(weight: torch.Tensor, config) -> torch.Tensor:
    """One [out, in] weight as torchao's float8 tensor, through a Linear (torchao quantises modules)."""
    from torchao.quantization import quantize_

    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    linear.weight = nn.Parameter(weight.detach(), requires_grad=False)
    quantize_(linear, config)
    return linear.weight


def quantize_fused(fp: FusedParams, mode: str, device: torch.device) -> FusedParams:
    """A copy of ``fp`` whose per-block matmul weights are float8 (``mode``: see module doc)."""
    check_fp8(mode, device)
    config = _config(mode)

    def block(p: FusedBlock) -> FusedBlock:
        return p._replace(**{name: quantize_weight(getattr(p, name), config) for name in MATMUL_WEIGHTS})

    return fp._replace(blocks=tuple(block(p) for p in fp.blocks))
