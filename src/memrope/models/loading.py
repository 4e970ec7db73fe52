"""Options -> a loaded :class:`~memrope.models.bundle.ModelBundle`: the embedded default or a real Wan2.1 model.

The one place that knows every loader; the loaders themselves only know the bundle types.
"""

from __future__ import annotations

import torch

from .bundle import BundleOptions, ModelBundle, resolve_decode_device, resolve_device, resolve_dtype
from .toy.default import load_default
from .wan_bundle import load_wan_bundle


def load_bundle(options: BundleOptions) -> ModelBundle:
    device = resolve_device(options.device)
    decode_device = resolve_decode_device(options.decode_device, device)
    if options.model is None:
        return load_default(device=device, dtype=resolve_dtype(options.dtype, device)
                            if options.dtype != "auto" else torch.float32, decode_device=decode_device,
                            pixels=options.pixels)
    return load_wan_bundle(options, device=device, dtype=resolve_dtype(options.dtype, device),
                           decode_device=decode_device)
