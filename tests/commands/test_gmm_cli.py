"""`pyro-vi gmm`, examples/gmm.py and benchmarks/bench_gmm.py with tiny arguments."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from pyro_vi import cli

import launch  # tests/launch.py: commands in a forked warm interpreter

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--num-data", "120", "--num-steps", "5", "--plot-iterations", "1,2", "--device", "cpu"]


@pytest.mark.parametrize("method", ["em", "svi-map", "svi-bayesian"])
def test_cli_writes_metrics_and_figures(tmp_path, method):
    out = tmp_path / method
    assert cli.main(["gmm", "--method", method, "--out", str(out), *TINY]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("method", "num_components", "dim", "num_data", "train_log_likelihood", "test_log_likelihood", "ari",
                "iterations", "seconds", "sklearn_train_log_likelihood", "sklearn_seconds"):
        assert key in metrics
    assert metrics["method"] == method and metrics["num_data"] == 120 and metrics["num_components"] == 3
    assert (out / "assignments.png").stat().st_size > 0 and (out / "convergence.png").stat().st_size > 0
    if method == "em":  # same start, same reg_covar and tol as scikit-learn
        assert metrics["train_log_likelihood"] == pytest.approx(metrics["sklearn_train_log_likelihood"], rel=1e-4)
        assert metrics["em"]["min_log_likelihood_increment"] >= -1e-9
    # The API's words, not abbreviations: no key says k or loglik.
    assert not any(key == "k" or "loglik" in key for key in [*metrics, *metrics["em"], *metrics["svi"]])


def test_cli_old_method_and_loss_spellings_still_parse():
    """``svi-meanfield`` (now ``svi-bayesian``) and ``--estimator`` (now ``--loss``) are read as the new names."""
    args = cli.build_parser().parse_args(["gmm", "--method", "svi-meanfield", "--estimator", "trace"])
    assert args.method == "svi-bayesian" and args.loss == "trace"
    assert cli.build_parser().parse_args(["gmm"]).loss == "tracegraph"


def test_cli_reads_a_csv_with_labels(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 80)
    points = rng.normal(size=(80, 2)) + 10.0 * labels[:, None]
    path = tmp_path / "points.csv"
    np.savetxt(path, np.column_stack([points, labels]), delimiter=",", header="x,y,label", comments="")
    out = tmp_path / "out"
    assert cli.main(["gmm", "--data", str(path), "--label-column", "-1", "-k", "2", "--out", str(out), *TINY]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dim"] == 2 and metrics["num_data"] == 64 and metrics["ari"] == pytest.approx(1.0)


@pytest.mark.parametrize("argv, message", [
    (["--num-components", "0"], "--num-components"),
    (["--tol", "-1"], "--tol"),
    (["--plot-iterations", "a,b"], "--plot-iterations"),
    (["--data", "/nonexistent/points.csv"], "does not exist"),
    (["--dim", "1"], "diag"),
])
def test_cli_rejects_bad_arguments_before_writing(tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    assert cli.main(["gmm", "--out", str(out), *argv]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
    assert not out.exists()


@pytest.mark.smoke
def test_example_runs(tmp_path):
    result = launch.run([sys.executable, str(ROOT / "examples" / "gmm.py"), "--num-data", "100", "--num-steps", "5"], timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "sklearn" in result.stdout and "svi-map" in result.stdout and "svi-bayesian" in result.stdout


@pytest.mark.smoke
def test_benchmark_quick(tmp_path):
    out = tmp_path / "bench.json"
    table = tmp_path / "RESULTS.md"
    result = launch.run([sys.executable, str(ROOT / "benchmarks" / "bench_gmm.py"), "--quick", "--repeats", "1", "--out", str(out),
                             "--results-md", str(table)], timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["em"]["train_log_likelihood"] == pytest.approx(report["sklearn"]["train_log_likelihood"], rel=1e-4)
    assert "bench_gmm.py --quick" in table.read_text()


def test_cli_svi_map_test_log_likelihood_is_near_em_on_easy_data(tmp_path):
    # Two components 8 apart (well separated), 300 points. svi-map climbs the same log-likelihood
    # EM does from the same k-means start, deterministically (z is summed out, no sampling), so
    # after 150 steps it is within 0.01 nats/point of EM's on held-out data too.
    common = ["--num-data", "300", "-k", "2", "--separation", "8", "--covariance", "diag", "--plot-iterations", "1",
              "--device", "cpu"]
    assert cli.main(["gmm", "--method", "em", "--out", str(tmp_path / "em"), *common]) == 0
    assert cli.main(["gmm", "--method", "svi-map", "--num-steps", "150", "--learning-rate", "0.1",
                     "--out", str(tmp_path / "svi"), *common]) == 0
    em = json.loads((tmp_path / "em" / "metrics.json").read_text())
    svi = json.loads((tmp_path / "svi" / "metrics.json").read_text())
    assert abs(svi["test_log_likelihood"] - em["test_log_likelihood"]) < 0.01
    assert abs(svi["train_log_likelihood"] - em["train_log_likelihood"]) < 0.01
    assert svi["ari"] > 0.99
