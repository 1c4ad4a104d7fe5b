"""The ``pyro-vi`` command: one subcommand per job, each in ``pyro_vi/commands/<name>.py``.

A subcommand module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
User errors (``PyroVIError``) are printed as one line on stderr with exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pyro_vi.errors import PyroVIError

# subcommand name -> module; add a line here when adding a command.
COMMANDS = {
    "vae": "pyro_vi.commands.vae",
    "variance": "pyro_vi.commands.variance",
    "bench": "pyro_vi.commands.bench",
    "gmm": "pyro_vi.commands.gmm",
    "gap": "pyro_vi.commands.gap",
}


def parse_seed(text: str) -> int:
    """The ``type`` of every ``--seed``: an integer that NumPy (seeded by ``pyro.set_rng_seed``)
    accepts, 0 to 2**32 - 1; anything else is a one-line usage error before any work."""
    try:
        seed = int(text)
    except ValueError:
        seed = None
    if seed is None or not 0 <= seed <= 2**32 - 1:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 2**32 - 1 = {2**32 - 1}, got {text!r}")
    return seed


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad option in one line (its default already exits 2)."""

    def error(self, message: str):  # noqa: D102
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="pyro-vi", description="Variational inference on Pyro.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_ArgumentParser)
    subparsers.required = True
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        subparser = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(subparser)
        subparser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except PyroVIError as error:
        print(f"pyro-vi {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pyro-vi {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
