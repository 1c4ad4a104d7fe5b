"""A Sphinx directive, ``.. pyro-vi-cli::``: the ``pyro-vi`` command's reference, generated at build
time from the argparse parser itself (``pyro_vi.cli.build_parser``), so it cannot drift from the
code: one section per subcommand with its one-line purpose and its ``--help``."""

from __future__ import annotations

import argparse
import os

from docutils import nodes
from docutils.parsers.rst import Directive
from docutils.statemachine import StringList
from sphinx.util.nodes import nested_parse_with_titles

WIDTH = "100"  # argparse wraps its help at the terminal's width: the same page on every machine


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return dict(action.choices)


def _literal(text: str) -> list[str]:
    return [".. code-block:: text", ""] + ["    " + line if line.strip() else "" for line in text.rstrip().splitlines()] + [""]


class CliReference(Directive):
    """The whole reference: ``pyro-vi --help``, then ``pyro-vi COMMAND --help`` for each command."""

    has_content = False

    def run(self):
        from pyro_vi import cli

        previous = os.environ.get("COLUMNS")
        os.environ["COLUMNS"] = WIDTH
        try:
            parser = cli.build_parser()
            lines = _literal(parser.format_help())
            for name, subparser in _subcommands(parser).items():
                module = __import__(cli.COMMANDS[name], fromlist=["HELP"])
                title = f"pyro-vi {name}"
                lines += [title, "-" * len(title), "", module.HELP[0].upper() + module.HELP[1:].rstrip(".") + ".", ""]
                lines += _literal(subparser.format_help())
        finally:
            if previous is None:
                os.environ.pop("COLUMNS", None)
            else:
                os.environ["COLUMNS"] = previous
        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source="pyro_vi.cli"), container)
        return container.children


def setup(app):
    app.add_directive("pyro-vi-cli", CliReference)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
