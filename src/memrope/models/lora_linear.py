"""An unmerged LoRA adapter on a Wan Linear, computed as PEFT computes it.

LongLive and the MemRoPE reference wrap the transformer with ``peft.get_peft_model`` and run it in bf16
(NVlabs/LongLive@2462895 ``utils/lora_utils.py``, YoungRaeKimm/MemRoPE@b89bf5b ``inference.py``:
``pipeline.to(dtype=torch.bfloat16)`` casts the adapters too). PEFT's ``lora.Linear.forward`` (peft
``tuners/lora/layer.py``) is

    result = base_layer(x)                                    # x W^T + b, rounded to the run dtype
    result = result + lora_B(lora_A(dropout(x))) * scaling    # (x A^T) B^T, each product rounded

with ``dropout`` the identity at inference and ``scaling = alpha / r``. :class:`LoraLinear` does exactly
those operations in that order, so in bf16 it gives PEFT's values bit for bit (tested against PEFT). A
merged weight ``W + s B A`` (``formats/lora.merge_lora``, fp32 then cast) equals it only in exact
arithmetic: in bf16 the two round differently (the README gives the measured difference).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

LORA_MODES = ("merged", "unmerged")
"""``merged``: W + s B A folded into the weights once (fp32, then the run dtype): fastest. ``unmerged``:
:class:`LoraLinear`, PEFT's arithmetic in the run dtype: the reference pipelines' values."""


class LoraLinear(nn.Linear):
    """``nn.Linear`` (the base weight and bias, shared with the module it replaces) plus ``lora_A`` [r, in]
    and ``lora_B`` [out, r] scaled by ``scale``, unmerged."""

    def __init__(self, base: nn.Linear, a: torch.Tensor, b: torch.Tensor, scale: float):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        if a.shape != (a.shape[0], base.in_features) or b.shape != (base.out_features, a.shape[0]):
            raise ValueError(f"LoRA A {tuple(a.shape)} / B {tuple(b.shape)} do not fit a Linear "
                             f"{base.in_features} -> {base.out_features}")
        self.weight, self.bias = base.weight, base.bias
        self.lora_A = nn.Parameter(a, requires_grad=False)
        self.lora_B = nn.Parameter(b, requires_grad=False)
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = F.linear(x, self.weight, self.bias)
        x = x if x.dtype == self.lora_A.dtype else x.to(self.lora_A.dtype)  # PEFT's _cast_input_dtype
        return (result + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale).to(result.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.lora_A.shape[0]}, scale={self.scale:g}"


def attach_lora(model: nn.Module, modules: Mapping[str, Mapping[str, torch.Tensor]], scale: float) -> nn.Module:
    """Replace each named Linear (``blocks.0.self_attn.q``, ...) of ``model`` by a :class:`LoraLinear`
    holding its ``{"A", "B"}`` pair, cast to the Linear's own device and dtype (the run dtype, as the
    reference's ``pipeline.to(bfloat16)`` does). Returns ``model``, changed in place."""
    for name, pair in modules.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        if type(base) is not nn.Linear:
            raise TypeError(f"{name} is a {type(base).__name__}, not a plain Linear: cannot attach a LoRA")
        like = dict(device=base.weight.device, dtype=base.weight.dtype)
        setattr(parent, child, LoraLinear(base, pair["A"].to(**like), pair["B"].to(**like), scale))
    return model
