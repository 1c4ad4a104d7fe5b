"""Faults during training: kill -9, Ctrl-C, NaN/inf, a failed checkpoint write.

The claim under test: whatever stops a run, the checkpoint on disk is a complete, good one, and
``--resume`` from it finishes with parameters bit-for-bit equal (CPU) to those of a run that was
never stopped.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch

from pyro_vi import cli
from pyro_vi.engine import checkpoint
from pyro_vi.errors import OutputError, TrainingDivergedError
from pyro_vi.vae.model import VAE
from pyro_vi.vae.train import TrainConfig, fit

# 1,497 digits in batches of 100: 14 steps per epoch, 2 epochs, a checkpoint after every step.
EPOCHS, STEPS_PER_EPOCH = 2, 1497 // 100
RUN = ["vae", "--epochs", "2", "--z-dim", "2", "--hidden-dims", "16", "--batch-size", "100", "--no-progress", "--device", "cpu"]
EVERY_STEP = ["--checkpoint-every", "1"]


def _saved(out: Path) -> dict:
    return torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)


def _position(run: dict) -> tuple[int, int]:
    """(epochs done, steps into the next) of a checkpoint's run state (the engine counts steps)."""
    return divmod(run["step"], STEPS_PER_EPOCH)


def _assert_same_run(out: Path, reference: Path) -> None:
    finished, expected = _saved(out), _saved(reference)
    assert finished["run"]["step"] == expected["run"]["step"] == EPOCHS * STEPS_PER_EPOCH
    params, expected_params = finished["param_store"]["params"], expected["param_store"]["params"]
    assert params.keys() == expected_params.keys()
    for name in params:
        assert torch.equal(params[name], expected_params[name]), f"{name} differs from the uninterrupted run"
    for key in ("train_elbo", "test_elbo"):
        assert [r[key] for r in finished["run"]["state"]["history"]] == [r[key] for r in expected["run"]["state"]["history"]]
    assert not list(out.glob(".*.tmp")), "a temporary file was left behind"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The reference: the same run, never stopped (and checkpointed only at epoch ends)."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    pyro.clear_param_store()
    assert cli.main([*RUN, "--out", str(out)]) == 0
    return out


def _wait_for_checkpoint(out: Path, epoch: int, step: int, process=None, timeout: float = 120.0) -> dict:
    """Poll until the checkpoint is at or past (epoch, step); return its run state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the run ended (status {process.returncode}) before it was stopped: {process.stderr.read()}")
        try:
            run = _saved(out)["run"]
            if _position(run) >= (epoch, step):
                return run
        except (FileNotFoundError, EOFError, RuntimeError):
            pass  # not written yet
        time.sleep(0.02)
    raise AssertionError("the run did not reach the point where it should be stopped")


# The killed run holds (sleeps) once it has checkpointed this step (epoch 2, step 7): the kill, sent
# once the checkpoint reaches epoch 2, step 3, lands anywhere from there to the hold (mid-write
# included) but never past the middle of epoch 2, however loaded the machine (it once could, by a race).
HOLD_AT_STEP = STEPS_PER_EPOCH + 7
HELD_RUN = (
    "import runpy, sys, time\n"
    "from pyro_vi.engine import checkpoint\n"
    "save = checkpoint.save\n"
    "def held(path, config, run, optimizer):\n"
    "    save(path, config, run, optimizer)\n"
    f"    if run.get('step', 0) >= {HOLD_AT_STEP}:\n"
    "        time.sleep(3600)\n"
    "checkpoint.save = held\n"
    "sys.argv = ['pyro-vi', *sys.argv[1:]]\n"
    "runpy.run_module('pyro_vi', run_name='__main__', alter_sys=True)\n"
)


@pytest.mark.smoke
def test_kill_9_then_resume_equals_uninterrupted_run(uninterrupted, tmp_path):
    out = tmp_path / "run"
    # Same thread count as this process, so both sides split their sums the same way.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    process = subprocess.Popen(
        [sys.executable, "-c", HELD_RUN, *RUN, *EVERY_STEP, "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        at_kill = _wait_for_checkpoint(out, epoch=1, step=3, process=process)  # early in epoch 2
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        with process.stderr:  # closed, not left to the garbage collector (a ResourceWarning)
            stderr = process.stderr.read()
    assert process.returncode == -signal.SIGKILL, stderr
    killed = _saved(out)["run"]
    killed_epoch, killed_step = _position(killed)
    assert killed_epoch < EPOCHS and 0 < killed_step < STEPS_PER_EPOCH, "the kill should land mid-epoch"
    assert at_kill["step"] <= killed["step"] <= HOLD_AT_STEP

    pyro.clear_param_store()
    assert cli.main([*RUN, *EVERY_STEP, "--out", str(out), "--resume"]) == 0
    _assert_same_run(out, uninterrupted)


@pytest.mark.parametrize(
    "signal_number, resume",
    [pytest.param(signal.SIGINT, True, id="ctrl-c"), pytest.param(signal.SIGTERM, False, id="sigterm")],
)
def test_interrupt_saves_a_checkpoint_exits_130_and_resumes_exactly(signal_number, resume, uninterrupted, tmp_path, capsys,
                                                                    monkeypatch):
    """Ctrl-C (and SIGTERM, as sent by schedulers and torchrun) stops at a step boundary. The signal
    is sent right after the checkpoint of epoch 2, step 5 is written (not by a thread polling the
    file: under load the run once went past the epoch before the signal came)."""
    out = tmp_path / "run"
    real_save, sent = checkpoint.save, []

    def save_then_interrupt(path, config, run, optimizer):
        real_save(path, config, run, optimizer)
        if run.get("step") == STEPS_PER_EPOCH + 5 and not sent:
            sent.append(run["step"])
            os.kill(os.getpid(), signal_number)

    handler_before = signal.getsignal(signal_number)
    monkeypatch.setattr(checkpoint, "save", save_then_interrupt)
    status = cli.main([*RUN, *EVERY_STEP, "--out", str(out)])
    monkeypatch.undo()
    assert sent == [STEPS_PER_EPOCH + 5]
    assert status == 130
    assert "checkpoint saved" in capsys.readouterr().out
    stopped = _saved(out)["run"]
    stopped_epoch, stopped_step = _position(stopped)
    assert stopped_epoch == 1 and 5 <= stopped_step < STEPS_PER_EPOCH
    assert not (out / "metrics.json").exists()  # a stopped run does not report
    assert signal.getsignal(signal_number) == handler_before  # the previous handler is back
    if not resume:
        return

    pyro.clear_param_store()
    assert cli.main([*RUN, *EVERY_STEP, "--out", str(out), "--resume"]) == 0
    _assert_same_run(out, uninterrupted)


# --------------------------------------------------------------------------------------------
# NaN/inf: stop with the last good checkpoint intact, or skip the step.


def _poisoned_model(vae: VAE, bad_call: int, value: float):
    """The VAE's model, with a NaN/inf log-density added on its ``bad_call``-th call."""
    calls = {"count": 0}

    def model(x, indices, num_data, kl_weight=1.0):
        calls["count"] += 1
        vae.model(x, indices, num_data, kl_weight)
        if calls["count"] == bad_call:
            pyro.factor("poison", x.new_tensor(value))

    return model


def _images() -> torch.Tensor:
    return torch.rand(60, 16, generator=torch.Generator().manual_seed(0))


@pytest.mark.filterwarnings("ignore:Encountered NaN:UserWarning")  # Pyro warns of the NaN this test feeds in
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_nan_loss_stops_with_last_good_checkpoint_intact(value, tmp_path):
    path = tmp_path / "checkpoint.pt"
    vae = VAE(16, z_dim=2, hidden_dims=(8,))
    config = TrainConfig(epochs=2, batch_size=10, checkpoint_every_steps=1, binarization="threshold")
    with pytest.raises(TrainingDivergedError, match="epoch 2, step 2.*checkpoint .* holds an earlier good step"):
        fit(_poisoned_model(vae, 8, value), vae.guide, _images(), config, checkpoint_path=path, progress=False)
    saved = checkpoint.load(path)
    assert saved["run"]["step"] == 7  # 1 epoch of 6 steps and 1 step: the 7th step, the last good one
    for name, value_now in pyro.get_param_store().items():  # nothing was updated by the bad step
        assert torch.equal(saved["param_store"]["params"][name], value_now.detach()), name
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.filterwarnings("ignore:Encountered NaN:UserWarning")  # Pyro warns of the NaN this test feeds in
def test_nan_loss_skipped_with_on_nan_skip():
    vae = VAE(16, z_dim=2, hidden_dims=(8,))
    config = TrainConfig(epochs=2, batch_size=10, binarization="threshold", on_nan="skip")
    result = fit(_poisoned_model(vae, 8, float("nan")), vae.guide, _images(), config, progress=False)
    assert result.skipped_steps == 1 and result.epochs == 2 and result.steps == 12
    assert all(torch.isfinite(value).all() for _, value in pyro.get_param_store().items())


NAN_MODEL = """
import pyro
import pyro.distributions as dist


def model(data):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", data.shape[0]):
        pyro.sample("obs", dist.Normal(z, 1e-30), obs=data)  # 1e-30 squared underflows: log-density -inf


def guide(data):
    loc = pyro.param("loc", lambda: data.new_zeros(()))
    pyro.sample("z", dist.Normal(loc, 1.0))
"""


def test_cli_nan_loss_is_one_line_and_writes_nothing(tmp_path, capsys):
    """A Gaussian likelihood with scale 1e-30 overflows to inf at the first step."""
    (tmp_path / "nan_model.py").write_text(NAN_MODEL)
    np.save(tmp_path / "data.npy", np.ones(10, dtype=np.float32))
    out = tmp_path / "run"
    status = cli.main(["fit", f"{tmp_path / 'nan_model.py'}:model", f"{tmp_path / 'nan_model.py'}:guide",
                       "--data", str(tmp_path / "data.npy"), "--no-progress", "--out", str(out)])
    stderr = capsys.readouterr().err
    assert status == 2
    assert stderr.count("\n") == 1 and "became NaN/inf at step 1" in stderr
    assert "checkpoint" not in stderr  # there is none yet, and it says so by not claiming one
    assert not out.exists() or list(out.iterdir()) == []  # the OUT this failed run created is removed again


# --------------------------------------------------------------------------------------------
# A failed checkpoint write (disk full) keeps the previous checkpoint.


class _DiskFullFile:
    """A file whose first write stores half of the bytes, then fails with ENOSPC."""

    def __init__(self, file):
        self._file = file

    def write(self, data):
        data = bytes(data)
        self._file.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._file.__exit__(*exc)


def _disk_full_after(monkeypatch, good_writes: int) -> None:
    real_fdopen, count = os.fdopen, {"writes": 0}

    def fdopen(descriptor, *args, **kwargs):
        count["writes"] += 1
        file = real_fdopen(descriptor, *args, **kwargs)
        return file if count["writes"] <= good_writes else _DiskFullFile(file)

    monkeypatch.setattr(os, "fdopen", fdopen)


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    vae = VAE(16, z_dim=2, hidden_dims=(8,))
    config = TrainConfig(epochs=2, batch_size=10, checkpoint_every_steps=1, binarization="threshold")
    _disk_full_after(monkeypatch, good_writes=4)
    with pytest.raises(OutputError, match="No space left on device.*previous checkpoint is intact"):
        fit(vae.model, vae.guide, _images(), config, checkpoint_path=path, progress=False)
    monkeypatch.undo()
    saved = checkpoint.load(path)  # complete and readable
    assert saved["run"]["step"] == 4
    assert not list(tmp_path.glob(".*.tmp")), "the half-written temporary must be removed"
