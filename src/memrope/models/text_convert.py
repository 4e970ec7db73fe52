"""Key layout of Wan's original umT5 encoder checkpoint versus transformers' ``UMT5EncoderModel``.

``models_t5_umt5-xxl-enc-bf16.pth`` is the state dict of ``T5Encoder`` from the public Wan2.1 code
(Wan-Video/Wan2.1@9737cba ``wan/modules/t5.py``, built by ``umt5_xxl(encoder_only=True)``): ``token_embedding``, per
block ``norm1`` -> ``attn.{q,k,v,o}`` -> ``norm2`` -> ``ffn`` and its own relative-position table
``pos_embedding.embedding`` (``shared_pos=False``: one table per block, which is exactly umT5's
difference from T5), then a final ``norm``. The feed-forward is ``fc2(fc1(x) * gelu_tanh(gate(x)))``;
transformers' gated-GELU computes ``wo(gelu_new(wi_0(x)) * wi_1(x))``, hence gate -> wi_0, fc1 -> wi_1.

The mapping runs model -> file so the same table gives the conversion and the exact set of keys a valid
file must contain. The architecture is read off the tensor shapes, so any size (the 5.7 B umT5-XXL or a
tiny test model) loads without a separate config.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

# Constants of Wan's T5 that tensor shapes do not reveal. Source: Wan-Video/Wan2.1@9737cba ``wan/modules/t5.py``:
# ``T5RelativeEmbedding(max_dist=128)``, ``T5LayerNorm(eps=1e-6)``, ``GELU`` (tanh approximation, which
# transformers calls ``gelu_new``), and the tokenizer's pad / eos ids of google/umt5-xxl.
WAN_T5_MAX_DISTANCE = 128
WAN_T5_LAYER_NORM_EPS = 1e-6
WAN_T5_ACTIVATION = "gelu_new"
UMT5_PAD_TOKEN_ID = 0
UMT5_EOS_TOKEN_ID = 1

_BLOCK_RENAMES = {
    "layer.0.SelfAttention.q.weight": "attn.q.weight",
    "layer.0.SelfAttention.k.weight": "attn.k.weight",
    "layer.0.SelfAttention.v.weight": "attn.v.weight",
    "layer.0.SelfAttention.o.weight": "attn.o.weight",
    "layer.0.SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",
    "layer.0.layer_norm.weight": "norm1.weight",
    "layer.1.DenseReluDense.wi_0.weight": "ffn.gate.0.weight",
    "layer.1.DenseReluDense.wi_1.weight": "ffn.fc1.weight",
    "layer.1.DenseReluDense.wo.weight": "ffn.fc2.weight",
    "layer.1.layer_norm.weight": "norm2.weight",
}
_TOP_RENAMES = {
    "shared.weight": "token_embedding.weight",
    "encoder.embed_tokens.weight": "token_embedding.weight",  # tied to shared.weight in transformers
    "encoder.final_layer_norm.weight": "norm.weight",
}


def umt5_to_wan_t5_key(key: str) -> str:
    """Original Wan T5 encoder name of one ``UMT5EncoderModel`` parameter; ``KeyError`` if it has none."""
    if key in _TOP_RENAMES:
        return _TOP_RENAMES[key]
    if (m := re.fullmatch(r"encoder\.block\.(\d+)\.(.+)", key)) and m[2] in _BLOCK_RENAMES:
        return f"blocks.{m[1]}.{_BLOCK_RENAMES[m[2]]}"
    raise KeyError(key)


def wan_t5_config_kwargs(state: Mapping[str, torch.Tensor]) -> dict:
    """``UMT5Config`` arguments read off the shapes of a Wan T5 encoder state dict.

    Raises ``KeyError`` naming the first key the shapes needed but the file lacks.
    """
    for key in (
        "token_embedding.weight",
        "blocks.0.attn.q.weight",
        "blocks.0.ffn.fc1.weight",
        "blocks.0.pos_embedding.embedding.weight",
    ):
        if key not in state:
            raise KeyError(key)
    vocab_size, d_model = state["token_embedding.weight"].shape
    inner = state["blocks.0.attn.q.weight"].shape[0]  # num_heads * d_kv
    num_buckets, num_heads = state["blocks.0.pos_embedding.embedding.weight"].shape
    num_layers = 1 + max(int(m[1]) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    if inner % num_heads:
        raise ValueError(f"attention width {inner} is not a multiple of {num_heads} heads")
    return {
        "vocab_size": int(vocab_size),
        "d_model": int(d_model),
        "d_kv": int(inner // num_heads),
        "d_ff": int(state["blocks.0.ffn.fc1.weight"].shape[0]),
        "num_layers": num_layers,
        "num_heads": int(num_heads),
        "relative_attention_num_buckets": int(num_buckets),
        "relative_attention_max_distance": WAN_T5_MAX_DISTANCE,
        "layer_norm_epsilon": WAN_T5_LAYER_NORM_EPS,
        "feed_forward_proj": "gated-gelu",
        "dense_act_fn": WAN_T5_ACTIVATION,
        "dropout_rate": 0.0,
        "is_encoder_decoder": False,
        "pad_token_id": UMT5_PAD_TOKEN_ID,
        "eos_token_id": UMT5_EOS_TOKEN_ID,
        "tie_word_embeddings": False,
    }
