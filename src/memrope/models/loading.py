"""Options -> a loaded :class:`~memrope.models.bundle.ModelBundle`: the embedded default or a real Wan2.1 model.

The one place that knows every loader; the loaders themselves only know the bundle types.
"""

from __future__ import annotations

import torch

from .bundle import (
    BundleOptions,
    ModelBundle,
    check_decoder,
    resolve_decode_device,
    resolve_device,
    resolve_dtype,
    resolve_split,
)
from .toy.default import load_default
from .wan_bundle import load_wan_bundle


def load_bundle(options: BundleOptions) -> ModelBundle:
    check_decoder(options)
    split = resolve_split(options.split_blocks, options.device)
    device = split[0] if split else resolve_device(options.device)
    # With split blocks the decoder goes with the last ones (where the reference puts the VAE).
    decode_device = resolve_decode_device(options.decode_device, split[-1] if split else device)
    if options.model is None:
        bundle = load_default(device=device, dtype=resolve_dtype(options.dtype, device)
                              if options.dtype != "auto" else torch.float32, decode_device=decode_device,
                              pixels=options.pixels)
    else:
        bundle = load_wan_bundle(options, device=device, dtype=resolve_dtype(options.dtype, device),
                                 decode_device=decode_device)
    if split:
        bundle.model.split_blocks(split)
    return bundle
