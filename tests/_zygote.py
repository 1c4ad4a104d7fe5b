"""The warm interpreter behind ``tests/launch.py``: imports torch, Pyro and pyro_vi once, then forks a
child per request that runs a command as ``python -m module`` or ``python script.py`` would.

Protocol (one JSON object per line): the test sends ``{"argv", "cwd", "env", "stdout", "stderr"}``
on this process's stdin; the zygote answers ``{"pid"}`` at once and ``{"returncode"}`` when the
child has ended. Nothing but imports runs here, so no thread pool exists when it forks.
"""

import json
import os
import sys

_PROTOCOL_IN = os.fdopen(os.dup(0), "r")
_PROTOCOL_OUT = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)  # a stray print while importing goes to stderr, not into the protocol
_DEFAULT_THREADS = None


def _warm_up() -> None:
    """What every command and script imports, plus the torch._dynamo import that torch's optimizers
    trigger on their first use (1.5 s of the 3.5 s a fresh ``pyro-vi`` process spends before working)."""
    global _DEFAULT_THREADS
    import torch
    import torch._dynamo  # noqa: F401

    import pyro_vi.cli

    pyro_vi.cli.build_parser()  # imports every subcommand's module
    _DEFAULT_THREADS = torch.get_num_threads()  # started without OMP_NUM_THREADS: torch's own default


def _child(request: dict) -> None:
    """In the forked child: become the requested process, run it, exit with its status."""
    import runpy
    import signal
    import traceback

    import torch

    code = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        stdin = os.open(os.devnull, os.O_RDONLY)
        stdout = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        stderr = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for source, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
            os.dup2(source, target)
            os.close(source)
        _PROTOCOL_IN.close()
        _PROTOCOL_OUT.close()
        sys.stdin = sys.__stdin__ = open(0, closefd=False)
        sys.stdout = sys.__stdout__ = open(1, "w", encoding="utf-8", closefd=False)
        sys.stderr = sys.__stderr__ = open(2, "w", encoding="utf-8", errors="backslashreplace", buffering=1, closefd=False)
        os.environ.clear()
        os.environ.update(request["env"])
        threads = os.environ.get("OMP_NUM_THREADS")
        torch.set_num_threads(int(threads) if threads else _DEFAULT_THREADS)  # as torch reads it at start-up
        os.chdir(request["cwd"])
        argv = request["argv"]
        if argv[0] == "-m":
            sys.path[0] = os.getcwd()  # python -m puts the working directory first
            sys.argv = ["-m", *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            script = os.path.abspath(argv[0])
            sys.path[0] = os.path.dirname(script)
            sys.argv = [argv[0], *argv[1:]]
            runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as exit_:
        if exit_.code is None:
            code = 0
        elif isinstance(exit_.code, int):
            code = exit_.code
        else:
            print(exit_.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:  # as Python does: the traceback, then death by SIGINT
        traceback.print_exc()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            import atexit

            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main() -> None:
    _warm_up()
    _PROTOCOL_OUT.write(json.dumps({"ready": True}) + "\n")
    _PROTOCOL_OUT.flush()
    for line in _PROTOCOL_IN:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request)
        _PROTOCOL_OUT.write(json.dumps({"pid": pid}) + "\n")
        _PROTOCOL_OUT.flush()
        _, status, usage = os.wait4(pid, 0)
        answer = {"returncode": os.waitstatus_to_exitcode(status), "cpu_seconds": usage.ru_utime + usage.ru_stime}
        _PROTOCOL_OUT.write(json.dumps(answer) + "\n")
        _PROTOCOL_OUT.flush()


if __name__ == "__main__":
    main()
