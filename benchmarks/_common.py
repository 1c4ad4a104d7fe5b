"""Helpers shared by the benchmark scripts: machine and commit, interleaved timing, JSON and the
markdown table of ``benchmarks/RESULTS.md``.

Every benchmark compares its contenders side by side in one process: the contenders take turns
(round robin, one timed chunk each per round), so a noisy neighbour on the machine slows them all
alike, and the reported numbers are medians over rounds plus ratios to a named reference.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

BENCHMARKS_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCHMARKS_DIR / "results"
RESULTS_TABLE = BENCHMARKS_DIR / "RESULTS.md"


def setup_threads(num_threads: int | None = None) -> int:
    """Use at most the machine's cores (2 on CI); returns the thread count in use."""
    num_threads = num_threads or min(2, os.cpu_count() or 1)
    torch.set_num_threads(num_threads)
    return num_threads


def machine() -> dict:
    """What the numbers were measured on."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        # Other jobs on the machine: the reason absolute numbers vary and ratios are what counts.
        "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        import pyro

        info["pyro"] = pyro.__version__
    except ImportError:  # pragma: no cover
        pass
    for name in ("jax", "numpyro", "sklearn"):
        version = optional_version(name)
        if version:
            info[name] = version
    return info


def optional_version(module_name: str) -> str | None:
    """The version of an optional peer, or None when it is not installed (without importing it)."""
    from importlib import metadata

    distribution = {"sklearn": "scikit-learn"}.get(module_name, module_name)
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def commit() -> str:
    """Short hash of HEAD, with ``+dirty`` when the code (not the results table) differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=BENCHMARKS_DIR, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--", "pyro_vi", "benchmarks", ":!benchmarks/RESULTS.md"], cwd=BENCHMARKS_DIR.parent
        ).returncode
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def command_line() -> str:
    """The command that ran this benchmark, as a user would retype it."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(Path.cwd())
    except ValueError:
        pass
    return " ".join(shlex.quote(part) for part in ["python", str(script), *sys.argv[1:]])


def interleaved(contenders: dict[str, Callable[[], float]], rounds: int, warmup_rounds: int = 1) -> dict[str, list]:
    """Run each contender's chunk once per round, round robin; returns the timed rounds.

    Each callable does a fixed chunk of work and returns its own elapsed seconds (so set-up and
    synchronisation stay inside the contender). The first ``warmup_rounds`` are discarded
    (allocator warm-up, JIT compilation). The order rotates every round.
    """
    names = list(contenders)
    times: dict[str, list] = {name: [] for name in names}
    for round_index in range(warmup_rounds + rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            seconds = contenders[name]()
            if round_index >= warmup_rounds:
                times[name].append(seconds)
    return times


def numpyro_chunk(svi, state, steps: int, *data) -> Callable[[], float]:
    """NumPyro's contender chunk: ``steps`` updates of ``svi`` from ``state`` in one
    ``jax.jit(lax.fori_loop)``, as ``SVI.run`` runs them; each call returns its seconds (waiting for
    the result) and keeps the state for the next."""
    import jax

    @jax.jit
    def run(svi_state):
        return jax.lax.fori_loop(0, steps, lambda i, s: svi.update(s, *data)[0], svi_state)

    def chunk() -> float:
        nonlocal state
        start = time.perf_counter()
        state = jax.block_until_ready(run(state))
        return time.perf_counter() - start

    return chunk


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def timer() -> float:
    """A wall clock that first waits for queued device work."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def write_json(name: str, payload: dict, out_dir: str | Path | None = None) -> Path:
    """Write ``<out_dir>/<name>.json`` (default ``benchmarks/results/``)."""
    directory = Path(out_dir) if out_dir is not None else RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


SECTION = "## Side by side (benchmarks/_common.py)"
_TABLE_HEADER = (
    "| date | benchmark | command | commit | machine | numbers | ratios |\n"
    "|---|---|---|---|---|---|---|\n"
)


def append_results_row(
    title: str, numbers: str, ratios: str, table: str | Path | None = None, commit_hash: str | None = None
) -> Path:
    """Add one row (command, commit, machine, numbers, ratios) to the shared table of
    ``benchmarks/RESULTS.md`` (its section ``SECTION``, created if missing; other sections of the
    file are left as they are). ``table`` redirects the row to another file (the tests use one).
    ``commit_hash``: the commit the numbers were measured at (default: HEAD now).
    """
    path = Path(table) if table is not None else RESULTS_TABLE
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    info = machine()
    machine_text = f"{info['processor']}, {info['cpu_count']} cores ({info['torch_threads']} threads), torch {info['torch']}"
    if info.get("cuda"):
        machine_text += f", {info['cuda']}"
    if info.get("load_average"):
        machine_text += f", load {info['load_average']}"
    cells = [time.strftime("%Y-%m-%d %H:%M"), title, f"`{command_line()}`", commit_hash or commit(), machine_text, numbers, ratios]
    row = "| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in cells) + " |\n"
    if SECTION not in text:
        text = text.rstrip("\n") + (
            f"\n\n{SECTION}\n\nOne row per run. Ratios compare contenders measured side by side in one process "
            "(interleaved rounds, medians); absolute numbers depend on the machine and its load.\n\n"
        ) + _TABLE_HEADER + row
    else:
        lines = text.splitlines(keepends=True)
        at = next(i for i, line in enumerate(lines) if line.startswith(SECTION))
        at = next(i for i in range(at, len(lines)) if lines[i].startswith("|"))  # the header
        while at < len(lines) and lines[at].startswith("|"):
            at += 1
        lines.insert(at, row)
        text = "".join(lines)
    path.write_text(text)
    return path


def add_common_arguments(parser) -> None:
    """``--quick``, ``--seed``, ``--out-dir``, ``--results-table``, ``--no-table``."""
    parser.add_argument("--quick", action="store_true", help="a short run (seconds), for smoke tests and new users")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=None, help="where the JSON goes (default benchmarks/results/)")
    parser.add_argument("--results-table", default=None, help="markdown table to append to (default benchmarks/RESULTS.md)")
    parser.add_argument("--no-table", action="store_true", help="do not append a row to the markdown table")


def ParamStoreSlot():  # noqa: N802 - kept the class-like name its callers use
    """One contender's own Pyro param store (contenders share site and module names), swapped in
    for its turns with ``with slot.active():``: ``pyro_vi.engine.params.StoreSlot`` (the one module
    that touches the param store's internals)."""
    from pyro_vi.engine.params import StoreSlot

    return StoreSlot()
