"""The tutorial notebooks: each stored notebook matches its source, carries its outputs, and runs
top to bottom in small mode (``PYRO_VI_TUTORIAL_SMALL=1``) on a kernel of this interpreter."""

import importlib.util
from pathlib import Path

import nbformat
import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
_spec = importlib.util.spec_from_file_location("make_notebooks", TUTORIALS / "make_notebooks.py")
make_notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_notebooks)

NAMES = sorted(path.stem for path in (TUTORIALS / "sources").glob("*.py"))


def test_every_source_has_its_notebook():
    assert NAMES, "no tutorial sources"
    assert sorted(path.stem for path in TUTORIALS.glob("*.ipynb")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_every_source_is_a_python_script(name):
    """Each source runs as a script too (python tutorials/sources/NAME.py): markdown lines are
    comments (4_vae.py once had a bare line with an unbalanced quote)."""
    source = (TUTORIALS / "sources" / f"{name}.py").read_text()
    compile(source, f"{name}.py", "exec")


@pytest.mark.parametrize("name", NAMES)
def test_stored_notebook_matches_its_source_and_has_outputs(name):
    stored = nbformat.read(TUTORIALS / f"{name}.ipynb", as_version=4)
    built = make_notebooks.build(TUTORIALS / "sources" / f"{name}.py")
    assert [(cell.cell_type, cell.source) for cell in stored.cells] == [(cell.cell_type, cell.source) for cell in built.cells], (
        f"tutorials/{name}.ipynb is out of date: python tutorials/make_notebooks.py --execute {name}"
    )
    code = [cell for cell in stored.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code), "stored without running every cell"
    errors = [output for cell in code for output in cell.outputs if output.output_type == "error"]
    assert not errors, errors
    figures = [output for cell in code for output in cell.outputs if "image/png" in output.get("data", {})]
    assert figures, "a tutorial without figures"
    first = code[0].source
    assert make_notebooks.SMALL_MODE_VARIABLE in first, "the small-mode switch belongs in the first code cell"


@pytest.mark.notebook
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.smoke
def test_notebook_runs_in_small_mode(name, tmp_path):
    notebook = nbformat.read(TUTORIALS / f"{name}.ipynb", as_version=4)
    executed = make_notebooks.execute(notebook, tmp_path, small=True, timeout=300)
    errors = [output for cell in executed.cells if cell.cell_type == "code" for output in cell.outputs
              if output.output_type == "error"]
    assert not errors  # nbclient raises on the first error; this guards allow_errors being set
    first = next(cell for cell in executed.cells if cell.cell_type == "code")
    printed = "".join(output.get("text", "") for output in first.outputs if output.output_type == "stream")
    assert "small mode" in printed
