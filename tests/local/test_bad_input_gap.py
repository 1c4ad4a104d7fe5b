"""Hostile input to ``pyro-vi gap``: infinite rates, options that contradict the checkpoint,
sizes that cannot be allocated, an OUT that is empty, busy or another command's, Ctrl-C during
its training and a disk that fills while writing the figure. One line each, nothing half-written.
"""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import pyro
import pytest
import torch

from pyro_vi import cli, io
from pyro_vi.engine import checkpoint
from pyro_vi.vae.model import VAE
from pyro_vi.engine.optim import Adam

GAP = ["gap", "--num-points", "10", "--iwae-k", "10", "--refine-steps", "0,1", "--meanfield-steps", "1",
       "--elbo-samples", "2", "--refine-samples", "2", "--no-progress"]
TRAIN = ["--epochs", "1", "--z-dim", "2", "--hidden-dims", "8", "--batch-size", "100"]


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory) -> Path:
    """A directory as ``pyro-vi vae`` leaves it: checkpoint.pt and metrics.json."""
    out = tmp_path_factory.mktemp("vae") / "run"
    out.mkdir()
    pyro.clear_param_store()
    vae = VAE(64, z_dim=2, hidden_dims=(8,))
    optimizer = Adam({"lr": 1e-2})
    svi = pyro.infer.SVI(vae.model, vae.guide, optimizer, pyro.infer.Trace_ELBO())
    svi.step(torch.rand(10, 64, generator=torch.Generator().manual_seed(0)))
    run = {"history": [], "epoch": 1, "step": 0, "permutation": None, "epoch_loss": 0.0}
    checkpoint.save(out / "checkpoint.pt", {"model": {**vae.config, "dataset": "digits"}, "train": {}}, run, optimizer)
    (out / "metrics.json").write_text('{"test_elbo": -37.52}\n')
    pyro.clear_param_store()
    return out


def _run(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        status = cli.main(argv)
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err


def _one_line(stderr: str, fragment: str) -> None:
    assert "Traceback" not in stderr and stderr.count("\n") == 1, stderr
    assert stderr.startswith("pyro-vi gap: error:") and fragment.lower() in stderr.lower(), stderr


OPTION_CASES = [
    pytest.param(["--refine-learning-rate", "inf"], "--refine-learning-rate must be positive and finite", id="gap-refine-lr-inf"),
    pytest.param(["--kl-weight", "inf"], "--kl-weight must be positive and finite", id="gap-kl-weight-inf"),
    pytest.param(["--learning-rate", "inf"], "--learning-rate must be positive and finite", id="gap-learning-rate-inf"),
    pytest.param(["--hidden-dims", "400000000"], "hidden sizes (400000000,)", id="gap-hidden-dims-absurd"),
    pytest.param(["--z-dim", "2000000000"], "z_dim 2000000000", id="gap-z-dim-absurd"),
    pytest.param(["--elbo-samples", "2000000000"], "--elbo-samples 2000000000 needs", id="gap-elbo-samples-absurd"),
    pytest.param(["--refine-samples", "2000000000"], "--refine-samples 2000000000 needs", id="gap-refine-samples-absurd"),
    pytest.param(["--chunk-size", "2000000000", "--iwae-k", "2000000000"], "--chunk-size 2000000000 needs", id="gap-chunk-size-absurd"),
    pytest.param(["--out", ""], "the output directory is empty", id="gap-out-empty"),
    pytest.param(["--out", "x" * 300], "file name too long", id="gap-out-name-too-long"),
]


@pytest.mark.parametrize("extra, fragment", OPTION_CASES)
def test_cli_gap_bad_option(extra, fragment, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, stderr = _run([*GAP, *TRAIN, "--out", str(tmp_path / "gap"), *extra], capsys)
    assert status == 2
    _one_line(stderr, fragment)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option", [["--z-dim", "7"], ["--hidden-dims", "16"], ["--epochs", "3"], ["--kl-weight", "2"]],
                         ids=lambda o: f"gap-checkpoint-with-{o[0][2:]}")
def test_cli_gap_option_contradicting_the_checkpoint(option, vae_run, tmp_path, capsys):
    status, stderr = _run([*GAP, "--checkpoint", str(vae_run / "checkpoint.pt"), *option, "--out", str(tmp_path / "gap")], capsys)
    assert status == 2
    _one_line(stderr, f"{option[0]} applies only when training here")
    assert not (tmp_path / "gap").exists()


def test_cli_gap_into_the_vae_run_is_refused_without_overwrite(vae_run, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("checkpoint.pt", "metrics.json"):
        (out / name).write_bytes((vae_run / name).read_bytes())
    status, stderr = _run([*GAP, "--checkpoint", str(out / "checkpoint.pt"), "--out", str(out)], capsys)
    assert status == 2
    _one_line(stderr, "already holds outputs of another run (checkpoint.pt, metrics.json)")
    assert (out / "metrics.json").read_text() == '{"test_elbo": -37.52}\n'
    status, stderr = _run([*GAP, "--checkpoint", str(out / "checkpoint.pt"), "--out", str(out), "--overwrite"], capsys)
    assert status == 0, stderr
    assert "approximation_gap" in json.loads((out / "metrics.json").read_text())


def test_cli_gap_into_a_busy_out_is_refused(vae_run, tmp_path, capsys):
    out = tmp_path / "gap"
    out.mkdir()
    with io.lock_output(out):
        status, stderr = _run([*GAP, "--checkpoint", str(vae_run / "checkpoint.pt"), "--out", str(out)], capsys)
    assert status == 2
    _one_line(stderr, "another pyro-vi run is writing to")
    assert list(out.iterdir()) == []


def test_cli_gap_interrupted_training_writes_nothing(tmp_path, capsys, monkeypatch):
    """Ctrl-C while gap trains its VAE: exit 130 and no metrics of a half-trained model. The signal
    is sent from the training loop's callback after step 3 (not by a timer: no race with the setup)."""
    from pyro_vi import engine

    real_fit = engine.fit

    def fit_then_ctrl_c(*args, callback=None, **kwargs):
        def callback_then_ctrl_c(step, loss):
            if step == 3:
                os.kill(os.getpid(), signal.SIGINT)
            return callback(step, loss) if callback is not None else None

        return real_fit(*args, callback=engine.step.reads_only(callback_then_ctrl_c), **kwargs)

    monkeypatch.setattr(engine, "fit", fit_then_ctrl_c)
    out = tmp_path / "gap"
    status, stderr = _run([*GAP, "--epochs", "500", "--z-dim", "2", "--hidden-dims", "8", "--out", str(out)], capsys)
    assert status == 130, stderr
    assert "Traceback" not in stderr and stderr.count("\n") == 1 and "interrupted" in stderr, stderr
    assert not out.exists()


def test_cli_gap_disk_full_while_writing_the_figure(vae_run, tmp_path, capsys, monkeypatch):
    real_atomic_write = io.atomic_write

    def disk_full_for_png(path, write, mode="wb"):
        if str(path).endswith(".png"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_atomic_write(path, write, mode)

    monkeypatch.setattr(io, "atomic_write", disk_full_for_png)
    out = tmp_path / "gap"
    status, stderr = _run([*GAP, "--checkpoint", str(vae_run / "checkpoint.pt"), "--out", str(out)], capsys)
    assert status == 2
    _one_line(stderr, "could not write")
    assert "no space left on device" in stderr.lower() and not (out / "metrics.json").exists()
