"""The command line's surface: one spelling per option across commands (old spellings kept as
deprecated aliases), one ``--device`` default, ``cuda:N``, ``pyro-vi --version``."""

from __future__ import annotations

import argparse
import importlib.metadata

import pytest
import torch

import pyro_vi
from pyro_vi import cli
from pyro_vi.commands import _args
from pyro_vi.device import resolve_device
from pyro_vi.errors import ConfigError, DeviceError


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (subparsers,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return dict(subparsers.choices)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    line = capsys.readouterr().out
    assert line.startswith(f"pyro-vi {pyro_vi.__version__} (torch {torch.__version__}") and line.count("\n") == 1
    assert pyro_vi.__version__ == importlib.metadata.version("pyro_vi")


def test_every_device_option_has_the_same_default_and_accepts_cuda_n():
    devices = {name: [action for action in parser._actions if "--device" in action.option_strings]
               for name, parser in _commands().items()}
    devices = {name: actions[0] for name, actions in devices.items() if actions}
    assert {"fit", "compare", "variance", "vae", "gap", "gmm"} <= set(devices)
    assert {name: action.default for name, action in devices.items()} == dict.fromkeys(devices, "auto")
    assert all(action.type("cuda:1") == "cuda:1" for action in devices.values())
    assert _commands()["gmm"].parse_args(["--device", "cuda:1"]).device == "cuda:1"
    assert _args.parse_device("cuda:01") == "cuda:1"
    for bad in ("cuda:", "cuda:-1", "cuda:x", "gpu", "cuda:1:2"):
        with pytest.raises(argparse.ArgumentTypeError, match="cuda:N"):
            _args.parse_device(bad)
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("cuda:x")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal of a machine without CUDA")
def test_cuda_n_without_cuda_is_one_line_exit_2(tmp_path, capsys):
    with pytest.raises(DeviceError, match="CUDA is not available"):
        resolve_device("cuda:1")
    assert cli.main(["gmm", "--device", "cuda:1", "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--device cuda:1" in error and not (tmp_path / "out").exists()


def test_one_spelling_per_option():
    """The options every command shows, by meaning: the same spelling wherever they appear (the old
    ``--checkpoint-every-steps`` of vae is a hidden alias that still works and says it is deprecated)."""
    visible = {name: {option for action in parser._actions if action.help != argparse.SUPPRESS
                      for option in action.option_strings} for name, parser in _commands().items()}
    for name in ("fit", "vae"):
        assert "--checkpoint-every" in visible[name] and "--checkpoint-every-steps" not in visible[name]
    everything = set().union(*visible.values())
    assert not {option for option in everything if option.endswith("-steps") and option[: -len("-steps")] in everything}
    vae = _commands()["vae"]
    assert vae.parse_args(["--checkpoint-every", "5"]).checkpoint_every_steps == 5
    assert vae.parse_args([]).checkpoint_every_steps == 0


def test_the_deprecated_spelling_still_works_and_says_so(capsys):
    vae = _commands()["vae"]
    assert vae.parse_args(["--checkpoint-every-steps", "7"]).checkpoint_every_steps == 7
    assert capsys.readouterr().err == "pyro-vi vae: note: --checkpoint-every-steps is deprecated, use --checkpoint-every\n"
