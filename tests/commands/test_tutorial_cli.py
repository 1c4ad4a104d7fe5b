"""Tutorial model/guide pairs (tests/tutorial_models/) through ``pyro-vi fit FILE.py:model GUIDE
--data DATA.npz``, against plain ``pyro.infer.SVI`` from the same seed, and the closed forms.

The reference reproduces what the command does with the RNG: seed, call the guide once (the
command's check call, which creates the params: the GMM's ``init_loc_fn`` and the AutoGuides draw
their initial values here), seed again (``pyro_vi.fit(seed=...)``), then ``SVI.step`` with the npz
arrays as keyword arguments. With ``--optimizer clipped-adam`` (Pyro's own ``ClippedAdam``) the
params must then be equal bit for bit (``torch.equal``) and the loss equal at every step.

The coin runs through the installed ``pyro-vi`` script in a subprocess; the others through
``pyro_vi.cli.main`` in this process (the same entry point, without ~3 s of imports per run).
"""

from __future__ import annotations

import csv
import functools
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO, TraceEnum_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_vi import cli
from tutorial_models import MODELS, load

import launch  # tests/launch.py: commands in a forked warm interpreter


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def write_data(tmp_path: Path, name: str) -> tuple[Path, dict]:
    arrays = load(name).make_data()
    path = tmp_path / f"{name}.npz"
    np.savez(path, **arrays)
    return path, {key: torch.as_tensor(value) for key, value in arrays.items()}


def pyro_vi_fit(tmp_path: Path, name: str, guide: str, data: Path, options: list[str], in_process: bool = True):
    """Run ``pyro-vi fit``; return (params, metrics, {site or site[index]: posterior row})."""
    out = tmp_path / f"out_{name}"
    model_spec = f"{MODELS / name}.py:model"
    guide_spec = guide if guide.startswith("auto-") else f"{MODELS / name}.py:{guide}"
    argv = ["fit", model_spec, guide_spec, "--data", str(data), "--out", str(out), "--no-progress",
            "--elbo-samples", "5", *options]
    if in_process:
        assert cli.main(argv) == 0
    else:
        script = shutil.which("pyro-vi", path=str(Path(sys.executable).parent)) or shutil.which("pyro-vi")
        command = [script] if script else [sys.executable, "-m", "pyro_vi"]
        environment = {**os.environ, "OMP_NUM_THREADS": "1"}  # as this process (same float reductions)
        finished = launch.run([*command, *argv], env=environment, timeout=300)
        assert finished.returncode == 0, finished.stderr
    params = torch.load(out / "params.pt", weights_only=True)
    metrics = json.loads((out / "metrics.json").read_text())
    with open(out / "posterior.csv") as file:
        rows = {row["site"] + (f"[{row['index']}]" if row["index"] else ""): row for row in csv.DictReader(file)}
    return params, metrics, rows


def svi_reference(name: str, make_guide, data: dict, *, loss, optim, num_steps: int, seed: int):
    """Plain SVI as the command runs it (see the module docstring)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    module = load(name)
    model = functools.partial(module.model, **data)
    guide = functools.partial(make_guide(module), **data)
    poutine.trace(guide).get_trace()  # the command's check call: creates the params
    pyro.set_rng_seed(seed)
    svi = SVI(model, guide, optim, loss=loss)
    losses = [svi.step() for _ in range(num_steps)]
    return {key: value.detach().clone() for key, value in pyro.get_param_store().items()}, losses


def assert_same_run(params, metrics, reference_params, reference_losses):
    assert sorted(params) == sorted(reference_params) and params
    for key, value in reference_params.items():
        assert torch.equal(params[key], value), f"param {key!r} differs from plain SVI's"
    assert metrics["losses"] == reference_losses


@pytest.mark.smoke
def test_coin_through_the_pyro_vi_script(tmp_path):
    data_path, data = write_data(tmp_path, "coin")
    num_steps = 300
    params, metrics, rows = pyro_vi_fit(
        tmp_path, "coin", "guide", data_path, in_process=False,
        options=["--num-steps", str(num_steps), "--optimizer", "clipped-adam", "--learning-rate", "0.01",
                 "--particles", "16", "--vectorize-particles", "--posterior-samples", "2000"],
    )
    reference, losses = svi_reference("coin", lambda m: m.guide, data, num_steps=num_steps, seed=0,
                                      loss=Trace_ELBO(num_particles=16, vectorize_particles=True),
                                      optim=pyro.optim.ClippedAdam({"lr": 0.01}))
    assert_same_run(params, metrics, reference, losses)
    # Exact posterior Beta(16, 14): mean 0.5333, sd 0.0896. The command has no learning-rate decay,
    # so the params keep wandering: measured with this constant 0.01 over seeds 0-3, alpha
    # 15.5-16.1, beta 13.9-14.1, q mean within 0.0095 of 16/30, q sd within 1%. posterior.csv adds
    # the error of 2000 draws (0.002 on the mean, 1.6% on the sd). Bounds ~2x: 0.02, 5%, and 1.0.
    alpha, beta = params["alpha_q"].item(), params["beta_q"].item()
    assert abs(alpha - 16) < 1.0 and abs(beta - 14) < 1.0
    row = rows["latent_fairness"]
    assert abs(float(row["mean"]) - 16 / 30) < 0.02
    assert abs(float(row["sd"]) / 0.0896 - 1) < 0.05


def test_regression_known_noise_with_auto_normal_reaches_the_gaussian_posterior(tmp_path):
    data_path, data = write_data(tmp_path, "regression_known_noise")
    num_steps = 600
    params, metrics, rows = pyro_vi_fit(
        tmp_path, "regression_known_noise", "auto-normal", data_path,
        options=["--num-steps", str(num_steps), "--optimizer", "clipped-adam", "--learning-rate", "0.05",
                 "--posterior-samples", "2000"],
    )
    reference, losses = svi_reference("regression_known_noise", lambda m: AutoNormal(m.model), data,
                                      num_steps=num_steps, seed=0, loss=Trace_ELBO(), optim=pyro.optim.ClippedAdam({"lr": 0.05}))
    assert_same_run(params, metrics, reference, losses)
    module = load("regression_known_noise")
    mean, covariance = module.exact_posterior(data["x"], data["y"])
    exact_sd = np.sqrt(np.diag(covariance))
    mean_field_sd = 1 / np.sqrt(np.diag(np.linalg.inv(covariance)))
    keys = ["linear.weight[0,0]", "linear.weight[0,1]", "linear.weight[0,2]", "linear.bias[0]"]
    q_mean = np.array([float(rows[key]["mean"]) for key in keys])
    q_sd = np.array([float(rows[key]["sd"]) for key in keys])
    # Mean field on a Gaussian posterior: exact means, sds 1/sqrt(precision_ii). The command has no
    # learning-rate decay; a constant 0.05 with one particle leaves the params wandering: measured
    # over seeds 0-2, |mean error| up to 0.49 posterior sd, sds 0.81-1.10x (posterior.csv adds 2000
    # draws' error, ~0.02 sd). Bounds 0.75 sd and 30%. The start (bias 0) is 57 posterior sds away.
    assert np.all(np.abs(q_mean - mean) < 0.75 * exact_sd), (q_mean, mean)
    assert np.all(np.abs(q_sd / mean_field_sd - 1) < 0.3), (q_sd, mean_field_sd)


def test_gmm_tutorial_through_the_command(tmp_path):
    data_path, data = write_data(tmp_path, "gmm")

    def initial_loss(seed):  # the tutorial's seed choice (lowest initial loss), over 10 seeds
        pyro.clear_param_store()
        module = load("gmm")
        pyro.set_rng_seed(seed)
        return module.elbo.loss(module.model, module.global_guide, data["data"])

    seed = min(range(10), key=initial_loss)
    num_steps = 200
    params, metrics, rows = pyro_vi_fit(
        tmp_path, "gmm", "global_guide", data_path,
        options=["--num-steps", str(num_steps), "--loss", "traceenum", "--max-plate-nesting", "1",
                 "--optimizer", "clipped-adam", "--learning-rate", "0.1", "--seed", str(seed), "--posterior-samples", "100"],
    )
    reference, losses = svi_reference("gmm", lambda m: m.global_guide, data, num_steps=num_steps, seed=seed,
                                      loss=TraceEnum_ELBO(max_plate_nesting=1), optim=pyro.optim.ClippedAdam({"lr": 0.1}))
    assert_same_run(params, metrics, reference, losses)
    # No Monte Carlo noise (enumeration, Delta guide): the MAP weights (n_k - 1/2) / 4 of the
    # clusters {0, 1}, {10, 11, 12}; 0.01 for the optimization error left after 200 steps.
    weights, locs = params["AutoDelta.weights"], params["AutoDelta.locs"]
    order = torch.argsort(locs)
    assert torch.allclose(weights[order], torch.tensor([0.375, 0.625]), atol=0.01)
    assert torch.allclose(locs[order], torch.tensor([0.5, 11.0]), atol=0.05)


def test_eight_schools_jit_through_the_command(tmp_path):
    data_path, data = write_data(tmp_path, "eight_schools")
    num_steps = 100
    params, metrics, rows = pyro_vi_fit(
        tmp_path, "eight_schools", "guide", data_path,
        options=["--num-steps", str(num_steps), "--loss", "jit-trace", "--optimizer", "clipped-adam",
                 "--learning-rate", "0.01", "--posterior-samples", "100"],
    )
    reference, losses = svi_reference("eight_schools", lambda m: m.guide, data, num_steps=num_steps, seed=0,
                                      loss=JitTrace_ELBO(ignore_jit_warnings=True), optim=pyro.optim.ClippedAdam({"lr": 0.01}))
    assert_same_run(params, metrics, reference, losses)
    assert {"eta[0]", "eta[7]", "mu[0]", "tau[0]"} <= set(rows)  # a posterior row per school


# The other pairs through the command: the same params as plain SVI (short runs). The sparse gamma
# DEF runs without its clip_params (the command has no per-step hook) and with ClippedAdam (it has
# no AdagradRMSProp). The discrete guide's tutorial code asserts unbatched shapes that Pyro's own
# Predictive (the command's posterior summary) breaks: its fit is still written, without
# posterior.csv, and metrics.json says why (test below).
OTHER_PAIRS = {
    "discrete_guide": ("guide", ["--learning-rate", "0.05"], "Trace_ELBO"),
    "coin_nonreparam": ("guide", ["--loss", "tracegraph", "--learning-rate", "0.0005"], "TraceGraph_ELBO"),
    "mle_map": ("guide", ["--learning-rate", "0.05"], "Trace_ELBO"),
    "bayesian_regression": ("guide", ["--learning-rate", "0.1"], "Trace_ELBO"),
    "sparse_gamma_def": ("guide", ["--loss", "tracemeanfield", "--learning-rate", "0.05"], "TraceMeanField_ELBO"),
    "vae": ("guide", ["--learning-rate", "0.01"], "Trace_ELBO"),
    "nested_plates": ("guide", ["--learning-rate", "0.05"], "Trace_ELBO"),
}


@pytest.mark.parametrize("name", sorted(OTHER_PAIRS))
def test_the_other_pairs_through_the_command_match_plain_svi(tmp_path, name):
    guide_name, options, loss_name = OTHER_PAIRS[name]
    arrays = load(name).make_data()
    data_path = None
    if arrays:
        data_path = tmp_path / f"{name}.npz"
        np.savez(data_path, **arrays)
    data = {key: torch.as_tensor(value) for key, value in arrays.items()}
    num_steps = 30
    out = tmp_path / "out"
    argv = ["fit", f"{MODELS / name}.py:model", f"{MODELS / name}.py:{guide_name}", "--out", str(out), "--no-progress",
            "--elbo-samples", "2", "--posterior-samples", "20", "--num-steps", str(num_steps),
            "--optimizer", "clipped-adam", *options]
    if data_path is not None:
        argv += ["--data", str(data_path)]
    assert cli.main(argv) == 0
    params = torch.load(out / "params.pt", weights_only=True)
    metrics = json.loads((out / "metrics.json").read_text())
    learning_rate = float(options[options.index("--learning-rate") + 1])
    reference, losses = svi_reference(name, lambda m: getattr(m, guide_name), data, num_steps=num_steps, seed=0,
                                      loss=getattr(pyro.infer, loss_name)(), optim=pyro.optim.ClippedAdam({"lr": learning_rate}))
    assert_same_run(params, metrics, reference, losses)


# Runs whose first call draws random numbers later calls do not (each failed before the engine's
# warm-up on resume): a JIT compile, the ELBO's max_plate_nesting guess, a pyro.param lambda init.
@pytest.mark.parametrize("name, guide, options", [
    ("eight_schools", "guide", ["--loss", "jit-trace"]),
    ("coin", "guide", ["--particles", "4", "--vectorize-particles"]),
    ("sparse_gamma_def", "guide", ["--loss", "tracemeanfield"]),
], ids=["jit-compile", "max-plate-nesting-guess", "random-param-init"])
def test_resume_through_the_command_is_bit_exact(tmp_path, name, guide, options):
    data_path, _ = write_data(tmp_path, name)
    common = ["fit", f"{MODELS / name}.py:model", f"{MODELS / name}.py:{guide}", "--data", str(data_path), "--no-progress",
              "--elbo-samples", "2", "--posterior-samples", "20", "--optimizer", "clipped-adam", "--learning-rate", "0.05",
              *options]
    assert cli.main([*common, "--out", str(tmp_path / "whole"), "--num-steps", "20"]) == 0
    assert cli.main([*common, "--out", str(tmp_path / "parts"), "--num-steps", "10"]) == 0
    assert cli.main([*common, "--out", str(tmp_path / "parts"), "--num-steps", "20", "--resume"]) == 0
    whole = torch.load(tmp_path / "whole" / "params.pt", weights_only=True)
    parts = torch.load(tmp_path / "parts" / "params.pt", weights_only=True)
    assert sorted(whole) == sorted(parts) and whole
    for key, value in whole.items():
        assert torch.equal(parts[key], value), key
    losses = json.loads((tmp_path / "whole" / "metrics.json").read_text())["losses"]
    assert json.loads((tmp_path / "parts" / "metrics.json").read_text())["losses"] == losses


def test_a_model_predictive_cannot_run_gets_its_posterior_csv(tmp_path, capsys):
    """The discrete guide's shape asserts fail under Predictive's draws (the command used to write no
    posterior.csv); draws from traces of the guide keep each site's shape: one row per element."""
    out = tmp_path / "out"
    argv = ["fit", f"{MODELS / 'discrete_guide'}.py:model", f"{MODELS / 'discrete_guide'}.py:guide", "--out", str(out),
            "--no-progress", "--elbo-samples", "2", "--posterior-samples", "20", "--num-steps", "5"]
    assert cli.main(argv) == 0
    with open(out / "posterior.csv") as file:
        rows = [(row["site"], row["index"]) for row in csv.DictReader(file)]
    assert rows == [("x_active", f"{i},0") for i in range(8)] + [("y_active", str(i)) for i in range(10)]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["posterior_summary_error"] is None and metrics["posterior_sites_not_drawn"] == {}
    assert capsys.readouterr().err == ""
