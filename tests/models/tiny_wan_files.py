"""Builders of tiny Wan files in the *real* layouts, shared by the checkpoint and bundle tests.

Each builder writes exactly what the released files hold, only with small dimensions: a Self-Forcing dict
(``generator`` / ``generator_ema`` / ``critic``, ``model.`` prefix, optionally FSDP-wrapped names), a
LongLive base + PEFT LoRA (``base_model.model.<module>.lora_A.weight``, the naming PEFT's
``get_peft_model_state_dict`` gives NVlabs/LongLive's ``lora.pt``), a diffusers transformer saved by
diffusers itself, and a Wan2.1 folder (VAE, umT5, tokenizer, DiT config.json) in both layouts.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import sentencepiece as spm
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

from memrope.models.formats.lora import LORA_TARGETS
from memrope.models.text import WAN_TEXT_LEN
from memrope.models.vae import WanVAEConfig
from memrope.models.wan import WanModel
from memrope.models.wan_config import WanConfig
from memrope.models.wan_layout import expected_shapes
from tests.models.test_text import CORPUS, TINY_T5, to_wan_layout
from tests.models.test_vae import to_original_layout

# The tiny *real-architecture* stack: Wan's 16 latent channels and 512 text tokens (so the original-layout
# VAE with its fixed latent statistics and the umT5 cache key line up), everything else shrunk.
TINY_REAL = WanConfig(
    dim=48,
    num_layers=2,
    num_heads=4,
    ffn_dim=96,
    freq_dim=16,
    text_dim=TINY_T5["d_model"],
    text_len=WAN_TEXT_LEN,
    in_dim=16,
    out_dim=16,
)
TINY_VAE = WanVAEConfig(base_dim=8)  # Wan 2.1 levels and block counts, narrow channels
PIXELS = 16  # 16x16 video -> 2x2 latent -> one 2x2 patch per frame
FSDP = "_fsdp_wrapped_module."


def random_wan(cfg: WanConfig, seed: int = 0) -> WanModel:
    """A WanModel with every parameter random (norm weights near 1), so no key can be confused for another."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WanModel(cfg)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.2 * torch.randn_like(p))
    return model.eval().requires_grad_(False)


def original_state(model: WanModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def fsdp_name(key: str) -> str:
    """FSDP (wrapping the generator and each block) puts ``_fsdp_wrapped_module.`` after each wrap point."""
    name = f"model.{FSDP}{key}"
    parts = name.split(".")
    if "blocks" in parts:
        i = parts.index("blocks") + 2
        parts.insert(i, FSDP.rstrip("."))
    return ".".join(parts)


def self_forcing_dict(ema: WanModel, gen: WanModel, critic: WanModel, fsdp: bool = False) -> dict:
    """``self_forcing_dmd.pt``: three WanDiffusionWrapper state dicts (keys ``model.<original name>``)."""
    name = fsdp_name if fsdp else (lambda k: f"model.{k}")
    return {
        "generator": {name(k): v for k, v in original_state(gen).items()},
        "generator_ema": {name(k): v for k, v in original_state(ema).items()},
        "critic": {name(k): v for k, v in original_state(critic).items()},
    }


def lora_pairs(cfg: WanConfig, rank: int, seed: int = 1) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{module: (A [r, in], B [out, r])}`` for every Linear of every block (LongLive's targets)."""
    shapes = expected_shapes(cfg)
    gen = torch.Generator().manual_seed(seed)
    pairs = {}
    for i in range(cfg.num_layers):
        for target in LORA_TARGETS:
            module = f"blocks.{i}.{target}"
            out_f, in_f = shapes[f"{module}.weight"]
            pairs[module] = (
                0.1 * torch.randn(rank, in_f, generator=gen),
                0.1 * torch.randn(out_f, rank, generator=gen),
            )
    return pairs


LORA_NAMINGS = {
    # PEFT get_peft_model_state_dict of get_peft_model(CausalWanModel): what LongLive's lora.pt holds.
    "peft": "base_model.model.{module}.lora_{side}.weight",
    # A raw PeftModel.state_dict() keeps the adapter name.
    "peft-adapter": "base_model.model.{module}.lora_{side}.default.weight",
    # PEFT applied to the WanDiffusionWrapper instead of its .model.
    "peft-wrapper": "base_model.model.model.{module}.lora_{side}.weight",
    "bare-adapter": "{module}.lora_{side}.default.weight",
}


def lora_state(pairs, naming: str = "peft") -> dict[str, torch.Tensor]:
    pattern = LORA_NAMINGS[naming]
    out = {}
    for module, (a, b) in pairs.items():
        out[pattern.format(module=module, side="A")] = a.clone()
        out[pattern.format(module=module, side="B")] = b.clone()
    return out


def diffusers_transformer(cfg: WanConfig, seed: int = 0) -> WanTransformer3DModel:
    """diffusers' own WanTransformer3DModel of this size with random weights (the layout's ground truth)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WanTransformer3DModel(
            patch_size=cfg.patch,
            num_attention_heads=cfg.num_heads,
            attention_head_dim=cfg.head_dim,
            in_channels=cfg.in_dim,
            out_channels=cfg.out_dim,
            text_dim=cfg.text_dim,
            freq_dim=cfg.freq_dim,
            ffn_dim=cfg.ffn_dim,
            num_layers=cfg.num_layers,
            cross_attn_norm=cfg.cross_attn_norm,
            eps=cfg.eps,
        )
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.2 * torch.randn_like(p))
    return model.eval().requires_grad_(False)


def write_tokenizer(root: Path, corpus: list[str] = CORPUS) -> Path:
    """A unigram SentencePiece model trained in-process on ``corpus``, saved as a T5 tokenizer folder."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus * 20),
        model_writer=model,
        vocab_size=48,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    root.mkdir(parents=True, exist_ok=True)
    (root / "spiece.model").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_file=str(root / "spiece.model"))
    pieces = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    T5Tokenizer(vocab=pieces, extra_ids=0).save_pretrained(root)
    return root


def tiny_umt5(vocab: int, seed: int = 0) -> UMT5EncoderModel:
    config = UMT5Config(
        vocab_size=vocab,
        relative_attention_max_distance=128,
        layer_norm_epsilon=1e-6,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        is_encoder_decoder=False,
        architectures=["UMT5EncoderModel"],
        **TINY_T5,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UMT5EncoderModel(config).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    return model


def tiny_vae(seed: int = 0) -> AutoencoderKLWan:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLWan(**TINY_VAE.diffusers_kwargs()).eval()
        with torch.no_grad():
            for name, p in vae.named_parameters():
                p.copy_(
                    1 + 0.1 * torch.randn_like(p) if name.endswith("gamma") else 0.2 * torch.randn_like(p)
                )
    return vae


def original_dit_config(cfg: WanConfig) -> dict:
    """The Wan2.1 folder's ``config.json`` (WanModel keyword arguments, as released)."""
    raw = {k: v for k, v in asdict(cfg).items() if k not in ("rope_max_positions",)}
    return {"_class_name": "WanModel", "model_type": "t2v", **raw, "patch": list(cfg.patch)}


def write_wan_dir(root: Path, layout: str, cfg: WanConfig = TINY_REAL) -> Path:
    """A Wan2.1-T2V folder with a tiny VAE, umT5 and tokenizer, ``original`` or ``diffusers`` layout."""
    root.mkdir(parents=True, exist_ok=True)
    tok = write_tokenizer(root / "_tok")
    umt5 = tiny_umt5(len(T5Tokenizer.from_pretrained(tok)))
    vae = tiny_vae()
    if layout == "original":
        torch.save(to_original_layout(vae.state_dict(), TINY_VAE.num_res_blocks), root / "Wan2.1_VAE.pth")
        torch.save(
            {k: v.to(torch.bfloat16) for k, v in to_wan_layout(umt5).items()},
            root / "models_t5_umt5-xxl-enc-bf16.pth",
        )
        shutil.copytree(tok, root / "google" / "umt5-xxl")
        (root / "config.json").write_text(json.dumps(original_dit_config(cfg)))
    elif layout == "diffusers":
        vae.save_pretrained(root / "vae", safe_serialization=True)
        umt5.save_pretrained(root / "text_encoder")
        shutil.copytree(tok, root / "tokenizer")
        diffusers_transformer(cfg).save_config(root / "transformer")
    else:
        raise ValueError(layout)
    shutil.rmtree(tok)
    return root
