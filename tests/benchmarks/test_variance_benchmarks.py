"""The gradient-variance benchmarks run with --quick and their numbers check out."""

import sys
from pathlib import Path

import pytest

import launch  # tests/launch.py: commands in a forked warm interpreter

ROOT = Path(__file__).resolve().parents[2]


def _run(script, tmp_path):
    result = launch.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--out-dir", str(tmp_path), "--no-table"], timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.smoke
def test_speed_benchmark_quick(tmp_path):
    assert "vectorized" in _run("bench_variance_speed.py", tmp_path)
    assert (tmp_path / "bench_variance_speed_quick.json").exists()


@pytest.mark.smoke
def test_pyro_gradient_test_reproduction_quick(tmp_path):
    import json

    _run("repro_pyro_gradient_test.py", tmp_path)
    rows = json.loads((tmp_path / "repro_pyro_gradient_test_quick.json").read_text())["rows"]
    assert {r["estimator"] for r in rows} >= {"reparam", "score", "rloo", "stl"}
    # 200 replicates: every unbiased estimator's mean within 4 standard errors of the exact gradient.
    assert all(r["max_bias_in_standard_errors"] < 4 for r in rows)
    assert (tmp_path / "repro_pyro_gradient_test_quick.png").exists()



def _main_quick(script, tmp_path):
    """Run a reproduction's ``main`` with --quick in this process (one torch import for all)."""
    import importlib
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    module = importlib.import_module(script)
    threads = torch.get_num_threads()
    try:
        return module.main(module.parse_args(["--quick", "--out-dir", str(tmp_path), "--no-table"]))
    finally:
        torch.set_num_threads(threads)  # the scripts' setup_threads must not leak into other tests


@pytest.mark.smoke
def test_mohamed2020_reproduction_quick(tmp_path):
    import json

    _main_quick("repro_mohamed2020", tmp_path)
    payload = json.loads((tmp_path / "repro_mohamed2020_quick.json").read_text())
    rows = payload["rows"]
    assert {r["estimator"] for r in rows} == {"score", "score-optimal-baseline", "reparam"}
    # 20,000 draws per point: MC variances within 4 SE of Gauss-Hermite (SE from the exact 4th moment)
    # and MC means within 4 SE of the exact gradient.
    assert payload["max_variance_error_in_standard_errors"] < 4
    assert payload["max_mean_error_in_standard_errors"] < 4
    # the paper's headline: on (x - k)^2 the pathwise d/d loc has variance 4 for every k, below score's
    square_loc = [r for r in rows if r["cost"] == "square" and r["param"] == "loc"]
    assert all(abs(r["exact_variance"] - 4) < 1e-9 for r in square_loc if r["estimator"] == "reparam")
    assert all(r["exact_variance"] > 4 for r in square_loc if r["estimator"] != "reparam")
    assert (tmp_path / "repro_mohamed2020_quick.png").exists()


@pytest.mark.smoke
def test_rainforth2018_reproduction_quick(tmp_path):
    import json
    import math

    _main_quick("repro_rainforth2018", tmp_path)
    rows = json.loads((tmp_path / "repro_rainforth2018_quick.json").read_text())["rows"]
    iwae = [r for r in rows if r["estimator"] == "iwae"]
    dreg = [r for r in rows if r["estimator"] == "dreg"]
    assert iwae[0]["num_particles"] == 1 and iwae[-1]["num_particles"] > 1

    def gap(first, last):  # difference of two independent SNR estimates, in standard errors
        return (last["guide_snr"] - first["guide_snr"]) / math.hypot(first["guide_snr_standard_error"], last["guide_snr_standard_error"])

    # IWAE's inference-network SNR falls (Rainforth et al.: like 1/sqrt(K)): below half of K = 1's,
    # by more than 4 standard errors (delta-method SE of the SNR with 200 replicates).
    assert iwae[-1]["guide_snr"] < 0.5 * iwae[0]["guide_snr"]
    assert gap(iwae[0], iwae[-1]) < -4
    # DReG's does not fall: the largest K is not below K = 1 by more than 3 standard errors.
    assert gap(dreg[0], dreg[-1]) > -3
    # the generative-model SNR rises with K for both (same estimator for prior_loc)
    assert iwae[-1]["model_snr"] > iwae[0]["model_snr"]
    assert (tmp_path / "repro_rainforth2018_quick.png").exists()


@pytest.mark.smoke
def test_bernoulli_toy_reproduction_quick(tmp_path):
    import json

    _main_quick("repro_bernoulli_toy", tmp_path)
    payload = json.loads((tmp_path / "repro_bernoulli_toy_quick.json").read_text())
    # enumeration of the 2^3 outcomes agrees with the problem's per-coordinate closed form
    assert abs(payload["exact_gradient"] - payload["exact_gradient_closed_form"]) < 1e-6
    rows = payload["rows"]
    # 10,000 replicates: score and rloo unbiased, mean within 4 SE of the exact gradient at every k
    assert all(abs(r["bias_in_standard_errors"]) < 4 for r in rows if r["estimator"] in ("score", "rloo"))
    # rloo's variance below score's at equal k
    for k in {r["num_particles"] for r in rows}:
        variance = {r["estimator"]: r["variance"] for r in rows if r["num_particles"] == k and r["temperature"] is None}
        assert variance["rloo"] < variance["score"]
    # gumbel is biased: at temperature 1 and the largest k its bias is more than 4 SE away from 0
    gumbel = [r for r in rows if r["estimator"] == "gumbel" and r["temperature"] == 1.0]
    assert gumbel[-1]["bias_in_standard_errors"] > 4
    assert (tmp_path / "repro_bernoulli_toy_quick.png").exists()


# About 23 s on the idle 2-core machine (two short VAE trainings, 48 variance measurements): in the
# default run, so every benchmark script's --quick runs there.
@pytest.mark.smoke
def test_vae_estimators_reproduction_quick(tmp_path):
    import json

    _run("repro_vae_estimators.py", tmp_path)
    payload = json.loads((tmp_path / "repro_vae_estimators_quick.json").read_text())
    for run in payload["runs"].values():
        assert set(run["encoder_variance"]) == {str(e) for e in payload["measure_at"]}
        initial = run["encoder_variance"]["0"]
        # at initialization the score function's encoder gradient is orders of magnitude noisier than
        # the pathwise one (20 replicates: a factor 100 is far beyond the sampling error of a variance)
        assert initial["score"]["encoder_total_variance"] > 100 * initial["reparam"]["encoder_total_variance"]
        assert all(isinstance(v, float) for v in run["test_elbo"].values())
    assert (tmp_path / "repro_vae_estimators_quick.png").exists()
