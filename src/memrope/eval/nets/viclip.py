"""ViCLIP-L/14 (InternVid, Wang et al. 2023), the video-text model behind VBench's overall
consistency (`ViClip-InternVid-10M-FLT.pth`).

Follows Vchitect/VBench@45e79ec1 ``vbench/third_party/ViCLIP/viclip.py``, ``viclip_vision.py`` and
``viclip_text.py`` (OpenGVLab/InternVideo's ViCLIP). Vision: a CLIP ViT-L/14 whose patch embedding is
a (1, 14, 14) Conv3d; each of the 8 frames gets the spatial position embeddings, every patch token a
learned temporal embedding, and all 8 x 256 patch tokens plus one CLS token go through one
transformer; the CLS output, layer-normed and projected (1024 -> 768), is the video embedding. Text:
OpenAI CLIP's text transformer (width 768, 12 layers, context 32, causal mask, EOT token pooled,
projected to 768), run here by transformers' CLIPTextModelWithProjection with the checkpoint's keys
converted (``converters.clip_text_to_hf``). The checkpoint stores ``{'model': state dict}`` with keys
under ``vision_encoder.`` and ``text_encoder.`` and the temperature ``temp`` (unused at test time).

Deviations: masking, drop path and gradient checkpointing (training only) are not built; the
attention runs through torch's MultiheadAttention as upstream, so numbers match to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from memrope.eval.converters import HEAD_DIM, clip_text_to_hf, hf_to_clip_text
from memrope.eval.nets.clip_bpe import ClipBpe
from memrope.eval.nets.loading import CheckpointMismatch, check_against, read_checkpoint, tensors_under

QUICK_GELU = 1.702  # x * sigmoid(1.702 x)
VISION_PREFIX, TEXT_PREFIX, TEMPERATURE = "vision_encoder.", "text_encoder.", "temp"


@dataclass(frozen=True)
class ViClipConfig:
    """viclip.py's sizes: clip_joint_l14 (vision) and clip_text_l14 with context_length=max_txt_l=32."""

    vision_width: int = 1024
    vision_layers: int = 24
    patch_size: int = 14
    input_resolution: int = 224
    num_frames: int = 8
    embed_dim: int = 768
    text_width: int = 768
    text_layers: int = 12
    context_length: int = 32
    vocab_size: int = 49408

    def __post_init__(self) -> None:
        for name in ("vision_width", "text_width"):
            if getattr(self, name) % HEAD_DIM:
                raise ValueError(f"{name}={getattr(self, name)}: ViCLIP uses {HEAD_DIM}-dim heads")
        if self.input_resolution % self.patch_size:
            raise ValueError(f"input_resolution {self.input_resolution} is not a multiple of patch {self.patch_size}")

    def text_config(self):
        from transformers import CLIPTextConfig

        return CLIPTextConfig(
            vocab_size=self.vocab_size, hidden_size=self.text_width, intermediate_size=4 * self.text_width,
            projection_dim=self.embed_dim, num_hidden_layers=self.text_layers,
            num_attention_heads=self.text_width // HEAD_DIM, max_position_embeddings=self.context_length,
            hidden_act="quick_gelu", layer_norm_eps=1e-5, bos_token_id=self.vocab_size - 2,
            eos_token_id=self.vocab_size - 1, pad_token_id=0,
        )


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(QUICK_GELU * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, width // HEAD_DIM)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (L, B, D)
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class ViClipVision(nn.Module):
    """viclip_vision.VisionTransformer at test time (names kept: conv1, class_embedding, ...)."""

    def __init__(self, cfg: ViClipConfig) -> None:
        super().__init__()
        width, p = cfg.vision_width, cfg.patch_size
        self.conv1 = nn.Conv3d(3, width, (1, p, p), (1, p, p), (0, 0, 0), bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros((cfg.input_resolution // p) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.temporal_positional_embedding = nn.Parameter(torch.zeros(1, cfg.num_frames, width))
        self.transformer = Transformer(width, cfg.vision_layers)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, cfg.embed_dim))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) normalised frames -> (B, embed) video embeddings (not normalised)."""
        x = self.conv1(video)  # (B, C, T, h, w)
        b, c, t, h, w = x.shape
        x = x.permute(0, 2, 3, 4, 1).reshape(b * t, h * w, c)
        cls = self.class_embedding.to(x.dtype) + x.new_zeros(x.shape[0], 1, c)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        cls_tokens, x = x[:b, :1], x[:, 1:]
        x = x.reshape(b, t, h * w, c).permute(0, 2, 1, 3).reshape(b * h * w, t, c)  # (b t) n m -> (b n) t m
        x = x + (self.temporal_positional_embedding.mean(1) if t == 1 else self.temporal_positional_embedding)
        x = x.reshape(b, h * w * t, c)  # (b n) t m -> b (n t) m
        x = self.ln_pre(torch.cat([cls_tokens, x], dim=1)).permute(1, 0, 2)  # (L, B, D)
        x = self.ln_post(self.transformer(x))
        return x[0] @ self.proj


class ViClip(nn.Module):
    def __init__(self, cfg: ViClipConfig | None = None) -> None:
        super().__init__()
        from transformers import CLIPTextModelWithProjection

        self.cfg = cfg = cfg or ViClipConfig()
        self.vision_encoder = ViClipVision(cfg)
        self.text_encoder = CLIPTextModelWithProjection(cfg.text_config())
        self.temp = nn.Parameter(torch.ones([]) / 100.0)

    def encode_vision(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) -> (B, embed), as ViCLIP.encode_vision(test=True) (which permutes to B, C, T)."""
        return self.vision_encoder(frames.permute(0, 2, 1, 3, 4).contiguous())

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids=ids).text_embeds


def expected_shapes(cfg: ViClipConfig) -> dict[str, torch.Size]:
    """The checkpoint's keys and shapes in ViCLIP's own layout, from a model built on the meta device."""
    with torch.device("meta"):
        model = ViClip(cfg)
    out = {VISION_PREFIX + k: v.shape for k, v in model.vision_encoder.state_dict().items()}
    out.update({TEXT_PREFIX + k: v.shape for k, v in hf_to_clip_text(model.text_encoder.state_dict()).items()})
    out[TEMPERATURE] = model.temp.shape
    return out


def load_viclip(path: Path, cfg: ViClipConfig | None = None) -> ViClip:
    """`ViClip-InternVid-10M-FLT.pth` ({'model': ...}), validated on the meta device, float32, eval."""
    cfg, path = cfg or ViClipConfig(), Path(path)
    sd = tensors_under(read_checkpoint(path), path, "model")
    check_against(expected_shapes(cfg), sd, path, "ViCLIP")
    model = ViClip(cfg)
    vision = {k.removeprefix(VISION_PREFIX): v.float() for k, v in sd.items() if k.startswith(VISION_PREFIX)}
    text = {k.removeprefix(TEXT_PREFIX): v.float() for k, v in sd.items() if k.startswith(TEXT_PREFIX)}
    model.vision_encoder.load_state_dict(vision, strict=True)
    model.text_encoder.load_state_dict(clip_text_to_hf(text), strict=True)
    model.temp.data.copy_(sd[TEMPERATURE].float())
    return model.float().eval().requires_grad_(False)


def load_tokenizer(path: Path, cfg: ViClipConfig | None = None) -> ClipBpe:
    """The BPE vocabulary file, checked against the text tower's vocabulary size."""
    cfg = cfg or ViClipConfig()
    tok = ClipBpe(Path(path))
    if tok.vocab_size != cfg.vocab_size:
        raise CheckpointMismatch(f"{path}: gives {tok.vocab_size} tokens, ViCLIP's text tower has {cfg.vocab_size}")
    return tok
