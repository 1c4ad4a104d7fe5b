"""Bad input to ``pyro-vi variance`` (replicates, particles, estimator names and applicability)
and ``pyro-vi gap``'s seed: one line on stderr, exit 2, nothing written.
"""

from __future__ import annotations

import pytest

from bad_input_helpers import run_cli

# pyro-vi variance: replicates, particles, estimator names and applicability, output.
VARIANCE = ["variance", "--model", "gaussian", "--estimators", "reparam,score", "--replicates", "20", "--particles", "1,2"]
VARIANCE_CASES = [
    pytest.param(["--replicates", "0"], "--replicates must be at least 2", id="variance-replicates-0"),
    pytest.param(["--replicates", "-5"], "--replicates must be at least 2", id="variance-replicates-negative"),
    pytest.param(["--particles", "0"], "--particles must be positive integers", id="variance-particles-0"),
    pytest.param(["--particles", "1,-2"], "--particles must be positive integers", id="variance-particles-negative"),
    pytest.param(["--particles", "a"], "expected comma-separated integers", id="variance-particles-not-integer"),
    pytest.param(["--estimators", "reparam,foo"], "unknown estimator(s) foo", id="variance-unknown-estimator"),
    pytest.param(["--model", "resnet"], "invalid choice: 'resnet'", id="variance-unknown-model"),
    pytest.param(["--dim", "0"], "dim must be a positive integer", id="variance-dim-0"),
    pytest.param(["--model", "bernoulli", "--estimators", "reparam"], "is pathwise but the guide samples discrete", id="variance-reparam-discrete"),
    pytest.param(["--model", "gmm", "--estimators", "reparam"], "is pathwise but the guide samples discrete", id="variance-reparam-gmm"),
    pytest.param(["--estimators", "enum"], "'enum' needs discrete latent sites", id="variance-enum-continuous"),
    pytest.param(["--estimators", "gumbel"], "gumbel needs Bernoulli", id="variance-gumbel-continuous"),
    pytest.param(["--estimators", "rloo", "--particles", "1"], "rloo needs at least 2 particles", id="variance-rloo-one-particle"),
    pytest.param(["--seed", "-1"], "argument --seed: must be an integer from 0 to 2**32 - 1", id="variance-seed-negative"),
    pytest.param(["--seed", "99999999999"], "argument --seed: must be an integer from 0 to 2**32 - 1", id="variance-seed-above-2-32"),
    # Sizes bounded against memory before any work (they used to run until killed).
    pytest.param(["--replicates", "2000000000"], "--replicates 2000000000 with --particles 2 needs", id="variance-replicates-2e9"),
    pytest.param(["--particles", str(10**30)], f"with --particles {10**30} needs", id="variance-particles-1e30"),
]


@pytest.mark.parametrize("extra, fragment", VARIANCE_CASES)
def test_cli_variance_bad_input(extra, fragment, tmp_path, capsys):
    out = tmp_path / "run"
    status, stderr = run_cli([*VARIANCE, "--out", str(out), *extra], capsys)
    assert status == 2
    assert "Traceback" not in stderr and stderr.count("\n") == 1, stderr
    assert stderr.startswith(("pyro-vi variance: error:", "pyro-vi: error:")) and fragment.lower() in stderr.lower(), stderr
    assert not out.exists()


# pyro-vi gap takes a seed too (it trains when given no checkpoint).
@pytest.mark.parametrize("seed", ["-1", "99999999999"], ids=["gap-seed-negative", "gap-seed-above-2-32"])
def test_cli_gap_bad_seed(seed, tmp_path, capsys):
    out = tmp_path / "run"
    status, stderr = run_cli(["gap", "--epochs", "1", "--seed", seed, "--out", str(out)], capsys)
    assert status == 2
    assert "Traceback" not in stderr and stderr.count("\n") == 1, stderr
    assert stderr.startswith("pyro-vi gap: error: argument --seed: must be an integer from 0 to 2**32 - 1"), stderr
    assert not out.exists()
