"""umT5 text encoder: both checkpoint layouts, an independent Wan-T5 forward, zero padding, prompt cache."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

from memrope.models.prompt_cache import CACHE_DTYPE, PromptEmbeddingCache, encode_prompts_cached
from memrope.models.text import UMT5EncoderFactory, UMT5TextEncoder
from memrope.models.text_convert import umt5_to_wan_t5_key, wan_t5_config_kwargs
from memrope.models.weight_files import WeightFileError

TEXT_LEN = 32  # short context keeps the tiny tests fast; the default 512 is checked once
CORPUS = [
    "a cat walks on the grass",
    "the quick brown fox jumps over the lazy dog",
    "a red car drives through the city at night",
    "waves crash on a sandy beach under a pink sky",
    "an astronaut rides a horse on the moon",
]
PROMPTS = ["a cat walks", "the red fox jumps at night", "waves"]
LONG_PROMPT = "the quick brown fox jumps over the lazy dog at night under a pink sky"  # > TEXT_LEN tokens
TINY_T5 = dict(d_model=16, d_kv=4, num_heads=4, d_ff=24, num_layers=2, relative_attention_num_buckets=8)


# --- fixtures: a SentencePiece tokenizer trained here, a tiny umT5 in both layouts --------------------


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """Train a unigram SentencePiece model in-process and wrap it as a T5 tokenizer folder."""
    from tests.models.tiny_wan_files import write_tokenizer  # imported late: that module imports this one

    return write_tokenizer(tmp_path_factory.mktemp("tok"))


# Wan's original layout, written independently from wan/modules/t5.py (T5Encoder) for the test.
_TO_WAN = {
    "layer.0.SelfAttention.{}.weight": "attn.{}.weight",
    "layer.0.SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",
    "layer.0.layer_norm.weight": "norm1.weight",
    "layer.1.DenseReluDense.wi_0.weight": "ffn.gate.0.weight",
    "layer.1.DenseReluDense.wi_1.weight": "ffn.fc1.weight",
    "layer.1.DenseReluDense.wo.weight": "ffn.fc2.weight",
    "layer.1.layer_norm.weight": "norm2.weight",
}


def to_wan_layout(model: UMT5EncoderModel) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
    out = {
        "token_embedding.weight": sd["shared.weight"],
        "norm.weight": sd["encoder.final_layer_norm.weight"],
    }
    for i in range(model.config.num_layers):
        p = f"encoder.block.{i}."
        for src, dst in _TO_WAN.items():
            if "{}" in src:
                for n in "qkvo":
                    out[f"blocks.{i}.{dst.format(n)}"] = sd[p + src.format(n)]
            else:
                out[f"blocks.{i}.{dst}"] = sd[p + src]
    return {k: v.clone() for k, v in out.items()}


@pytest.fixture(scope="module")
def tiny_umt5(tokenizer_dir) -> UMT5EncoderModel:
    from tests.models.tiny_wan_files import tiny_umt5 as build  # imported late: that module imports this one

    return build(len(T5Tokenizer.from_pretrained(tokenizer_dir)))


@pytest.fixture(scope="module")
def text_files(tiny_umt5, tokenizer_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    diffusers_root = root / "diffusers"
    tiny_umt5.save_pretrained(diffusers_root / "text_encoder")
    shutil.copytree(tokenizer_dir, diffusers_root / "tokenizer")
    wan = root / "wan"
    (wan / "google").mkdir(parents=True)
    torch.save(
        {k: v.to(torch.bfloat16) for k, v in to_wan_layout(tiny_umt5).items()},
        wan / "models_t5_umt5-xxl-enc-bf16.pth",
    )
    torch.save(to_wan_layout(tiny_umt5), root / "fp32_wan_t5.pth")
    shutil.copytree(tokenizer_dir, wan / "google" / "umt5-xxl")
    return root


def _fp32_wan(text_files) -> UMT5TextEncoder:
    return UMT5TextEncoder.from_wan_pth(
        text_files / "fp32_wan_t5.pth", text_files / "wan/google/umt5-xxl", text_len=TEXT_LEN
    )


# --- an independent forward of Wan's T5Encoder on the original-layout tensors ------------------------


def _bucket(rel: torch.Tensor, num_buckets: int, max_dist: int) -> torch.Tensor:
    half = num_buckets // 2  # bidirectional: half the buckets for keys after the query
    out = (rel > 0).long() * half
    rel = rel.abs()
    exact = half // 2
    large = exact + (torch.log(rel.float() / exact) / math.log(max_dist / exact) * (half - exact)).long()
    return out + torch.where(rel < exact, rel, large.clamp(max=half - 1))


def wan_t5_forward(sd, ids, mask, num_heads, max_dist=128, eps=1e-6):
    def norm(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def gelu_tanh(x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x.pow(3))))

    x = F.embedding(ids, sd["token_embedding.weight"])
    b, length = ids.shape
    rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]  # key - query
    n_layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(n_layers):
        p = lambda name, i=i: sd[f"blocks.{i}.{name}"]  # noqa: E731
        table = p("pos_embedding.embedding.weight")
        bias = F.embedding(_bucket(rel, table.shape[0], max_dist), table).permute(2, 0, 1)[None]  # [1,N,L,L]
        h = norm(x, p("norm1.weight"))
        q, k, v = (F.linear(h, p(f"attn.{n}.weight")).view(b, length, num_heads, -1) for n in "qkv")
        logits = torch.einsum("binc,bjnc->bnij", q, k) + bias  # T5: no 1/sqrt(d) scaling
        logits = logits.masked_fill(mask[:, None, None, :] == 0, torch.finfo(x.dtype).min)
        attn = torch.einsum("bnij,bjnc->binc", logits.softmax(-1), v).reshape(b, length, -1)
        x = x + F.linear(attn, p("attn.o.weight"))
        h = norm(x, p("norm2.weight"))
        x = x + F.linear(
            F.linear(h, p("ffn.fc1.weight")) * gelu_tanh(F.linear(h, p("ffn.gate.0.weight"))),
            p("ffn.fc2.weight"),
        )
    return norm(x, sd["norm.weight"])


def test_conversion_matches_an_independent_wan_t5_forward(text_files, tiny_umt5):
    encoder = _fp32_wan(text_files)
    tokens = encoder.tokenizer(
        PROMPTS, padding="max_length", max_length=TEXT_LEN, truncation=True, return_tensors="pt"
    )
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    sd = torch.load(text_files / "fp32_wan_t5.pth", weights_only=True)
    with torch.no_grad():
        ours = encoder.model(input_ids=ids, attention_mask=mask).last_hidden_state
    reference = wan_t5_forward(sd, ids, mask, num_heads=TINY_T5["num_heads"])
    valid = mask.bool()
    assert (ours[valid] - reference[valid]).abs().max().item() < 1e-4
    assert reference[valid].std() > 0.1


def test_config_read_from_shapes(text_files, tiny_umt5):
    sd = torch.load(text_files / "fp32_wan_t5.pth", weights_only=True)
    kwargs = wan_t5_config_kwargs(sd)
    for name, value in TINY_T5.items():
        assert kwargs[name] == value
    assert kwargs["vocab_size"] == tiny_umt5.config.vocab_size


def test_real_umt5_xxl_layout_and_shapes():
    """The real umT5-XXL (Wan2.1 ``umt5_xxl``): every parameter maps to a Wan key, shapes give the config."""
    real = dict(
        vocab_size=256384,
        d_model=4096,
        d_kv=64,
        num_heads=64,
        d_ff=10240,
        num_layers=24,
        relative_attention_num_buckets=32,
    )
    with torch.device("meta"):
        model = UMT5EncoderModel(UMT5Config(feed_forward_proj="gated-gelu", is_encoder_decoder=False, **real))
    shapes = {umt5_to_wan_t5_key(k): v.shape for k, v in model.state_dict().items()}
    assert len(shapes) == 2 + 24 * 10  # token_embedding, norm; per block 4 attn, pos table, 3 ffn, 2 norms
    assert shapes["blocks.23.pos_embedding.embedding.weight"] == (32, 64)
    assert shapes["blocks.0.ffn.gate.0.weight"] == (10240, 4096)
    kwargs = wan_t5_config_kwargs({k: torch.empty(s, device="meta") for k, s in shapes.items()})
    assert {k: kwargs[k] for k in real} == real


def test_both_sources_give_identical_embeddings(text_files):
    wan = UMT5EncoderFactory.from_wan_dir(text_files / "wan", text_len=TEXT_LEN)()
    diffusers = UMT5EncoderFactory.from_diffusers_dir(text_files / "diffusers", text_len=TEXT_LEN)()
    fp32_wan = _fp32_wan(text_files)
    a, b, c = wan.encode(PROMPTS), diffusers.encode(PROMPTS), fp32_wan.encode(PROMPTS)
    assert a.shape == b.shape == (len(PROMPTS), TEXT_LEN, TINY_T5["d_model"])
    assert torch.equal(b, c)  # fp32 weights both ways: identical
    # the Wan file holds bf16 weights (as the real one does): equal up to bf16 weight rounding
    assert (a - b).abs().max().item() < 0.05 * b.abs().max().item()
    assert wan.identity != diffusers.identity


def test_zero_past_true_length(text_files):
    encoder = _fp32_wan(text_files)
    emb = encoder.encode(PROMPTS)
    assert emb.dtype == torch.float32 and emb.device.type == "cpu"
    lengths = encoder.tokenizer(PROMPTS, truncation=True, max_length=TEXT_LEN)["input_ids"]
    for row, ids in zip(emb, lengths, strict=True):
        n = len(ids)
        assert 1 < n < TEXT_LEN
        assert torch.all(row[n:] == 0)
        assert torch.all(row[:n].abs().amax(-1) > 0)
    # prompts are independent of their batch companions
    assert torch.allclose(encoder.encode(PROMPTS[:1])[0], emb[0], atol=1e-6)
    # a prompt longer than text_len is truncated, every position is real
    (truncated,) = encoder.encode([LONG_PROMPT])
    assert len(encoder.tokenizer(LONG_PROMPT)["input_ids"]) > TEXT_LEN
    assert torch.all(truncated.abs().amax(-1) > 0)


def test_default_text_len_and_whitespace_cleaning(text_files):
    encoder = UMT5EncoderFactory.from_diffusers_dir(text_files / "diffusers")()
    assert encoder.text_len == 512 and encoder.text_dim == TINY_T5["d_model"]
    a, b = encoder.encode(["a cat walks", "  a   cat\n walks &amp; "])
    assert a.shape == (512, TINY_T5["d_model"])
    c = encoder.encode(["a cat walks &"])[0]
    assert torch.equal(b, c)


def test_bf16_encoder(text_files):
    fp32 = _fp32_wan(text_files).encode(PROMPTS)
    encoder = UMT5EncoderFactory.from_wan_dir(text_files / "wan", dtype=torch.bfloat16, text_len=TEXT_LEN)()
    assert next(encoder.model.parameters()).dtype == torch.bfloat16
    bf16 = encoder.encode(PROMPTS)
    assert bf16.dtype == torch.float32
    assert torch.equal(bf16.abs().amax(-1) == 0, fp32.abs().amax(-1) == 0)  # same zero rows
    assert (bf16 - fp32).abs().mean().item() < 0.05 * fp32.abs().mean().item()


def test_close_frees_the_encoder(text_files):
    encoder = _fp32_wan(text_files)
    encoder.close()
    assert encoder.model is None
    with pytest.raises(RuntimeError, match="closed"):
        encoder.encode(["a cat"])


# --- identity and the on-disk cache -----------------------------------------------------------------


def test_identity_is_cheap_stable_and_path_independent(text_files, tmp_path):
    factory = UMT5EncoderFactory.from_wan_dir(text_files / "wan", text_len=TEXT_LEN)
    encoder = factory()
    assert encoder.identity == factory.identity
    copy = tmp_path / "copy"
    shutil.copytree(text_files / "wan", copy)
    assert UMT5EncoderFactory.from_wan_dir(copy, text_len=TEXT_LEN).identity == factory.identity
    assert UMT5EncoderFactory.from_wan_dir(copy, text_len=TEXT_LEN + 1).identity != factory.identity
    (copy / "google/umt5-xxl/tokenizer_config.json").write_text("{}")
    assert UMT5EncoderFactory.from_wan_dir(copy, text_len=TEXT_LEN).identity != factory.identity
    with pytest.raises(WeightFileError, match="not found"):
        _ = UMT5EncoderFactory.from_wan_dir(tmp_path / "nowhere").identity


class CountingFactory:
    """Wraps a real factory; records calls and what the encoder was asked to encode."""

    def __init__(self, inner):
        self.inner, self.identity, self.calls, self.encoded = inner, inner.identity, 0, []

    def __call__(self):
        self.calls += 1
        encoder = self.inner()
        encode = encoder.encode
        encoder.encode = lambda prompts: (self.encoded.append(list(prompts)), encode(prompts))[1]
        return encoder


def test_cache_hit_never_constructs_the_encoder(text_files, tmp_path):
    factory = CountingFactory(
        UMT5EncoderFactory.from_diffusers_dir(text_files / "diffusers", text_len=TEXT_LEN)
    )
    first = encode_prompts_cached(PROMPTS, tmp_path, factory)
    assert factory.calls == 1 and factory.encoded == [PROMPTS]
    assert first.shape == (3, TEXT_LEN, TINY_T5["d_model"]) and first.dtype == torch.float32

    def must_not_load():
        raise AssertionError("the encoder was constructed although every prompt is cached")

    must_not_load.identity = factory.identity
    second = encode_prompts_cached(list(reversed(PROMPTS)), tmp_path, must_not_load)
    assert torch.equal(second, first.flip(0))  # bf16 round trip is exact both times

    encode_prompts_cached([PROMPTS[0], "an astronaut rides a horse"], tmp_path, factory)
    assert factory.calls == 2 and factory.encoded[-1] == ["an astronaut rides a horse"]
    # the cached value is the bf16 rounding of a fresh encode
    fresh = UMT5EncoderFactory.from_diffusers_dir(text_files / "diffusers", text_len=TEXT_LEN)().encode(
        PROMPTS
    )
    assert torch.equal(first, fresh.to(CACHE_DTYPE).float())


def test_cache_files(text_files, tmp_path):
    cache = PromptEmbeddingCache(tmp_path, "some-encoder")
    emb = torch.zeros(TEXT_LEN, 8)
    emb[:5] = torch.randn(5, 8)
    path = cache.put("a prompt", emb)
    assert path.name == f"{cache.key('a prompt')}.safetensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left behind
    with safe_open(str(path), framework="pt") as f:
        stored = f.get_tensor("embedding")
        assert f.metadata()["identity"] == "some-encoder"
    assert stored.dtype == torch.bfloat16 and stored.shape == (5, 8)  # zero tail not stored
    assert torch.equal(cache.get("a prompt"), emb.to(torch.bfloat16).float())
    assert "a prompt" in cache and "another" not in cache
    assert PromptEmbeddingCache(tmp_path, "other-encoder").get("a prompt") is None  # keyed by identity
    path.write_bytes(b"garbage")  # e.g. a foreign file: a miss, not a crash
    assert cache.get("a prompt") is None
    with pytest.raises(TypeError, match="identity"):
        encode_prompts_cached(["x"], tmp_path, lambda: None)


# --- bad files -------------------------------------------------------------------------------------


def test_missing_checkpoint(text_files, tmp_path):
    with pytest.raises(WeightFileError, match=r"enc-bf16\.pth: no such file.*Wan's original umT5"):
        UMT5TextEncoder.from_wan_pth(
            tmp_path / "models_t5_umt5-xxl-enc-bf16.pth", text_files / "wan/google/umt5-xxl"
        )


def test_not_a_checkpoint(text_files, tmp_path):
    junk = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    junk.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    with pytest.raises(WeightFileError, match="not a loadable PyTorch checkpoint.*Wan's original umT5"):
        UMT5TextEncoder.from_wan_pth(junk, text_files / "wan/google/umt5-xxl")


def test_missing_unexpected_and_misshapen_keys(text_files, tmp_path):
    tok = text_files / "wan/google/umt5-xxl"
    good = torch.load(text_files / "fp32_wan_t5.pth", weights_only=True)
    path = tmp_path / "t5.pth"

    state = dict(good)
    del state["blocks.1.norm2.weight"]
    state["blocks.1.ffn.extra.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(WeightFileError) as err:
        UMT5TextEncoder.from_wan_pth(path, tok)
    assert str(path) in str(err.value) and "Wan's original umT5" in str(err.value)
    assert "missing 1 keys: blocks.1.norm2.weight" in str(err.value)
    assert "unexpected 1 keys: blocks.1.ffn.extra.weight" in str(err.value)

    state = dict(good)
    state["blocks.1.ffn.fc2.weight"] = torch.zeros(3, 3)
    torch.save(state, path)
    with pytest.raises(
        WeightFileError, match=r"wrong shape.*blocks\.1\.ffn\.fc2\.weight \(3, 3\) != \(16, 24\)"
    ):
        UMT5TextEncoder.from_wan_pth(path, tok)

    # the transformers layout handed over as the Wan file
    torch.save(UMT5EncoderModel.from_pretrained(text_files / "diffusers/text_encoder").state_dict(), path)
    with pytest.raises(WeightFileError, match="missing key token_embedding.weight"):
        UMT5TextEncoder.from_wan_pth(path, tok)


def test_diffusers_folder_errors(text_files, tmp_path):
    tok = text_files / "diffusers/tokenizer"
    with pytest.raises(WeightFileError, match="config.json: no such file"):
        UMT5TextEncoder.from_diffusers_dir(tmp_path, tok)
    folder = tmp_path / "text_encoder"
    shutil.copytree(text_files / "diffusers/text_encoder", folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(WeightFileError, match="no weight file found"):
        UMT5TextEncoder.from_diffusers_dir(folder, tok)
    with pytest.raises(WeightFileError, match="no such tokenizer folder"):
        UMT5TextEncoder.from_diffusers_dir(text_files / "diffusers/text_encoder", tmp_path / "nope")
