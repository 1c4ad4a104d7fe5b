"""Bad checkpoints for ``pyro-vi vae --resume`` and ``fit(resume=True)``: corrupt, foreign, newer,
missing, or of another configuration. One line, exit 2, the existing file left byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bad_input_helpers import TINY, assert_one_line, run_cli, snapshot
from pyro_vi import cli
from pyro_vi.engine import checkpoint
from pyro_vi.errors import CheckpointError, OutputError
from pyro_vi.vae.model import VAE
from pyro_vi.vae.train import TrainConfig, fit

GOOD = torch.rand(20, 64, generator=torch.Generator().manual_seed(0))  # grey levels in [0, 1]


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    """A finished 1-epoch run whose checkpoint the checkpoint cases corrupt or contradict."""
    out = tmp_path_factory.mktemp("good") / "run"
    assert cli.main(["vae", *TINY, "--out", str(out)]) == 0
    return out



# --------------------------------------------------------------------------------------------
# CLI: checkpoints. The existing file must be left byte for byte as it was, and nothing added.


def _corrupt(kind: str, path: Path) -> None:
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(bytes(range(256)) * 8)
    elif kind == "bit-flipped":
        path.write_bytes(data[:200] + bytes(b ^ 0xFF for b in data[200:400]) + data[400:])
    elif kind == "newer-format":
        saved = torch.load(path, weights_only=False)
        saved["format_version"] = checkpoint.FORMAT_VERSION + 1
        torch.save(saved, path)
    elif kind == "not-a-checkpoint":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "missing":
        path.unlink()


CHECKPOINT_CASES = [
    pytest.param("truncated", [], "truncated or corrupt", id="checkpoint-truncated"),
    pytest.param("empty", [], "truncated or corrupt", id="checkpoint-empty"),
    pytest.param("garbage", [], "truncated or corrupt", id="checkpoint-garbage"),
    pytest.param("bit-flipped", [], "truncated or corrupt", id="checkpoint-bit-flipped"),
    pytest.param("newer-format", [], "newer than this pyro_vi", id="checkpoint-newer-format"),
    pytest.param("not-a-checkpoint", [], "is not a pyro_vi checkpoint", id="checkpoint-foreign"),
    pytest.param("missing", [], "no checkpoint at", id="checkpoint-missing"),
    pytest.param(None, ["--z-dim", "3"], "z_dim: 2 in the checkpoint, 3 now", id="checkpoint-other-z-dim"),
    pytest.param(None, ["--hidden-dims", "16"], "hidden_dims", id="checkpoint-other-hidden"),
    pytest.param(None, ["--likelihood", "continuous-bernoulli"], "likelihood", id="checkpoint-other-likelihood"),
    pytest.param(None, ["--learning-rate", "0.01"], "learning_rate", id="checkpoint-other-learning-rate"),
    pytest.param(None, ["--seed", "1"], "seed", id="checkpoint-other-seed"),
]


@pytest.mark.parametrize("kind, extra, fragment", CHECKPOINT_CASES)
def test_cli_bad_checkpoint(kind, extra, fragment, good_run, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes((good_run / "checkpoint.pt").read_bytes())
    if kind is not None:
        _corrupt(kind, out / "checkpoint.pt")
    before = snapshot(out)
    argv = ["vae", *TINY, "--out", str(out), *extra, "--epochs", "2", "--resume"]
    status, stderr = run_cli(argv, capsys)
    assert status == 2
    assert_one_line(stderr, fragment)
    assert snapshot(out) == before


def test_cli_fresh_run_refuses_to_replace_a_checkpoint(good_run, tmp_path, capsys):
    """Forgetting --resume must not destroy a run: nothing is written, --resume/--overwrite named."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes((good_run / "checkpoint.pt").read_bytes())
    before = snapshot(out)
    status, stderr = run_cli(["vae", *TINY, "--out", str(out)], capsys)
    assert status == 2
    assert_one_line(stderr, "already holds a checkpoint; pass --resume to continue it or --overwrite to start over")
    assert snapshot(out) == before


def test_api_fresh_fit_refuses_to_replace_a_checkpoint_unless_told(good_run, tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes((good_run / "checkpoint.pt").read_bytes())
    vae = VAE(64, z_dim=2, hidden_dims=(8,))
    config = TrainConfig(epochs=1, batch_size=10)
    with pytest.raises(OutputError, match="already holds a checkpoint; pass resume=True .* or overwrite=True"):
        fit(vae.model, vae.guide, GOOD, config, checkpoint_path=path, progress=False)
    assert path.read_bytes() == (good_run / "checkpoint.pt").read_bytes()
    fit(vae.model, vae.guide, GOOD, config, checkpoint_path=path, overwrite=True, progress=False)
    assert checkpoint.load(path)["config"]["train"]["batch_size"] == 10  # the new run's, not the old one's


@pytest.mark.parametrize("kind, extra, fragment", [c for c in CHECKPOINT_CASES if c.values[0] is not None])
def test_api_bad_checkpoint(kind, extra, fragment, good_run, tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes((good_run / "checkpoint.pt").read_bytes())
    _corrupt(kind, path)
    with pytest.raises(CheckpointError, match=fragment):
        checkpoint.load(path)


def test_api_resume_from_other_configuration(good_run, tmp_path):
    """fit(resume=True) refuses a checkpoint of another model before touching the param store."""
    path = tmp_path / "checkpoint.pt"
    path.write_bytes((good_run / "checkpoint.pt").read_bytes())
    vae = VAE(64, z_dim=3, hidden_dims=(8,))
    images = torch.rand(200, 64)
    config = TrainConfig(epochs=2, batch_size=100)
    with pytest.raises(CheckpointError, match="different configuration"):
        fit(vae.model, vae.guide, images, config, checkpoint_path=path, resume=True, checkpoint_config=vae.config)
    assert path.read_bytes() == (good_run / "checkpoint.pt").read_bytes()
