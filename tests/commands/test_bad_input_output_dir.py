"""Bad output locations (``--out`` a file, under a file, not writable), through ``pyro-vi vae``
and ``pyro_vi.io.prepare_output_dir``: one line naming ``--out``, nothing written.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bad_input_helpers import TINY, assert_one_line, run_cli, snapshot
from pyro_vi import io
from pyro_vi.errors import OutputError


# --------------------------------------------------------------------------------------------
# CLI: output locations.


def _output_cases():
    cases = [
        pytest.param("file", "is a file, not a directory", id="out-is-a-file"),
        pytest.param("under-file", "cannot create output directory", id="out-under-a-file"),
        pytest.param(
            "sys",
            "cannot create output directory",
            id="out-not-writable-sysfs",
            marks=pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs a read-only /sys"),
        ),
        pytest.param(
            "read-only",
            "is not writable",
            id="out-not-writable-chmod",
            marks=pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits"),
        ),
    ]
    return cases


def _make_out(kind: str, root: Path) -> Path:
    if kind == "file":
        (root / "out").write_text("not a directory")
        return root / "out"
    if kind == "under-file":
        (root / "file").write_text("not a directory")
        return root / "file" / "run"
    if kind == "sys":
        return Path("/sys/pyro_vi_test_out")
    directory = root / "read-only"
    directory.mkdir()
    directory.chmod(0o555)
    return directory


@pytest.mark.parametrize("kind, fragment", _output_cases())
def test_cli_bad_output_dir(kind, fragment, tmp_path, capsys):
    out = _make_out(kind, tmp_path)
    before = snapshot(tmp_path)
    status, stderr = run_cli(["vae", *TINY, "--out", str(out)], capsys)
    assert status == 2
    assert_one_line(stderr, fragment)
    assert "--out" in stderr
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind, fragment", _output_cases())
def test_api_bad_output_dir(kind, fragment, tmp_path):
    with pytest.raises(OutputError, match=fragment):
        io.prepare_output_dir(_make_out(kind, tmp_path))


# --------------------------------------------------------------------------------------------
# One output policy for every command: OUT claimed, another's files refused, --overwrite clears.


VARIANCE = ["variance", "--model", "gaussian", "--dim", "2", "--estimators", "reparam", "--replicates", "2"]


def _finished(out: Path, command: str, names: tuple[str, ...]) -> None:
    """OUT as a finished run of ``command`` leaves it: its files written inside ``io.run_output``."""
    with io.run_output(out, command) as directory:
        for name in names:
            io.atomic_write(directory / name, lambda file: file.write(f"{command}\n"), mode="w")


@pytest.mark.parametrize("owner", [None, "vae"], ids=["a-users-files", "a-finished-vae-run"])
def test_variance_claims_its_out(owner, tmp_path, capsys):
    """``pyro-vi variance`` replaced a user's own variance.csv (exit 0) and added its files to a
    finished ``pyro-vi vae`` run; it had no --overwrite."""
    out = tmp_path / "out"
    if owner is None:
        out.mkdir()
        (out / "variance.csv").write_text("my own numbers\n")
    else:
        _finished(out, owner, ("metrics.json", "elbo.png"))
    before = snapshot(out)
    status, stderr = run_cli([*VARIANCE, "--out", str(out)], capsys)
    assert status == 2 and snapshot(out) == before
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("pyro-vi variance: error:"), stderr
    assert ("already holds outputs of " + ("another run" if owner is None else "pyro-vi vae")) in stderr and "--overwrite" in stderr
    status, _ = run_cli([*VARIANCE, "--out", str(out), "--overwrite"], capsys)
    assert status == 0 and (out / io.OWNER_FILE).read_text().strip() == "variance"
    assert (out / "variance.csv").read_text() != "my own numbers\n"
    assert not (out / "elbo.png").exists() and not (out / "metrics.json").exists()  # the vae's files cleared (or none)


def test_overwrite_clears_only_what_the_previous_owner_wrote(tmp_path):
    """``fit --overwrite`` into a finished vae OUT left the VAE's figures beside the fit's outputs."""
    out = tmp_path / "out"
    _finished(out, "vae", ("elbo.png", "samples.png", "checkpoint.pt"))
    (out / "notes.txt").write_text("mine")  # the user's, added later: not the vae's to clear
    with pytest.raises(OutputError, match="already holds outputs of pyro-vi vae"):
        io.claim_output(out, "fit")
    with io.run_output(out, "fit", overwrite=True) as directory:
        io.atomic_write(directory / "params.pt", lambda file: file.write(b"fit"))
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["notes.txt", "params.pt"]
    assert (out / io.FILES_FILE).read_text().split() == ["params.pt"]


def test_fit_overwrite_into_a_finished_vae_run_clears_the_vae_figures(tmp_path, capsys):
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "out"
    figures = ("elbo.png", "reconstructions.png", "samples.png", "latent.png", "manifold.png")
    _finished(out, "vae", (*figures, "metrics.json", "checkpoint.pt"))
    argv = ["fit", f"{root / 'examples' / 'my_model.py'}:model", "auto-normal", "--data", str(root / "examples" / "my_model_data.npz"),
            "--num-steps", "3", "--no-progress", "--elbo-samples", "2", "--posterior-samples", "10", "--out", str(out)]
    status, stderr = run_cli(argv, capsys)
    assert status == 2 and "--overwrite" in stderr  # the vae's checkpoint and figures: refused
    status, _ = run_cli([*argv, "--overwrite"], capsys)
    assert status == 0 and (out / io.OWNER_FILE).read_text().strip() == "fit"
    assert not any((out / name).exists() for name in figures)
    assert (out / "metrics.json").read_text() != "vae\n" and (out / "checkpoint.pt").read_bytes() != b"vae\n"
