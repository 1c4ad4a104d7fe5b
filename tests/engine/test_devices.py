"""Where tensors live: data, params, generators and checkpoints on the chosen device, and a resumed
run on another device. Each test runs on the CPU here and on CUDA (marked ``cuda``, skipped when
absent), so the CUDA path runs the same checks on a machine that has a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints

from pyro_vi import cli, engine
from pyro_vi.commands import user_model
from pyro_vi.engine import rng
from pyro_vi.errors import PyroVIError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "my_model.py"
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
ACROSS = [pytest.param("cpu", "cuda", marks=pytest.mark.cuda, id="cpu-to-cuda"),
          pytest.param("cuda", "cpu", marks=pytest.mark.cuda, id="cuda-to-cpu")]
QUIET = ["--no-progress", "--elbo-samples", "5", "--posterior-samples", "20"]


def model(data):
    f = pyro.sample("f", dist.Beta(data.new_tensor(10.0), data.new_tensor(10.0)))
    with pyro.plate("data", data.shape[0]):
        pyro.sample("obs", dist.Bernoulli(f), obs=data)


def guide(data):
    """Params made like the data (``new_tensor``): on the data's device."""
    alpha = pyro.param("alpha", data.new_tensor(15.0), constraint=constraints.positive)
    beta = pyro.param("beta", data.new_tensor(15.0), constraint=constraints.positive)
    pyro.sample("f", dist.Beta(alpha, beta))


def _data(device: str) -> torch.Tensor:
    return torch.tensor([1.0] * 6 + [0.0] * 4, device=device)


def _fit(device: str, num_steps: int, path: Path, resume: bool = False):
    pyro.clear_param_store()
    return engine.fit(model, guide, _data(device), num_steps=num_steps, seed=0, checkpoint=path, resume=resume,
                      progress=False, optim=pyro.optim.Adam({"lr": 0.05}))


def _same(a: torch.Tensor, b: torch.Tensor, device: str) -> bool:
    # CPU: bit for bit (the README's promise); CUDA kernels may reorder a sum: equal to float rounding.
    return torch.equal(a, b) if device == "cpu" else torch.allclose(a, b, rtol=1e-5, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_params_checkpoints_and_generators_follow_the_data(device, tmp_path):
    """Params live where the data are; the same seed gives the same run; 10 + 10 resumed steps on
    the device equal 20 at once; the checkpoint loads on a machine without that device (CPU tensors)."""
    whole = _fit(device, 20, tmp_path / "whole.pt")
    assert {value.device.type for value in whole.params.values()} == {device}
    assert _same(whole.params["alpha"], _fit(device, 20, tmp_path / "again.pt").params["alpha"], device)
    _fit(device, 10, tmp_path / "parts.pt")
    parts = _fit(device, 20, tmp_path / "parts.pt", resume=True)
    assert parts.steps == 20 and parts.steps_this_call == 10
    for name in ("alpha", "beta"):
        assert parts.params[name].device.type == device and _same(parts.params[name], whole.params[name], device)
    saved = torch.load(tmp_path / "whole.pt", map_location="cpu", weights_only=True)
    assert set(saved["param_store"]["params"]) == {"alpha", "beta"}
    assert ("cuda" in saved["rng"]) == torch.cuda.is_available()  # every device's generator is saved
    state = rng.get_state()
    assert ("cuda" in state) == torch.cuda.is_available()


@pytest.mark.parametrize("saved_on, resumed_on", ACROSS)
def test_resume_on_another_device_is_handled_or_refused_in_one_line(saved_on, resumed_on, tmp_path):
    """A checkpoint written with the data on one device, resumed with the data on the other: the
    run continues with its params on the new device, or is refused with a PyroVIError naming it."""
    _fit(saved_on, 10, tmp_path / "run.pt")
    try:
        result = _fit(resumed_on, 20, tmp_path / "run.pt", resume=True)
    except PyroVIError as error:
        assert "device" in str(error).lower() and "\n" not in str(error), error
        return
    assert result.steps == 20 and all(np.isfinite(result.losses))
    assert {value.device.type for value in result.params.values()} == {resumed_on}


@pytest.mark.parametrize("device", DEVICES)
def test_data_files_are_read_onto_the_device(device, tmp_path):
    np.savez(tmp_path / "data.npz", x=np.arange(6.0), counts=np.array([1, 2, 3]))
    loaded = user_model.load_data(tmp_path / "data.npz", device)
    assert {value.device.type for value in loaded.kwargs.values()} == {device}
    from pyro_vi.vae.data import load_dataset

    digits = load_dataset("digits", device=device)
    assert digits.train_images.device.type == digits.test_images.device.type == device


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second GPU")
def test_cuda_n_puts_everything_on_that_gpu(tmp_path):
    result = _fit("cuda:1", 5, tmp_path / "run.pt")
    assert {str(value.device) for value in result.params.values()} == {"cuda:1"}


@pytest.mark.cuda
@pytest.mark.parametrize("first, then", [("cuda", "cuda"), ("cuda:0", "cpu"), ("cpu", "cuda")])
def test_the_fit_command_on_cuda_writes_portable_files_and_resumes(first, then, tmp_path):
    """pyro-vi fit --device cuda: params.pt holds CPU tensors (loadable anywhere); --resume on the
    same or the other device continues the run (or is one line, exit 2, naming the device)."""
    argv = ["fit", f"{EXAMPLE}:model", f"{EXAMPLE}:guide", "--data", str(EXAMPLE.with_name("my_model_data.npz")), *QUIET,
            "--out", str(tmp_path / "out")]
    assert cli.main([*argv, "--num-steps", "10", "--device", first]) == 0
    params = torch.load(tmp_path / "out" / "params.pt", weights_only=True)  # no map_location: CPU tensors
    assert {value.device.type for value in params.values()} == {"cpu"}
    status = cli.main([*argv, "--num-steps", "20", "--device", then, "--resume"])
    if status == 2:
        return  # refused (one line, tested by the CLI's own tests); the checkpoint is untouched
    assert status == 0
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["steps"] == 20


@pytest.mark.cuda
def test_the_vae_command_resumes_on_cuda(tmp_path):
    run = ["vae", "--z-dim", "2", "--hidden-dims", "16", "--batch-size", "100", "--no-progress", "--device", "cuda",
           "--checkpoint-every", "5", "--out", str(tmp_path / "vae")]
    assert cli.main([*run, "--epochs", "1"]) == 0
    assert cli.main([*run, "--epochs", "2", "--resume"]) == 0
    metrics = json.loads((tmp_path / "vae" / "metrics.json").read_text())
    assert metrics["epochs"] == 2
