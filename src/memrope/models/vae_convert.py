"""Key layout of the original ``Wan2.1_VAE.pth`` versus diffusers' ``AutoencoderKLWan``.

The mapping is written *from* each diffusers parameter name *to* the original name, derived from the
module structure of the public Wan2.1 code (Wan-Video/Wan2.1@9737cba ``wan/modules/vae.py``): the original
encoder and decoder are flat ``nn.Sequential`` lists (``downsamples`` / ``upsamples``), each residual block is one
``nn.Sequential`` named ``residual`` (RMS_norm, SiLU, conv, RMS_norm, SiLU, Dropout, conv), and the
middle is ``[ResidualBlock, AttentionBlock, ResidualBlock]``. Going model -> file lets one function give
both the conversion and the exact set of keys a valid file must have (for loud key checks), and lets the
rule follow ``num_res_blocks`` instead of hard-coding the 2-block layout.

Cross-checked in the tests against diffusers' own converter (``convert_wan_vae_to_diffusers`` in
huggingface/diffusers@11307ce ``src/diffusers/loaders/single_file_utils.py``, which hard-codes the Wan2.1 block
indices).
"""

from __future__ import annotations

import re

# Positions inside the original ``ResidualBlock.residual`` Sequential:
# [0] RMS_norm, [1] SiLU, [2] CausalConv3d, [3] RMS_norm, [4] SiLU, [5] Dropout, [6] CausalConv3d.
_RESIDUAL_RENAMES = {
    "norm1.": "residual.0.",
    "conv1.": "residual.2.",
    "norm2.": "residual.3.",
    "conv2.": "residual.6.",
    "conv_shortcut.": "shortcut.",
}
# Original ``head`` Sequential: [0] RMS_norm, [1] SiLU, [2] CausalConv3d.
_HEAD_RENAMES = {"norm_out.": "head.0.", "conv_out.": "head.2."}
# Original ``middle`` Sequential: [0] ResidualBlock, [1] AttentionBlock, [2] ResidualBlock.
_MID_RESNET_POSITIONS = (0, 2)
_MID_ATTENTION_POSITION = 1


def _residual_param(rest: str) -> str:
    for new, old in _RESIDUAL_RENAMES.items():
        if rest.startswith(new):
            return old + rest[len(new) :]
    raise KeyError(rest)


def diffusers_to_wan_vae_key(key: str, num_res_blocks: int) -> str:
    """Original ``Wan2.1_VAE.pth`` name of one ``AutoencoderKLWan`` parameter (Wan 2.1 layout).

    Raises ``KeyError`` for a name the Wan 2.1 layout does not have (e.g. Wan 2.2 residual up blocks).
    """
    if key.startswith("quant_conv."):
        return "conv1." + key[len("quant_conv.") :]
    if key.startswith("post_quant_conv."):
        return "conv2." + key[len("post_quant_conv.") :]
    side, _, rest = key.partition(".")
    if side not in ("encoder", "decoder"):
        raise KeyError(key)
    if rest.startswith("conv_in."):
        return f"{side}.conv1.{rest[len('conv_in.') :]}"
    for new, old in _HEAD_RENAMES.items():
        if rest.startswith(new):
            return f"{side}.{old}{rest[len(new) :]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", rest):
        return f"{side}.middle.{_MID_RESNET_POSITIONS[int(m[1])]}.{_residual_param(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", rest):
        return f"{side}.middle.{_MID_ATTENTION_POSITION}.{m[1]}"
    if side == "encoder" and (m := re.fullmatch(r"down_blocks\.(\d+)\.(.+)", rest)):
        # diffusers keeps the encoder flat, same indices as the original ``downsamples``.
        index, param = m[1], m[2]
        if param.startswith(("resample.", "time_conv.")):
            return f"encoder.downsamples.{index}.{param}"
        return f"encoder.downsamples.{index}.{_residual_param(param)}"
    if side == "decoder":
        # The original decoder is flat: per level, num_res_blocks + 1 residual blocks then one resample
        # (none after the last level), so level L starts at L * (num_res_blocks + 2).
        stride = num_res_blocks + 2
        if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
            index = int(m[1]) * stride + int(m[2])
            return f"decoder.upsamples.{index}.{_residual_param(m[3])}"
        if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", rest):
            index = int(m[1]) * stride + num_res_blocks + 1
            return f"decoder.upsamples.{index}.{m[2]}"
    raise KeyError(key)


def diffusers_to_wan_vae_keys(diffusers_keys: list[str], num_res_blocks: int) -> dict[str, str]:
    """``{diffusers_name: original_name}`` for every parameter of an ``AutoencoderKLWan``."""
    return {k: diffusers_to_wan_vae_key(k, num_res_blocks) for k in diffusers_keys}
