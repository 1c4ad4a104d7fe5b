"""Bad input to ``pyro-vi gmm`` and the mixture API: K, method, loss, data files, output.
One line on stderr, exit 2, nothing written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bad_input_helpers import run_cli
from pyro_vi.errors import ConfigError, DataError, DataNotFoundError

GOOD = torch.rand(20, 64, generator=torch.Generator().manual_seed(0))  # grey levels in [0, 1]

# --------------------------------------------------------------------------------------------
# pyro-vi gmm: K, method, loss, data files, output.

GMM = ["gmm", "--num-data", "200", "--max-iter", "5", "--num-steps", "5"]


def _gmm_file(kind: str, root: Path) -> str:
    path = root / f"{kind}.npy"
    if kind == "nan":
        np.save(path, np.array([[1.0, np.nan], [2.0, 3.0], [4.0, 5.0]]))
    elif kind == "one-row":
        np.save(path, np.array([[1.0, 2.0]]))
    elif kind == "3d":
        np.save(path, np.zeros((4, 2, 2)))
    elif kind == "text":
        path = root / "text.csv"
        path.write_text("a,b\n1,x\n")
    elif kind == "missing":
        path = root / "missing.csv"
    return str(path)


GMM_CASES = [
    pytest.param(["-k", "0"], "--num-components must be at least 1", id="gmm-k-0"),
    pytest.param(["-k", "-2"], "--num-components must be at least 1", id="gmm-k-negative"),
    pytest.param(["--num-restarts", "0"], "--num-restarts must be at least 1", id="gmm-restarts-0"),
    pytest.param(["--method", "svi-map", "--num-steps", "0"], "--num-steps must be at least 1", id="gmm-steps-0"),
    pytest.param(["--method", "svi-map", "--learning-rate", "0"], "--learning-rate must be positive", id="gmm-learning-rate-0"),
    pytest.param(["--method", "svi-map", "--learning-rate", "-1"], "--learning-rate must be positive", id="gmm-learning-rate-negative"),
    pytest.param(["--max-iter", "0"], "--max-iter must be at least 1", id="gmm-max-iter-0"),
    pytest.param(["--tol", "-1"], "--tol must be positive", id="gmm-tol-negative"),
    pytest.param(["--reg-covar", "-1"], "--reg-covar must be non-negative", id="gmm-reg-covar-negative"),
    pytest.param(["--num-data", "0"], "--num-data must be at least 1", id="gmm-num-data-0"),
    pytest.param(["--dim", "0"], "--dim must be at least 1", id="gmm-dim-0"),
    pytest.param(["--method", "variational-bayes"], "invalid choice: 'variational-bayes'", id="gmm-unknown-method"),
    pytest.param(["--loss", "reparam"], "invalid choice: 'reparam'", id="gmm-unknown-loss"),
    pytest.param(["--estimator", "reparam"], "invalid choice: 'reparam'", id="gmm-unknown-loss-old-name"),
    pytest.param(["--data", "missing"], "does not exist", id="gmm-data-missing"),
    pytest.param(["--seed", "-1"], "argument --seed: must be an integer from 0 to 2**32 - 1", id="gmm-seed-negative"),
    pytest.param(["--seed", "4294967296"], "argument --seed: must be an integer from 0 to 2**32 - 1", id="gmm-seed-2-32"),
    pytest.param(["--data", "nan"], "contains NaN/inf", id="gmm-data-nan"),
    pytest.param(["--data", "one-row"], "at least 2 rows", id="gmm-data-one-row"),
    pytest.param(["--data", "3d"], "need a (num_data, dim) table", id="gmm-data-3d"),
    pytest.param(["--data", "text"], "as a numeric table", id="gmm-data-not-numeric"),
    pytest.param(
        ["--device", "cuda"],
        "CUDA is not available here",
        id="gmm-cuda-without-cuda",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present"),
    ),
]


@pytest.mark.parametrize("extra, fragment", GMM_CASES)
def test_cli_gmm_bad_input(extra, fragment, tmp_path, capsys):
    if "--data" in extra:
        extra = [extra[0], _gmm_file(extra[1], tmp_path)]
    out = tmp_path / "run"
    status, stderr = run_cli([*GMM, "--out", str(out), *extra], capsys)
    assert status == 2
    assert "Traceback" not in stderr and stderr.count("\n") == 1, stderr
    assert stderr.startswith(("pyro-vi gmm: error:", "pyro-vi: error:")) and fragment.lower() in stderr.lower(), stderr
    assert not out.exists()


def test_cli_gmm_output_is_a_file(tmp_path, capsys):
    (tmp_path / "out").write_text("not a directory")
    status, stderr = run_cli([*GMM, "--out", str(tmp_path / "out")], capsys)
    assert status == 2 and stderr.count("\n") == 1 and "is a file, not a directory" in stderr
    assert (tmp_path / "out").read_text() == "not a directory"


@pytest.mark.parametrize(
    "num_components, covariance, num_restarts, fragment",
    [
        pytest.param(0, "full", 1, "at least 1", id="k-0"),
        pytest.param(-1, "full", 1, "at least 1", id="k-negative"),
        pytest.param(21, "full", 1, "20 data points cannot fit 21 components", id="k-above-data"),
        pytest.param(2, "spherical", 1, "unknown covariance 'spherical'", id="unknown-covariance"),
        pytest.param(2, "full", 0, "--num-restarts must be at least 1", id="restarts-0"),
    ],
)
def test_api_gmm_bad_options(num_components, covariance, num_restarts, fragment):
    from pyro_vi.mixture import em as mixture_em

    with pytest.raises(ConfigError, match=fragment):
        mixture_em.validate_options(GOOD[:, :3].double(), num_components, covariance, num_restarts)


@pytest.mark.parametrize(
    "kind, error_type, fragment",
    [
        pytest.param("missing", DataNotFoundError, "does not exist", id="missing"),
        pytest.param("nan", DataError, "contains NaN/inf", id="nan"),
        pytest.param("one-row", DataError, "at least 2 rows", id="one-row"),
        pytest.param("text", DataError, "as a numeric table", id="not-numeric"),
    ],
)
def test_api_gmm_bad_data_file(kind, error_type, fragment, tmp_path):
    from pyro_vi.mixture import data as mixture_data

    with pytest.raises(error_type, match=fragment):
        mixture_data.load_file(_gmm_file(kind, tmp_path))
