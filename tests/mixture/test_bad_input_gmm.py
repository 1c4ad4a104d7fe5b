"""Hostile input to ``pyro-vi gmm``: degenerate, huge, complex or empty data, infinite options,
a diverging SVI, an absurd size, and an OUT that is busy or holds another command's outputs.
Each is one line on stderr, exit 2, and nothing written (no NumPy or Pyro warning lines either).
"""

from __future__ import annotations

import numpy as np
import pytest

from pyro_vi import cli, io
from pyro_vi.mixture import data as mixture_data
from pyro_vi.mixture import em as mixture_em
from pyro_vi.errors import DataError

GMM = ["gmm", "--num-data", "200", "--max-iter", "5", "--num-steps", "5"]


def _file(kind: str, root) -> str:
    path = root / f"{kind}.npy"
    if kind == "identical":
        np.save(path, np.ones((30, 2)))
    elif kind == "huge":
        np.save(path, np.random.RandomState(0).randn(40, 2) * 1e307)
    elif kind == "complex":
        np.save(path, np.random.RandomState(0).randn(40, 2) + 1j)
    elif kind == "strings":
        np.save(path, np.array([["a", "b"]] * 10))
    elif kind == "empty":
        path = root / "empty.csv"
        path.write_text("")
    elif kind == "header-only":
        path = root / "header.csv"
        path.write_text("a,b\n")
    return str(path)


CASES = [
    pytest.param(["--data", "identical"], "1 distinct row, fewer than the 3 components", id="gmm-identical-rows"),
    pytest.param(["--data", "identical", "--reg-covar", "0"], "1 distinct row", id="gmm-identical-rows-reg-covar-0"),
    pytest.param(["--data", "identical", "--reg-covar", "0", "-k", "1"], "covariance is singular",
                 id="gmm-identical-rows-one-component-reg-covar-0"),
    pytest.param(["--data", "huge"], "where squared distances overflow", id="gmm-data-near-1e307"),
    pytest.param(["--separation", "inf"], "--separation must be finite", id="gmm-separation-inf"),
    pytest.param(["--separation", "1e300"], "synthetic data with --separation 1e+300 reach", id="gmm-separation-1e300"),
    pytest.param(["--reg-covar", "inf"], "--reg-covar must be finite", id="gmm-reg-covar-inf"),
    pytest.param(["--tol", "inf"], "--tol must be finite", id="gmm-tol-inf"),
    pytest.param(["--method", "svi-map", "--learning-rate", "inf"], "--learning-rate must be finite", id="gmm-learning-rate-inf"),
    pytest.param(["--method", "svi-map", "--learning-rate", "1e300"], "lower the learning rate", id="gmm-svi-map-diverges"),
    pytest.param(["--data", "complex"], "holds complex numbers", id="gmm-complex-npy"),
    pytest.param(["--data", "strings"], "holds values of dtype <U1", id="gmm-string-npy"),
    pytest.param(["--data", "empty"], "holds no data rows", id="gmm-empty-csv"),
    pytest.param(["--data", "header-only"], "holds no data rows", id="gmm-header-only-csv"),
    pytest.param(["--num-data", "2000000000"], "--num-data 2000000000 with --dim 2 and -k 3 needs", id="gmm-num-data-absurd"),
    pytest.param(["--out", ""], "the output directory is empty", id="gmm-out-empty"),
]


@pytest.mark.parametrize("extra, fragment", CASES)
def test_cli_gmm_hostile_input(extra, fragment, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # --out '' must not write into the current directory
    extra = [_file(value, tmp_path) if previous == "--data" else value for previous, value in zip([None, *extra], extra)]
    out = tmp_path / "run"
    argv = [*GMM, "--out", str(out), *extra]
    capsys.readouterr()
    status = cli.main(argv)
    stderr = capsys.readouterr().err
    assert status == 2, stderr
    assert "Traceback" not in stderr and stderr.count("\n") == 1, stderr
    assert stderr.startswith("pyro-vi gmm: error:") and fragment.lower() in stderr.lower(), stderr
    assert [p.name for p in tmp_path.iterdir() if p.suffix not in (".npy", ".csv")] == []  # no OUT, nothing in the cwd


def test_api_kmeans_on_identical_rows_names_the_problem():
    import torch

    data = torch.ones(30, 2, dtype=torch.float64)
    with pytest.raises(DataError, match="1 distinct row"):
        mixture_em.fit_em(data, 3)
    with pytest.raises(DataError, match="cannot pick 3 distinct centers"):
        mixture_em.kmeans(data, 3, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind, fragment", [("complex", "complex numbers"), ("strings", "dtype <U1"), ("empty", "no data rows")])
def test_api_load_file_refuses(kind, fragment, tmp_path, recwarn):
    with pytest.raises(DataError, match=fragment):
        mixture_data.load_file(_file(kind, tmp_path))
    assert not [w for w in recwarn if "loadtxt" in str(w.message)], "NumPy's warning leaked"


def test_cli_gmm_into_another_commands_output_is_refused(tmp_path, capsys):
    out = tmp_path / "vae-run"
    out.mkdir()
    (out / "metrics.json").write_text('{"test_elbo": -40.0}\n')
    (out / "checkpoint.pt").write_bytes(b"not ours")
    capsys.readouterr()
    assert cli.main([*GMM, "--out", str(out)]) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and "already holds outputs of another run" in stderr and "--overwrite" in stderr
    assert (out / "metrics.json").read_text() == '{"test_elbo": -40.0}\n'
    assert cli.main([*GMM, "--out", str(out), "--overwrite"]) == 0
    assert cli.main([*GMM, "--out", str(out)]) == 0  # its own earlier outputs: replaced, as before
    assert (out / io.OWNER_FILE).read_text().strip() == "gmm"


def test_cli_gmm_into_a_locked_out_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with io.lock_output(out):
        capsys.readouterr()
        assert cli.main([*GMM, "--out", str(out)]) == 2
        stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and "another pyro-vi run is writing to" in stderr
    assert sorted(p.name for p in out.iterdir()) == []
