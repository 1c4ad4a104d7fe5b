"""Ctrl-C before ``pyro_vi.cli.main`` runs: the imports of the first second or two.

``exit_quietly_during_import()``, called first thing in ``pyro_vi/__init__.py``, makes Ctrl-C
during the import of the command line exit 130 with one line instead of a KeyboardInterrupt
traceback; ``cli.main`` puts Python's own handler back (``restore_default``) and reports later
interrupts itself. A library user's ``import pyro_vi`` is untouched: the handler is installed only
when the process is the ``pyro-vi`` command or ``python -m pyro_vi``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading


def exit_quietly_during_import() -> None:
    """Install the quiet SIGINT handler if this process is the ``pyro-vi`` command."""
    if threading.current_thread() is not threading.main_thread():
        return
    if not _is_the_command():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _exit_130)


def _is_the_command() -> bool:
    """``pyro-vi`` (the console script) or ``python [options] -m pyro_vi``; not ``python -m pytest``
    or any other program that happens to import pyro_vi."""
    if sys.argv and os.path.basename(sys.argv[0]) == "pyro-vi":
        return True
    arguments = iter(getattr(sys, "orig_argv", [])[1:])
    for argument in arguments:
        if argument == "-m":
            return next(arguments, None) == "pyro_vi"
        if argument.startswith("-m"):
            return argument[2:] == "pyro_vi"
        if argument in ("-X", "-W"):  # the interpreter's options that take a value
            next(arguments, None)
        elif argument == "-c" or not argument.startswith("-"):
            return False  # python -c ... or python script.py
    return False


def restore_default() -> None:
    """Python's handler again (KeyboardInterrupt), if ours is installed."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is _exit_130:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _exit_130(signum, frame) -> None:
    try:
        os.write(2, b"pyro-vi: interrupted\n")
    finally:
        os._exit(130)
