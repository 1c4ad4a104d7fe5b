"""Hostile checkpoints: crafted, edited, partial or non-finite files are refused in one line.

The checkpoint is read with ``torch.load(weights_only=True)``, so a crafted file cannot run code;
every entry is checked on load, and a model's own parameters are checked with
``checkpoint.check_params``. ``save`` never writes NaN/inf and says the truth about the file it
leaves. Each case goes through ``checkpoint.load`` (the API every command uses) and, where the
failure is the model's, through ``pyro-vi gap --checkpoint`` (``models.vae.load_checkpoint``).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pyro
import pyro.distributions.constraints as constraints
import pytest
import torch

from pyro_vi import cli, io
from pyro_vi.engine import checkpoint, rng
from pyro_vi.errors import CheckpointError, OutputError
from pyro_vi.vae.model import VAE
from pyro_vi.engine.optim import Adam

GAP = ["gap", "--num-points", "10", "--iwae-k", "10", "--refine-steps", "0,1", "--meanfield-steps", "1",
       "--elbo-samples", "2", "--refine-samples", "2", "--no-progress"]


def _write_vae_checkpoint(path: Path, steps: int = 2) -> None:
    """A small ``pyro-vi vae``-style checkpoint (digits, 64 pixels), written by ``checkpoint.save``
    after a few Adam steps, without the trainer."""
    pyro.clear_param_store()
    vae = VAE(64, z_dim=2, hidden_dims=(8,))
    optimizer = Adam({"lr": 1e-2})
    elbo = pyro.infer.Trace_ELBO()
    svi = pyro.infer.SVI(vae.model, vae.guide, optimizer, elbo)
    x = torch.rand(10, 64, generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        svi.step(x)
    config = {"model": {**vae.config, "dataset": "digits"}, "train": {"epochs": 1, "seed": 0}}
    run = {"history": [{"epoch": 1, "train_elbo": -40.0}], "epoch": 1, "step": 0, "permutation": None, "epoch_loss": 0.0}
    checkpoint.save(path, config, run, optimizer)
    pyro.clear_param_store()


@pytest.fixture(scope="module")
def good_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "checkpoint.pt"
    _write_vae_checkpoint(path)
    return path


def _raw(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _edited(good_file: Path, tmp_path: Path, edit) -> Path:
    saved = _raw(good_file)
    edit(saved)
    path = tmp_path / "checkpoint.pt"
    torch.save(saved, path)
    return path


def _run_cli(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        status = cli.main(argv)
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err


def _assert_one_line(stderr: str, fragment: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip("\n").split("\n")
    assert len(lines) == 1, f"expected one line, got:\n{stderr}"
    assert lines[0].startswith("pyro-vi"), lines[0]
    assert fragment.lower() in lines[0].lower(), lines[0]


def _first_param(saved: dict) -> str:
    return sorted(saved["param_store"]["params"])[0]


# --------------------------------------------------------------------------------------------
# A crafted file that runs code when unpickled.


class _Payload:
    """Unpickling this creates ``marker``: what an attacker's ``os.system`` would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted(good_file: Path, tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    saved = _raw(good_file)
    saved["run"]["history"] = _Payload(str(marker))
    path = tmp_path / "crafted" / "checkpoint.pt"
    path.parent.mkdir()
    torch.save(saved, path)
    assert not marker.exists()
    return path, marker


def test_api_crafted_checkpoint_runs_no_code(good_file, tmp_path):
    path, marker = _crafted(good_file, tmp_path)
    with pytest.raises(CheckpointError, match="reading it could run code"):
        checkpoint.load(path)
    assert not marker.exists()


def test_cli_gap_crafted_checkpoint_runs_no_code(good_file, tmp_path, capsys):
    path, marker = _crafted(good_file, tmp_path)
    status, stderr = _run_cli([*GAP, "--checkpoint", str(path), "--out", str(tmp_path / "gap")], capsys)
    assert status == 2
    _assert_one_line(stderr, "reading it could run code")
    assert not marker.exists() and not (tmp_path / "gap").exists()


def test_cli_vae_resume_crafted_checkpoint_runs_no_code(good_file, tmp_path, capsys):
    path, marker = _crafted(good_file, tmp_path)
    argv = ["vae", "--epochs", "2", "--z-dim", "2", "--hidden-dims", "8", "--batch-size", "100", "--no-progress",
            "--out", str(path.parent), "--resume"]
    status, stderr = _run_cli(argv, capsys)
    assert status == 2
    _assert_one_line(stderr, "reading it could run code")
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# Edited entries: each refused by load, naming what is wrong.


def _delete(key):
    return lambda saved: saved.pop(key)


def _set_first_param(make):
    """The first param replaced by ``make(param)``, its optimizer state dropped (as a checkpoint
    of another model holds state that fits its own params)."""
    def edit(saved):
        name = _first_param(saved)
        saved["param_store"]["params"][name] = make(saved["param_store"]["params"][name])
        saved["optimizer"].pop(name, None)

    return edit


def _set(path: tuple, value):
    def edit(saved):
        target = saved
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


def _first_constraint(value):
    def edit(saved):
        saved["param_store"]["constraints"][_first_param(saved)] = value

    return edit


def _optimizer_nan(saved):
    state = next(iter(saved["optimizer"].values()))["state"][0]
    state["exp_avg"] = torch.full_like(state["exp_avg"], float("nan"))


LOAD_CASES = [
    *(pytest.param(_delete(key), f"{key!r} is missing", id=f"no-{key}") for key in
      ("optimizer", "rng", "run", "config", "param_store")),
    pytest.param(_set(("format_version",), "2"), "has format_version '2', not an integer", id="format-version-string"),
    pytest.param(_set(("format_version",), 1), "older than this pyro_vi", id="format-version-older"),
    pytest.param(_set(("rng", "torch"), torch.zeros(5, dtype=torch.uint8)), "rng 'torch' is not a CPU generator state",
                 id="rng-torch-5-bytes"),
    pytest.param(_set(("rng", "torch"), [1, 2, 3]), "rng 'torch' is a list", id="rng-torch-not-tensor"),
    pytest.param(_set(("rng", "python", "internal"), torch.zeros(7, dtype=torch.int64)), "Python/NumPy state is unusable",
                 id="rng-python-short"),
    pytest.param(_set(("rng", "numpy", "keys"), torch.zeros(3, dtype=torch.int64)), "Python/NumPy state is unusable",
                 id="rng-numpy-short"),
    pytest.param(_set(("rng", "numpy"), "MT19937"), "'numpy' is a str", id="rng-numpy-string"),
    pytest.param(_set(("rng", "cuda"), [torch.zeros(3)]), "rng 'cuda' is not a list of byte tensors", id="rng-cuda-floats"),
    pytest.param(_set_first_param(lambda p: p.index_fill(0, torch.tensor([0]), float("nan"))), "holds NaN/inf", id="param-nan"),
    pytest.param(_set_first_param(lambda p: torch.full_like(p, float("inf"))), "holds NaN/inf", id="param-inf"),
    pytest.param(_set_first_param(lambda p: p.long()), "not a floating-point dtype", id="param-integer"),
    pytest.param(_set_first_param(lambda p: p.tolist()), "not a tensor", id="param-list"),
    pytest.param(_first_constraint("made_up"), "unknown constraint 'made_up'", id="constraint-unknown"),
    pytest.param(_first_constraint({"type": "interval", "args": ["a", 1.0]}), "unknown constraint", id="constraint-bad-args"),
    pytest.param(lambda s: s["param_store"]["constraints"].pop(_first_param(s)), "no constraint", id="constraint-missing"),
    pytest.param(_set(("param_store", "params"), []), "'params' is a list", id="params-not-dict"),
    pytest.param(_set(("config", "model"), "vae"), "config 'model' is a str", id="config-model-not-dict"),
    pytest.param(_optimizer_nan, "holds NaN/inf", id="optimizer-nan"),
    pytest.param(lambda s: s["optimizer"].update({"ghost": {}}), "optimizer state for 'ghost'", id="optimizer-unknown-param"),
]


@pytest.mark.parametrize("edit, fragment", LOAD_CASES)
def test_api_edited_checkpoint(edit, fragment, good_file, tmp_path):
    path = _edited(good_file, tmp_path, edit)
    with pytest.raises(CheckpointError) as caught:
        checkpoint.load(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert fragment.lower() in message.lower(), message


def _cases(*ids):
    return [case for case in LOAD_CASES + globals().get("MODEL_CASES", []) if case.id in ids]


@pytest.mark.parametrize("edit, fragment", _cases("no-optimizer", "format-version-string", "rng-torch-5-bytes", "param-nan"))
def test_cli_gap_edited_checkpoint(edit, fragment, good_file, tmp_path, capsys):
    path = _edited(good_file, tmp_path, edit)
    out = tmp_path / "gap"
    status, stderr = _run_cli([*GAP, "--checkpoint", str(path), "--out", str(out)], capsys)
    assert status == 2
    _assert_one_line(stderr, fragment)
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# Parameters against the model: missing, extra, wrong shape, wrong dtype.


def _drop_param(saved):
    name = _first_param(saved)
    del saved["param_store"]["params"][name], saved["param_store"]["constraints"][name]
    saved["optimizer"].pop(name, None)


def _extra_param(saved):
    saved["param_store"]["params"]["stowaway"] = torch.zeros(3)
    saved["param_store"]["constraints"]["stowaway"] = "real"


MODEL_CASES = [
    pytest.param(_drop_param, "has no parameter 'decoder$$$body.0.bias'", id="param-deleted"),
    pytest.param(_extra_param, "has parameter 'stowaway', which the model does not create", id="param-extra"),
    pytest.param(_set_first_param(lambda p: torch.zeros(p.numel() + 1)), "has shape (9,), the model's is (8,)", id="param-wrong-shape"),
    pytest.param(_set_first_param(lambda p: p.double()), "has dtype torch.float64, the model's is torch.float32", id="param-float64"),
]


@pytest.mark.parametrize("edit, fragment", MODEL_CASES)
def test_cli_gap_checkpoint_of_another_model(edit, fragment, good_file, tmp_path, capsys):
    path = _edited(good_file, tmp_path, edit)
    out = tmp_path / "gap"
    status, stderr = _run_cli([*GAP, "--checkpoint", str(path), "--out", str(out)], capsys)
    assert status == 2
    _assert_one_line(stderr, fragment)
    assert not out.exists()


@pytest.mark.parametrize("edit, fragment", MODEL_CASES)
def test_api_check_params(edit, fragment, good_file, tmp_path):
    path = _edited(good_file, tmp_path, edit)
    saved = checkpoint.load(path)  # the file itself is well formed
    vae = VAE(64, z_dim=2, hidden_dims=(8,))
    expected = {**checkpoint.module_params("encoder", vae.encoder), **checkpoint.module_params("decoder", vae.decoder)}
    with pytest.raises(CheckpointError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace("$", r"\$")):
        checkpoint.check_params(saved, expected, path)
    checkpoint.check_params(checkpoint.load(good_file), expected, good_file)  # the good file passes


@pytest.mark.parametrize(
    "permutation, fragment",
    [
        pytest.param(torch.arange(5), "not a permutation of the 10 data points (length 5)", id="permutation-short"),
        pytest.param(torch.zeros(10, dtype=torch.int64), "not a permutation of the 10", id="permutation-repeats"),
        pytest.param(torch.arange(10.0), "not a 1-D int64 tensor", id="permutation-float"),
        pytest.param([0, 1], "not a 1-D int64 tensor", id="permutation-list"),
    ],
)
def test_api_check_permutation(permutation, fragment, good_file, tmp_path):
    saved = checkpoint.load(_edited(good_file, tmp_path, _set(("run", "permutation"), permutation)))
    with pytest.raises(CheckpointError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        checkpoint.check_permutation(saved, 10)
    saved["run"]["permutation"] = torch.randperm(10)
    checkpoint.check_permutation(saved, 10)


def test_api_check_run(good_file):
    saved = checkpoint.load(good_file)
    checkpoint.check_run(saved, {"epoch": int, "epoch_loss": float, "history": list})
    saved["run"]["epoch"] = "1"
    with pytest.raises(CheckpointError, match="run 'epoch' is a str"):
        checkpoint.check_run(saved, {"epoch": int})
    del saved["run"]["step"]
    with pytest.raises(CheckpointError, match="run 'step' is missing"):
        checkpoint.check_run(saved, {"step": int})


# --------------------------------------------------------------------------------------------
# Writing: never NaN/inf, a truthful message, constraints and RNG states round-trip.


def _store_with(value: torch.Tensor, constraint=constraints.real) -> Adam:
    pyro.clear_param_store()
    pyro.param("w", value, constraint=constraint)
    return Adam({"lr": 0.1})


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_save_refuses_non_finite_params_and_keeps_the_old_file(bad, good_file, tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(good_file.read_bytes())
    optimizer = _store_with(torch.tensor([1.0, bad]))
    with pytest.raises(CheckpointError, match="parameter 'w' holds NaN/inf.*the previous checkpoint is intact"):
        checkpoint.save(path, {}, {}, optimizer)
    assert path.read_bytes() == good_file.read_bytes()
    with pytest.raises(CheckpointError, match="no checkpoint was written"):
        checkpoint.save(tmp_path / "fresh.pt", {}, {}, optimizer)
    assert not (tmp_path / "fresh.pt").exists()


def test_save_refuses_non_finite_optimizer_state(tmp_path):
    optimizer = _store_with(torch.tensor([1.0, 2.0]))
    param = pyro.param("w").unconstrained()
    param.grad = torch.tensor([float("inf"), 1.0])
    optimizer([param])
    pyro.get_param_store()._params["w"].data.fill_(1.0)  # the param finite, its Adam moments not
    with pytest.raises(CheckpointError, match="optimizer.*holds NaN/inf"):
        checkpoint.save(tmp_path / "checkpoint.pt", {}, {}, optimizer)


def test_first_checkpoint_disk_full_does_not_claim_an_intact_one(tmp_path, monkeypatch):
    optimizer = _store_with(torch.ones(2))

    def disk_full(path, write, mode="wb"):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "atomic_write", disk_full)
    with pytest.raises(OutputError) as caught:
        checkpoint.save(tmp_path / "checkpoint.pt", {}, {}, optimizer)
    assert "intact" not in str(caught.value) and "no checkpoint was written" in str(caught.value)


def test_save_refuses_values_that_would_not_load(tmp_path):
    optimizer = _store_with(torch.ones(2))
    with pytest.raises(CheckpointError, match="run.when is a PosixPath"):
        checkpoint.save(tmp_path / "checkpoint.pt", {}, {"when": Path("x")}, optimizer)


@pytest.mark.parametrize(
    "constraint",
    [constraints.positive, constraints.unit_interval, constraints.interval(-2.0, 3.0), constraints.greater_than(0.5),
     constraints.independent(constraints.positive, 1), constraints.simplex, constraints.lower_cholesky],
    ids=["positive", "unit-interval", "interval", "greater-than", "independent", "simplex", "lower-cholesky"],
)
def test_constraints_round_trip(constraint, tmp_path):
    value = torch.eye(2) * 0.5 if constraint is constraints.lower_cholesky else torch.full((2,), 0.5)
    if isinstance(constraint, constraints.greater_than):
        value = torch.full((2,), 1.5)
    optimizer = _store_with(value, constraint)
    before = pyro.param("w").detach().clone()
    checkpoint.save(tmp_path / "checkpoint.pt", {}, {}, optimizer)
    saved = checkpoint.load(tmp_path / "checkpoint.pt")
    pyro.clear_param_store()
    pyro.get_param_store().set_state(saved["param_store"])
    restored = pyro.get_param_store().get_state()["constraints"]["w"]
    assert type(restored) is type(constraint) and repr(restored) == repr(constraint)
    assert torch.allclose(pyro.param("w"), before)


def test_save_refuses_a_constraint_it_cannot_name(tmp_path):
    optimizer = _store_with(torch.full((2,), 0.5), constraints.greater_than(torch.tensor([0.0, 0.1])))
    with pytest.raises(CheckpointError, match="which a checkpoint cannot store"):
        checkpoint.save(tmp_path / "checkpoint.pt", {}, {}, optimizer)


def test_rng_state_round_trip(tmp_path):
    import random

    import numpy as np

    optimizer = _store_with(torch.ones(2))
    checkpoint.save(tmp_path / "checkpoint.pt", {}, {}, optimizer)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(123), random.seed(5), np.random.seed(7)
    rng.set_state(checkpoint.load(tmp_path / "checkpoint.pt")["rng"])
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1] and np.random.rand() == expected[2]


# --------------------------------------------------------------------------------------------
# Where the checkpoint goes: checked before any work.


@pytest.mark.parametrize(
    "kind, fragment",
    [
        pytest.param("directory", "is a directory", id="checkpoint-path-is-directory"),
        pytest.param("missing-parent", "does not exist", id="checkpoint-parent-missing"),
        pytest.param("parent-is-file", "does not exist or is not a directory", id="checkpoint-parent-is-file"),
        pytest.param("long-name", "name too long", id="checkpoint-name-too-long"),
        pytest.param("read-only", "permission denied", id="checkpoint-dir-read-only"),
    ],
)
def test_check_writable(kind, fragment, tmp_path):
    path = tmp_path / "checkpoint.pt"
    if kind == "directory":
        path.mkdir()
    elif kind == "missing-parent":
        path = tmp_path / "nowhere" / "checkpoint.pt"
    elif kind == "parent-is-file":
        (tmp_path / "file").write_text("x")
        path = tmp_path / "file" / "checkpoint.pt"
    elif kind == "long-name":
        path = tmp_path / ("c" * 300 + ".pt")
    elif kind == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes anywhere")
        (tmp_path / "ro").mkdir(mode=0o500)
        path = tmp_path / "ro" / "checkpoint.pt"
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(OutputError) as caught:
        io.check_writable(path)
    assert fragment in str(caught.value).lower() and "\n" not in str(caught.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    io.check_writable(tmp_path / "fine.pt")
    assert not (tmp_path / "fine.pt").exists()


def test_expected_params_leaves_store_and_rng_alone():
    vae = VAE(64, z_dim=2, hidden_dims=(8,), likelihood="gaussian", x_scale=None)
    x = torch.rand(5, 64)
    pyro.param("unrelated", torch.ones(3))
    torch.manual_seed(1)
    expected_draw = torch.rand(2)
    torch.manual_seed(1)
    expected = checkpoint.expected_params(vae.model, vae.guide, x)
    assert torch.equal(torch.rand(2), expected_draw)
    assert list(pyro.get_param_store().keys()) == ["unrelated"]
    assert expected["x_scale"] == ((), torch.float32) and expected["decoder$$$body.0.weight"] == ((8, 2), torch.float32)
    assert "unrelated" not in expected and len(expected) == 9


# --------------------------------------------------------------------------------------------
# The same files through the other commands that read checkpoints.


def test_cli_variance_crafted_checkpoint_runs_no_code(good_file, tmp_path, capsys):
    path, marker = _crafted(good_file, tmp_path)
    argv = ["variance", "--model", "vae", "--checkpoint", str(path), "--replicates", "2", "--out", str(tmp_path / "variance")]
    status, stderr = _run_cli(argv, capsys)
    assert status == 2
    _assert_one_line(stderr, "reading it could run code")
    assert not marker.exists() and not (tmp_path / "variance").exists()


@pytest.mark.parametrize("edit, fragment", _cases("param-deleted", "param-wrong-shape", "param-nan", "no-rng"))
def test_cli_variance_edited_checkpoint(edit, fragment, good_file, tmp_path, capsys):
    path = _edited(good_file, tmp_path, edit)
    argv = ["variance", "--model", "vae", "--checkpoint", str(path), "--replicates", "2", "--out", str(tmp_path / "variance")]
    status, stderr = _run_cli(argv, capsys)
    assert status == 2
    _assert_one_line(stderr, fragment)


@pytest.mark.parametrize("edit, fragment", _cases("no-optimizer", "no-run", "format-version-string", "rng-torch-5-bytes", "param-nan",
                                                  "rng-numpy-short"))
def test_cli_vae_resume_edited_checkpoint(edit, fragment, good_file, tmp_path, capsys):
    """Refused on load, before the config is compared (the file is not the vae command's own)."""
    (tmp_path / "run").mkdir()
    path = _edited(good_file, tmp_path / "run", edit)
    before = path.read_bytes()
    argv = ["vae", "--epochs", "2", "--z-dim", "2", "--hidden-dims", "8", "--batch-size", "100", "--no-progress",
            "--out", str(path.parent), "--resume"]
    status, stderr = _run_cli(argv, capsys)
    assert status == 2
    _assert_one_line(stderr, fragment)
    assert path.read_bytes() == before


def test_cli_vae_diverging_run_leaves_no_non_finite_checkpoint(tmp_path, capsys):
    """--learning-rate 1e308 with a checkpoint after every step: the run stops in one line and
    whatever checkpoint is on disk loads (so holds only finite values)."""
    out = tmp_path / "run"
    argv = ["vae", "--epochs", "1", "--z-dim", "2", "--hidden-dims", "8", "--batch-size", "100", "--no-progress",
            "--learning-rate", "1e308", "--checkpoint-every", "1", "--out", str(out)]
    status, stderr = _run_cli(argv, capsys)
    assert status == 2
    _assert_one_line(stderr, "NaN/inf")
    assert "is intact" not in stderr or (out / "checkpoint.pt").is_file()
    if (out / "checkpoint.pt").exists():
        checkpoint.load(out / "checkpoint.pt")


def test_format_1_checkpoint_is_refused_without_unpickling(tmp_path):
    """A file of the old format pickled constraint objects and NumPy arrays: refused, not run."""
    import numpy as np

    path = tmp_path / "checkpoint.pt"
    torch.save({"format_version": 1, "config": {}, "param_store": {"params": {"w": torch.ones(2)}, "constraints": {"w": constraints.positive}},
                "optimizer": {}, "rng": {"numpy": np.random.get_state()}, "run": {}}, path)
    with pytest.raises(CheckpointError, match=r"holds Python objects \(.*\).*a file of an older pyro_vi"):
        checkpoint.load(path)


def test_numpy_scalars_in_config_and_run_are_stored_as_numbers(tmp_path):
    import numpy as np

    optimizer = _store_with(torch.ones(2))
    checkpoint.save(tmp_path / "checkpoint.pt", {"train": {"seed": np.int64(3), "lr": np.float32(0.5)}},
                    {"epoch": np.int64(2), "flags": (np.bool_(True),)}, optimizer)
    saved = checkpoint.load(tmp_path / "checkpoint.pt")
    assert saved["config"]["train"] == {"seed": 3, "lr": 0.5} and type(saved["config"]["train"]["seed"]) is int
    assert saved["run"]["epoch"] == 2 and saved["run"]["flags"] == (True,)
