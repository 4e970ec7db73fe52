"""MUSIQ's multi-scale patches and hashed positions against closed forms and slow slicing, its masking
and weight standardisation; ViCLIP's tokenizer against a slow BPE written here, its text tower through
transformers against a slow CLIP text transformer on the original keys, its vision tower against a
slow frame-major version; loading of tiny files in the original layouts and the one-line errors."""

from __future__ import annotations

import gzip
import math

import pytest
import torch
import torch.nn.functional as F

from memrope.eval.converters import clip_text_to_hf, hf_to_clip_text
from memrope.eval.nets.clip_bpe import ClipBpe, bytes_to_unicode
from memrope.eval.nets.loading import CheckpointMismatch, expected_shapes
from memrope.eval.nets.musiq import MUSIQ, MusiqConfig, StdConv, load_musiq, same_pad
from memrope.eval.nets.musiq_patches import hashed_positions, multiscale_patches
from memrope.eval.nets.viclip import ViClip, ViClipConfig, load_tokenizer, load_viclip
from memrope.eval.nets.viclip import expected_shapes as viclip_shapes

TINY_MUSIQ = MusiqConfig(hidden_size=64, mlp_dim=96, num_heads=2, num_layers=2)


@pytest.mark.parametrize("count_h,count_w", [(3, 4), (10, 10), (5, 16)])
def test_hashed_positions_are_floor_of_index_times_grid_over_count(count_h, count_w):
    got = hashed_positions(10, count_h, count_w).view(count_h, count_w)
    for i in range(count_h):
        for j in range(count_w):
            assert got[i, j] == (i * 10 // count_h) * 10 + j * 10 // count_w


def test_multiscale_patches_lengths_masks_scales_and_pixels():
    torch.manual_seed(0)
    img = torch.rand(1, 3, 72, 100) * 2 - 1
    out = multiscale_patches(img)
    n224 = math.ceil(224 * 72 / 100 / 32) * math.ceil(224 / 32)  # 161 x 224 -> 6 x 7 real patches of 49
    n384 = math.ceil(round(72 * 3.84) / 32) * math.ceil(384 / 32)  # 276 x 384 -> 9 x 12 of 144
    n_orig = math.ceil(72 / 32) * math.ceil(100 / 32)  # all 3 x 4, unpadded
    assert out.shape == (1, 49 + 144 + n_orig, 3 * 32 * 32 + 3)
    spatial, scale, mask = out[0, :, -3], out[0, :, -2], out[0, :, -1]
    # padding patches are all zeros, their scale id and mask included (pyiqa pads every channel)
    assert torch.equal(scale, torch.tensor([0.0] * 49 + [1.0] * n384 + [0.0] * (144 - n384) + [2.0] * n_orig))
    assert mask[:49].sum() == min(n224, 49) and mask[49:193].sum() == min(n384, 144) and mask[193:].sum() == n_orig
    assert torch.equal(spatial[193:], hashed_positions(10, 3, 4)[0])
    # original-resolution patch (row 1, column 2), cut by hand from the 'SAME'-padded image
    padded = F.pad(img, (14, 14, 12, 12))  # 100 -> 128 (14 + 14), 72 -> 96 (12 + 12)
    patch = padded[0, :, 32:64, 64:96].reshape(-1)
    assert torch.equal(out[0, 193 + 1 * 4 + 2, :-3], patch)
    # the 224 scale: bicubic resize keeping the aspect ratio, sides rounded
    small = F.interpolate(img, (round(72 * 2.24), 224), mode="bicubic", align_corners=False)
    pad_h = math.ceil(small.shape[2] / 32) * 32 - small.shape[2]
    first = F.pad(small, (0, 0, pad_h // 2, pad_h - pad_h // 2))[0, :, :32, :32].reshape(-1)
    assert torch.equal(out[0, 0, :-3], first)


def test_std_conv_standardises_each_output_filter():
    torch.manual_seed(1)
    conv = StdConv(3, 8, 7, 2, bias=False)
    x = torch.randn(1, 3, 32, 32)
    w = conv.weight
    ws = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
    assert torch.allclose(ws.mean((1, 2, 3)), torch.zeros(8), atol=1e-6)
    sd = w.std((1, 2, 3))
    assert torch.allclose(ws.std((1, 2, 3)), sd / (sd + 1e-5), atol=1e-6)  # unit std up to the 1e-5 guard
    assert torch.allclose(conv(x), F.conv2d(same_pad(x, 7, 2), ws, None, 2), atol=1e-5)
    assert conv(x).shape[-2:] == (16, 16)  # 'SAME': ceil(32 / 2)


def test_musiq_ignores_the_pixels_of_padded_patches():
    torch.manual_seed(2)
    model = MUSIQ(TINY_MUSIQ).eval()
    packed = multiscale_patches(torch.rand(1, 3, 40, 60) * 2 - 1)
    noisy = packed.clone()
    pad = noisy[..., -1] == 0
    assert pad.any()
    noisy[..., :-3][pad] = torch.randn(int(pad.sum()), 3 * 32 * 32)
    with torch.inference_mode():
        assert torch.allclose(model.score_patches(packed), model.score_patches(noisy), atol=1e-5)


def test_musiq_real_size_and_loading(tmp_path):
    real = sum(s.numel() for s in expected_shapes(MUSIQ).values())
    assert round(real / 1e6) == 27  # MUSIQ paper: 27 M parameters
    torch.manual_seed(3)
    model = MUSIQ(TINY_MUSIQ).eval()
    path = tmp_path / "musiq_spaq_ckpt-358bb6af.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    loaded = load_musiq(path, TINY_MUSIQ)
    img = torch.rand(2, 3, 50, 70)
    with torch.inference_mode():
        assert torch.equal(loaded(img), model(img))
    wrong = r"not a MUSIQ checkpoint: .*mis-shaped keys \['embedding.bias \(64,\) \(expected \(384,\)\)"
    with pytest.raises(CheckpointMismatch, match=wrong):
        load_musiq(path)  # a tiny file is not the real-size MUSIQ the real path builds


# ---------------------------------------------------------------- ViCLIP

TINY_VICLIP = dict(vision_width=128, vision_layers=2, patch_size=16, input_resolution=64, num_frames=8,
                   embed_dim=32, text_width=64, text_layers=2, context_length=12)


def write_merges(path, merges):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return path


def learn_merges(words, n):
    """A tiny BPE training run (most frequent pair first) to make a realistic merges file."""
    enc = bytes_to_unicode()
    corpus = [tuple("".join(enc[b] for b in w.encode())[:-1]) + ("".join(enc[b] for b in w.encode())[-1] + "</w>",)
              for w in words]
    merges = []
    for _ in range(n):
        counts = {}
        for w in corpus:
            for pair in zip(w, w[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            break
        best = max(sorted(counts), key=counts.get)
        merges.append(best)
        new = []
        for w in corpus:
            out, i = [], 0
            while i < len(w):
                if i < len(w) - 1 and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new.append(tuple(out))
        corpus = new
    return merges


def slow_bpe_ids(text, merges):
    """OpenAI's SimpleTokenizer algorithm, written out: regex words, byte symbols, lowest-rank merges."""
    import regex

    enc = bytes_to_unicode()
    symbols = list(enc.values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    ids = {t: i for i, t in enumerate(vocab)}
    ranks = {m: i for i, m in enumerate(merges)}
    words = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
    pat = regex.compile(words, regex.IGNORECASE)
    out = []
    for token in regex.findall(pat, " ".join(text.split()).lower()):
        word = [enc[b] for b in token.encode("utf-8")]
        word[-1] += "</w>"
        while len(word) > 1:
            pairs = [(ranks.get((a, b), math.inf), k) for k, (a, b) in enumerate(zip(word, word[1:]))]
            rank, k = min(pairs)
            if rank == math.inf:
                break
            first, second = word[k], word[k + 1]
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        out += [ids[w] for w in word]
    return out


def test_bpe_tokenizer_matches_the_slow_simple_tokenizer(tmp_path):
    words = "a red disc and a blue square move across the green field while the camera pans slowly".split() * 3
    merges = learn_merges(words + ["reddish", "redder", "squares", "2024"], 60)
    tok = ClipBpe(write_merges(tmp_path / "bpe_simple_vocab_16e6.txt.gz", merges))
    assert tok.vocab_size == 512 + len(merges) + 2
    for text in ["A red disc and a BLUE square.", "  the camera   pans, slowly!! 2024 squares  ", "redder's field",
                 "Ünïcode café — naïve"]:
        assert tok.encode(text) == slow_bpe_ids(text, merges), text
    ids = tok("a red disc", context=12)
    assert ids.shape == (1, 12) and ids[0, 0] == tok.sot
    n = 2 + len(slow_bpe_ids("a red disc", merges))
    assert ids[0, n - 1] == tok.eot and not ids[0, n:].any()
    long = tok(" ".join(words), context=12)
    assert long[0, -1] == tok.eot and long[0, 0] == tok.sot and long.count_nonzero() == 12


def slow_clip_text(sd, ids, heads):
    """CLIP's text transformer on the original keys: causal attention, QuickGELU, EOT (max id) pooling."""
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"]
    n = ids.shape[1]
    causal = torch.full((n, n), float("-inf")).triu(1)
    layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        y = F.layer_norm(x, x.shape[-1:], sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
        q, k, v = (y @ sd[p + "attn.in_proj_weight"].t() + sd[p + "attn.in_proj_bias"]).chunk(3, -1)
        split = lambda t: t.view(1, n, heads, -1).transpose(1, 2)  # noqa: E731
        att = (split(q) @ split(k).transpose(-1, -2) / math.sqrt(q.shape[-1] // heads) + causal).softmax(-1)
        y = (att @ split(v)).transpose(1, 2).reshape(1, n, -1)
        x = x + y @ sd[p + "attn.out_proj.weight"].t() + sd[p + "attn.out_proj.bias"]
        y = F.layer_norm(x, x.shape[-1:], sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        y = y @ sd[p + "mlp.c_fc.weight"].t() + sd[p + "mlp.c_fc.bias"]
        x = x + (y * torch.sigmoid(1.702 * y)) @ sd[p + "mlp.c_proj.weight"].t() + sd[p + "mlp.c_proj.bias"]
    x = F.layer_norm(x, x.shape[-1:], sd["ln_final.weight"], sd["ln_final.bias"])
    return x[torch.arange(1), ids.argmax(-1)] @ sd["text_projection"]


def slow_viclip_vision(sd, video, heads):
    """Frame-major token order (attention is order-free), attention written out."""
    b, t, c, h, w = video.shape
    p = sd["conv1.weight"].shape[-1]
    patches = F.conv2d(video.reshape(b * t, c, h, w), sd["conv1.weight"][:, :, 0], stride=p)  # (bt, D, gh, gw)
    d = patches.shape[1]
    tokens = patches.flatten(2).transpose(1, 2) + sd["positional_embedding"][1:]  # (bt, n, D)
    tokens = tokens.view(b, t, -1, d) + sd["temporal_positional_embedding"].view(1, t, 1, d)
    cls = (sd["class_embedding"] + sd["positional_embedding"][0]).view(1, 1, d).expand(b, 1, d)
    x = torch.cat([cls, tokens.reshape(b, -1, d)], 1)
    x = F.layer_norm(x, (d,), sd["ln_pre.weight"], sd["ln_pre.bias"])
    n = x.shape[1]
    layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    for i in range(layers):
        q_ = f"transformer.resblocks.{i}."
        y = F.layer_norm(x, (d,), sd[q_ + "ln_1.weight"], sd[q_ + "ln_1.bias"])
        q, k, v = (y @ sd[q_ + "attn.in_proj_weight"].t() + sd[q_ + "attn.in_proj_bias"]).chunk(3, -1)
        split = lambda z: z.view(b, n, heads, -1).transpose(1, 2)  # noqa: E731
        att = (split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // heads)).softmax(-1)
        x = x + (att @ split(v)).transpose(1, 2).reshape(b, n, d) @ sd[q_ + "attn.out_proj.weight"].t() \
            + sd[q_ + "attn.out_proj.bias"]
        y = F.layer_norm(x, (d,), sd[q_ + "ln_2.weight"], sd[q_ + "ln_2.bias"])
        y = y @ sd[q_ + "mlp.c_fc.weight"].t() + sd[q_ + "mlp.c_fc.bias"]
        x = x + (y * torch.sigmoid(1.702 * y)) @ sd[q_ + "mlp.c_proj.weight"].t() + sd[q_ + "mlp.c_proj.bias"]
    return F.layer_norm(x[:, 0], (d,), sd["ln_post.weight"], sd["ln_post.bias"]) @ sd["proj"]


def tiny_viclip_checkpoint(vocab_size, seed=4):
    torch.manual_seed(seed)
    cfg = ViClipConfig(vocab_size=vocab_size, **TINY_VICLIP)
    model = ViClip(cfg).eval()
    with torch.no_grad():  # ViCLIP's zero-initialised embeddings would hide mistakes: make them random
        for prm in model.parameters():
            prm.normal_(0, 0.05)
    sd = {f"vision_encoder.{k}": v for k, v in model.vision_encoder.state_dict().items()}
    sd.update({f"text_encoder.{k}": v for k, v in hf_to_clip_text(model.text_encoder.state_dict()).items()})
    sd["temp"] = model.temp.detach().clone()
    return cfg, model, sd


def test_clip_text_converter_round_trips():
    _, model, _ = tiny_viclip_checkpoint(600)
    sd = model.text_encoder.state_dict()
    back = clip_text_to_hf(hf_to_clip_text(sd))
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)


def test_viclip_loads_its_file_and_matches_slow_towers(tmp_path):
    cfg, model, sd = tiny_viclip_checkpoint(600)
    path = tmp_path / "ViClip-InternVid-10M-FLT.pth"
    torch.save({"model": sd}, path)
    loaded = load_viclip(path, cfg)
    video = torch.randn(2, 8, 3, 64, 64)
    ids = torch.randint(1, 590, (1, 12))
    ids[0, 7], ids[0, 8:] = 599, 0  # EOT (the largest id) then zero padding
    orig_text = {k.removeprefix("text_encoder."): v for k, v in sd.items() if k.startswith("text_encoder.")}
    orig_vision = {k.removeprefix("vision_encoder."): v for k, v in sd.items() if k.startswith("vision_encoder.")}
    with torch.inference_mode():
        assert torch.allclose(loaded.encode_text(ids), slow_clip_text(orig_text, ids, heads=1), atol=1e-4)
        assert torch.allclose(loaded.encode_vision(video), slow_viclip_vision(orig_vision, video, heads=2), atol=1e-4)
    sd.pop("vision_encoder.temporal_positional_embedding")
    sd["text_encoder.positional_embedding"] = torch.zeros(77, 64)
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointMismatch) as e:
        load_viclip(path, cfg)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    assert "missing keys ['vision_encoder.temporal_positional_embedding']" in msg
    assert "text_encoder.positional_embedding (77, 64) (expected (12, 64))" in msg


def test_viclip_real_size_and_vocabulary_check(tmp_path):
    shapes = viclip_shapes(ViClipConfig())
    assert shapes["vision_encoder.positional_embedding"] == (257, 1024)
    assert shapes["text_encoder.positional_embedding"] == (32, 768)
    assert round(sum(s.numel() for s in shapes.values()) / 1e6) == 428  # ViT-L/14 304 M + CLIP text 124 M
    vocab = write_merges(tmp_path / "bpe.txt.gz", [("a", "b</w>")])
    with pytest.raises(CheckpointMismatch, match="gives 515 tokens, ViCLIP's text tower has 49408"):
        load_tokenizer(vocab)
    (tmp_path / "bad.gz").write_text("not gzip")
    with pytest.raises(CheckpointMismatch, match="not a gzipped BPE merges file"):
        load_tokenizer(tmp_path / "bad.gz")
