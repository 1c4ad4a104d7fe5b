"""A checkpoint is checked entry by entry against itself before anything is restored: each
parameter's optimizer state (shape, dtype, step), every field of the run (``step``, ``losses``,
``skipped``, ``state``), every tensor's storage against its shape; a resume on other data of the
same shapes is refused by the data's content fingerprint, before OUT is touched; ``pyro-vi
variance --checkpoint`` takes a baseline only for a site of the guide."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vi import cli
from pyro_vi.engine import checkpoint
from pyro_vi.errors import CheckpointError

COIN = """
import pyro
import pyro.distributions as dist
from pyro.distributions import constraints


def model(data):
    f = pyro.sample("f", dist.Beta(10.0, 10.0))
    with pyro.plate("data", data.shape[0]):
        pyro.sample("obs", dist.Bernoulli(f), obs=data)


def guide(data):
    alpha = pyro.param("alpha", data.new_tensor(15.0), constraint=constraints.positive)
    beta = pyro.param("beta", data.new_tensor(15.0), constraint=constraints.positive)
    pyro.sample("f", dist.Beta(alpha, beta))
"""
OPTIONS = ["--no-progress", "--elbo-samples", "2", "--posterior-samples", "2", "--learning-rate", "0.05"]


def _fit(tmp: Path, data: Path, out: Path, *extra: str) -> int:
    return cli.main(["fit", f"{tmp / 'coin.py'}:model", f"{tmp / 'coin.py'}:guide", "--data", str(data), *OPTIONS,
                     "--out", str(out), *extra])


@pytest.fixture(scope="module")
def coin_run(tmp_path_factory) -> Path:
    """A finished ``pyro-vi fit`` of the coin (3 steps, scalar params), its folder holding coin.py and data.npy."""
    tmp = tmp_path_factory.mktemp("coin")
    (tmp / "coin.py").write_text(COIN)
    np.save(tmp / "data.npy", np.array([1.0, 1.0, 0.0, 1.0, 0.0, 1.0]))
    assert _fit(tmp, tmp / "data.npy", tmp / "out", "--num-steps", "3") == 0
    return tmp


def _edited(coin_run: Path, tmp_path: Path, edit) -> Path:
    saved = torch.load(coin_run / "out" / "checkpoint.pt", weights_only=True)
    edit(saved)
    path = tmp_path / "checkpoint.pt"
    torch.save(saved, path)
    return path


def _slot(saved: dict, name: str = "alpha") -> dict:
    return saved["optimizer"][name]["state"][0]


def _set(entry: str, value):
    def edit(saved):
        if entry.startswith("run."):
            saved["run"][entry[4:]] = value
        else:
            _slot(saved)[entry] = value
    return edit


def _stride_zero_param(saved):
    saved["param_store"]["params"]["alpha"] = torch.zeros(1).expand(10**11)  # 1 element stored, 1e11 claimed


EDITS = [
    pytest.param(_set("exp_avg", torch.zeros(7)), "'exp_avg' is a (7,) torch.float32 tensor; the parameter is ()", id="exp-avg-shape"),
    pytest.param(_set("exp_avg", torch.zeros((), dtype=torch.float64)), "'exp_avg' is a () torch.float64 tensor", id="exp-avg-dtype"),
    pytest.param(_set("step", torch.tensor(-3.0)), "'step' is a () torch.float32 tensor, not one number >= 0", id="optimizer-step-negative"),
    pytest.param(_set("run.step", -5), "run 'step' is -5, not an integer >= 0", id="run-step-negative"),
    pytest.param(_set("run.losses", [1.0]), "run 'losses' holds 1 values for 3 steps", id="losses-cut-short"),
    pytest.param(_set("run.losses", ["1", "2", "3"]), "run 'losses' entry 1 is '1', not a finite number", id="losses-strings"),
    pytest.param(_set("run.losses", [1.0, math.inf, 2.0]), "run 'losses' entry 2 is inf", id="losses-inf"),
    pytest.param(_set("run.skipped", "many"), "run 'skipped' is 'many', not an integer", id="skipped-string"),
    pytest.param(_set("run.skipped", 2), "run 'skipped' is 2 but 'losses' marks 0 skipped steps", id="skipped-not-the-nan-count"),
    pytest.param(_set("run.state", [1]), "run 'state' is a list, not a dict", id="state-not-a-dict"),
    pytest.param(_stride_zero_param, "claims shape (100000000000,) (1e+11 elements) over a storage of 1 elements", id="stride-0-view"),
]


@pytest.mark.parametrize("edit, fragment", EDITS)
def test_a_damaged_entry_is_refused_on_load(edit, fragment, coin_run, tmp_path):
    """Each was accepted (broadcast into training, or blamed on the model) before its check; the
    file unedited loads."""
    checkpoint.load(_edited(coin_run, tmp_path, lambda saved: None))
    with pytest.raises(CheckpointError) as caught:
        checkpoint.load(_edited(coin_run, tmp_path, edit))
    assert fragment in str(caught.value) and "\n" not in str(caught.value), caught.value


@pytest.mark.parametrize("edit, fragment", [EDITS[0], EDITS[3], EDITS[-1]])
def test_fit_resume_of_a_damaged_checkpoint_is_one_line_and_claims_nothing(edit, fragment, coin_run, tmp_path, capsys):
    """Refused before OUT is claimed: a folder holding only the checkpoint gets no owner marker."""
    out = tmp_path / "out"
    out.mkdir()
    path = _edited(coin_run, out, edit)
    before = path.read_bytes()
    capsys.readouterr()
    assert _fit(coin_run, coin_run / "data.npy", out, "--num-steps", "6", "--resume") == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and fragment in error, error
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"] and path.read_bytes() == before


def test_resume_on_other_data_of_the_same_shape_is_refused_naming_the_file(coin_run, tmp_path, capsys):
    """The checkpoint records the data's content fingerprint (it recorded only shapes before)."""
    out = tmp_path / "out"
    shutil.copytree(coin_run / "out", out)
    np.save(tmp_path / "other.npy", np.array([0.0, 0.0, 0.0, 1.0, 0.0, 0.0]))  # the same shape, other values
    capsys.readouterr()
    assert _fit(coin_run, tmp_path / "other.npy", out, "--num-steps", "6", "--resume") == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "was trained on other data than" in error and "other.npy" in error, error
    assert _fit(coin_run, coin_run / "data.npy", out, "--num-steps", "4", "--resume") == 0  # its own data resumes


def test_variance_checkpoint_refuses_a_stray_baseline(coin_run, tmp_path, capsys):
    """A ``__baseline_avg_downstream_cost_SITE`` param is taken only for a sample site SITE of the guide."""
    def stray(saved):
        saved["param_store"]["params"]["__baseline_avg_downstream_cost_nowhere"] = torch.zeros(())
        saved["param_store"]["constraints"]["__baseline_avg_downstream_cost_nowhere"] = "real"

    def wrong_shape(saved):
        saved["param_store"]["params"]["__baseline_avg_downstream_cost_f"] = torch.zeros(5)
        saved["param_store"]["constraints"]["__baseline_avg_downstream_cost_f"] = "real"

    argv = ["variance", f"{coin_run / 'coin.py'}:model", f"{coin_run / 'coin.py'}:guide", "--data", str(coin_run / "data.npy"),
            "--estimators", "score", "--replicates", "2"]
    for edit, fragment in ((stray, "holds params the model and guide do not create (__baseline_avg_downstream_cost_nowhere)"),
                           (wrong_shape, "baseline '__baseline_avg_downstream_cost_f' has shape (5,)")):
        path = _edited(coin_run, tmp_path, edit)
        capsys.readouterr()
        assert cli.main([*argv, "--checkpoint", str(path), "--out", str(tmp_path / "variance")]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and fragment in error, error
        assert not (tmp_path / "variance").exists()


def test_a_trainers_own_state_of_another_type_is_refused_on_resume(tmp_path):
    """``fit(state=...)``: a checkpoint's entry of another type than the trainer's own (vae's
    ``epoch_loss`` a string, say) was put back as it was."""
    import pyro
    import pyro.distributions as dist

    import pyro_vi

    def model():
        pyro.sample("x", dist.Normal(0.0, 1.0))

    def guide():
        pyro.sample("x", dist.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0))

    path = tmp_path / "checkpoint.pt"
    pyro.clear_param_store()
    pyro_vi.fit(model, guide, num_steps=2, checkpoint=path, state={"epoch_loss": 0.0, "history": []}, progress=False)
    saved = torch.load(path, weights_only=True)
    saved["run"]["state"]["epoch_loss"] = "lots"
    torch.save(saved, path)
    pyro.clear_param_store()
    with pytest.raises(CheckpointError, match="run state 'epoch_loss' is a str, not a float"):
        pyro_vi.fit(model, guide, num_steps=4, checkpoint=path, resume=True, state={"epoch_loss": 0.0, "history": []}, progress=False)
