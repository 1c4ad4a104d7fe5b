"""Argument helpers shared by the ``pyro-vi`` subcommands (``pyro_vi.cli`` builds the parser from them).

The subcommands import these, never ``pyro_vi.cli``: the command table lives in ``cli``, the pieces
every command uses live here, so the two never import each other.
"""

from __future__ import annotations

import argparse

__all__ = [
    "ArgumentParser", "parse_seed", "parse_int_list", "add_seed", "add_device", "parse_device", "add_deprecated_alias", "add_output", "add_compile", "check_compile", "compile_mode",
    "add_no_progress",
    "estimator_names", "hidden_dims", "x_scale", "X_SCALES",
]


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad option in one line naming ``--help`` (exit status 2, as argparse)."""

    def error(self, message: str):
        """Exit with status 2 after one line: the problem and where to look (``--help``)."""
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def parse_seed(text: str) -> int:
    """The ``type`` of every ``--seed``: an integer that NumPy (seeded by ``pyro.set_rng_seed``)
    accepts, 0 to 2**32 - 1; anything else is a one-line usage error before any work.

    Returns:
        The seed as an ``int``.

    Raises:
        argparse.ArgumentTypeError: ``text`` is not an integer in that range.
    """
    try:
        seed = int(text)
    except ValueError:
        seed = None
    if seed is None or not 0 <= seed <= 2**32 - 1:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 2**32 - 1 = {2**32 - 1}, got {text!r}")
    return seed


def parse_int_list(text: str) -> list[int]:
    """The ``type`` of a comma-separated integer option (``--particles 1,4,16``): the integers, in order.

    Raises:
        argparse.ArgumentTypeError: an element is not an integer.
    """
    try:
        return [int(value) for value in text.split(",") if value.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_seed(parser: argparse.ArgumentParser) -> None:
    """``--seed`` (default 0), checked by :func:`parse_seed`."""
    parser.add_argument("--seed", type=parse_seed, default=0, help="default 0")


def parse_device(text: str) -> str:
    """The ``type`` of every ``--device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``
    (``pyro_vi.device.check_device_name``); whether it is present is checked when the command runs.

    Raises:
        argparse.ArgumentTypeError: any other name.
    """
    from pyro_vi.device import check_device_name
    from pyro_vi.errors import ConfigError

    try:
        return check_device_name(text)
    except ConfigError:
        raise argparse.ArgumentTypeError(f"choose auto, cpu, cuda or cuda:N (N: the GPU's index), got {text!r}") from None


def add_device(parser: argparse.ArgumentParser, what: str = "where the data go") -> None:
    """``--device``, the same everywhere: ``auto`` (CUDA when present, else CPU; the default),
    ``cpu``, ``cuda`` or ``cuda:N``."""
    parser.add_argument("--device", type=parse_device, default="auto", metavar="{auto,cpu,cuda,cuda:N}",
                        help=f"{what} (default auto: CUDA when present, else CPU)")


class _DeprecatedAlias(argparse.Action):
    """An old spelling of an option: stores into the new one's ``dest`` and says so on stderr."""

    def __init__(self, option_strings, dest, new: str = "", **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        import sys

        print(f"{parser.prog}: note: {option_string} is deprecated, use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_deprecated_alias(parser, old: str, new: str, dest: str, type=str) -> None:
    """Accept ``old`` as a deprecated spelling of the option ``new`` (its value goes to ``dest``;
    hidden from ``--help``; using it prints one note on stderr)."""
    parser.add_argument(old, dest=dest, type=type, action=_DeprecatedAlias, new=new, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)


def add_output(parser: argparse.ArgumentParser, default: str, overwrite: str | None = None) -> None:
    """``--out`` (the output directory, default ``default``) and, unless ``overwrite`` is None,
    ``--overwrite`` with that help text."""
    parser.add_argument("--out", default=default, help=f"output directory (default {default})")
    if overwrite is not None:
        parser.add_argument("--overwrite", action="store_true", help=overwrite)


def add_compile(parser) -> None:
    """``--compile`` / ``--no-compile`` (default: neither, ``fit``'s automatic choice), as
    ``args.compile`` = ``True`` / ``False`` / ``None``, and ``--inductor`` (:func:`compile_mode`)."""
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None,
        help="replay the step as a recorded tensor program (pyro_vi.engine.compile; jax.jit's contract: the model's "
        "Python runs when the step is recorded, a replay repeats its tensor operations only; audited, and every "
        "fall-back reported). Default: pyro-vi fit takes SVI's plain step; the built-in families (vae, gmm) record "
        "where the run has 1000+ steps to repay it. --compile: always, or a one-line error naming why not; "
        "--no-compile: never",
    )
    parser.add_argument(
        "--inductor", action="store_true",
        help="as --compile, then compile the recorded step with inductor: fused C++ kernels and, with Adam, the "
        "update in the same program (pyro_vi.engine.compile.whole_step). Seconds to compile, then several times faster on "
        "small models; numbers equal to float rounding, not bit for bit",
    )


def compile_mode(args) -> bool | str | None:
    """``fit``'s ``compile`` from ``--compile`` / ``--no-compile`` / ``--inductor``.

    Raises:
        ConfigError: ``--inductor`` with ``--no-compile``.
    """
    from pyro_vi.errors import ConfigError

    if getattr(args, "inductor", False):
        if args.compile is False:
            raise ConfigError("--inductor compiles the recorded step, --no-compile turns recording off; drop one of them")
        return "inductor"
    return args.compile


def check_compile(compile: bool | None, loss) -> None:
    """With ``--compile``, refuse a loss compile does not cover, in one line, before any output
    (what only a recording shows, such as ``.item()`` in a model, ``fit`` refuses after step 1).

    Raises:
        ConfigError: ``pyro_vi.engine.compile.record.can_compile``'s reason.
    """
    from pyro_vi.engine.step import compile_refusal as can_compile
    from pyro_vi.errors import ConfigError

    reason = can_compile(None, None, (), loss) if compile else None
    if reason is not None:
        raise ConfigError(reason)


def add_no_progress(parser: argparse.ArgumentParser) -> None:
    """``--no-progress``: no progress bar."""
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def estimator_names(text: str) -> list[str]:
    """The pyro_vi estimators of a comma-separated ``--estimators`` value, duplicates dropped, in order.

    Raises:
        ConfigError: an unknown name, or none given; the line lists ``pyro_vi.estimators.ESTIMATORS``.
    """
    from pyro_vi.errors import ConfigError
    from pyro_vi.estimators import ESTIMATORS

    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in ESTIMATORS]
    if not names or unknown:
        raise ConfigError(f"unknown estimator(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(ESTIMATORS)}")
    return names


# Argument types of the VAE commands (vae, gap).


def hidden_dims(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"hidden sizes must be comma-separated integers, got {text!r}") from None
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"hidden sizes must be positive, got {text!r}")
    return dims


def x_scale(text: str) -> float | None:
    if text == "learned":
        return None
    try:
        scale = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--x-scale takes a positive number or 'learned', got {text!r}") from None
    # Pixels lie in [0, 1]: a scale far outside [1e-6, 1e6] makes the likelihood flat or its float32
    # arithmetic (scale squared) overflow.
    if scale > 0 and not X_SCALES[0] <= scale <= X_SCALES[1]:  # zero, negative, NaN: VAE says why
        raise argparse.ArgumentTypeError(f"--x-scale must be from {X_SCALES[0]:g} to {X_SCALES[1]:g} (pixels lie in [0, 1]) "
                                         f"or 'learned', got {text!r}")
    return scale


X_SCALES = (1e-6, 1e6)
