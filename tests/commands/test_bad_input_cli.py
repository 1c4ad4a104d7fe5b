"""What reaches ``pyro_vi.cli.main`` is one line: exit 2 for any exception, 130 for interrupts,
never a traceback; plus the output-directory helpers every command uses (``pyro_vi.io``), the
memory preflight (``pyro_vi.preflight``) and Python API calls that must raise a ``PyroVIError``.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyro_vi import cli, io, preflight
from pyro_vi.errors import ConfigError, DataError, DeviceError, OutputError, PyroVIError, TrainingInterrupted


def _main_with(run, capsys, monkeypatch) -> tuple[int, str]:
    """``cli.main(["bench"])`` with the bench command's ``run`` replaced by ``run``."""
    from pyro_vi.commands import bench

    monkeypatch.setattr(bench, "run", run)
    capsys.readouterr()
    status = cli.main(["bench"])
    return status, capsys.readouterr().err


def _raise(error):
    def run(args):
        raise error

    return run


UNEXPECTED = [
    pytest.param(RuntimeError("mat1 and mat2 shapes cannot be multiplied\n(2x3 and 4x5)"), "unexpected RuntimeError: mat1 and mat2",
                 "report the traceback", id="runtime-error"),
    pytest.param(MemoryError(), "unexpected MemoryError: (no message)", "lower the sizes", id="memory-error"),
    pytest.param(OSError(errno.ENOSPC, "No space left on device"), "unexpected OSError: [Errno 28] No space left",
                 "free disk space", id="os-error-enospc"),
    pytest.param(OSError(errno.ENAMETOOLONG, "File name too long"), "File name too long", "check the paths", id="os-error-name-too-long"),
    pytest.param(KeyError("x_dim"), "unexpected KeyError: 'x_dim'", "report the traceback", id="key-error"),
    pytest.param(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 80000000000 bytes.\n"
                              "Trace Shapes:\n Param Sites:\n encoder$$$body.0.weight 8 64"),
                 "can't allocate memory: you tried to allocate 80000000000 bytes.;", "lower the sizes", id="allocator-failure"),
]


@pytest.mark.parametrize("error, fragment, hint", UNEXPECTED)
def test_unexpected_exception_is_one_line(error, fragment, hint, capsys, monkeypatch):
    monkeypatch.delenv("PYRO_VI_TRACEBACK", raising=False)
    status, stderr = _main_with(_raise(error), capsys, monkeypatch)
    assert status == 2
    assert "Traceback" not in stderr and stderr.count("\n") == 1, stderr
    assert stderr.startswith("pyro-vi bench: error: ") and fragment in stderr and hint in stderr, stderr


def test_traceback_on_request(capsys, monkeypatch):
    monkeypatch.setenv("PYRO_VI_TRACEBACK", "1")
    with pytest.raises(RuntimeError, match="boom"):
        _main_with(_raise(RuntimeError("boom")), capsys, monkeypatch)


def test_multi_line_user_error_is_one_line(capsys, monkeypatch):
    status, stderr = _main_with(_raise(ConfigError("first\nsecond")), capsys, monkeypatch)
    assert status == 2 and stderr == "pyro-vi bench: error: first second\n"


@pytest.mark.parametrize(
    "error, expected",
    [
        pytest.param(KeyboardInterrupt(), "pyro-vi bench: interrupted\n", id="keyboard-interrupt"),
        pytest.param(TrainingInterrupted("interrupted at epoch 3; checkpoint written"),
                     "pyro-vi bench: interrupted at epoch 3; checkpoint written\n", id="training-interrupted"),
    ],
)
def test_interrupt_is_130(error, expected, capsys, monkeypatch):
    status, stderr = _main_with(_raise(error), capsys, monkeypatch)
    assert status == 130 and stderr == expected


def test_interrupt_while_building_the_parser_is_130(capsys, monkeypatch):
    """Ctrl-C while the subcommands are imported (before any argument is parsed)."""
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    capsys.readouterr()
    assert cli.main(["vae"]) == 130
    assert capsys.readouterr().err == "pyro-vi: interrupted\n"


@pytest.mark.smoke
@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_import_time_handler_exits_130_quietly(name):
    """The handler ``pyro_vi/__init__.py`` installs first: Ctrl-C (or SIGTERM, which exited 143
    without a word) during the imports exits 130."""
    code = (
        "import sys, os, signal, time; sys.argv[0] = 'pyro-vi'\n"
        "from pyro_vi import _interrupt\n"
        "_interrupt.exit_quietly_during_import()\n"
        f"os.kill(os.getpid(), signal.{name})\n"
        "time.sleep(10)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          preexec_fn=_default_sigint)
    assert done.returncode == 130 and done.stderr == "pyro-vi: interrupted\n", done.stderr


@pytest.mark.smoke
def test_import_time_handler_leaves_library_users_alone():
    code = (
        "import signal, sys; sys.argv[0] = 'my_script.py'\n"
        "from pyro_vi import _interrupt\n"
        "_interrupt.exit_quietly_during_import()\n"
        "assert signal.getsignal(signal.SIGINT) is signal.default_int_handler\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          preexec_fn=_default_sigint)
    assert done.returncode == 0, done.stderr


@pytest.mark.smoke
def test_import_time_handler_leaves_other_python_m_programs_alone(tmp_path):
    """``python -m pytest`` (or any package run with -m) that imports pyro_vi keeps Python's handler:
    its argv[0] is that package's ``__main__.py``, which once passed for ``python -m pyro_vi``."""
    package = tmp_path / "my_tool"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(
        "import signal\nimport pyro_vi  # noqa: F401\n"
        "assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, signal.getsignal(signal.SIGINT)\n")
    done = subprocess.run([sys.executable, "-m", "my_tool"], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, preexec_fn=_default_sigint)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("argv0, orig_argv, expected", [
    ("/venv/bin/pyro-vi", ["/venv/bin/python", "/venv/bin/pyro-vi", "gmm"], True),
    ("-m", ["python", "-m", "pyro_vi", "gmm"], True),
    ("-m", ["python", "-X", "importtime", "-u", "-mpyro_vi"], True),
    ("-m", ["python", "-m", "my_tool"], False),
    ("/x/pytest/__main__.py", ["python", "-m", "pytest"], False),
    ("-c", ["python", "-c", "import pyro_vi; -m pyro_vi"], False),
    ("train.py", ["python", "train.py", "-m", "pyro_vi"], False),
])
def test_the_command_is_recognized_from_the_interpreters_arguments(argv0, orig_argv, expected, monkeypatch):
    from pyro_vi import _interrupt

    monkeypatch.setattr(sys, "argv", [argv0])
    monkeypatch.setattr(sys, "orig_argv", orig_argv)
    assert _interrupt._is_the_command() is expected


def _default_sigint() -> None:
    """In the child before exec: SIGINT's default action, even when the tests run in the background
    (where the shell starts them with SIGINT ignored, and a child would inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _import_hook_installed() -> bool:
    init = Path(__file__).resolve().parents[2] / "pyro_vi" / "__init__.py"
    return "exit_quietly_during_import" in init.read_text()


def _import_finished(line: str) -> str | None:
    """The module a ``python -X importtime`` line reports as imported, else None."""
    if not line.startswith("import time:") or line.count("|") != 2:
        return None
    return line.rsplit("|", 1)[1].strip()


@pytest.mark.skipif(not _import_hook_installed(), reason="pyro_vi/__init__.py does not call _interrupt.exit_quietly_during_import yet")
@pytest.mark.parametrize("after", ["pyro_vi._interrupt", "torch", "pyro"])
@pytest.mark.smoke
def test_ctrl_c_during_the_imports(after, tmp_path):
    """A real process: SIGINT while ``python -m pyro_vi`` imports torch and Pyro. No fixed delay
    (under load the signal once arrived before pyro_vi started importing: exit 1): ``-X importtime``
    reports each finished import on stderr, and the signal goes once ``after`` has been imported
    (pyro_vi._interrupt: its handler is installed right after, before torch's first module reports;
    so the signal reaches torch's import, then Pyro's, then pyro_vi's own modules or the command).
    The run is too long to finish first (10**6 SVI steps)."""
    process = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "pyro_vi", "gmm", "--method", "svi-map",
                                "--num-steps", "1000000", "--out", str(tmp_path / "out")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    seen = []
    try:
        for line in process.stderr:
            module = _import_finished(line)
            if module is None:
                seen.append(line)
            elif module == after:
                break
        if after == "pyro_vi._interrupt":
            seen += [line for line in [next(process.stderr, "")] if _import_finished(line) is None]  # the handler is in
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=120)
    finally:
        process.kill()
        process.wait()
    stderr = "".join(seen) + "".join(line + "\n" for line in rest.splitlines() if _import_finished(line) is None)
    assert process.returncode == 130, stderr
    assert stderr == "pyro-vi: interrupted\n", stderr


# --------------------------------------------------------------------------------------------
# Output directories and files.


def test_lock_refuses_a_second_holder_and_is_released(tmp_path):
    with io.lock_output(tmp_path):
        assert (tmp_path / ".lock").exists()
        with pytest.raises(OutputError, match="another pyro-vi run is writing to"):
            with io.lock_output(tmp_path):
                pass
    assert not (tmp_path / ".lock").exists()
    with io.lock_output(tmp_path):  # free again
        pass


@pytest.mark.smoke
def test_lock_held_by_another_process(tmp_path):
    code = (
        "import sys, time\nfrom pyro_vi import io\n"
        f"with io.lock_output({str(tmp_path)!r}):\n    print('locked', flush=True)\n    time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match="another pyro-vi run"):
            with io.lock_output(tmp_path):
                pass
    finally:
        holder.kill()  # kill -9: the kernel releases the lock
        holder.wait()
        holder.stdout.close()
    with io.lock_output(tmp_path):
        pass


def test_claim_output(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(OutputError, match=r"already holds outputs of another run \(metrics.json\)"):
        io.claim_output(tmp_path, "gap")
    io.claim_output(tmp_path, "gap", overwrite=True)
    io.claim_output(tmp_path, "gap")  # its own: fine
    with pytest.raises(OutputError, match="already holds outputs of pyro-vi gap"):
        io.claim_output(tmp_path, "vae")


def test_run_output_removes_the_directory_a_failed_run_created(tmp_path):
    with pytest.raises(RuntimeError):
        with io.run_output(tmp_path / "new", "gmm"):
            raise RuntimeError
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    with pytest.raises(RuntimeError):
        with io.run_output(tmp_path / "old", "gmm"):
            raise RuntimeError
    assert (tmp_path / "old").is_dir()


@pytest.mark.parametrize(
    "path, fragment",
    [
        pytest.param("", "the output directory is empty", id="out-empty"),
        pytest.param("  ", "the output directory is empty", id="out-blank"),
        pytest.param("x" * 300, "file name too long", id="out-component-300-chars"),
        pytest.param("x" * 300 + "/run", "file name too long", id="out-parent-300-chars"),
    ],
)
def test_prepare_output_dir(path, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputError) as caught:
        io.prepare_output_dir(path)
    assert fragment in str(caught.value).lower() and len(str(caught.value)) < 400
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("path", ["x" * 300, "a/" + "x" * 256 + "/b", "/" + "y" * 5000])
def test_check_output_path_without_touching_it(path, tmp_path, monkeypatch):
    """``Path(out, "checkpoint.pt").exists()`` raises ENAMETOOLONG: check the spelling first."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputError, match="choose a shorter --out"):
        io.check_output_path(path)
    assert list(tmp_path.iterdir()) == []
    assert io.check_output_path("x" * 200) == Path("x" * 200)


@pytest.mark.parametrize("writer", ["figure", "json"])
def test_disk_full_while_writing_outputs(writer, tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if writer == "figure":
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure = plt.figure()
        monkeypatch.setattr(figure, "savefig", disk_full)  # PIL raises the OSError of the failed write
        call = lambda: io.save_figure(figure, tmp_path / "plot.png")  # noqa: E731
    else:
        monkeypatch.setattr(io.os, "fsync", disk_full)
        call = lambda: io.write_json(tmp_path / "metrics.json", {})  # noqa: E731
    with pytest.raises(OutputError, match="could not write .*No space left on device"):
        call()
    assert [p.name for p in tmp_path.iterdir()] == []


# --------------------------------------------------------------------------------------------
# Sizes that cannot be allocated.


@pytest.mark.parametrize(
    "call, fragment",
    [
        pytest.param(lambda: preflight.check_vae(784, 10, (400000000,)), "hidden-dims 400000000", id="hidden-dims-400000000"),
        pytest.param(lambda: preflight.check_vae(784, 2000000000, (400,)), "--z-dim 2000000000", id="z-dim-2000000000"),
        pytest.param(lambda: preflight.check_vae(784, 50, (400,), batch_size=128, num_particles=100000000),
                     "--particles 100000000", id="particles-100000000"),
        pytest.param(lambda: preflight.check_allocation(2000000000 * 100000, "--replicates 2000000000"),
                     "--replicates 2000000000 needs", id="replicates-2000000000"),
        pytest.param(lambda: preflight.check_allocation(float("inf"), "--num-points inf"), "unbounded memory", id="infinite-size"),
    ],
)
def test_preflight_refuses_absurd_sizes(call, fragment):
    with pytest.raises(ConfigError, match="needs .* of memory, more than the .* available") as caught:
        call()
    assert fragment in str(caught.value)


def test_preflight_accepts_ordinary_sizes():
    preflight.check_vae(784, 50, (400,), batch_size=128, num_particles=10)
    preflight.check_allocation(1e6, "a million floats")


# --------------------------------------------------------------------------------------------
# Python API: errors a user can make are PyroVIErrors.


def _vae(*args, **kwargs):
    from pyro_vi.vae.model import VAE

    return VAE(*args, **kwargs)


def _iwae(num_samples):
    from pyro_vi.vae import evaluate

    return evaluate.iwae_log_likelihood(_vae(16, 2, (4,)), torch.rand(3, 16), num_samples=num_samples)


def _cache_is_a_file(tmp_path_factory=None):
    import tempfile

    from pyro_vi.vae.data import load_dataset

    mnist = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"
    with tempfile.TemporaryDirectory() as directory:
        cache = Path(directory) / "cache"
        cache.write_text("not a directory")
        old = os.environ.get("PYRO_VI_CACHE")
        os.environ["PYRO_VI_CACHE"] = str(cache)
        try:
            load_dataset("mnist", mnist, download=False)
        finally:
            if old is None:
                del os.environ["PYRO_VI_CACHE"]
            else:
                os.environ["PYRO_VI_CACHE"] = old


API_CASES = [
    pytest.param(lambda: _vae(16, hidden_dims=400), ConfigError, "hidden_dims must be a sequence", id="vae-hidden-dims-int"),
    pytest.param(lambda: _vae(16, hidden_dims="400"), ConfigError, "hidden_dims must be a sequence", id="vae-hidden-dims-str"),
    pytest.param(lambda: _vae(16, z_dim="3"), ConfigError, "z_dim must be a positive integer, got '3'", id="vae-z-dim-str"),
    pytest.param(lambda: _vae(16, z_dim=2.5), ConfigError, "z_dim must be a positive integer", id="vae-z-dim-fraction"),
    pytest.param(lambda: _vae(16, z_dim=float("nan")), ConfigError, "z_dim must be a positive integer", id="vae-z-dim-nan"),
    pytest.param(lambda: _vae(16, likelihood="gaussian", x_scale=float("inf")), ConfigError, "x_scale must be positive and finite",
                 id="vae-x-scale-inf"),
    pytest.param(lambda: _vae(16, hidden_dims=(400000000,)), ConfigError, "of memory", id="vae-hidden-absurd"),
    pytest.param(lambda: _vae(16, z_dim=2000000000), ConfigError, "of memory", id="vae-z-dim-absurd"),
    pytest.param(lambda: _iwae(0), ConfigError, "num_samples must be a positive integer, got 0", id="iwae-num-samples-0"),
    pytest.param(lambda: _iwae(-3), ConfigError, "num_samples must be a positive integer", id="iwae-num-samples-negative"),
    pytest.param(lambda: _iwae(2.5), ConfigError, "num_samples must be a positive integer", id="iwae-num-samples-fraction"),
    pytest.param(lambda: __import__("pyro_vi.vae.evaluate").vae.evaluate.gaps(_vae(16, 2, (4,)), torch.rand(3, 16), learning_rate=float("inf")),
                 ConfigError, "learning_rate must be positive and finite", id="gaps-learning-rate-inf"),
    pytest.param(lambda: __import__("pyro_vi.vae.evaluate").vae.evaluate.elbo_terms(_vae(16, 2, (4,)), torch.rand(0, 16)),
                 DataError, "non-empty", id="elbo-terms-no-images"),
    pytest.param(lambda: __import__("pyro_vi.vae.data").vae.data.load_dataset("digits", device="cuda"), DeviceError,
                 "CUDA is not available", id="load-dataset-cuda-without-cuda",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")),
    pytest.param(_cache_is_a_file, OutputError, "cannot use the cache directory", id="pyro-vi-cache-is-a-file",
                 marks=pytest.mark.skipif(not (Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist").is_dir(),
                                          reason="needs shared/data/mnist")),
]


@pytest.mark.parametrize("call, error_type, fragment", API_CASES)
def test_api_raises_pyro_vi_error(call, error_type, fragment):
    with pytest.raises(PyroVIError) as caught:
        call()
    assert isinstance(caught.value, error_type), f"{type(caught.value).__name__} is not a {error_type.__name__}"
    assert "\n" not in str(caught.value) and fragment.lower() in str(caught.value).lower(), str(caught.value)


_ROOT = Path(__file__).resolve().parents[2]
_FIT = ["fit", f"{_ROOT / 'examples' / 'my_model.py'}:model", "auto-normal", "--data", str(_ROOT / "examples" / "my_model_data.npz"),
        "--num-steps", "5", "--no-progress", "--elbo-samples", "2"]
_VAE = ["vae", "--epochs", "1", "--z-dim", "2", "--hidden-dims", "8", "--batch-size", "500", "--no-progress"]
_GAP = ["gap", "--epochs", "1", "--z-dim", "2", "--hidden-dims", "8", "--batch-size", "500", "--num-points", "10", "--iwae-k", "10",
        "--refine-steps", "0,1", "--meanfield-steps", "1", "--elbo-samples", "2", "--refine-samples", "2", "--no-progress"]


@pytest.mark.parametrize("argv", [_FIT, _VAE, _GAP], ids=["fit", "vae", "gap"])
def test_a_warning_before_an_error_is_folded_into_the_one_line(tmp_path, capsys, argv):
    """Pyro's two-line NaN UserWarning ("Encountered NaN: loss") preceded the one-line error of a
    run at --learning-rate 1e30."""
    import warnings

    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # as a user's shell runs pyro-vi (the test suite makes warnings errors)
        assert cli.main([*argv, "--learning-rate", "1e30", "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    lines = error.strip().splitlines()
    assert len(lines) == 1 and "became NaN/inf at" in error and "(warned before: Encountered NaN: loss)" in error, error
    assert not (tmp_path / "out").exists()
