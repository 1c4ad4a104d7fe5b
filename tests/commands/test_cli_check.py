"""`pyro-vi check`: after a fit (--checkpoint) or fitting first, posteriordb-format data and reference
draws, a bundled posteriordb port (--posteriordb DIR --posterior NAME GUIDE), one-line errors."""

import json
import math
import os
import zipfile

import numpy as np
import pytest

from pyro_vi import cli
from pyro_vi.diagnostics.psis import arviz
from pyro_vi.posteriordb.files import ENVIRONMENT_VARIABLE

# A normal mean with known sd: its posterior is N(post_mean, post_sd) (conjugate), any guide can match it.
MODEL = """
import pyro
import pyro.distributions as dist


def model(N, y, sigma):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("data", int(N)):
        pyro.sample("y", dist.Normal(mu, sigma), obs=y)
"""
Y = [0.3, 1.9, 1.2, 0.8, 1.7, 1.1, 0.4, 1.4]
SIGMA = 1.0
POST_VAR = 1 / (1 / 100 + len(Y) / SIGMA**2)
POST_MEAN, POST_SD = POST_VAR * sum(Y) / SIGMA**2, math.sqrt(POST_VAR)


def _files(tmp_path, reference_name="mu"):
    (tmp_path / "normal.py").write_text(MODEL)
    (tmp_path / "data.json").write_text(json.dumps({"N": len(Y), "y": Y, "sigma": SIGMA}))
    draws = np.random.default_rng(0).normal(POST_MEAN, POST_SD, size=(2, 2000))
    with zipfile.ZipFile(tmp_path / "reference.json.zip", "w") as archive:
        archive.writestr("reference.json", json.dumps([{reference_name: chain.tolist()} for chain in draws]))
    return f"{tmp_path / 'normal.py'}:model", str(tmp_path / "data.json"), str(tmp_path / "reference.json.zip")


def test_fit_then_check_against_the_exact_posterior(tmp_path):
    """Fit first (auto-mvn, 400 steps at lr 0.05), then check against draws of the exact posterior.

    The fitted q's mean is within 0.6 posterior sd of the exact one and its sd within 25% (Adam's
    noise and the finite steps: measured 0.03, 0.32, 0.14 sd and ratios 0.94, 1.07, 1.10 for seeds
    0-2; a q left at its start is several sd off); the reference's own Monte Carlo sd is
    1/sqrt(4000) = 0.016 sd. k-hat of a q this close is below 0.5.
    """
    model, data, reference = _files(tmp_path)
    out = tmp_path / "out"
    assert cli.main(["check", model, "auto-mvn", "--data", data, "--reference", reference, "--num-steps", "400",
                     "--learning-rate", "0.05", "--num-samples", "2000", "--no-progress", "--out", str(out)]) == 0
    report = json.loads((out / "check.json").read_text())
    for key in ("khat", "verdict", "elbo", "iw_elbo", "elbo_standard_error", "iw_elbo_standard_error", "effective_sample_size"):
        assert key in report
    assert report["khat"] < 0.5 and report["verdict"] == "good" and report["steps"] == 400
    assert report["iw_elbo"] >= report["elbo"] - 4 * report["elbo_standard_error"]
    (row,) = report["parameters"]
    assert row["name"] == "mu" and abs(row["mean_error_sd"]) < 0.6 and 0.75 < row["sd_ratio"] < 1.25
    assert row["ref_mean"] == pytest.approx(POST_MEAN, abs=4 * POST_SD / math.sqrt(4000))
    assert {"q_mean", "q_sd", "psis_mean", "psis_sd", "ref_sd"} <= set(row)
    assert (out / "marginals.png").stat().st_size > 0 and (out / "checkpoint.pt").is_file()
    draws = arviz().from_netcdf(out / "draws.nc")  # the guide's draws as InferenceData
    assert draws.posterior["mu"].shape == (1, 2000) and draws.sample_stats["log_weight"].shape == (1, 2000)


def test_check_a_pyro_vi_fit_checkpoint(tmp_path):
    """The params of `pyro-vi fit` (JSON data too), checked without fitting: q's mean is the fit's."""
    model, data, reference = _files(tmp_path)
    fitted = tmp_path / "fit"
    assert cli.main(["fit", model, "auto-normal", "--data", data, "--num-steps", "50", "--no-progress",
                     "--elbo-samples", "2", "--posterior-samples", "4000", "--out", str(fitted)]) == 0
    out = tmp_path / "check"
    assert cli.main(["check", model, "auto-normal", "--data", data, "--checkpoint", str(fitted / "checkpoint.pt"),
                     "--reference", reference, "--out", str(out)]) == 0
    report = json.loads((out / "check.json").read_text())
    assert report["steps"] is None and not (out / "checkpoint.pt").exists()
    with open(fitted / "posterior.csv") as file:
        fit_mean, fit_sd = (float(value) for value in file.readlines()[1].split(",")[2:4])
    # Both are 4000-draw means of the same q: 5 standard errors of their difference.
    assert report["parameters"][0]["q_mean"] == pytest.approx(fit_mean, abs=5 * fit_sd * math.sqrt(2 / 4000))


@pytest.mark.parametrize("extra, message", [
    (["--reference", "{wrong}"], "reference parameter 'theta' is not produced by the model"),
    (["--posterior", "eight_schools-eight_schools_noncentered", "--posteriordb", "{tmp}"], "with --posterior give only the GUIDE"),
    (["--num-samples", "5"], "--num-samples must be at least 10"),
])
def test_errors_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, extra, message):
    model, data, _ = _files(tmp_path)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    _, _, wrong_reference = _files(wrong, reference_name="theta")
    extra = [value.replace("{wrong}", wrong_reference).replace("{tmp}", str(tmp_path)) for value in extra]
    out = tmp_path / "out"
    assert cli.main(["check", model, "auto-normal", "--data", data, "--num-steps", "5", "--no-progress",
                     "--out", str(out), *extra]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error, error
    assert not out.exists()


@pytest.mark.skipif(not os.path.isdir(os.environ.get(ENVIRONMENT_VARIABLE) or "/nonexistent"),
                    reason=f"no posteriordb folder (set {ENVIRONMENT_VARIABLE})")
def test_a_bundled_port_against_its_reference(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["check", "--posterior", "kidiq-kidscore_momiq", "auto-normal", "--num-steps", "20",
                     "--num-samples", "200", "--no-progress", "--out", str(out)]) == 0
    report = json.loads((out / "check.json").read_text())
    assert report["posterior"] == "kidiq-kidscore_momiq"
    assert [row["name"] for row in report["parameters"]] == ["beta[1]", "beta[2]", "sigma"]
    assert all("mean_error_sd" in row and "sd_ratio" in row for row in report["parameters"])
    assert cli.main(["check", "--posterior", "nope", "auto-normal", "--out", str(tmp_path / "x")]) == 2
    assert "no Pyro port of posterior 'nope'" in capsys.readouterr().err
