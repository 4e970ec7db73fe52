"""No pickle is ever executed; nothing opens a network connection."""

import pickle
import socket

import pytest
import torch


class Payload:
    """Unpickling this would run os.system and create a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def malicious_checkpoint(path, marker):
    with open(path, "wb") as f:
        pickle.dump({"generator_ema": Payload(marker)}, f)


def test_weight_reader_refuses_a_malicious_pickle_without_running_it(tmp_path):
    from memrope.models.weight_files import WeightFileError, read_state_dict

    marker = tmp_path / "pwned"
    evil = tmp_path / "self_forcing_dmd.pt"
    malicious_checkpoint(evil, marker)
    with pytest.raises(WeightFileError) as err:
        read_state_dict(evil, "a Self-Forcing checkpoint")
    assert str(evil) in str(err.value)
    assert not marker.exists()
    # torch.save'd (zip) variant of the same payload
    evil_zip = tmp_path / "zip.pt"
    torch.save({"generator_ema": Payload(marker)}, evil_zip)
    with pytest.raises(WeightFileError):
        read_state_dict(evil_zip, "a Self-Forcing checkpoint")
    assert not marker.exists()


def test_cli_refuses_a_malicious_checkpoint(tmp_path, capsys):
    from memrope.cli import main

    marker = tmp_path / "pwned"
    evil = tmp_path / "self_forcing_dmd.pt"
    malicious_checkpoint(evil, marker)
    out = tmp_path / "v.mp4"
    code = main(["generate", "--model", "self-forcing", "--checkpoint", str(evil), "--wan-dir", str(tmp_path),
                 "--out", str(out), "--no-progress"])
    assert code == 2
    assert not marker.exists() and not out.exists()
    assert "Traceback" not in capsys.readouterr().err


def test_default_generation_opens_no_socket(tmp_path, monkeypatch):
    from memrope.cli import main

    def refuse(*a, **k):
        raise AssertionError("memrope tried to open a network connection")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert main(["generate", "--latent-frames", "6", "--out", str(tmp_path / "v.mp4"), "--no-progress"]) == 0
