"""SIGTERM is handled as Ctrl-C at every phase of a command, not only in training: one line, exit
130, the checkpoint kept, the lock released (SIGTERM during ``pyro-vi vae``'s final IWAE evaluation
exited 143 without a word and left ``.lock`` in OUT).

Each case runs the command in its own process (forked from the warm test interpreter) with the
function of one phase wrapped so that the process sends itself the signal as that phase starts:
the signal arrives in the phase by construction, with no delay to tune. (The figures, a phase after
the evaluation, go through the same ``cli.main`` handler; SIGTERM during the imports:
tests/commands/test_bad_input_cli.py.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import launch  # tests/launch.py: commands in a forked warm interpreter

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "my_model.py"
EXAMPLE_DATA = ROOT / "examples" / "my_model_data.npz"

# Wraps MODULE.NAME so that it sends SIGNAL to its own process on entry, then runs the command.
SCRIPT = """
import importlib, os, signal, sys

module_name, name, signal_name = sys.argv[1:4]
module = importlib.import_module(module_name)
original = getattr(module, name)


def signalled(*args, **kwargs):
    os.kill(os.getpid(), getattr(signal, signal_name))
    return original(*args, **kwargs)


setattr(module, name, signalled)
from pyro_vi import cli

sys.exit(cli.main(sys.argv[4:]))
"""

VAE = ["vae", "--epochs", "1", "--z-dim", "2", "--hidden-dims", "8", "--batch-size", "500", "--no-progress", "--iwae-k", "2",
       "--iwae-points", "10"]
FIT = ["fit", f"{EXAMPLE}:model", "auto-normal", "--data", str(EXAMPLE_DATA), "--num-steps", "5", "--no-progress",
       "--elbo-samples", "2", "--posterior-samples", "10"]

PHASES = [
    pytest.param("pyro_vi.vae.evaluate", "iwae_log_likelihood", VAE, True, id="vae-final-iwae"),
    pytest.param("pyro_vi.commands.user_model", "estimate_elbo", FIT, True, id="fit-final-elbo"),
    pytest.param("pyro_vi.commands.user_model", "build", FIT, False, id="fit-preflight"),
]


@pytest.mark.smoke
@pytest.mark.parametrize("module, name, command, trained", PHASES)
def test_sigterm_in_every_phase_is_one_line_130_lock_released(module, name, command, trained, tmp_path):
    (tmp_path / "signalled.py").write_text(SCRIPT)
    out = tmp_path / "out"
    done = launch.run([sys.executable, str(tmp_path / "signalled.py"), module, name, "SIGTERM", *command, "--out", str(out)],
                      timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 130 and len(lines) == 1 and "interrupted" in lines[0], (done.returncode, done.stderr)
    assert not (out / ".lock").exists()
    assert (out / "checkpoint.pt").is_file() == trained  # the end-of-training checkpoint is kept
    if not trained:
        assert not out.exists()  # before OUT is touched: nothing written
