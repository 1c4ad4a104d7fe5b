"""Run every benchmark in ``benchmarks/`` (each ``bench_*.py``, then each reproduction ``repro_*.py``,
in its own process) and summarize.

    python benchmarks/run_all.py --quick    # a few minutes: a short version of everything
    python benchmarks/run_all.py            # the full runs behind RESULTS.md

Scripts owned by other features (``bench_gmm.py``, ``bench_variance*.py``, ``bench_evaluate.py``,
...) are run when present. ``--quick`` runs write their JSON next to the full ones
(``*_quick.json``) and add no rows to ``RESULTS.md`` unless ``--table`` is given.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIRST = ("bench_vae_throughput.py", "bench_tiny_svi.py")  # the library's own speed, then the rest


def scripts(only: list[str] | None = None) -> list[Path]:
    """``bench_*.py`` in run order (the library's own speed first, then the others alphabetically),
    then the reproductions ``repro_*.py``."""
    found = sorted(HERE.glob("bench_*.py"), key=lambda path: (path.name not in FIRST, FIRST.index(path.name) if path.name in FIRST else 0, path.name))
    found += sorted(HERE.glob("repro_*.py"))
    if only:
        found = [path for path in found if any(name in path.stem for name in only)]
    return found


def command_for(script: Path, quick: bool, table: bool, threads: int | None) -> list[str]:
    """The script's command line; options are passed only to scripts that declare them."""
    source = script.read_text()
    uses_common = "add_common_arguments" in source
    command = [sys.executable, str(script)]
    if quick:
        command.append("--quick")
    if not table:
        if uses_common:
            command.append("--no-table")
        elif "--results-md" in source:
            command += ["--results-md", str(HERE / "results" / f"{script.stem}_RESULTS_quick.md")]
    if threads is not None and "--threads" in source:
        command += ["--threads", str(threads)]
    return command


def main(args) -> int:
    (HERE / "results").mkdir(exist_ok=True)
    table = args.table if args.table is not None else not args.quick
    summary = []
    for script in scripts(args.only):
        command = command_for(script, args.quick, table, args.threads)
        print(f"\n=== {script.name}: {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        done = subprocess.run(command, cwd=HERE.parent)
        summary.append((script.name, done.returncode, time.perf_counter() - start))
    print("\n=== summary")
    for name, returncode, seconds in summary:
        print(f"{name:32s} {'ok' if returncode == 0 else f'FAILED ({returncode})':12s} {seconds:7.1f} s")
    print(f"JSON in {HERE / 'results'}" + ("; rows added to benchmarks/RESULTS.md" if table else ""))
    return 0 if all(returncode == 0 for _, returncode, _ in summary) else 1


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short version of every benchmark (a few minutes)")
    parser.add_argument("--table", action=argparse.BooleanOptionalAction, default=None, help="add rows to RESULTS.md (default: only for full runs)")
    parser.add_argument("--only", type=lambda s: s.split(","), default=None, help="comma-separated name fragments, e.g. vae,tiny")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for scripts that take --threads")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
