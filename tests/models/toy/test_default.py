"""The embedded default: the trained weights load, decode to 64x64 frames, generate deterministically."""

import pytest
import torch

from memrope.cache import make_policy
from memrope.generate import GenerationConfig, StreamingGenerator
from memrope.models.toy import default
from memrope.models.toy.autoencoder import WorldDecoder
from memrope.models.toy.text import WorldTextEncoder
from memrope.models.wan_config import wan_config

PROMPT = "a red disc and a large blue square bounce on a navy gradient, fast"


@pytest.fixture(scope="module")
def bundle():
    return default.load_default()


def test_load_default_returns_the_trained_model(bundle):
    assert "trained" in bundle.name
    assert bundle.model.config == wan_config("toy")
    assert isinstance(bundle.decoder, WorldDecoder) and bundle.decoder.temporal_stride == 1
    assert bundle.latent_hw == (8, 8)
    tensors, meta = default.read_weights()
    assert meta["steps_done"] > 0
    sd = bundle.model.state_dict()
    key = "blocks.0.self_attn.q.weight"
    assert torch.equal(sd[key], tensors[default.TRANSFORMER_PREFIX + key])
    # one video frame per latent frame (the CLI computes 1 + stride (T - 1) frames)
    frames = bundle.decoder.decode(torch.zeros(1, bundle.model.config.in_dim, 3, 8, 8))
    assert frames.shape == (1, 3, 64, 64, 3) and frames.dtype == torch.uint8


def test_missing_weights_give_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(default, "WEIGHTS_FILE", tmp_path / "nope.safetensors")
    monkeypatch.setattr(default.read_weights, "__defaults__", (tmp_path / "nope.safetensors",))
    with pytest.raises(FileNotFoundError, match="memrope.world.train"):
        default.load_default()


def _generate(bundle, seed: int, chunks: int = 2) -> torch.Tensor:
    text = bundle.model.encode_text(bundle.text_encoder.encode([PROMPT]))
    gen = StreamingGenerator(bundle.model, make_policy("memrope"), text,
                             GenerationConfig(latent_hw=bundle.latent_hw, seed=seed), decoder=bundle.decoder)
    return torch.cat([r.frames for r in gen.stream(chunks)], dim=1)


def test_short_generation_is_deterministic_per_seed(bundle):
    a, b, c = _generate(bundle, 0), _generate(bundle, 0), _generate(bundle, 1)
    assert a.shape == (1, 6, 64, 64, 3)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_world_text_encoder_ignores_punctuation():
    enc = WorldTextEncoder(32, 64)
    a = enc.encode(["a red disc bounces on a navy gradient, fast"])
    b = enc.encode(["A red disc bounces on a navy gradient fast."])
    assert torch.equal(a, b)
    assert enc.truncated == []
    enc = WorldTextEncoder(4, 8)
    enc.encode(["a red disc, bounces on a navy gradient"])
    assert enc.truncated == ["a red disc, bounces on a navy gradient"]


def test_world_text_encoder_binds_attributes_to_their_object():
    """Cross-attention sees the prompt as a set of token vectors (no positions on the text side).
    Without roles the two prompts are the same set; with them they differ, and the roles of a
    prompt follow its phrases."""
    from memrope.models.toy.text import word_roles

    def as_set(tokens):  # [L, D] -> rows in a canonical order
        return tokens[torch.argsort(tokens[:, 0])]

    prompts = ["a red disc and a blue square", "a blue disc and a red square"]
    words_only = WorldTextEncoder(32, 64, roles=False).encode(prompts)
    assert torch.equal(as_set(words_only[0]), as_set(words_only[1]))
    roles = WorldTextEncoder(32, 64).encode(prompts)
    assert not torch.equal(as_set(roles[0]), as_set(roles[1]))
    assert word_roles("a large red disc and a blue square on a navy gradient fast xyz".split()) == [
        None, "object-1", "object-1", "object-1", None, None, "object-2", "object-2", None, None,
        "background", "background", "speed", None]


def test_weights_name_the_text_encoder_they_were_trained_with():
    from memrope.models.toy.text import world_text_encoder

    assert world_text_encoder(WorldTextEncoder(32, 64).identity, 32, 64).roles
    assert not world_text_encoder(WorldTextEncoder(32, 64, roles=False).identity, 32, 64).roles
    with pytest.raises(ValueError, match="retrain"):
        world_text_encoder("world-words-v9-32x64", 32, 64)
