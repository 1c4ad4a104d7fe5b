"""Ctrl-C and SIGTERM in the ``pyro-vi`` command, at every phase.

``exit_quietly_during_import()``, called first thing in ``pyro_vi/__init__.py``, makes Ctrl-C (or
SIGTERM) during the import of the command line exit 130 with one line instead of a
KeyboardInterrupt traceback (or a silent 143); ``cli.main`` puts Python's own SIGINT handler back
(``restore_default``) and, for the run, has SIGTERM raise KeyboardInterrupt as Ctrl-C does
(``terminate_as_interrupt``): the run's ``with`` blocks release the lock, the engine defers both
to a step boundary and checkpoints, and the CLI reports either in one line, exit 130. A library
user's ``import pyro_vi`` is untouched: the handlers are installed only when the process is the
``pyro-vi`` command or ``python -m pyro_vi`` (and ``cli.main`` only while it runs).

``DeferredInterrupt`` is the training loops' side (``engine.fit``, ``fit_many``): a signal becomes a
flag read between steps, so a step is never cut in half.
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
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_130)


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
    """Python's handlers again (KeyboardInterrupt; SIGTERM's default), if ours are installed."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is _exit_130:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) is _exit_130:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def terminate_as_interrupt():
    """Have SIGTERM raise KeyboardInterrupt, as Ctrl-C does, if it has its default action (a
    program embedding ``cli.main`` with its own handler keeps it). Returns what to pass to
    :func:`restore_terminate` afterwards."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return None
    signal.signal(signal.SIGTERM, _raise_interrupt)
    return signal.SIG_DFL


def restore_terminate(previous) -> None:
    """Put back SIGTERM's handler as :func:`terminate_as_interrupt` found it."""
    if previous is not None and signal.getsignal(signal.SIGTERM) is _raise_interrupt:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _exit_130(signum, frame) -> None:
    try:
        os.write(2, b"pyro-vi: interrupted\n")
    finally:
        os._exit(130)


class DeferredInterrupt:
    """Inside a training loop (``engine.fit``, ``fit_many``): turn Ctrl-C (and SIGTERM: schedulers' preemption, torchrun) into a flag read between steps,
    so a step is never cut in half. A second signal stops at once."""

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._handle) for number in self._SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        return False
