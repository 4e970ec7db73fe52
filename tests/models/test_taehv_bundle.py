"""``--decoder taehv`` through a real Wan bundle: the file from the Wan folder or --decoder-weights, the
Wan VAE's frame counts, resume of its state inside the generator's checkpoint, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from memrope.cache import make_policy
from memrope.generate import GenerationConfig, StreamingGenerator, json_roundtrip
from memrope.models.bundle import BundleOptions
from memrope.models.loading import load_bundle
from memrope.models.taehv import TAEW21_FILE, TAEHVConfig, TAEHVStreamingDecoder
from memrope.models.weight_files import WeightFileError
from tests.models.test_taehv import random_net, released_file_state
from tests.models.test_wan_bundle import PROMPT, REPO_ROOT, _options, stack  # noqa: F401 (fixture)

NET = random_net(TAEHVConfig(widths=(8, 8, 4, 4)), seed=3)


@pytest.fixture(scope="module")
def taehv_stack(stack):  # noqa: F811
    torch.save(released_file_state(NET), stack["original"] / TAEW21_FILE)
    torch.save(released_file_state(NET), stack["root"] / "elsewhere.pth")
    return stack


def _generator(bundle) -> StreamingGenerator:
    text = bundle.model.encode_text(bundle.text_encoder.encode([PROMPT]))
    config = GenerationConfig(latent_hw=bundle.latent_hw, chunk_frames=3)
    return StreamingGenerator(bundle.model, make_policy("memrope"), text, config, decoder=bundle.decoder)


def test_taehv_decodes_the_stream_with_the_wan_vae_counts(taehv_stack):
    vae = load_bundle(_options(taehv_stack, "self-forcing", "self_forcing_dmd.pt"))
    tiny = load_bundle(_options(taehv_stack, "self-forcing", "self_forcing_dmd.pt", decoder="taehv"))
    assert isinstance(tiny.decoder, TAEHVStreamingDecoder) and "TAEHV decoder" in tiny.name
    a, b = list(_generator(vae).stream(3)), list(_generator(tiny).stream(3))
    assert [r.frames.shape for r in a] == [r.frames.shape for r in b]  # 1 + 4 (F - 1), then 4 F
    latents = torch.cat([r.latents for r in b], dim=2)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.latents, y.latents)  # the decoder does not touch generation
    whole = TAEHVStreamingDecoder(NET).decode(latents)
    assert torch.equal(torch.cat([r.frames for r in b], dim=1), whole)


def test_decoder_weights_elsewhere_and_its_state_in_the_checkpoint(taehv_stack):
    options = _options(taehv_stack, "self-forcing", "self_forcing_dmd.pt", decoder="taehv",
                       decoder_weights=taehv_stack["root"] / "elsewhere.pth")
    gen = _generator(load_bundle(options))
    first = [r.frames for r in gen.stream(4)]
    again = _generator(load_bundle(options))
    list(again.stream(2))
    tensors, data = again.state_dict()
    assert any(k.startswith("decoder.memory.") for k in tensors)
    resumed = _generator(load_bundle(options))
    resumed.load_state_dict(tensors, json_roundtrip(data))  # as read back from a run directory
    assert all(torch.equal(r.frames, f) for r, f in zip(resumed.stream(4), first[2:], strict=True))


def test_option_errors(taehv_stack, tmp_path):
    with pytest.raises(ValueError, match="the embedded toy model has its own autoencoder"):
        load_bundle(BundleOptions(decoder="taehv", device="cpu"))
    with pytest.raises(ValueError, match="--decoder-weights names a TAEHV file: add --decoder taehv"):
        load_bundle(_options(taehv_stack, "self-forcing", "self_forcing_dmd.pt", decoder_weights=tmp_path / "x.pth"))
    with pytest.raises(WeightFileError, match=rf"{tmp_path / 'none.pth'}: no such file \(expected TAEHV"):
        load_bundle(_options(taehv_stack, "self-forcing", "self_forcing_dmd.pt", decoder="taehv",
                             decoder_weights=tmp_path / "none.pth"))


def test_cli_bad_decoder_is_one_line(tmp_path):
    out = tmp_path / "v.mp4"
    proc = subprocess.run([sys.executable, "-m", "memrope.cli", "generate", "--decoder", "taehv", "--out", str(out),
                           "--latent-frames", "3", "--no-progress"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "memrope: error: --decoder taehv decodes Wan 2.1 latents; the embedded toy model has its own autoencoder "
        "(use --decoder taehv with --model self-forcing, longlive or diffusers)"]
    assert not out.exists()
