"""The API reference builds from the docstrings with Sphinx, warnings as errors."""

import sys
from pathlib import Path

import pytest

import launch  # tests/launch.py: commands in a forked warm interpreter

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.smoke
def test_sphinx_builds_without_warnings(tmp_path):
    out = tmp_path / "html"
    completed = launch.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-q", "-d", str(tmp_path / "doctrees"),
         str(DOCS), str(out)], timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    for page in ("index", "api/pyro_vi", "api/engine", "api/estimators", "api/mixture", "api/vae", "api/local", "api/plots", "api/commands", "api/shared"):
        assert (out / f"{page}.html").is_file(), page
    engine = (out / "api" / "engine.html").read_text()
    assert "EpochSubsample" in engine and "num_steps" in engine  # members documented, not just the module
    estimators = (out / "api" / "estimators.html").read_text()
    assert "gradient_variance" in estimators and "ImportanceWeighted" in estimators
