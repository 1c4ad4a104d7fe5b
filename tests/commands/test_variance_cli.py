"""pyro-vi variance: outputs, one-line errors before any output, and the example script."""

import json
import sys
import warnings
from pathlib import Path

import pytest

from pyro_vi import cli

import launch  # tests/launch.py: commands in a forked warm interpreter

ROOT = Path(__file__).resolve().parents[2]


def test_writes_json_csv_and_figures(tmp_path):
    out = tmp_path / "run"
    status = cli.main(["variance", "--model", "pyro-test", "--estimators", "reparam,score", "--particles", "1,2",
                       "--replicates", "50", "--out", str(out)])
    assert status == 0
    report = json.loads((out / "variance.json").read_text())
    assert {(r["estimator"], r["num_particles"]) for r in report["summary"]} == {
        ("reparam", 1), ("reparam", 2), ("score", 1), ("score", 2)}
    header = (out / "variance.csv").read_text().splitlines()[0]
    assert header == "model,estimator,num_particles,param,mean,variance,snr,bias,seconds"
    assert len((out / "variance.csv").read_text().splitlines()) == 1 + 4 * 2  # 2 params each
    for figure in ("total_variance.png", "variance_vs_particles.png", "snr.png"):
        assert (out / figure).stat().st_size > 0


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model", "bernoulli", "--estimators", "reparam"], "discrete"),
        (["--model", "gaussian", "--estimators", "enum"], "only continuous"),
        (["--estimators", "reinforce"], "unknown estimator"),
        (["--replicates", "0"], "--replicates"),
        (["--particles", "0"], "--particles"),
    ],
)
def test_bad_options_fail_in_one_line_without_output(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert cli.main(["variance", *argv, "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
    assert not out.exists()


@pytest.mark.smoke
def test_example_runs():
    result = launch.run(
        [sys.executable, str(ROOT / "examples" / "variance.py"), "--replicates", "20", "--estimators", "reparam,stl", "--seed", "1"], timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "stl" in result.stdout


def test_vae_from_a_checkpoint(tmp_path, capsys):
    """pyro-vi variance --model vae --checkpoint measures the trained VAE that pyro-vi vae wrote."""
    import pyro
    import torch

    from pyro_vi.estimators import problems as variance_models

    train_dir = tmp_path / "vae"  # a fresh directory: pyro-vi vae refuses to overwrite a checkpoint
    assert cli.main(["vae", "--epochs", "1", "--z-dim", "2", "--hidden-dims", "8", "--batch-size", "256",
                     "--no-progress", "--out", str(train_dir)]) == 0
    path = train_dir / "checkpoint.pt"
    out = tmp_path / "variance"
    assert cli.main(["variance", "--model", "vae", "--checkpoint", str(path), "--estimators", "reparam,score",
                     "--replicates", "10", "--out", str(out)]) == 0
    report = json.loads((out / "variance.json").read_text())
    assert report["checkpoint"] == str(path) and {r["estimator"] for r in report["summary"]} == {"reparam", "score"}
    # The problem holds the checkpoint's weights and config (z_dim 2, hidden 8), not a fresh TinyVAE.
    saved = torch.load(path, weights_only=False)["param_store"]["params"]
    problem = variance_models.make_problem("vae", checkpoint=str(path))
    store = pyro.get_param_store()
    assert set(saved) == set(store.keys())
    assert all(torch.equal(store[name].detach(), value) for name, value in saved.items())
    assert {p["param"] for p in report["params"]} == set(saved)
    assert problem.args[0].shape == (64, 64)
    capsys.readouterr()
    # A dataset other than the checkpoint's, and VAE options on another model: one-line errors.
    assert cli.main(["variance", "--model", "vae", "--checkpoint", str(path), "--dataset", "mnist", "--out", str(tmp_path / "x")]) == 2
    assert "trained on digits" in capsys.readouterr().err
    assert cli.main(["variance", "--model", "gaussian", "--checkpoint", str(path), "--out", str(tmp_path / "y")]) == 2
    assert "vae model only" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# -- the user's own model: pyro-vi variance FILE.py:MODEL GUIDE --data DATA ---------------------------

EXAMPLE = ROOT / "examples" / "my_model.py"
COIN = [f"{EXAMPLE}:model", f"{EXAMPLE}:guide", "--data", str(ROOT / "examples" / "my_model_data.npz")]


def test_user_model_at_the_initial_params_and_at_a_fit_checkpoint(tmp_path):
    """At init, then at the checkpoint pyro-vi fit wrote: the latter equals gradient_variance run in
    Python with the fitted params (params.pt) put into the guide, bit for bit."""
    import pyro
    import torch

    from pyro_vi.commands import user_model
    from pyro_vi.estimators import variance

    assert cli.main(["variance", *COIN, "--estimators", "reparam,score", "--replicates", "20",
                     "--out", str(tmp_path / "init")]) == 0
    at_init = json.loads((tmp_path / "init" / "variance.json").read_text())
    assert at_init["model"] == COIN[0] and at_init["guide"] == COIN[1] and at_init["checkpoint"] is None
    assert at_init["measured_at"] == "initial params"
    assert {row["param"] for row in at_init["params"]} == {"alpha_q", "beta_q"}

    fitted = tmp_path / "fit"
    assert cli.main(["fit", *COIN, "--num-steps", "30", "--learning-rate", "0.1", "--no-progress", "--elbo-samples", "2",
                     "--posterior-samples", "10", "--out", str(fitted)]) == 0
    assert cli.main(["variance", *COIN, "--estimators", "reparam", "--replicates", "20", "--checkpoint",
                     str(fitted / "checkpoint.pt"), "--out", str(tmp_path / "trained")]) == 0
    trained_report = json.loads((tmp_path / "trained" / "variance.json").read_text())
    assert trained_report["measured_at"] == f"checkpoint {fitted / 'checkpoint.pt'} at step 30"
    trained = trained_report["summary"][0]

    pair = user_model.build(*COIN[:2], user_model.load_data(COIN[3]), seed=0)
    store = pyro.get_param_store()
    for name, value in torch.load(fitted / "params.pt", weights_only=True).items():
        store[name] = value  # constrained values; the store keeps each param's constraint
    with warnings.catch_warnings():  # as pyro-vi variance does: torch's "no batching rule" performance note (Gamma's grad)
        warnings.filterwarnings("ignore", message="There is a performance drop")
        expected = variance.gradient_variance(pair.model, pair.guide, estimator="reparam", num_replicates=20, seed=0)
    assert trained["total_variance"] == pytest.approx(expected.total_variance, rel=1e-5)
    assert trained["total_variance"] != at_init["summary"][0]["total_variance"]


@pytest.mark.parametrize("extra, message", [
    (["--model", "gaussian"], "--model applies to the built-in models"),
    (["--at-posterior"], "--at-posterior applies to the built-in models"),
    (["--checkpoint", "CHECKPOINT"], "has no value for param 'AutoNormal.locs.latent_fairness'"),
])
def test_user_model_bad_options_are_one_line(tmp_path, capsys, extra, message):
    if "CHECKPOINT" in extra:  # a fit checkpoint of the coin's own guide, given with auto-normal
        assert cli.main(["fit", *COIN, "--num-steps", "2", "--no-progress", "--elbo-samples", "2",
                         "--posterior-samples", "2", "--out", str(tmp_path / "fit")]) == 0
        checkpoint = tmp_path / "fit" / "checkpoint.pt"
        extra = [value.replace("CHECKPOINT", str(checkpoint)) for value in extra]
    capsys.readouterr()
    out = tmp_path / "variance"
    assert cli.main(["variance", COIN[0], "auto-normal", *COIN[2:], "--estimators", "reparam", "--replicates", "5",
                     *extra, "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error, error
    assert not out.exists()


def test_user_model_without_guide_is_one_line(capsys):
    assert cli.main(["variance", COIN[0], "--data", COIN[3]]) == 2
    assert "give the guide after the model" in capsys.readouterr().err
