"""Run a command the way ``subprocess.run(command, capture_output=True, text=True)`` does, in a
separate process, but without paying for a fresh interpreter's imports each time.

A smoke test's command (``python -m pyro_vi ...``, ``python script.py ...``, the ``pyro-vi``
console script) spends ~3.5 CPU seconds importing torch, Pyro and torch._dynamo before it does
anything; the default test run starts about forty of them. ``run`` hands such commands to one warm
interpreter per test worker (``tests/_zygote.py``) that forks a child per command: its own process,
exit status, stdout, stderr, environment and working directory, running the same ``__main__`` code.
What a fork cannot show, a fresh interpreter's imports, is tested by real processes: the
Ctrl-C-during-import tests (tests/commands/test_bad_input_cli.py), kill -9 and resume
(tests/engine/test_faults.py), the spawned ranks of tests/engine/test_distributed.py and the
tutorials' kernels (tests/test_tutorials.py). ``PYRO_VI_TEST_FRESH_PROCESSES=1`` runs every command in a fresh interpreter instead.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

_ZYGOTE_SCRIPT = Path(__file__).with_name("_zygote.py")
_CONSOLE_SCRIPT = Path(sys.executable).with_name("pyro-vi")
_zygote: subprocess.Popen | None = None
_buffer = b""
child_cpu_seconds = 0.0  # CPU used by the forked children so far (conftest's --cpu-durations adds it)


def fresh_processes() -> bool:
    """Whether every command runs in a fresh interpreter (``PYRO_VI_TEST_FRESH_PROCESSES=1``)."""
    return os.environ.get("PYRO_VI_TEST_FRESH_PROCESSES", "0") == "1"


def _as_zygote_argv(command: list[str]) -> list[str] | None:
    """The command as ``-m module ...`` or ``script ...`` for the zygote; None if it is not a plain
    run of this interpreter (options, ``-c``, another program)."""
    command = [str(part) for part in command]
    if command[0] == str(_CONSOLE_SCRIPT):
        return command
    if command[0] != sys.executable or len(command) < 2:
        return None
    if command[1] == "-m" and len(command) >= 3:
        return command[1:]
    if command[1].endswith(".py"):
        return command[1:]
    return None


def _start() -> subprocess.Popen:
    global _zygote
    if _zygote is None or _zygote.poll() is not None:
        environment = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
        _zygote = subprocess.Popen([sys.executable, str(_ZYGOTE_SCRIPT)], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, env=environment, cwd=_ZYGOTE_SCRIPT.parent)
        atexit.register(_stop, _zygote)
        assert _read(None) == {"ready": True}, "tests/_zygote.py did not start"
    return _zygote


def _stop(zygote: subprocess.Popen) -> None:
    if zygote.poll() is None:
        zygote.kill()
        zygote.wait()
    zygote.stdin.close()
    zygote.stdout.close()


def _read(timeout: float | None) -> dict | None:
    """The zygote's next line, or None when ``timeout`` seconds pass first."""
    global _buffer
    descriptor = _zygote.stdout.fileno()
    while b"\n" not in _buffer:
        ready, _, _ = select.select([descriptor], [], [], timeout)
        if not ready:
            return None
        chunk = os.read(descriptor, 65536)
        if not chunk:
            raise RuntimeError("tests/_zygote.py died")
        _buffer += chunk
    line, _buffer = _buffer.split(b"\n", 1)
    return json.loads(line)


def run(command: list, *, cwd=None, env: dict | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
    """``subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)``,
    forked from the warm interpreter when the command is this Python running a module or script."""
    global child_cpu_seconds
    argv = _as_zygote_argv(command)
    if argv is None or fresh_processes():
        return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
    zygote = _start()
    with tempfile.TemporaryDirectory() as scratch:
        stdout, stderr = Path(scratch) / "stdout", Path(scratch) / "stderr"
        request = {"argv": argv, "cwd": str(cwd or os.getcwd()), "env": dict(os.environ if env is None else env),
                   "stdout": str(stdout), "stderr": str(stderr)}
        zygote.stdin.write((json.dumps(request) + "\n").encode())
        zygote.stdin.flush()
        pid = _read(None)["pid"]
        answer = _read(timeout)
        if answer is None:
            os.kill(pid, signal.SIGKILL)
            child_cpu_seconds += _read(None)["cpu_seconds"]
            raise subprocess.TimeoutExpired(command, timeout, stdout.read_bytes(), stderr.read_bytes())
        child_cpu_seconds += answer["cpu_seconds"]
        return subprocess.CompletedProcess(command, answer["returncode"], stdout.read_text(errors="replace"),
                                           stderr.read_text(errors="replace"))
