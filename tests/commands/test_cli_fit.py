"""`pyro-vi fit FILE.py:MODEL GUIDE --data DATA`: the coin's closed-form posterior, auto guides, npz
keyword arguments, exact resume after a crash or Ctrl-C, and one-line errors (exit 2)."""

import csv
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vi import cli

import launch  # tests/launch.py: commands in a forked warm interpreter

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "my_model.py"
EXAMPLE_DATA = ROOT / "examples" / "my_model_data.npz"
QUIET = ["--no-progress", "--elbo-samples", "5", "--posterior-samples", "50"]

# Bayesian regression y = w x + b + N(0, 1) noise: two data arrays, given by name (npz keywords).
REGRESSION = """
import pyro
import pyro.distributions as dist


def model(x, y):
    w = pyro.sample("w", dist.Normal(0.0, 10.0))
    b = pyro.sample("b", dist.Normal(0.0, 10.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(w * x + b, 1.0), obs=y)
"""

# The coin with a guide of its own, which raises (or sends itself Ctrl-C) at model call STOP_AT_CALL.
STOPPING_COIN = """
import os
import signal

import pyro
import pyro.distributions as dist
from pyro.distributions import constraints

CALLS = 0


def model(data):
    global CALLS
    CALLS += 1
    if CALLS == int(os.environ.get("STOP_AT_CALL", "0")):
        if os.environ["STOP_HOW"] == "raise":
            raise RuntimeError("simulated crash")
        os.kill(os.getpid(), signal.SIGINT)
    f = pyro.sample("f", dist.Beta(10.0, 10.0))
    with pyro.plate("data", data.shape[0]):
        pyro.sample("obs", dist.Bernoulli(f), obs=data)


def guide(data):
    alpha = pyro.param("alpha", data.new_tensor(15.0), constraint=constraints.positive)
    beta = pyro.param("beta", data.new_tensor(15.0), constraint=constraints.positive)
    pyro.sample("f", dist.Beta(alpha, beta))
"""


# The hierarchical logistic regression: group intercepts in a plate, then x @ beta with beta an
# event of 3 outside every plate (Predictive with AutoNormal failed here: "320x3 and 1x3").
HIERARCHICAL = """
import pyro
import pyro.distributions as dist


def model(x, group, y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    with pyro.plate("groups", 4):
        alpha = pyro.sample("alpha", dist.Normal(mu, sigma))
    beta = pyro.sample("beta", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Bernoulli(logits=alpha[group] + x @ beta), obs=y)
"""


def _posterior(out: Path) -> dict:
    with open(out / "posterior.csv") as file:
        return {(row["site"], row["index"]): {key: float(row[key]) for key in ("mean", "sd", "q5", "q50", "q95")}
                for row in csv.DictReader(file)}


def test_coin_reaches_the_beta_16_14_posterior(tmp_path):
    """Beta(10, 10) prior, 6 heads and 4 tails: the posterior is Beta(16, 14), mean 16/30 = 0.5333,
    sd 0.0896, and the Beta guide contains it. Two checks, each at 4 standard errors:
    (a) optimization: the fitted q's mean alpha / (alpha + beta) from params.pt. With these options
        its sd over seeds 0-5 was 0.0052 (measured; their mean was 0.5374), so |q - 16/30| < 0.021,
        which a guide left at its start (mean 0.5) fails;
    (b) Monte Carlo: posterior.csv's mean and sd of 2000 draws from q against q's exact mean and sd,
        standard errors sd / sqrt(2000) = 0.0020 and about sd / sqrt(2 * 2000) = 0.0014."""
    out = tmp_path / "coin"
    argv = ["fit", f"{EXAMPLE}:model", f"{EXAMPLE}:guide", "--data", str(EXAMPLE_DATA), "--num-steps", "300",
            "--learning-rate", "0.02", "--particles", "100", "--vectorize-particles", "--posterior-samples", "2000",
            "--elbo-samples", "20", "--no-progress", "--out", str(out)]
    assert cli.main(argv) == 0
    params = torch.load(out / "params.pt", weights_only=True)
    assert set(params) == {"alpha_q", "beta_q"}
    alpha, beta = float(params["alpha_q"]), float(params["beta_q"])
    q_mean, q_sd = alpha / (alpha + beta), (alpha * beta / ((alpha + beta) ** 2 * (alpha + beta + 1))) ** 0.5
    exact_mean, exact_sd = 16 / 30, (16 * 14 / (30**2 * 31)) ** 0.5
    assert q_mean == pytest.approx(exact_mean, abs=4 * 0.0052)
    assert q_sd == pytest.approx(exact_sd, rel=0.25)  # the concentration alpha + beta drifts more than the mean
    row = _posterior(out)[("latent_fairness", "")]
    assert row["mean"] == pytest.approx(q_mean, abs=4 * q_sd / 2000**0.5)
    assert row["sd"] == pytest.approx(q_sd, abs=4 * q_sd / (2 * 2000) ** 0.5)
    assert row["q5"] < row["q50"] < row["q95"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_steps"] == metrics["steps"] == len(metrics["losses"]) == 300
    assert metrics["compiled_steps"] == 0  # 300 steps: too short for the default to record
    assert metrics["loss"] == "trace" and metrics["seed"] == 0 and metrics["latent_sites"] == {"latent_fairness": []}
    # log p(x) = log B(16, 14) - log B(10, 10) = -7.0597; the ELBO is below it by KL(q || posterior) >= 0.
    log_evidence = float(torch.lgamma(torch.tensor([16.0, 14.0, 20.0])).sum() - torch.lgamma(torch.tensor([30.0, 10.0, 10.0])).sum())
    assert log_evidence - 0.05 < metrics["final_elbo"] < log_evidence + 4 * metrics["final_elbo_standard_error"] + 1e-3
    assert metrics["steps_per_second"] > 0 and metrics["seconds"] > 0
    assert (out / "loss.png").stat().st_size > 0 and (out / "checkpoint.pt").is_file()


@pytest.mark.parametrize("guide", ["auto-normal", "auto-diagonal-normal", "auto-mvn", "auto-lowrank-mvn", "auto-delta"])
def test_auto_guides_and_npz_keywords(tmp_path, guide):
    """model(x, y) receives the npz's arrays by name; every latent site gets posterior rows."""
    (tmp_path / "regression.py").write_text(REGRESSION)
    x = np.linspace(-1, 1, 20)
    np.savez(tmp_path / "data.npz", x=x, y=2 * x + 1)
    out = tmp_path / guide
    assert cli.main(["fit", f"{tmp_path / 'regression.py'}:model", guide, "--data", str(tmp_path / "data.npz"),
                     "--num-steps", "5", *QUIET, "--out", str(out)]) == 0
    rows = _posterior(out)
    assert set(rows) == {("w", ""), ("b", "")}
    if guide == "auto-delta":  # a point mass: no spread
        assert all(row["sd"] == 0 for row in rows.values())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data_shapes"] == {"x": [20], "y": [20]} and metrics["guide"] == guide


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("guide", ["auto-normal", "auto-diagonal-normal"])
def test_hierarchical_logistic_regression_gets_posterior_traces_and_metrics_lines(tmp_path, capsys, guide):
    """posterior.csv from guide draws (every site at its own shape), metrics.jsonl every 10 steps,
    traces.png (AutoNormal's params; AutoDiagonalNormal's loc and scale per site, in the checkpoint's
    state) and the convergence note."""
    (tmp_path / "logistic.py").write_text(HIERARCHICAL)
    generator = np.random.default_rng(0)
    x = generator.normal(size=(320, 3))
    np.savez(tmp_path / "data.npz", x=x, group=generator.integers(0, 4, 320), y=(x @ [1.0, -1.0, 0.5] > 0).astype(float))
    out = tmp_path / "out"
    assert cli.main(["fit", f"{tmp_path / 'logistic.py'}:model", guide, "--data", str(tmp_path / "data.npz"),
                     "--num-steps", "30", "--metrics-every", "10", *QUIET, "--out", str(out)]) == 0
    assert set(_posterior(out)) == {("mu", ""), ("sigma", "")} | {("alpha", str(i)) for i in range(4)} | {
        ("beta", str(i)) for i in range(3)}
    lines = _jsonl(out / "metrics.jsonl")
    assert [line["step"] for line in lines] == [10, 20, 30]
    assert all(line["skipped_steps"] == 0 and line["steps_per_second"] > 0 for line in lines)
    metrics = json.loads((out / "metrics.json").read_text())
    assert lines[-1]["elbo_smoothed"] == pytest.approx(-np.mean(metrics["losses"][20:]))
    assert (out / "traces.png").stat().st_size > 0
    convergence = metrics["convergence"]
    assert convergence["window"] == 20 and convergence["converged"] in (True, False)
    output = capsys.readouterr()
    assert convergence["note"] in output.out and output.err == ""
    state = torch.load(out / "checkpoint.pt", weights_only=True)["run"]["state"]["param_trace"]
    assert state["steps"][-1] == 30
    if guide == "auto-diagonal-normal":
        assert {"beta loc", "beta scale", "alpha loc", "sigma scale"} <= set(state["values"])
        assert len(state["values"]["beta loc"][-1]) == 3
    else:
        assert "AutoNormal.locs.beta" in state["values"]


def test_tensorboard_option(tmp_path, capsys, monkeypatch):
    """--tensorboard: one line, exit 2, nothing written, without the package; with it (here a
    stand-in SummaryWriter, the same calls) the scalars of every metrics.jsonl line."""
    out = tmp_path / "out"
    argv = ["fit", f"{EXAMPLE}:model", f"{EXAMPLE}:guide", "--data", str(EXAMPLE_DATA), "--num-steps", "4", *QUIET,
            "--metrics-every", "2", "--tensorboard", "--out", str(out)]
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert cli.main(argv) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and "pip install tensorboard" in error and not out.exists()
    from pyro_vi.commands import _monitor

    written = []

    class Writer:
        def __init__(self, log_dir):
            written.append(("dir", log_dir))

        def add_scalar(self, key, value, step):
            written.append((key, step))

        def flush(self):
            pass

        def close(self):
            written.append(("closed",))

    monkeypatch.setattr(_monitor, "check_tensorboard", lambda: Writer)
    assert cli.main(argv) == 0
    assert written == [("dir", str(out / "tensorboard")), *[(key, step) for step in (2, 4) for key in
                       ("loss", "elbo_smoothed", "steps_per_second")], ("closed",)]


def test_positional_csv_data(tmp_path):
    """A .csv with a header row is one tensor, passed positionally: model(data)."""
    path = tmp_path / "coin.csv"
    path.write_text("heads\n" + "\n".join(["1"] * 6 + ["0"] * 4) + "\n")
    out = tmp_path / "out"
    assert cli.main(["fit", f"{EXAMPLE}:model", f"{EXAMPLE}:guide", "--data", str(path), "--num-steps", "3",
                     *QUIET, "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["data_shapes"] == {"arg0": [10]}


def test_data_files_become_the_model_arguments(tmp_path):
    """npz and a .pt dict: keyword arguments; npy, csv, a .pt tensor or list: positional. Floats
    become the default dtype; integers stay integers."""
    from pyro_vi.commands import user_model

    x = np.arange(6.0).reshape(3, 2)
    np.savez(tmp_path / "a.npz", x=x, counts=np.array([1, 2, 3]))
    np.save(tmp_path / "a.npy", x)
    np.savetxt(tmp_path / "a.csv", x, delimiter=",")
    torch.save(torch.from_numpy(x), tmp_path / "tensor.pt")
    torch.save({"x": torch.from_numpy(x)}, tmp_path / "dict.pt")
    torch.save([torch.from_numpy(x), torch.ones(2)], tmp_path / "list.pt")
    loaded = {name: user_model.load_data(tmp_path / name) for name in ("a.npz", "a.npy", "a.csv", "tensor.pt", "dict.pt", "list.pt")}
    assert set(loaded["a.npz"].kwargs) == {"x", "counts"} and loaded["a.npz"].args == ()
    assert loaded["a.npz"].kwargs["counts"].dtype == torch.int64 and loaded["dict.pt"].kwargs["x"].dtype == torch.float32
    for name in ("a.npy", "a.csv", "tensor.pt"):
        (value,) = loaded[name].args
        assert loaded[name].kwargs == {} and value.dtype == torch.float32 and torch.equal(value, torch.tensor(x, dtype=torch.float32))
    assert [tuple(value.shape) for value in loaded["list.pt"].args] == [(3, 2), (2,)]


@pytest.mark.parametrize("how, status", [("raise", 2), ("interrupt", 130)])
def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, monkeypatch, capsys, how, status):
    """Checkpoints every 10 steps; the model raises (or Ctrl-C arrives) during step 25; --resume
    finishes the 40 steps with params bit for bit those of a run never stopped."""
    (tmp_path / "coin.py").write_text(STOPPING_COIN)
    spec = [f"{tmp_path / 'coin.py'}:model", f"{tmp_path / 'coin.py'}:guide", "--data", str(EXAMPLE_DATA)]
    options = ["--num-steps", "40", "--checkpoint-every", "10", "--learning-rate", "0.05", "--seed", "3", *QUIET]
    assert cli.main(["fit", *spec, *options, "--out", str(tmp_path / "whole")]) == 0

    stopped = tmp_path / "stopped"
    monkeypatch.setenv("STOP_HOW", how)
    monkeypatch.setenv("STOP_AT_CALL", "26")  # call 1 is the check before training; call 26 is step 25
    capsys.readouterr()
    assert cli.main(["fit", *spec, *options, "--out", str(stopped)]) == status
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--resume" in error
    assert ("step 25" in error and "simulated crash" in error and "coin.py:" in error) if how == "raise" else "step 25" in error
    assert not (stopped / "metrics.json").exists() and not (stopped / "params.pt").exists()
    monkeypatch.delenv("STOP_AT_CALL")

    assert cli.main(["fit", *spec, *options, "--resume", "--out", str(stopped)]) == 0
    whole = torch.load(tmp_path / "whole" / "params.pt", weights_only=True)
    resumed = torch.load(stopped / "params.pt", weights_only=True)
    assert set(whole) == set(resumed) == {"alpha", "beta"}
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)
    whole_losses = json.loads((tmp_path / "whole" / "metrics.json").read_text())["losses"]
    resumed_metrics = json.loads((stopped / "metrics.json").read_text())
    assert resumed_metrics["losses"] == whole_losses and resumed_metrics["steps_this_call"] == 40 - (20 if how == "raise" else 25)
    # metrics.jsonl: the stopped run's lines past its checkpoint were dropped before the resumed run wrote its own
    assert [line["step"] for line in _jsonl(stopped / "metrics.jsonl")] == list(range(1, 41))
    assert [line["loss"] for line in _jsonl(stopped / "metrics.jsonl")] == whole_losses


def test_a_crash_before_any_checkpoint_leaves_no_output_directory(tmp_path, monkeypatch, capsys):
    (tmp_path / "coin.py").write_text(STOPPING_COIN)
    monkeypatch.setenv("STOP_HOW", "raise")
    monkeypatch.setenv("STOP_AT_CALL", "3")  # step 2
    out = tmp_path / "out"
    assert cli.main(["fit", f"{tmp_path / 'coin.py'}:model", f"{tmp_path / 'coin.py'}:guide", "--data", str(EXAMPLE_DATA),
                     "--num-steps", "10", *QUIET, "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "training failed at step 2" in error and "simulated crash" in error
    assert not out.exists()


def test_an_auto_guide_resumes_to_more_steps_exactly(tmp_path):
    """20 steps, then --resume --num-steps 40, equals 40 steps at once: AutoNormal's params (a
    PyroModule's) are restored in place with the optimizer and RNG state."""
    argv = ["fit", f"{EXAMPLE}:model", "auto-normal", "--data", str(EXAMPLE_DATA), "--checkpoint-every", "7", *QUIET]
    assert cli.main([*argv, "--num-steps", "40", "--out", str(tmp_path / "whole")]) == 0
    assert cli.main([*argv, "--num-steps", "20", "--out", str(tmp_path / "halves")]) == 0
    assert cli.main([*argv, "--num-steps", "40", "--resume", "--out", str(tmp_path / "halves")]) == 0
    whole = torch.load(tmp_path / "whole" / "params.pt", weights_only=True)
    halves = torch.load(tmp_path / "halves" / "params.pt", weights_only=True)
    assert set(whole) == {"AutoNormal.locs.latent_fairness", "AutoNormal.scales.latent_fairness"} == set(halves)
    assert all(torch.equal(whole[name], halves[name]) for name in whole)


def test_a_finished_run_is_not_overwritten_without_a_flag(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["fit", f"{EXAMPLE}:model", f"{EXAMPLE}:guide", "--data", str(EXAMPLE_DATA), "--num-steps", "2", *QUIET,
            "--out", str(out)]
    assert cli.main(argv) == 0
    capsys.readouterr()
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert "holds an earlier run" in error and "--resume" in error and "--overwrite" in error
    assert cli.main([*argv, "--overwrite"]) == 0


BROKEN = {
    "syntax.py": "def model(data)\n    pass\n",
    "imports.py": "import numpy\nraise ValueError('no config found')\n",
    "raises.py": "def model(data):\n    return 1 / 0\n\n\ndef guide(data):\n    pass\n",
    "exits.py": "import sys\nsys.exit(0)\n",
    # sys.exit at the model's 3rd call: after the preflight's call, during training.
    "exits_later.py": STOPPING_COIN.replace('raise RuntimeError("simulated crash")', "raise SystemExit(0)")
                      .replace('int(os.environ.get("STOP_AT_CALL", "0"))', "3").replace('os.environ["STOP_HOW"]', '"raise"'),
}


@pytest.mark.parametrize("model, guide, data, message", [
    ("missing.py:model", "missing.py:guide", "coin.npz", "does not exist"),
    ("syntax.py:model", "auto-normal", "coin.npz", "syntax error at line 1"),
    ("imports.py:model", "auto-normal", "coin.npz", "does not import: ValueError: no config found (imports.py:2)"),
    ("raises.py:model_typo", "raises.py:guide", "coin.npz", "has no function 'model_typo'; it defines guide, model"),
    ("raises.py:model", "raises.py:guide", "coin.npz", "raised ZeroDivisionError: division by zero (raises.py:2)"),
    ("raises.py", "raises.py:guide", "coin.npz", "is not FILE.py:NAME"),
    ("EXAMPLE:model", "auto-gaussian", "coin.npz", "unknown auto guide 'auto-gaussian'"),
    ("EXAMPLE:model", "EXAMPLE:guide", "text.npz", "cannot be read as .npz"),
    ("EXAMPLE:model", "EXAMPLE:guide", "coin.txt", "has suffix '.txt'"),
    ("EXAMPLE:model", "EXAMPLE:guide", "nan.npy", "holds NaN or inf"),
    ("EXAMPLE:model", "EXAMPLE:guide", "wrong_name.npz", "unexpected keyword argument 'flips'"),
    ("exits.py:model", "auto-normal", "coin.npz", "does not import: SystemExit: sys.exit(0)"),
    ("exits_later.py:model", "exits_later.py:guide", "coin.npz", "training failed at step 2: "),
], ids=["missing-file", "syntax-error", "import-error", "missing-function", "model-raises", "no-colon",
        "unknown-auto-guide", "bad-npz", "bad-suffix", "nan-data", "wrong-argument-name", "sys-exit-at-import",
        "sys-exit-in-training"])
def test_errors_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, model, guide, data, message):
    for name, text in BROKEN.items():
        (tmp_path / name).write_text(text)
    np.savez(tmp_path / "coin.npz", data=np.ones(10))
    np.savez(tmp_path / "wrong_name.npz", flips=np.ones(10))
    (tmp_path / "text.npz").write_text("not a zip archive")
    (tmp_path / "coin.txt").write_text("1\n0\n")
    np.save(tmp_path / "nan.npy", np.array([1.0, np.nan]))

    def where(spec):
        return spec.replace("EXAMPLE", str(EXAMPLE)) if spec.startswith("EXAMPLE") or spec.startswith("auto-") else str(tmp_path / spec)

    out = tmp_path / "out"
    status = cli.main(["fit", where(model), where(guide), "--data", str(tmp_path / data), "--num-steps", "2", *QUIET,
                       "--out", str(out)])
    error = capsys.readouterr().err.strip()
    assert status == 2
    assert len(error.splitlines()) == 1 and error.startswith("pyro-vi fit: error:") and message in error, error
    assert not out.exists()


@pytest.mark.parametrize("command, extra, message", [
    ("fit", ["--loss", "renyi", "--renyi-alpha", "nan"], "--renyi-alpha must be a finite number"),
    ("fit", ["--loss", "renyi", "--renyi-alpha", "inf"], "--renyi-alpha must be a finite number"),
    ("fit", ["--elbo-samples", str(10**30)], f"--elbo-samples {10**30} needs"),
    ("compare", ["--elbo-samples", str(10**30)], f"--elbo-samples {10**30} needs"),
    ("compare", ["--particles", str(10**30)], f"--particles {10**30} needs"),
    ("compare", ["--replicates", str(10**30)], f"--replicates {10**30} with --particles 2 needs"),
], ids=["renyi-alpha-nan", "renyi-alpha-inf", "fit-elbo-samples-1e30", "compare-elbo-samples-1e30",
        "compare-particles-1e30", "compare-replicates-1e30"])
def test_bad_options_are_one_line_exit_2_before_any_work(tmp_path, capsys, command, extra, message):
    """Each used to train and then hang (sizes), or fail at step 1 as "lower the learning rate" (alpha)."""
    np.savez(tmp_path / "coin.npz", data=np.ones(10))
    out = tmp_path / "out"
    status = cli.main([command, f"{EXAMPLE}:model", f"{EXAMPLE}:guide", "--data", str(tmp_path / "coin.npz"),
                       "--num-steps", "2", "--no-progress", *extra, "--out", str(out)])
    error = capsys.readouterr().err.strip()
    assert status == 2
    assert len(error.splitlines()) == 1 and error.startswith(f"pyro-vi {command}: error:") and message in error, error
    assert not out.exists()


@pytest.mark.smoke
def test_example_and_the_readme_fit_command(tmp_path, monkeypatch, capsys):
    """The example script (in-process: its imports are the test's) and the README's fit command as a
    subprocess, as a user runs it."""
    data = tmp_path / "my_model_data.npz"
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), "--write-data", str(data)])
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert np.array_equal(np.load(data)["data"], np.load(EXAMPLE_DATA)["data"])  # the committed file is what it writes
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), "--num-steps", "20"])
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert "exact posterior Beta(16, 14)" in capsys.readouterr().out
    out = tmp_path / "fit"
    command = [str(Path(sys.executable).parent / "pyro-vi"), "fit", f"{EXAMPLE}:model", f"{EXAMPLE}:guide", "--data", str(data),
               "--num-steps", "20", "--no-progress", "--posterior-samples", "20", "--elbo-samples", "5", "--out", str(out)]
    result = launch.run(command, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "latent_fairness" in result.stdout and (out / "posterior.csv").is_file()


def test_compile_flags(tmp_path, capsys):
    """--compile replays the recorded step from the second step on whatever the run's length (here
    Trace_ELBO with particles one after another); --compile on a loss it does not cover is one line
    naming the cause, before any output; --no-compile keeps every step plain."""
    base = ["fit", f"{EXAMPLE}:model", f"{EXAMPLE}:guide", "--data", str(EXAMPLE_DATA), "--num-steps", "20",
            "--posterior-samples", "10", "--elbo-samples", "5", "--no-progress"]
    assert cli.main(base + ["--compile", "--out", str(tmp_path / "on")]) == 0
    assert json.loads((tmp_path / "on" / "metrics.json").read_text())["compiled_steps"] == 19
    assert cli.main(base + ["--no-compile", "--out", str(tmp_path / "off")]) == 0
    assert json.loads((tmp_path / "off" / "metrics.json").read_text())["compiled_steps"] == 0
    assert cli.main(base + ["--compile", "--loss", "tracegraph", "--out", str(tmp_path / "graph")]) == 0
    assert json.loads((tmp_path / "graph" / "metrics.json").read_text())["compiled_steps"] == 19
    capsys.readouterr()
    assert cli.main(base + ["--compile", "--loss", "tracemeanfield", "--out", str(tmp_path / "refused")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "not TraceMeanField_ELBO" in error
    assert not (tmp_path / "refused").exists()
    # --inductor: the recorded step compiled by inductor (the whole step, Adam included), near the plain run
    assert cli.main(base + ["--inductor", "--out", str(tmp_path / "inductor")]) == 0
    fused = json.loads((tmp_path / "inductor" / "metrics.json").read_text())
    assert fused["compiled_steps"] == 19
    assert cli.main(base + ["--inductor", "--no-compile", "--out", str(tmp_path / "both")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "drop one of them" in error
    assert not (tmp_path / "both").exists()


def test_compare_variance_points_beyond_the_steps_measure_every_step_at_once():
    """``--variance-points 10**30`` used to build a set of 10**30 steps (a hang)."""
    from pyro_vi.commands.compare import variance_steps

    assert variance_steps(2, 10**30) == [0, 1, 2]
    assert variance_steps(10, 3) == [0, 5, 10]


def _data_file(tmp_path: Path, kind: str) -> Path:
    """A hostile data file (or path) of each kind."""
    import collections
    import datetime
    import os

    if kind == "fifo":
        os.mkfifo(tmp_path / "pipe.npy")
        return tmp_path / "pipe.npy"
    if kind == "directory":
        (tmp_path / "folder.npy").mkdir()
        return tmp_path / "folder.npy"
    if kind == "dev-zero":
        (tmp_path / "zero.npy").symlink_to("/dev/zero")
        return tmp_path / "zero.npy"
    if kind == "overflow":
        np.save(tmp_path / "big.npy", np.array([1e300, 1.0]))
        return tmp_path / "big.npy"
    if kind == "sparse":
        torch.save(torch.eye(3).to_sparse(), tmp_path / "sparse.pt")
        return tmp_path / "sparse.pt"
    if kind == "objects":
        torch.save(collections.OrderedDict(x=datetime.date(2020, 1, 1)), tmp_path / "objects.pt")
        return tmp_path / "objects.pt"
    texts = {"csv-typo-first-row": "1.O,2\n3,4\n", "csv-bad-value": "a,b\n1,2\n3,x\n", "csv-ragged": "1,2\n3\n"}
    (tmp_path / f"{kind}.csv").write_text(texts[kind])
    return tmp_path / f"{kind}.csv"


@pytest.mark.parametrize("kind, message", [
    ("fifo", "is a FIFO (named pipe), not a regular file"),
    ("directory", "is a directory, not a regular file"),
    ("dev-zero", "is a character device, not a regular file"),
    ("overflow", "holds values beyond 3.4e+38, which overflow torch.float32"),
    ("sparse", "is a torch.sparse_coo tensor; Pyro's distributions need dense tensors"),
    ("objects", "holds Python objects (datetime.date), not only tensors and numbers"),
    ("csv-typo-first-row", "line 1, column 1: '1.O' is not a number"),
    ("csv-bad-value", "line 3, column 2: 'x' is not a number"),
    ("csv-ragged", "line 2 has 1 columns, line 1 has 2"),
])
def test_a_bad_data_file_is_said_for_what_it_is(tmp_path, kind, message):
    """Each used to be untrue ("does not exist", "holds NaN or inf", "row 0"), a silently dropped
    first row (any row-1 error was taken for a header), or an "unexpected ... bug" line."""
    from pyro_vi.commands import user_model
    from pyro_vi.errors import DataError

    with pytest.raises(DataError) as caught:
        user_model.load_data(_data_file(tmp_path, kind))
    assert message in str(caught.value) and "\n" not in str(caught.value), caught.value


@pytest.mark.parametrize("text", ["\ufeff1.5,2\n3,4\n", "x,y\n1.5,2\n\n3,4\n", "\ufeffx,y\r\n1.5,2\r\n3,4\r\n"],
                         ids=["bom", "header-and-blank-line", "bom-header-crlf"])
def test_a_csv_header_only_when_no_field_is_a_number(tmp_path, text):
    from pyro_vi.commands import user_model

    (tmp_path / "table.csv").write_text(text, encoding="utf-8")
    data = user_model.load_data(tmp_path / "table.csv")
    assert torch.equal(data.args[0], torch.tensor([[1.5, 2.0], [3.0, 4.0]]))
