"""Helpers shared by the bad-input matrices (tests/*/test_bad_input_*.py).

Each case runs through the CLI (``pyro_vi.cli.main``, the function behind the ``pyro-vi`` script,
in-process to keep the matrix fast) and must end in one line on stderr that says what was wrong
and what to do, a non-zero exit and no partial output.
"""

from __future__ import annotations

from pathlib import Path

from pyro_vi import cli

# The smallest pyro-vi vae run that trains: 1,497 digits, 14 steps of 100.
TINY = ["--epochs", "1", "--z-dim", "2", "--hidden-dims", "8", "--batch-size", "100", "--no-progress"]


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (hidden temporaries included) with its bytes."""
    if not directory.exists():
        return {}
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``cli.main(argv)`` in-process: its exit status (argparse's included) and its stderr."""
    capsys.readouterr()
    try:
        status = cli.main(argv)
    except SystemExit as exit_:  # argparse errors
        status = exit_.code
    return status, capsys.readouterr().err


def assert_one_line(stderr: str, fragment: str) -> None:
    """``stderr`` is one ``pyro-vi ...: error:`` line containing ``fragment``, no traceback."""
    assert "Traceback" not in stderr
    lines = stderr.strip("\n").split("\n")
    assert len(lines) == 1, f"expected one line, got:\n{stderr}"
    assert lines[0].startswith(("pyro-vi vae: error:", "pyro-vi: error:")), lines[0]
    assert fragment.lower() in lines[0].lower(), lines[0]
