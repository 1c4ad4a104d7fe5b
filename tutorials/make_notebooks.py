"""Build the tutorial notebooks from their sources, and run them to store their outputs.

Each ``tutorials/sources/NAME.py`` is a notebook in the "percent" format: cells start with
``# %%`` (code) or ``# %% [markdown]`` (markdown, each line prefixed with ``# ``); a code cell
that starts with a commented cell magic (``# %%writefile FILE``) gets the magic uncommented. This script
writes ``tutorials/NAME.ipynb`` from it and, with ``--execute``, runs it top to bottom with
nbclient (full mode) in a scratch directory and stores the outputs, figures included, so the
notebook reads on the web::

    python tutorials/make_notebooks.py --execute                 # all, full mode (a few minutes each)
    python tutorials/make_notebooks.py --execute 5_your_own_model
    python tutorials/make_notebooks.py --execute --small         # small mode, as the tests run them

``tests/test_tutorials.py`` runs every stored notebook in small mode (``PYRO_VI_TUTORIAL_SMALL=1``)
and checks that it matches its source.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat

TUTORIALS = Path(__file__).resolve().parent
SOURCES = TUTORIALS / "sources"
SMALL_MODE_VARIABLE = "PYRO_VI_TUTORIAL_SMALL"
KERNEL_NAME = "pyro-vi-tutorial"


def read_cells(source: Path) -> list[tuple[str, str]]:
    """``[(cell_type, text), ...]`` of a percent-format source."""
    cells, kind, lines = [], None, []

    def close():
        if kind is not None:
            text = "\n".join(lines).strip("\n")
            if kind == "markdown":
                text = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in text.splitlines())
            elif text.startswith("# %%"):  # a cell magic, commented so that the source stays Python
                text = text[2:]
            cells.append((kind, text))

    for line in source.read_text().splitlines():
        if line == "# %%" or line.startswith("# %% "):
            close()
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        elif kind is not None:
            lines.append(line)
    close()
    return cells


def build(source: Path) -> nbformat.NotebookNode:
    """The notebook of ``source``, without outputs."""
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_markdown_cell(text) if kind == "markdown" else nbformat.v4.new_code_cell(text)
        for kind, text in read_cells(source)
    ]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    return notebook


def kernel_manager(kernel_dir: Path):
    """A KernelManager whose kernel is ``sys.executable -m ipykernel_launcher``: the interpreter
    running this code, whatever kernels are (or are not) installed elsewhere."""
    from ipykernel.kernelspec import install
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    install(kernel_name=KERNEL_NAME, prefix=str(kernel_dir))  # argv: [sys.executable, -m, ipykernel_launcher, ...]
    specs = KernelSpecManager(kernel_dirs=[str(kernel_dir / "share" / "jupyter" / "kernels")], ensure_native_kernel=False)
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)


def execute(notebook: nbformat.NotebookNode, workdir: Path, small: bool, timeout: int = 1200) -> nbformat.NotebookNode:
    """Run ``notebook`` top to bottom in ``workdir`` (its files land there) and fill in its outputs."""
    from nbclient import NotebookClient

    previous = os.environ.get(SMALL_MODE_VARIABLE)
    os.environ[SMALL_MODE_VARIABLE] = "1" if small else "0"  # the kernel inherits the environment
    try:
        client = NotebookClient(notebook, km=kernel_manager(workdir / ".kernel"), timeout=timeout,
                                resources={"metadata": {"path": str(workdir)}})
        client.execute(cleanup_kc=True)  # our own kernel manager: shut the kernel down and close its sockets after
    finally:
        if previous is None:
            os.environ.pop(SMALL_MODE_VARIABLE, None)
        else:
            os.environ[SMALL_MODE_VARIABLE] = previous
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


def _slowest_cells(notebook: nbformat.NotebookNode, count: int = 4) -> str:
    from datetime import datetime

    seconds = []
    for index, cell in enumerate(notebook.cells):
        timing = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in timing and "shell.execute_reply" in timing:
            start, end = (datetime.fromisoformat(timing[key].replace("Z", "+00:00")) for key in ("iopub.execute_input", "shell.execute_reply"))
            seconds.append(((end - start).total_seconds(), index))
    return ", ".join(f"cell {index} {duration:.1f}" for duration, index in sorted(seconds, reverse=True)[:count])


def main(args):
    """Build (and with ``--execute`` run) the named notebooks; write them unless ``--small``."""
    names = args.names or sorted(path.stem for path in SOURCES.glob("*.py"))
    for name in names:
        notebook = build(SOURCES / f"{name}.py")
        if args.execute:
            with tempfile.TemporaryDirectory() as scratch:
                start = time.perf_counter()
                execute(notebook, Path(scratch), small=args.small)
                print(f"{name}: ran in {time.perf_counter() - start:.1f} s ({'small' if args.small else 'full'} mode); "
                      f"slowest cells (s): {_slowest_cells(notebook)}")
        if args.small:  # a small-mode run is a check, never the stored notebook
            continue
        nbformat.write(notebook, TUTORIALS / f"{name}.ipynb")
        print(f"wrote tutorials/{name}.ipynb")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="source names (default: all in tutorials/sources)")
    parser.add_argument("--execute", action="store_true", help="run and store the outputs (full mode)")
    parser.add_argument("--small", action="store_true", help="with --execute: small mode, nothing written")
    main(parser.parse_args())
