"""The ``pyro-vi`` subcommands, one module each (``pyro_vi.cli.COMMANDS`` maps names to them).

Every module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``; the
argument helpers they share are in :mod:`pyro_vi.commands._args`, the user's own model files in
:mod:`pyro_vi.commands.user_model`, data files in :mod:`pyro_vi.commands.user_data`, what ``fit`` writes while it runs in
:mod:`pyro_vi.commands._monitor`. Modules are imported by ``pyro_vi.cli`` on demand.
"""

__all__ = ["bench", "check", "compare", "fit", "gap", "gmm", "user_data", "user_model", "vae", "variance"]
