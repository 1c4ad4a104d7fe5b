"""The subcommands never import ``pyro_vi.cli`` (no cli <-> commands cycle): ``cli`` holds the
command table and imports ``commands``; the helpers both use live in ``commands/_args.py``."""

import ast
from pathlib import Path

import pytest

from pyro_vi import cli

COMMANDS = Path(__file__).resolve().parents[2] / "pyro_vi" / "commands"


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", sorted(COMMANDS.glob("*.py")), ids=lambda path: path.stem)
def test_a_command_module_does_not_import_cli(path):
    assert "pyro_vi.cli" not in _imported_modules(path)


def test_every_command_in_the_table_has_a_module_with_the_three_parts():
    for name, module_name in cli.COMMANDS.items():
        path = COMMANDS / f"{module_name.rsplit('.', 1)[-1]}.py"
        source = path.read_text()
        assert "HELP = " in source and "def add_arguments(" in source and "def run(" in source, name
