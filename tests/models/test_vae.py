"""Streaming Wan VAE decoder: exactness against a one-shot decode, resume, both file layouts, loud errors."""

from __future__ import annotations

import inspect
import json
import re

import pytest
import torch
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from safetensors.torch import load_file, save_file

from memrope.models.vae import (
    WAN21_LATENTS_MEAN,
    WAN21_LATENTS_STD,
    WanStreamingDecoder,
    WanVAEConfig,
    check_diffusers_version,
    pixels_to_uint8,
)
from memrope.models.vae_convert import diffusers_to_wan_vae_keys
from memrope.models.weight_files import WeightFileError

# Tiny but structurally real: Wan 2.1 levels and block counts (what diffusers' converter hard-codes),
# only the channel width shrunk.
TINY = WanVAEConfig(base_dim=8)
LATENT_HW = (2, 3)


# --- the test's own inverse of the layout, written from Wan2.1's module structure --------------------
# Original residual Sequential: 0 RMS_norm, 2 conv, 3 RMS_norm, 6 conv; shortcut separate.
_RES = {
    "norm1": "residual.0",
    "conv1": "residual.2",
    "norm2": "residual.3",
    "conv2": "residual.6",
    "conv_shortcut": "shortcut",
}


def _res(name: str) -> str:
    head, _, tail = name.partition(".")
    return f"{_RES[head]}.{tail}"


def to_original_layout(state: dict[str, torch.Tensor], num_res_blocks: int) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        k = key
        k = re.sub(r"^quant_conv\.", "conv1.", k)
        k = re.sub(r"^post_quant_conv\.", "conv2.", k)
        k = re.sub(r"^(encoder|decoder)\.conv_in\.", r"\1.conv1.", k)
        k = re.sub(r"^(encoder|decoder)\.norm_out\.", r"\1.head.0.", k)
        k = re.sub(r"^(encoder|decoder)\.conv_out\.", r"\1.head.2.", k)
        k = re.sub(r"^(encoder|decoder)\.mid_block\.attentions\.0\.", r"\1.middle.1.", k)
        if m := re.match(r"^(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.*)$", k):
            k = f"{m[1]}.middle.{2 * int(m[2])}.{_res(m[3])}"
        if m := re.match(r"^encoder\.down_blocks\.(\d+)\.(.*)$", k):
            rest = m[2] if m[2].startswith(("resample", "time_conv")) else _res(m[2])
            k = f"encoder.downsamples.{m[1]}.{rest}"
        if m := re.match(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$", k):
            k = f"decoder.upsamples.{int(m[1]) * (num_res_blocks + 2) + int(m[2])}.{_res(m[3])}"
        if m := re.match(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)$", k):
            k = f"decoder.upsamples.{int(m[1]) * (num_res_blocks + 2) + num_res_blocks + 1}.{m[2]}"
        out[k] = value
    return out


@pytest.fixture(scope="module")
def tiny_vae() -> AutoencoderKLWan:
    torch.manual_seed(0)
    vae = AutoencoderKLWan(**TINY.diffusers_kwargs()).eval()
    with torch.no_grad():  # random everything, incl. the zero-initialised attention projection
        for name, p in vae.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if name.endswith("gamma") else 0.2 * torch.randn_like(p))
    return vae


@pytest.fixture(scope="module")
def vae_files(tiny_vae, tmp_path_factory):
    root = tmp_path_factory.mktemp("vae")
    tiny_vae.save_pretrained(root / "vae", safe_serialization=True)
    original = to_original_layout(tiny_vae.state_dict(), TINY.num_res_blocks)
    torch.save(original, root / "Wan2.1_VAE.pth")
    return root


def _latents(frames: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, TINY.z_dim, frames, *LATENT_HW, generator=g)  # [B, C, F, h, w]


def _one_shot(vae: AutoencoderKLWan, latents: torch.Tensor) -> torch.Tensor:
    """diffusers' public whole-clip decode of de-normalised latents: the reference."""
    mean = torch.tensor(TINY.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(TINY.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        return vae.decode(latents * std + mean).sample.clamp(-1, 1)  # [B, 3, T, H, W]


def test_test_inverse_layout_agrees_with_diffusers_converter(tiny_vae, vae_files):
    original = torch.load(vae_files / "Wan2.1_VAE.pth", weights_only=True)
    converted = convert_wan_vae_to_diffusers(original)
    reference = tiny_vae.state_dict()
    assert set(converted) == set(reference)
    assert all(torch.equal(converted[k], reference[k]) for k in reference)


def test_mapping_matches_diffusers_converter_on_the_real_size():
    with torch.device("meta"):
        real = AutoencoderKLWan()  # Wan 2.1 defaults: base_dim 96, z_dim 16
    keys = list(real.state_dict())
    to_original = diffusers_to_wan_vae_keys(keys, num_res_blocks=2)
    assert len(set(to_original.values())) == len(keys)  # one file key per parameter
    back = convert_wan_vae_to_diffusers({o: torch.empty(0) for o in to_original.values()})
    assert set(back) == set(keys)
    for k, o in to_original.items():  # diffusers maps each original key back to the same parameter
        assert set(convert_wan_vae_to_diffusers({o: torch.empty(0)})) == {k}
    assert "decoder.upsamples.4.shortcut.weight" in to_original.values()  # the one real shortcut


def test_latent_statistics_are_diffusers_defaults():
    defaults = inspect.signature(AutoencoderKLWan.__init__).parameters
    assert list(WAN21_LATENTS_MEAN) == defaults["latents_mean"].default
    assert list(WAN21_LATENTS_STD) == defaults["latents_std"].default


@pytest.mark.parametrize("chunks", [(1, 3, 3), (3, 3, 1), (2, 2, 2, 1)])
def test_streaming_equals_one_shot(tiny_vae, chunks):
    latents = _latents(sum(chunks), batch=2)
    reference = _one_shot(tiny_vae, latents)
    dec = WanStreamingDecoder(tiny_vae, TINY)
    parts, start = [], 0
    for i, n in enumerate(chunks):
        part = dec.decode_float(latents[:, :, start : start + n])
        expected_frames = 1 + TINY.temporal_factor * (n - 1) if i == 0 else TINY.temporal_factor * n
        assert part.shape[2] == expected_frames
        parts.append(part)
        start += n
    streamed = torch.cat(parts, dim=2)
    total = sum(chunks)
    assert streamed.shape == reference.shape
    assert streamed.shape[2] == 1 + 4 * (total - 1)
    assert streamed.shape[-2:] == (LATENT_HW[0] * 8, LATENT_HW[1] * 8)
    assert (streamed - reference).abs().max().item() <= 1e-5
    assert reference.std() > 0.05  # the comparison is not between two constant images


def test_real_architecture_streams_exactly():
    """The released Wan 2.1 architecture (random weights) at a small frame size: same exactness."""
    torch.manual_seed(0)
    vae = AutoencoderKLWan().eval()  # diffusers defaults == WanVAEConfig() == Wan2.1 VAE
    dec = WanStreamingDecoder(vae, WanVAEConfig())
    latents = _latents(3)
    streamed = torch.cat([dec.decode_float(latents[:, :, :1]), dec.decode_float(latents[:, :, 1:])], 2)
    reference = _one_shot(vae, latents)
    assert streamed.shape == (1, 3, 9, 16, 24)
    assert (streamed - reference).abs().max().item() <= 1e-5


def test_bf16_decoder(vae_files):
    latents = _latents(3)
    fp32 = WanStreamingDecoder.from_diffusers_dir(vae_files / "vae").decode_float(latents)
    dec = WanStreamingDecoder.from_diffusers_dir(vae_files / "vae", dtype=torch.bfloat16)
    assert next(dec.vae.parameters()).dtype == torch.bfloat16
    bf16 = dec.decode_float(latents)
    assert bf16.dtype == torch.float32
    assert dec.state_dict()["slot.0"].dtype == torch.bfloat16
    assert (bf16 - fp32).abs().mean().item() < 0.02  # bf16 rounding, not a different decode


def test_uint8_frames(tiny_vae):
    latents = _latents(4)
    dec = WanStreamingDecoder(tiny_vae, TINY)
    first, second = dec.decode(latents[:, :, :1]), dec.decode(latents[:, :, 1:])
    assert first.dtype == torch.uint8 and first.device.type == "cpu"
    assert first.shape == (1, 1, 16, 24, 3) and second.shape == (1, 12, 16, 24, 3)
    # Floats agree to <= 1e-5 (test above), so quantised values differ at most by one rounding step.
    diff = torch.cat([first, second], 1).int() - pixels_to_uint8(_one_shot(tiny_vae, latents)).int()
    assert diff.abs().max().item() <= 1
    grey = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1, 1)
    assert pixels_to_uint8(grey).flatten().tolist() == [0, 127, 255]  # 127.5 truncated, as Wan does
    assert pixels_to_uint8(grey, "round").flatten().tolist() == [0, 128, 255]


def test_reset_starts_a_new_video(tiny_vae):
    latents = _latents(3)
    dec = WanStreamingDecoder(tiny_vae, TINY)
    a = dec.decode_float(latents)
    dec.decode_float(_latents(2, seed=5))
    dec.reset()
    assert dec.frames_decoded == 0
    assert torch.equal(dec.decode_float(latents), a)


def test_state_dict_round_trip_resumes_exactly(tiny_vae, vae_files, tmp_path):
    latents = _latents(7)
    live = WanStreamingDecoder(tiny_vae, TINY)
    live.decode_float(latents[:, :, :3])
    save_file(live.state_dict(), tmp_path / "vae_state.safetensors")
    expected = live.decode_float(latents[:, :, 3:])

    resumed = WanStreamingDecoder.from_diffusers_dir(vae_files / "vae")  # a fresh process would do this
    resumed.load_state_dict(load_file(tmp_path / "vae_state.safetensors"))
    assert resumed.frames_decoded == 3
    assert torch.equal(resumed.decode_float(latents[:, :, 3:]), expected)

    fresh_state = WanStreamingDecoder(tiny_vae, TINY).state_dict()  # before any frame: all slots empty
    assert set(fresh_state) == {"slot_kinds", "frames_decoded"}
    with pytest.raises(ValueError, match="cache slots"):
        resumed.load_state_dict({**fresh_state, "slot_kinds": fresh_state["slot_kinds"][:-1]})
    with pytest.raises(ValueError, match="not a WanStreamingDecoder state"):
        resumed.load_state_dict({})


def test_both_sources_decode_identically(tiny_vae, vae_files):
    from_pth = WanStreamingDecoder.from_wan_pth(vae_files / "Wan2.1_VAE.pth", config=TINY)
    from_dir = WanStreamingDecoder.from_diffusers_dir(vae_files / "vae")
    assert from_dir.config == TINY and from_dir.latent_channels == 16
    latents = _latents(3)
    a, b = from_pth.decode_float(latents), from_dir.decode_float(latents)
    assert torch.equal(a, b)
    assert (a - _one_shot(tiny_vae, latents)).abs().max().item() <= 1e-5


def test_rejects_bad_latents(tiny_vae):
    dec = WanStreamingDecoder(tiny_vae, TINY)
    with pytest.raises(ValueError, match=r"\[B, 16, F, h, w\]"):
        dec.decode(torch.zeros(1, 4, 1, 2, 2))
    with pytest.raises(ValueError, match="no frames"):
        dec.decode(torch.zeros(1, 16, 0, 2, 2))


def test_config_validation():
    with pytest.raises(ValueError, match="temporal_downsample"):
        WanVAEConfig(temporal_downsample=(True,))
    with pytest.raises(ValueError, match="latents_mean"):
        WanVAEConfig(z_dim=4)


def test_diffusers_version_pin():
    assert check_diffusers_version("0.42.1") == "0.42.1"
    with pytest.raises(ImportError, match="outside the tested range"):
        check_diffusers_version("0.30.0")
    with pytest.raises(ImportError, match="outside the tested range"):
        check_diffusers_version("1.0.0")


# --- bad files -------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(WeightFileError, match=r"Wan2\.1_VAE\.pth: no such file.*original Wan2\.1 VAE"):
        WanStreamingDecoder.from_wan_pth(tmp_path / "Wan2.1_VAE.pth", config=TINY)


def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "Wan2.1_VAE.pth"
    junk.write_text("this is a text file, not weights\n")
    with pytest.raises(WeightFileError, match="not a loadable PyTorch checkpoint.*original Wan2.1 VAE"):
        WanStreamingDecoder.from_wan_pth(junk, config=TINY)


def test_truncated_checkpoint(vae_files, tmp_path):
    data = (vae_files / "Wan2.1_VAE.pth").read_bytes()
    cut = tmp_path / "Wan2.1_VAE.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightFileError, match="not a loadable PyTorch checkpoint"):
        WanStreamingDecoder.from_wan_pth(cut, config=TINY)


class _NotWeights:
    pass


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save({"encoder.conv1.weight": torch.zeros(1), "payload": _NotWeights()}, path)
    with pytest.raises(WeightFileError, match="weights_only"):
        WanStreamingDecoder.from_wan_pth(path, config=TINY)


def test_nested_or_non_tensor_dict(tmp_path):
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save({"state_dict": {"a": torch.zeros(1)}}, path)
    with pytest.raises(WeightFileError, match="not a flat state dict.*state_dict"):
        WanStreamingDecoder.from_wan_pth(path, config=TINY)


def test_missing_and_unexpected_keys(vae_files, tmp_path):
    state = torch.load(vae_files / "Wan2.1_VAE.pth", weights_only=True)
    del state["decoder.upsamples.4.shortcut.weight"]
    state["decoder.extra.weight"] = torch.zeros(1)
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save(state, path)
    with pytest.raises(WeightFileError) as err:
        WanStreamingDecoder.from_wan_pth(path, config=TINY)
    message = str(err.value)
    assert str(path) in message and "original Wan2.1 VAE" in message
    assert "missing 1 keys: decoder.upsamples.4.shortcut.weight" in message
    assert "unexpected 1 keys: decoder.extra.weight" in message


def test_diffusers_layout_given_as_original_is_named(vae_files, tmp_path):
    path = tmp_path / "vae.safetensors"
    save_file(load_file(vae_files / "vae" / "diffusion_pytorch_model.safetensors"), path)
    with pytest.raises(WeightFileError, match=r"missing \d+ keys: .*unexpected \d+ keys: decoder\.conv_in"):
        WanStreamingDecoder.from_wan_pth(path, config=TINY)


def test_wrong_model_size(vae_files):
    with pytest.raises(
        WeightFileError, match=r"wrong shape .*wrong model size\?\): decoder\.conv1\.bias \(32,\) != \(384,\)"
    ):
        WanStreamingDecoder.from_wan_pth(vae_files / "Wan2.1_VAE.pth")  # real-size config, tiny file


def test_diffusers_folder_errors(vae_files, tmp_path):
    with pytest.raises(WeightFileError, match="config.json: no such file"):
        WanStreamingDecoder.from_diffusers_dir(tmp_path)
    folder = tmp_path / "vae"
    folder.mkdir()
    config = json.loads((vae_files / "vae" / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightFileError, match="no weight file found"):
        WanStreamingDecoder.from_diffusers_dir(folder)
    (folder / "config.json").write_text(json.dumps({**config, "is_residual": True}))
    with pytest.raises(WeightFileError, match="Wan 2.2"):
        WanStreamingDecoder.from_diffusers_dir(folder)
    (folder / "config.json").write_text(json.dumps({**config, "_class_name": "AutoencoderKL"}))
    with pytest.raises(WeightFileError, match="expected AutoencoderKLWan"):
        WanStreamingDecoder.from_diffusers_dir(folder)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(WeightFileError, match="not a readable safetensors file"):
        WanStreamingDecoder.from_diffusers_dir(folder)
