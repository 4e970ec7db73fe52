"""Every class of bad input: one specific line, a non-zero exit, no traceback, nothing written."""

import re
from dataclasses import replace

import pytest
import torch

from memrope.cli import main

from .models.tiny_wan_files import PIXELS, TINY_REAL, original_state, random_wan, self_forcing_dict, write_wan_dir


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    return write_wan_dir(tmp_path_factory.mktemp("wan"), "original")


def good_state():
    return original_state(random_wan(TINY_REAL, 0))


def write_checkpoint(path, kind):
    if kind == "not_a_checkpoint":
        path.write_text("these are not weights\n")
    elif kind == "truncated":
        m = random_wan(TINY_REAL, 0)
        torch.save(self_forcing_dict(m, m, m), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "wrong_size":
        big = random_wan(replace(TINY_REAL, num_layers=TINY_REAL.num_layers + 1), 0)
        torch.save({"generator_ema": {f"model.{k}": v for k, v in original_state(big).items()}}, path)
    elif kind == "nan_weights":
        state = good_state()
        state["blocks.0.self_attn.q.weight"][0, 0] = float("nan")
        torch.save({"generator_ema": {f"model.{k}": v for k, v in state.items()}}, path)
    elif kind == "missing_keys":
        state = good_state()
        del state["head.head.weight"]
        torch.save({"generator_ema": {f"model.{k}": v for k, v in state.items()}}, path)


def run(capsys, argv):
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("kind,message", [
    ("not_a_checkpoint", r"ckpt\.pt"),
    ("truncated", r"ckpt\.pt"),
    ("wrong_size", r"ckpt\.pt"),
    ("nan_weights", r"(?i)(nan|non-finite)"),
    ("missing_keys", r"head\.head\.weight"),
])
def test_bad_checkpoint_files(tmp_path, capsys, wan_dir, kind, message):
    ckpt = tmp_path / "ckpt.pt"
    write_checkpoint(ckpt, kind)
    out = tmp_path / "v.mp4"
    code, err = run(capsys, ["generate", "--model", "self-forcing", "--checkpoint", str(ckpt), "--wan-dir",
                             str(wan_dir), "--height", str(PIXELS), "--width", str(PIXELS), "--latent-frames", "3",
                             "--out", str(out), "--no-progress", "--checkpoint-every", "1"])
    assert code == 2
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("memrope: error:")
    assert re.search(message, err), err
    assert not out.exists() and not (tmp_path / "v.mp4.run").exists()


@pytest.mark.parametrize("argv,message", [
    (["--policy-opt", "cache_sise=12"], r"unknown option\(s\) cache_sise; known options"),
    (["--policy-opt", "sink=20"], r"must hold sink \(20\)"),
    (["--prompt", ""], r"empty prompt"),
    (["--prompt", "a red disc[10s] | a blue ring[x]"], r"cannot read the duration tag"),
    (["--prompt", "a red disc[60s] | a blue ring[5s]", "--duration", "10"], r"only \d+ chunks"),
    (["--schedule", "/nonexistent/schedule.yaml"], r"does not exist"),
    (["--resume", "/nonexistent/run"], r"not a memrope run directory"),
    (["--decode-device", "cuda:7"], r"--decode-device cuda:7 requested but this machine has \d+ CUDA"),
    (["--decode-device", "gpu"], r"--decode-device 'gpu' is not a device"),
])
def test_bad_values_and_schedules(tmp_path, capsys, argv, message):
    out = tmp_path / "v.mp4"
    full = ["generate", *argv, "--no-progress"] + ([] if "--resume" in argv else
                                                    ["--out", str(out), "--checkpoint-every", "2"])
    code, err = run(capsys, full)
    assert code == 2 and "Traceback" not in err
    assert re.search(message, err), err
    assert not out.exists() and not (tmp_path / "v.mp4.run").exists()


def test_over_long_prompt_is_truncated_with_a_warning(tmp_path, capsys):
    out = tmp_path / "v.mp4"
    code, err = run(capsys, ["generate", "--prompt", " ".join(["red"] * 400), "--latent-frames", "3",
                             "--out", str(out), "--no-progress"])
    assert code == 0 and "warning: prompt cut to the encoder's" in err


@pytest.mark.parametrize("argv", [["--seed", "x"], ["--duration", "-1"], ["--latent-frames", "0"],
                                  ["--checkpoint-every", "0"], ["--model", "sd15"]])
def test_wrong_cli_values_are_usage_errors(tmp_path, capsys, argv):
    out = tmp_path / "v.mp4"
    with pytest.raises(SystemExit) as exc:
        main(["generate", *argv, "--out", str(out)])
    assert exc.value.code == 2
    assert "Traceback" not in capsys.readouterr().err and not out.exists()
