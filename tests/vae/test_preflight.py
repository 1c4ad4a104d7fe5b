"""One preflight per command: ``pyro-vi vae`` (fresh and ``--resume``) and ``pyro-vi gap`` read each
input once and scan each image set once before the first step (issue 15 measured the checkpoint
read twice and the training images scanned three times on ``pyro-vi vae --resume``).

A read of the checkpoint is a ``torch.load`` of it; a scan of an image set is a call of
``pyro_vi.vae.data.validate_images`` on it (the one function that walks every pixel: finiteness,
range). Both are counted by wrapping the functions wherever they are bound.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from pyro_vi import cli
from pyro_vi.vae import data

SMOKE = ["--batch-size", "100", "--hidden-dims", "8", "--z-dim", "2", "--no-progress"]
DIGITS_TRAIN, DIGITS_TEST = 1497, 300  # the fixed split of scikit-learn's digits (pyro_vi.vae.data)


@pytest.fixture
def reads(monkeypatch):
    """Counts: ``reads["checkpoint"]`` torch.load calls on a file named checkpoint.pt, and
    ``reads[("scan", num_rows)]`` validate_images calls on an image set of that many rows."""
    counts: Counter = Counter()
    original_load, original_validate = torch.load, data.validate_images

    def counting_load(path, *args, **kwargs):
        if Path(str(path)).name == "checkpoint.pt":
            counts["checkpoint"] += 1
        return original_load(path, *args, **kwargs)

    def counting_validate(images, *args, **kwargs):
        if isinstance(images, torch.Tensor) and images.dim() >= 1:
            counts[("scan", int(images.shape[0]))] += 1
        return original_validate(images, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    for module in [m for name, m in list(sys.modules.items()) if name.startswith("pyro_vi")]:
        if getattr(module, "validate_images", None) is original_validate:
            monkeypatch.setattr(module, "validate_images", counting_validate)
    return counts


def test_vae_fresh_run_scans_the_training_images_once(tmp_path, reads):
    assert cli.main(["vae", "--epochs", "1", *SMOKE, "--out", str(tmp_path / "run")]) == 0
    assert reads[("scan", DIGITS_TRAIN)] == 1
    assert reads["checkpoint"] == 0  # a fresh run reads no checkpoint


def test_vae_resume_reads_the_checkpoint_once_and_scans_the_images_once(tmp_path, reads):
    out = tmp_path / "run"
    assert cli.main(["vae", "--epochs", "1", *SMOKE, "--out", str(out)]) == 0
    reads.clear()
    assert cli.main(["vae", "--epochs", "2", *SMOKE, "--out", str(out), "--resume"]) == 0
    assert reads["checkpoint"] == 1  # was 2: the command's check, then the engine's
    assert reads[("scan", DIGITS_TRAIN)] == 1  # was 3: the command's vae.validate, fit's two
    # Reading once kept every check: the resumed run continued the first one's history.
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [record["epoch"] for record in history] == [1, 2]


def test_resume_with_other_options_is_still_refused_after_one_read(tmp_path, reads, capsys):
    out = tmp_path / "run"
    assert cli.main(["vae", "--epochs", "1", *SMOKE, "--out", str(out)]) == 0
    reads.clear()
    other = [option if option != "8" else "16" for option in SMOKE]  # other hidden sizes
    assert cli.main(["vae", "--epochs", "2", *other, "--out", str(out), "--resume"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "different configuration" in error and "hidden_dims" in error
    assert reads["checkpoint"] == 1


GAP = ["gap", "--num-points", "10", "--iwae-k", "10", "--refine-steps", "0,1", "--meanfield-steps", "1",
       "--elbo-samples", "2", "--refine-samples", "2", "--no-progress"]


def test_gap_from_a_checkpoint_reads_it_once_and_scans_the_test_images_once(tmp_path, reads):
    run = tmp_path / "run"
    assert cli.main(["vae", "--epochs", "1", *SMOKE, "--out", str(run)]) == 0
    reads.clear()
    assert cli.main([*GAP, "--checkpoint", str(run / "checkpoint.pt"), "--out", str(tmp_path / "gap")]) == 0
    assert reads["checkpoint"] == 1
    assert reads[("scan", DIGITS_TEST)] == 1
    assert reads[("scan", DIGITS_TRAIN)] == 0  # nothing trains


def test_gap_training_here_scans_each_image_set_once(tmp_path, reads):
    args = [*GAP, "--epochs", "1", "--z-dim", "2", "--hidden-dims", "8", "--batch-size", "100", "--out", str(tmp_path / "gap")]
    assert cli.main(args) == 0
    assert reads["checkpoint"] == 0
    assert reads[("scan", DIGITS_TEST)] == 1
    assert reads[("scan", DIGITS_TRAIN)] == 1
