"""posteriordb's files: data as keyword arguments, reference draws by parameter name, a posterior's parts.

A posteriordb folder (a full clone of stan-dev/posteriordb, or a subset in the same layout) holds,
under ``posterior_database/``, for a posterior named ``<data>-<model>``:

    posteriors/<data>-<model>.json                            model_name, data_name, reference_posterior_name
    models/stan/<model>.stan                                  the Stan program
    data/data/<data>.json.zip                                 one JSON object: the Stan data block's entries
    reference_posteriors/draws/draws/<data>-<model>.json.zip  a list of chains, each {"theta[1]": [draws], ...}

A ``.json.zip`` holds one JSON file. ``PYRO_VI_POSTERIORDB`` names the folder when no path is given.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from pyro_vi.errors import ConfigError, DataError

__all__ = ["ENVIRONMENT_VARIABLE", "Posterior", "read_json", "data_arguments", "read_data", "read_reference",
           "database_root", "find_posterior", "posterior_names"]

ENVIRONMENT_VARIABLE = "PYRO_VI_POSTERIORDB"


def read_json(path: str | os.PathLike):
    """The JSON value in ``path``: a ``.json`` file, or a ``.json.zip`` holding one JSON file.

    Raises:
        DataError: a missing file, a zip without exactly one member, or text that is not JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{str(path)!r} does not exist; check the path")
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                members = [name for name in archive.namelist() if not name.endswith("/")]
                if len(members) != 1:
                    raise DataError(f"{str(path)!r} holds {len(members)} files; a posteriordb .json.zip holds one JSON file")
                text = archive.read(members[0])
        else:
            text = path.read_bytes()
        return json.loads(text)
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        message = " ".join(str(error).split())
        raise DataError(f"{str(path)!r} cannot be read as JSON ({type(error).__name__}: {message})") from None


def data_arguments(values: dict, where: str = "data", device: torch.device | str = "cpu") -> dict:
    """A posteriordb data object as keyword arguments: lists (nested: matrices) become float tensors
    of the default dtype on ``device``, numbers stay Python numbers (a model casts to integers where it needs).

    Raises:
        DataError: not an object, ragged or non-numeric lists, NaN or inf.
    """
    if not isinstance(values, dict) or not values:
        raise DataError(f"{where} must hold one non-empty JSON object (name: value), got {type(values).__name__}")
    arguments = {}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, list)):
            raise DataError(f"{where}[{name!r}] is a {type(value).__name__}; give numbers or lists of numbers")
        if isinstance(value, list):
            try:
                array = np.asarray(value, dtype=np.float64)
            except (ValueError, TypeError):
                raise DataError(f"{where}[{name!r}] is not a rectangular list of numbers") from None
            if not np.isfinite(array).all():
                raise DataError(f"{where}[{name!r}] holds NaN or inf; remove or impute them")
            value = torch.as_tensor(array, dtype=torch.get_default_dtype(), device=device)
        elif not np.isfinite(value):
            raise DataError(f"{where}[{name!r}] is {value}; give a finite number")
        arguments[name] = value
    return arguments


def read_data(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict:
    """``data_arguments`` of the JSON object in a ``.json`` or ``.json.zip`` file."""
    return data_arguments(read_json(path), Path(path).name, device)


def read_reference(path: str | os.PathLike) -> dict:
    """posteriordb reference draws (a list of chains, each ``{name: [draws]}``; or one such object)
    as ``{name: 1-D float64 array}``, the chains pooled.

    Raises:
        DataError: not that shape, or chains that name different parameters.
    """
    chains = read_json(path)
    chains = [chains] if isinstance(chains, dict) else chains
    where = Path(path).name
    if not isinstance(chains, list) or not chains or not all(isinstance(chain, dict) and chain for chain in chains):
        raise DataError(f"{where} must hold a list of chains, each an object of parameter name: list of draws")
    names = list(chains[0])
    for index, chain in enumerate(chains[1:], start=2):
        if set(chain) != set(names):
            raise DataError(f"{where}: chain {index} names other parameters than chain 1")
    try:
        return {name: np.concatenate([np.asarray(chain[name], dtype=np.float64).reshape(-1) for chain in chains])
                for name in names}
    except (ValueError, TypeError):
        raise DataError(f"{where}: the draws must be lists of numbers") from None


class Posterior(NamedTuple):
    """A posterior's files in a posteriordb folder."""

    name: str  # "<data>-<model>"
    model_name: str
    data_name: str
    stan_file: Path
    data_file: Path
    reference_file: Path | None  # None: posteriordb has no reference draws for it


def database_root(path: str | os.PathLike | None = None) -> Path:
    """The ``posterior_database`` folder of ``path`` (or of ``$PYRO_VI_POSTERIORDB``); ``path`` may be
    the clone's top folder or ``posterior_database`` itself.

    Raises:
        ConfigError: no path and no environment variable, or a folder without posteriordb's layout.
    """
    if path is None:
        path = os.environ.get(ENVIRONMENT_VARIABLE)
        if not path:
            raise ConfigError(f"no posteriordb folder: pass --posteriordb DIR (a clone of stan-dev/posteriordb) or set "
                              f"{ENVIRONMENT_VARIABLE}")
    path = Path(path)
    for candidate in (path / "posterior_database", path):
        if (candidate / "posteriors").is_dir():
            return candidate
    raise ConfigError(f"{str(path)!r} is not a posteriordb folder (no posterior_database/posteriors/ in it); give a "
                      "clone of stan-dev/posteriordb")


def posterior_names(root: str | os.PathLike | None = None) -> list[str]:
    """The posteriors in the folder, sorted."""
    return sorted(path.name[: -len(".json")] for path in (database_root(root) / "posteriors").glob("*.json"))


def find_posterior(name: str, root: str | os.PathLike | None = None) -> Posterior:
    """The files of posterior ``name`` (``<data>-<model>``).

    Raises:
        ConfigError: an unknown name (the line lists some that exist).
        DataError: a posterior whose metadata or data file is missing.
    """
    base = database_root(root)
    info_path = base / "posteriors" / f"{name}.json"
    if not info_path.is_file():
        names = posterior_names(base)
        raise ConfigError(f"no posterior {name!r} in {str(base)!r}; it has {len(names)}, e.g. {', '.join(names[:6])}")
    info = read_json(info_path)
    model_name, data_name = info.get("model_name"), info.get("data_name")
    if not model_name or not data_name:
        raise DataError(f"{str(info_path)!r} names no model_name and data_name")
    reference_name = info.get("reference_posterior_name")
    reference = base / "reference_posteriors" / "draws" / "draws" / f"{reference_name}.json.zip" if reference_name else None
    data_file = base / "data" / "data" / f"{data_name}.json.zip"
    if not data_file.is_file():
        raise DataError(f"posterior {name!r}: its data file {str(data_file)!r} is missing")
    return Posterior(name, model_name, data_name, base / "models" / "stan" / f"{model_name}.stan", data_file,
                     reference if reference is not None and reference.is_file() else None)
