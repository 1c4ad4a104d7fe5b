"""`pyro-vi vae` and examples/vae.py end to end with smoke arguments."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from pyro_vi import cli

import launch  # tests/launch.py: commands in a forked warm interpreter

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ["--epochs", "2", "--batch-size", "100", "--hidden-dims", "16", "--no-progress"]


def test_vae_command_writes_metrics_figures_and_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["vae", *SMOKE, "--z-dim", "2", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # Active units (Burda et al.): the count of latent dimensions whose encoder mean varies over the
    # test set by more than the threshold, stored with the variances it counts, and printed.
    variances, threshold = metrics["active_unit_variances"], metrics["active_unit_threshold"]
    assert len(variances) == 2 and threshold == 0.01
    assert metrics["active_units"] == sum(v > threshold for v in variances)
    assert f"{metrics['active_units']} of 2 units active" in capsys.readouterr().out
    for key in ("dataset", "epochs", "z_dim", "likelihood", "test_elbo", "test_recon", "test_kl",
                "images_per_second", "device", "seconds"):
        assert key in metrics, key
    assert metrics["dataset"] == "digits" and metrics["epochs"] == 2 and metrics["device"] == "cpu"
    # Per-image ELBO of 64 binary pixels lies in (-64 log 2 - KL, 0); recon and KL add up.
    assert -100 < metrics["test_elbo"] < 0
    assert abs(metrics["test_elbo"] - (metrics["test_recon"] - metrics["test_kl"])) < 1e-6
    assert metrics["test_kl"] >= 0
    for figure in ("elbo.png", "reconstructions.png", "samples.png", "latent.png", "manifold.png"):
        assert (out / figure).stat().st_size > 1000, figure
    assert (out / "checkpoint.pt").is_file()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

    # --resume with more epochs continues the history instead of starting over.
    assert cli.main(["vae", *SMOKE[2:], "--epochs", "3", "--z-dim", "2", "--out", str(out), "--resume"]) == 0
    resumed = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    assert resumed["history"][:2] == metrics["history"]

    # A history entry edited into a string is refused on --resume, in one line, the file untouched
    # (it reached metrics.json, or failed in the figure as "a bug in pyro_vi").
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    saved["run"]["state"]["history"][1]["train_elbo"] = "high"
    torch.save(saved, out / "checkpoint.pt")
    before = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert cli.main(["vae", *SMOKE[2:], "--epochs", "4", "--z-dim", "2", "--out", str(out), "--resume"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "'history' entry 2 is not a dict of numbers" in error, error
    assert (out / "checkpoint.pt").read_bytes() == before


def test_gaussian_likelihood_with_learned_scale_and_meanfield_elbo(tmp_path):
    out = tmp_path / "run"
    args = ["vae", *SMOKE, "--likelihood", "gaussian", "--x-scale", "learned", "--binarization", "none",
            "--elbo", "meanfield", "--kl-warmup-epochs", "1", "--out", str(out)]
    assert cli.main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["likelihood"] == "gaussian"
    assert [h["kl_weight"] for h in metrics["history"]] == [1.0, 1.0]  # weight at each epoch's end
    assert not (out / "manifold.png").exists()  # only for z_dim = 2

    # A checkpoint written before 'meanfield' became 'analytic-kl' resumes under either spelling
    # (the user's training state is not refused for a renamed option).
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert saved["config"]["model"]["loss"] == "analytic-kl"
    saved["config"]["model"]["loss"] = "meanfield"
    torch.save(saved, out / "checkpoint.pt")
    for epochs, spelling in ((3, "analytic-kl"), (4, "meanfield")):
        resumed = [a if a != "2" or args[i - 1] != "--epochs" else str(epochs) for i, a in enumerate(args)]
        resumed[resumed.index("meanfield")] = spelling
        assert cli.main(resumed + ["--resume"]) == 0
        assert [h["epoch"] for h in json.loads((out / "metrics.json").read_text())["history"]] == list(range(1, epochs + 1))


def test_user_error_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["vae", *SMOKE, "--z-dim", "0", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "z_dim must be a positive integer" in error
    assert not out.exists()


@pytest.mark.smoke
def test_example_runs_as_a_script():
    result = launch.run(
        [sys.executable, str(ROOT / "examples" / "vae.py"), "--epochs", "2", "--hidden-dims", "16"], timeout=300,
    )
    assert result.returncode == 0, result.stderr
    # The table: a header, then one row per epoch: epoch, train ELBO, test ELBO, recon, KL.
    rows = [fields for fields in map(str.split, result.stdout.splitlines()) if len(fields) == 5 and fields[0].isdigit()]
    assert [int(row[0]) for row in rows] == [1, 2], result.stdout
    test_elbo, recon, kl = (float(value) for value in rows[-1][2:5])
    assert -100 < test_elbo < 0  # 64 binary pixels: above -64 log 2 - KL once trained a little
    assert abs(test_elbo - (recon - kl)) < 0.02  # printed to 2 decimals
    assert "images/s" in result.stdout


# 2 steps of 500 digits; z_dim 3 skips the manifold figure.
TINY = ["--epochs", "1", "--batch-size", "500", "--z-dim", "3", "--hidden-dims", "8", "--no-progress"]


@pytest.mark.parametrize(
    "extra, loss",
    [
        pytest.param(["--estimator", "score-baseline"], "score-baseline", id="score-baseline"),
        pytest.param(["--estimator", "rloo", "--particles", "4"], "rloo-k4", id="rloo-4-particles"),
    ],
)
def test_vae_trains_with_a_named_estimator_and_its_particles(extra, loss, tmp_path):
    out = tmp_path / "run"
    assert cli.main(["vae", *TINY, *extra, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["loss"] == loss  # --particles reached the estimator
    assert math.isfinite(metrics["test_elbo"]) and -100 < metrics["test_elbo"] < 0


def test_overwrite_starts_over_in_a_used_output_dir(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["vae", *TINY, "--out", str(out)]) == 0
    assert cli.main(["vae", *TINY, "--seed", "1", "--out", str(out)]) == 2  # a forgotten --resume
    assert torch.load(out / "checkpoint.pt", weights_only=False)["config"]["train"]["seed"] == 0
    assert cli.main(["vae", *TINY, "--seed", "1", "--out", str(out), "--overwrite"]) == 0
    assert torch.load(out / "checkpoint.pt", weights_only=False)["config"]["train"]["seed"] == 1
    assert json.loads((out / "metrics.json").read_text())["seed"] == 1
