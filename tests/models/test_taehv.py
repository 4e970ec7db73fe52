"""TAEHV streaming decoder: the released layout, streaming == one-shot == frame at a time, frame counts
that agree with the Wan VAE, resume, loud errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from memrope.models.taehv import (
    TAEHVConfig,
    TAEHVDecoderNet,
    TAEHVStreamingDecoder,
    TimeGrow,
)
from memrope.models.weight_files import WeightFileError

TINY = TAEHVConfig(widths=(8, 8, 4, 4))
LATENT_HW = (2, 3)
ENCODER_WIDTH = 4


# --- the released file's keys, written from madebyollin/taehv's module structure (independent of the module) --
def released_decoder_shapes(lat: int = 16, w: tuple[int, ...] = (256, 128, 64, 64),
                            grow: tuple[int, ...] = (1, 2, 2)) -> dict[str, tuple[int, ...]]:
    shapes = {"decoder.1.weight": (w[0], lat, 3, 3), "decoder.1.bias": (w[0],)}
    idx = 3
    for stage in range(3):
        c = w[stage]
        for _ in range(3):  # MemBlock: conv(2c, c), ReLU, conv(c, c), ReLU, conv(c, c)
            for j, n_in in ((0, 2 * c), (2, c), (4, c)):
                shapes[f"decoder.{idx}.conv.{j}.weight"] = (c, n_in, 3, 3)
                shapes[f"decoder.{idx}.conv.{j}.bias"] = (c,)
            idx += 1
        idx += 1  # Upsample
        shapes[f"decoder.{idx}.conv.weight"] = (c * grow[stage], c, 1, 1)  # TGrow
        idx += 1
        shapes[f"decoder.{idx}.weight"] = (w[stage + 1], c, 3, 3)  # conv, no bias
        idx += 1
    idx += 1  # ReLU
    shapes[f"decoder.{idx}.weight"] = (3, w[3], 3, 3)
    shapes[f"decoder.{idx}.bias"] = (3,)
    return shapes


def released_encoder_shapes(w: int = 64, lat: int = 16) -> dict[str, tuple[int, ...]]:
    """The encoder half the released file also holds (conv, TPool, strided conv, 3 MemBlocks; x3)."""
    shapes = {"encoder.0.weight": (w, 3, 3, 3), "encoder.0.bias": (w,)}
    idx = 2
    for pool in (2, 2, 1):
        shapes[f"encoder.{idx}.conv.weight"] = (w, w * pool, 1, 1)
        shapes[f"encoder.{idx + 1}.weight"] = (w, w, 3, 3)
        for b in range(3):
            for j, n_in in ((0, 2 * w), (2, w), (4, w)):
                shapes[f"encoder.{idx + 2 + b}.conv.{j}.weight"] = (w, n_in, 3, 3)
                shapes[f"encoder.{idx + 2 + b}.conv.{j}.bias"] = (w,)
        idx += 5
    shapes[f"encoder.{idx}.weight"] = (lat, w, 3, 3)
    shapes[f"encoder.{idx}.bias"] = (lat,)
    return shapes


def random_net(config: TAEHVConfig = TINY, seed: int = 0) -> TAEHVDecoderNet:
    torch.manual_seed(seed)
    net = TAEHVDecoderNet(config)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.4 * torch.randn_like(p))
    return net.eval()


def released_file_state(net: TAEHVDecoderNet) -> dict[str, torch.Tensor]:
    """Everything a taew2_1 file holds: the decoder's weights and (random) encoder weights."""
    gen = torch.Generator().manual_seed(5)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state.update({k: torch.randn(s, generator=gen)
                  for k, s in released_encoder_shapes(ENCODER_WIDTH, net.config.latent_channels).items()})
    return state


def frame_at_a_time(net: TAEHVDecoderNet, latents: torch.Tensor) -> torch.Tensor:
    """Slow reference: one frame through one layer at a time, depth first in causal order (upstream's
    sequential traversal); latents [B, C, N, h, w] -> pixels [B, 4N, 3, H, W] before trimming."""
    layers = list(net.decoder)
    memory: dict[int, torch.Tensor] = {}
    out: list[torch.Tensor] = []

    def through(i: int, x: torch.Tensor) -> None:
        if i == len(layers):
            out.append(x.clamp(0, 1))
            return
        layer = layers[i]
        if isinstance(layer, TimeGrow):
            grown = layer.conv(x)  # [B, C * s, H, W]; frame j = channels [j C, (j + 1) C)
            for part in grown.chunk(layer.stride, dim=1):
                through(i + 1, part)
            return
        if hasattr(layer, "conv") and isinstance(layer.conv, torch.nn.Sequential):  # a memory block
            past = memory.get(i, torch.zeros_like(x))
            memory[i] = x
            through(i + 1, F.relu(layer.conv(torch.cat([x, past], 1)) + x))
            return
        through(i + 1, layer(x))

    for f in range(latents.shape[2]):
        through(0, latents[:, :, f])
    return torch.stack(out, dim=1)


@pytest.fixture(scope="module")
def net() -> TAEHVDecoderNet:
    return random_net()


@pytest.fixture(scope="module")
def taehv_file(net, tmp_path_factory):
    path = tmp_path_factory.mktemp("taehv") / "taew2_1.pth"
    torch.save(released_file_state(net), path)
    return path


def latents(n: int, seed: int = 1, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, TINY.latent_channels, n, *LATENT_HW, generator=torch.Generator().manual_seed(seed))


def test_real_size_layout_is_the_released_one():
    with torch.device("meta"):
        real = TAEHVDecoderNet(TAEHVConfig())
    got = {k: tuple(v.shape) for k, v in real.state_dict().items()}
    assert got == released_decoder_shapes()
    assert TAEHVConfig().temporal_stride == 4 and TAEHVConfig().frames_to_trim == 3
    assert TAEHVConfig().spatial_factor == 8
    # ~9.8 M decoder parameters (upstream's decoder size), counted from the written-out shapes
    assert sum(math.prod(s) for s in released_decoder_shapes().values()) == sum(p.numel() for p in real.parameters())


@pytest.mark.parametrize("chunks", [(6,), (3, 3), (1, 2, 3), (1, 1, 1, 1, 1, 1)])
def test_streaming_equals_one_shot_and_frame_at_a_time(net, chunks):
    z = latents(sum(chunks))
    with torch.no_grad():
        slow = frame_at_a_time(net, z)[:, 3:]  # upstream trims the 3 startup frames
        one_shot = TAEHVStreamingDecoder(net).decode_float(z)
        dec = TAEHVStreamingDecoder(net)
        parts, start = [], 0
        for n in chunks:
            parts.append(dec.decode_float(z[:, :, start:start + n]))
            start += n
    streamed = torch.cat(parts, dim=1)
    assert one_shot.shape == (1, 1 + 4 * (sum(chunks) - 1), 3, 8 * LATENT_HW[0], 8 * LATENT_HW[1])
    torch.testing.assert_close(one_shot, slow, rtol=0, atol=1e-5)
    torch.testing.assert_close(streamed, one_shot, rtol=0, atol=1e-5)


def test_frame_counts_agree_with_the_wan_vae(net):
    dec = TAEHVStreamingDecoder(net)
    counts = [dec.decode(latents(3, seed=k)).shape[1] for k in range(4)]
    assert counts == [1 + 4 * 2, 12, 12, 12]  # WanStreamingDecoder: 1 + 4 (F - 1), then 4 F
    assert counts == [dec.frames_for(3, first=k == 0) for k in range(4)]
    assert sum(counts) == 1 + 4 * (12 - 1)


def test_uint8_frames(net):
    dec = TAEHVStreamingDecoder(net)
    z = latents(3, batch=2)
    frames = dec.decode(z)
    assert frames.dtype == torch.uint8 and frames.shape == (2, 9, 16, 24, 3)
    pixels = TAEHVStreamingDecoder(net).decode_float(z).permute(0, 1, 3, 4, 2)
    # [0, 1] as [-1, 1] (2 x - 1), then the run's quantisation: truncation by default, rounding on request
    assert torch.equal(frames, (255 * ((2 * pixels - 1 + 1) / 2)).to(torch.uint8))
    rounded = TAEHVStreamingDecoder(net, pixels="round").decode(z)
    assert torch.equal(rounded, (255 * ((2 * pixels - 1 + 1) / 2)).round().to(torch.uint8))


def test_state_dict_round_trip_resumes_exactly(net, tmp_path):
    z = latents(9)
    whole = TAEHVStreamingDecoder(net)
    ref = [whole.decode(z[:, :, i:i + 3]) for i in (0, 3, 6)]
    first = TAEHVStreamingDecoder(net)
    first.decode(z[:, :, :3])
    state = first.state_dict()
    save_file(state, tmp_path / "state.safetensors")  # safetensors-ready, as checkpoints store it
    from safetensors.torch import load_file

    resumed = TAEHVStreamingDecoder(net)
    resumed.load_state_dict(load_file(tmp_path / "state.safetensors"))
    assert torch.equal(resumed.decode(z[:, :, 3:6]), ref[1])
    assert torch.equal(resumed.decode(z[:, :, 6:9]), ref[2])
    assert sorted(state) == ["frames_decoded"] + sorted(f"memory.{i}" for i in net.memory_layers())


def test_reset_starts_a_new_video(net):
    dec = TAEHVStreamingDecoder(net)
    a = dec.decode(latents(3))
    dec.decode(latents(3, seed=2))
    dec.reset()
    assert torch.equal(dec.decode(latents(3)), a)


def test_bad_state_and_latents(net):
    dec = TAEHVStreamingDecoder(net)
    with pytest.raises(ValueError, match="needs frames_decoded"):
        dec.load_state_dict({})
    with pytest.raises(ValueError, match="unexpected entry memory.2"):
        dec.load_state_dict({"frames_decoded": torch.tensor(0), "memory.2": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"latents must be \[B, 16, F, h, w\]"):
        dec.decode(torch.zeros(1, 4, 3, 2, 2))


def test_file_loads_in_both_formats(net, taehv_file, tmp_path):
    z = latents(3)
    expected = TAEHVStreamingDecoder(net).decode(z)
    assert torch.equal(TAEHVStreamingDecoder.from_file(taehv_file).decode(z), expected)
    st = tmp_path / "taew2_1.safetensors"
    save_file(released_file_state(net), st)
    loaded = TAEHVStreamingDecoder.from_file(st)
    assert loaded.config == TINY and torch.equal(loaded.decode(z), expected)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(WeightFileError, match="no such file"):
        TAEHVStreamingDecoder.from_file(tmp_path / "taew2_1.pth")
    foreign = tmp_path / "vae.pth"
    torch.save({"decoder.conv1.weight": torch.zeros(4, 4, 3, 3, 3)}, foreign)
    with pytest.raises(WeightFileError,
                       match=r"no TAEHV decoder found \(missing decoder.1.weight, decoder.22.weight\)"):
        TAEHVStreamingDecoder.from_file(foreign)


def test_wrong_keys_shapes_and_values(net, tmp_path):
    state = released_file_state(net)
    extra = dict(state, **{"decoder.5.conv.6.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(WeightFileError, match=r"unexpected 1 keys: decoder.5.conv.6.weight"):
        TAEHVStreamingDecoder.from_file(tmp_path / "extra.pth")
    wrong = dict(state, **{"decoder.9.conv.2.weight": torch.zeros(8, 8, 1, 1)})
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(WeightFileError, match=r"decoder.9.conv.2.weight \(8, 8, 1, 1\) != \(8, 8, 3, 3\)"):
        TAEHVStreamingDecoder.from_file(tmp_path / "wrong.pth")
    patched = dict(state, **{"decoder.22.weight": torch.zeros(12, 4, 3, 3), "decoder.22.bias": torch.zeros(12)})
    torch.save(patched, tmp_path / "taew2_2.pth")
    with pytest.raises(WeightFileError, match="writes 12 channels, not RGB"):
        TAEHVStreamingDecoder.from_file(tmp_path / "taew2_2.pth")
    nan = dict(state, **{"decoder.1.bias": torch.full_like(state["decoder.1.bias"], float("nan"))})
    torch.save(nan, tmp_path / "nan.pth")
    with pytest.raises(WeightFileError, match="non-finite values in decoder.1.bias"):
        TAEHVStreamingDecoder.from_file(tmp_path / "nan.pth")
