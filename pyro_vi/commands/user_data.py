"""A user's data file as tensors: ``.npz`` arrays by name, ``.npy``/``.csv``/``.pt`` one tensor.

Used by ``pyro-vi fit``, ``compare``, ``variance`` and ``check`` (through
:mod:`pyro_vi.commands.user_model`). Everything that can be wrong with a data file is one
``DataError`` line naming the file (and the line and column of a bad CSV field)::

    load_data("coin.npz")                   -> Data(args=(), kwargs={"data": tensor})  (npz: by name)
    load_data("x.npy" | "x.csv" | "x.pt")   -> Data(args=(tensor,), kwargs={})         (one tensor)
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from pyro_vi.errors import DataError, PyroVIError

__all__ = ["DATA_SUFFIXES", "Data", "load_data", "tensors_fingerprint"]

DATA_SUFFIXES = (".npz", ".npy", ".csv", ".pt", ".json", ".json.zip")


class Data(NamedTuple):
    """A data file's tensors, as the model receives them: ``model(*args, **kwargs)``."""

    path: str | None
    args: tuple
    kwargs: dict

    def describe(self) -> dict:
        """Names (or positions) and shapes, for metrics and checkpoint configs."""
        shapes = {f"arg{i}": list(value.shape) for i, value in enumerate(self.args)}
        shapes.update({name: list(getattr(value, "shape", ())) for name, value in self.kwargs.items()})
        return shapes

    def fingerprint(self) -> str:
        """A hash of the values' names, dtypes, shapes and contents (one pass over the bytes): a
        checkpoint records it, so a resume on other data of the same shapes is refused."""
        return tensors_fingerprint({**{f"arg{i}": value for i, value in enumerate(self.args)}, **self.kwargs})


def tensors_fingerprint(values: dict) -> str:
    """SHA-256 of ``{name: tensor or number}``: names, dtypes, shapes and the values' bytes."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(values):
        value = values[name]
        if not torch.is_tensor(value):
            digest.update(f"{name}:{type(value).__name__}:{value!r};".encode())
            continue
        value = value.detach()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()



def load_data(path: str | os.PathLike | None, device: torch.device | str = "cpu") -> Data:
    """Read a data file into tensors on ``device``: ``.npz`` arrays by name (keyword arguments);
    ``.npy``, ``.csv`` (numbers, an optional header row) or ``.pt`` one tensor (positional; a ``.pt``
    dict of tensors gives keyword arguments). Floats become ``torch.get_default_dtype()``. ``.json`` or
    ``.json.zip`` (posteriordb's data format): one object's entries by name, lists as float tensors,
    numbers kept as Python numbers (``pyro_vi.posteriordb.files.read_data``).

    Raises:
        DataError: a missing, unreadable or empty file, an unknown suffix, non-numeric or NaN/inf data.
    """
    if path is None:
        return Data(None, (), {})
    path = Path(path)
    suffix = path.suffix.lower()
    _check_regular_file(path)
    if path.name.lower().endswith((".json", ".json.zip")):  # posteriordb's format: numbers stay Python numbers
        from pyro_vi.posteriordb.files import read_data

        return Data(str(path), (), read_data(path, device))
    if suffix not in DATA_SUFFIXES:
        raise DataError(f"data file {str(path)!r} has suffix {path.suffix or '(none)'!r}; give a {', '.join(DATA_SUFFIXES)} file")
    try:
        with warnings.catch_warnings():  # the reader's warnings on a bad file: the one line below says it all
            warnings.simplefilter("ignore")
            arrays = _read(path, suffix)
    except PyroVIError:
        raise
    except Exception as error:  # noqa: BLE001 - any reader error is a bad file, in one line
        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        if unsafe:
            raise DataError(f"data file {str(path)!r} holds Python objects ({unsafe.group(1)}), not only tensors and numbers; "
                            "it was not loaded because reading it could run code: save tensors (torch.save(tensor, ...))") from None
        message = " ".join(str(error).split())
        raise DataError(f"data file {str(path)!r} cannot be read as {suffix} ({type(error).__name__}: {message})") from None
    args, kwargs = (arrays, {}) if isinstance(arrays, tuple) else ((), arrays)
    args = tuple(_tensor(value, f"{path.name}", device) for value in args)
    kwargs = {name: _tensor(value, f"{path.name}[{name!r}]", device) for name, value in kwargs.items()}
    if not args and not kwargs:
        raise DataError(f"data file {str(path)!r} holds no arrays")
    return Data(str(path), args, kwargs)


def _check_regular_file(path: Path) -> None:
    """A data path must name a regular file (after symlinks): say what it is otherwise."""
    import stat

    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise DataError(f"data file {str(path)!r} does not exist; check the path") from None
    except OSError as error:
        raise DataError(f"data file {str(path)!r} cannot be opened ({error.strerror or error}); check the path and permissions") from None
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    for test, kind in kinds:
        if test(mode):
            raise DataError(f"data path {str(path)!r} is {kind}, not a regular file; give a {', '.join(DATA_SUFFIXES)} file")


def _read(path: Path, suffix: str):
    """(positional values,) or {name: value}."""
    import numpy as np

    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    if suffix == ".npy":
        return (np.load(path, allow_pickle=False),)
    if suffix == ".csv":
        table = _read_csv(path)
        return (table[:, 0] if table.shape[1] == 1 else table,)
    value = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return dict(value)
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value,)


def _read_csv(path: Path):
    """A table of numbers, one row a line: a first row with no number at all is a header; any other
    field that is not a number is an error naming its line and column (1-based). UTF-8, with or
    without a byte-order mark; blank lines are skipped."""
    import csv

    import numpy as np

    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            rows = [(number, row) for number, row in enumerate(csv.reader(file), start=1)
                    if any(field.strip() for field in row)]
    except UnicodeDecodeError as error:
        raise DataError(f"data file {str(path)!r} is not UTF-8 text ({error.reason} at byte {error.start}); "
                        "save it as UTF-8 CSV") from None
    if rows and not any(_is_number(field) for field in rows[0][1]):
        rows = rows[1:]  # a header: no field of the row is a number
    if not rows:
        raise DataError(f"data file {str(path)!r} has no numbers")
    width = len(rows[0][1])
    values = []
    for number, row in rows:
        if len(row) != width:
            raise DataError(f"data file {str(path)!r} line {number} has {len(row)} columns, line {rows[0][0]} has {width}; "
                            "give every row the same number of values")
        try:
            values.append([float(field) for field in row])
        except ValueError:
            column = next(i for i, field in enumerate(row, start=1) if not _is_number(field))
            raise DataError(f"data file {str(path)!r} line {number}, column {column}: {row[column - 1].strip()[:40]!r} is not "
                            "a number; fix it (a header is a first row with no number at all)") from None
    return np.asarray(values, dtype=float).reshape(len(values), width)


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _tensor(value, where: str, device) -> Tensor:
    if torch.is_tensor(value) and value.layout != torch.strided:
        raise DataError(f"{where} is a {value.layout} tensor; Pyro's distributions need dense tensors: save value.to_dense()")
    try:
        tensor = torch.as_tensor(value)
    except Exception:  # noqa: BLE001
        raise DataError(f"{where} is a {type(value).__name__}, not an array of numbers") from None
    if tensor.is_floating_point():
        finite_before = bool(torch.isfinite(tensor).all())
        tensor = tensor.to(torch.get_default_dtype())
        if finite_before and not bool(torch.isfinite(tensor).all()):
            largest = torch.finfo(tensor.dtype).max
            raise DataError(f"{where} holds values beyond {largest:.3g}, which overflow {tensor.dtype} (the default dtype); "
                            "rescale the data")
        if not finite_before:
            raise DataError(f"{where} holds NaN or inf; remove or impute them (or mask them in the model)")
    elif tensor.dtype not in (torch.bool, torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise DataError(f"{where} has dtype {tensor.dtype}; give real, integer or boolean numbers")
    return tensor.to(device)
