"""``pyro-vi bench``: the short version of every benchmark (``benchmarks/run_all.py --quick``)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from pyro_vi.errors import ConfigError

__all__ = ["HELP", "add_arguments", "run"]

HELP = "run a short version of every benchmark side by side (pyro_vi vs PyTorch, Pyro, NumPyro)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--full``, ``--only`` and ``--threads``, passed on to ``benchmarks/run_all.py``."""
    parser.add_argument("--full", action="store_true", help="the full runs behind benchmarks/RESULTS.md (long)")
    parser.add_argument("--only", default=None, help="comma-separated name fragments, e.g. vae,tiny")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the benchmarks")


def run(args: argparse.Namespace) -> int:
    """Run ``benchmarks/run_all.py`` (``--quick`` unless ``--full``) in a subprocess; its exit status."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "run_all.py"
    if not script.is_file():
        raise ConfigError(f"benchmarks not found at {script.parent}; run pyro-vi bench from a source checkout of pyro_vi")
    command = [sys.executable, str(script)] + ([] if args.full else ["--quick"])
    if args.only:
        command += ["--only", args.only]
    if args.threads is not None:
        command += ["--threads", str(args.threads)]
    return subprocess.run(command).returncode
