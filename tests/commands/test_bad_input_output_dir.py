"""Bad output locations (``--out`` a file, under a file, not writable), through ``pyro-vi vae``
and ``pyro_vi.io.prepare_output_dir``: one line naming ``--out``, nothing written.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bad_input_helpers import TINY, assert_one_line, run_cli, snapshot
from pyro_vi import io
from pyro_vi.errors import OutputError


# --------------------------------------------------------------------------------------------
# CLI: output locations.


def _output_cases():
    cases = [
        pytest.param("file", "is a file, not a directory", id="out-is-a-file"),
        pytest.param("under-file", "cannot create output directory", id="out-under-a-file"),
        pytest.param(
            "sys",
            "cannot create output directory",
            id="out-not-writable-sysfs",
            marks=pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs a read-only /sys"),
        ),
        pytest.param(
            "read-only",
            "is not writable",
            id="out-not-writable-chmod",
            marks=pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits"),
        ),
    ]
    return cases


def _make_out(kind: str, root: Path) -> Path:
    if kind == "file":
        (root / "out").write_text("not a directory")
        return root / "out"
    if kind == "under-file":
        (root / "file").write_text("not a directory")
        return root / "file" / "run"
    if kind == "sys":
        return Path("/sys/pyro_vi_test_out")
    directory = root / "read-only"
    directory.mkdir()
    directory.chmod(0o555)
    return directory


@pytest.mark.parametrize("kind, fragment", _output_cases())
def test_cli_bad_output_dir(kind, fragment, tmp_path, capsys):
    out = _make_out(kind, tmp_path)
    before = snapshot(tmp_path)
    status, stderr = run_cli(["vae", *TINY, "--out", str(out)], capsys)
    assert status == 2
    assert_one_line(stderr, fragment)
    assert "--out" in stderr
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind, fragment", _output_cases())
def test_api_bad_output_dir(kind, fragment, tmp_path):
    with pytest.raises(OutputError, match=fragment):
        io.prepare_output_dir(_make_out(kind, tmp_path))
