"""The ``pyro-vi`` command: one subcommand per job, each in ``pyro_vi/commands/<name>.py``.

A subcommand module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``;
the argument helpers they share are in ``pyro_vi.commands._args`` (commands never import this module).
User errors (``PyroVIError``) are printed as one line on stderr with exit status 2, no traceback;
so is any other exception (its type named, with a hint); an interrupt exits 130.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from pyro_vi import _interrupt
from pyro_vi.commands._args import ArgumentParser, parse_seed  # noqa: F401 - parse_seed: its old home
from pyro_vi.errors import PyroVIError

__all__ = ["COMMANDS", "build_parser", "main", "version"]

# subcommand name -> module; add a line here when adding a command.
COMMANDS = {
    "vae": "pyro_vi.commands.vae",
    "variance": "pyro_vi.commands.variance",
    "bench": "pyro_vi.commands.bench",
    "gmm": "pyro_vi.commands.gmm",
    "gap": "pyro_vi.commands.gap",
    "fit": "pyro_vi.commands.fit",
    "compare": "pyro_vi.commands.compare",
    "check": "pyro_vi.commands.check",
}


def build_parser() -> argparse.ArgumentParser:
    """The ``pyro-vi`` parser: one subparser per entry of ``COMMANDS`` (each module imported here)."""
    parser = ArgumentParser(prog="pyro-vi", description="Variational inference on Pyro.")
    parser.add_argument("--version", action="version", version=version())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    subparsers.required = True
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        subparser = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(subparser)
        subparser.set_defaults(_run=module.run)
    return parser


def version() -> str:
    """``pyro-vi --version``'s line: pyro_vi's version and those of what it runs on."""
    import platform

    import pyro
    import torch

    from pyro_vi import __version__

    cuda = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
    return f"pyro-vi {__version__} (torch {torch.__version__}, {cuda}; pyro {pyro.__version__}; Python {platform.python_version()})"


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. Whatever reaches here is one line on stderr: exit status 2 for errors,
    130 for Ctrl-C/SIGTERM-style interrupts; never a traceback (``PYRO_VI_TRACEBACK=1`` shows it)."""
    _interrupt.restore_default()  # Ctrl-C raises KeyboardInterrupt again from here on
    terminate = _interrupt.terminate_as_interrupt()  # and SIGTERM too, at every phase of the run
    try:
        return _main(argv)
    finally:
        _interrupt.restore_terminate(terminate)


def _main(argv: list[str] | None) -> int:
    # Warnings (Pyro's NaN warning, torch's, NumPy's) are held back: a run that fails prints its one
    # line with them folded in; a run that ends well shows them as Python would have.
    with warnings.catch_warnings(record=True) as caught:
        status, line = _run(argv)
    if line is not None:
        print(line + (_folded(caught) if status == 2 else ""), file=sys.stderr)
    elif status != 130:
        for warning in caught:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno, warning.file, warning.line)
    return status


def _run(argv: list[str] | None) -> tuple[int, str | None]:
    """Run the subcommand: (exit status, the one line to print on stderr, or None)."""
    command = "pyro-vi"
    try:
        args = build_parser().parse_args(argv)
        command = f"pyro-vi {args.command}"
        try:
            return int(args._run(args) or 0), None
        except SystemExit as exit_:  # sys.exit from a user's model, guide or file: never a silent exit 0
            return 2, (f"{command}: error: the run was ended by sys.exit({exit_.code!r}) (in your model, guide or a library "
                       "they call); a model must return or raise, not end the process")
    except KeyboardInterrupt as interrupt:  # TrainingInterrupted too: it carries its own message
        detail = _one_line(interrupt) if isinstance(interrupt, PyroVIError) and str(interrupt) else "interrupted"
        return 130, f"{command}: {detail}"
    except PyroVIError as error:
        return 2, f"{command}: error: {_one_line(error)}"
    except Exception as error:  # noqa: BLE001 - the promise is one line, whatever went wrong
        if os.environ.get("PYRO_VI_TRACEBACK"):
            raise
        return 2, f"{command}: error: {_unexpected(error)}"


def _folded(caught: list) -> str:
    """The distinct warnings a failed run gave, as the end of its one line ("" if none)."""
    messages = list(dict.fromkeys(_one_line(warning.message) for warning in caught if str(warning.message).strip()))
    return f" (warned before: {'; '.join(messages)})" if messages else ""


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _unexpected(error: Exception) -> str:
    """An exception that is not a ``PyroVIError``: its type and message, and what to try."""
    message = _one_line(error).split(" Trace Shapes:")[0] or "(no message)"  # Pyro appends a table of shapes
    if isinstance(error, MemoryError) or any(s in message.lower() for s in ("out of memory", "allocate memory")):
        hint = "lower the sizes (--batch-size, --hidden-dims, --particles, ...) or use a larger machine"
    elif isinstance(error, OSError):
        hint = "check the paths, free disk space and permissions"
    else:
        hint = "this looks like a bug in pyro_vi; rerun with PYRO_VI_TRACEBACK=1 and report the traceback"
    return f"unexpected {type(error).__name__}: {message}; {hint}"


if __name__ == "__main__":
    sys.exit(main())
