"""The user's own model: ``FILE.py:NAME`` functions, a data file, auto guides, posterior summaries.

Shared by ``pyro-vi fit``, ``pyro-vi compare`` and ``pyro-vi variance``. What can go wrong on the
user's side (a file that does not import, a missing function, a model that raises, a bad data file)
is one ``PyroVIError`` line::

    load_data("coin.npz")                   -> Data(args=(), kwargs={"data": tensor})  (npz: by name)
    load_data("x.npy" | "x.csv" | "x.pt")   -> Data(args=(tensor,), kwargs={})         (one tensor)
    build("coin.py:model", "auto-normal", data, seed=0)
                                            -> Pair(model, guide, args, ...): imported afresh, seeded,
                                               called once (params created, errors found)

Data given by name are bound into the model and guide (``functools.partial``), so a data array
called ``seed`` or ``loss`` cannot collide with an option of ``pyro_vi.fit``; the model is still
called ``model(*args, **kwargs)``, exactly as ``pyro.infer.SVI.step`` would.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import math
import os
import re
import sys
import traceback
import warnings
from pathlib import Path
from typing import Callable, NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from pyro_vi.engine import params
from pyro_vi.errors import CheckpointError, DataError, PyroVIError

__all__ = ["AUTO_GUIDES", "DATA_SUFFIXES", "USER_FAILURES", "ModelError", "Data", "Pair", "SiteSummary", "load_data", "load_function",
           "make_guide", "build", "probe", "latent_sites", "summary_rows", "estimate_elbo", "restore_params",
           "describe_failure"]


class ModelError(PyroVIError):
    """The user's model or guide file does not import, lacks the named function, or raises."""


# ``--guide`` names -> pyro.infer.autoguide classes, built on the model.
AUTO_GUIDES = {
    "auto-normal": "AutoNormal",
    "auto-diagonal-normal": "AutoDiagonalNormal",
    "auto-mvn": "AutoMultivariateNormal",
    "auto-lowrank-mvn": "AutoLowRankMultivariateNormal",
    "auto-delta": "AutoDelta",
}
DATA_SUFFIXES = (".npz", ".npy", ".csv", ".pt")
# What a user's model, guide or file may raise that becomes one ModelError line: any exception, and
# sys.exit (SystemExit is not an Exception; let through, it would end the command with status 0).
USER_FAILURES = (Exception, SystemExit)


class Data(NamedTuple):
    """A data file's tensors, as the model receives them: ``model(*args, **kwargs)``."""

    path: str | None
    args: tuple
    kwargs: dict

    def describe(self) -> dict:
        """Names (or positions) and shapes, for metrics and checkpoint configs."""
        shapes = {f"arg{i}": list(value.shape) for i, value in enumerate(self.args)}
        shapes.update({name: list(value.shape) for name, value in self.kwargs.items()})
        return shapes


class Pair(NamedTuple):
    """A model and guide ready to fit: ``model(*args)``, the data given by name already bound."""

    model: Callable
    guide: Callable
    args: tuple
    model_spec: str
    guide_spec: str
    files: tuple  # the user's files, to point at the line that raised
    guide_trace: object = None  # the traces of the check call (build)
    model_trace: object = None


# -- loading ------------------------------------------------------------------------------------------


def load_function(spec: str, role: str = "model", modules: dict | None = None) -> tuple[Callable, Path]:
    """Import ``FILE.py`` afresh (a new module object) and return its ``NAME``.

    ``modules`` (path -> module, filled here) makes the model and guide of one file share one
    import, so they see the same module-level objects (nets, counters).

    Raises:
        ModelError: no ``:NAME``, no such file, the file does not import, or ``NAME`` is missing or
            not callable.
    """
    path_text, separator, name = spec.rpartition(":")
    if not separator or not path_text or not name:
        raise ModelError(f"{role} {spec!r} is not FILE.py:NAME; write e.g. my_model.py:{role}")
    path = Path(path_text)
    if not path.is_file():
        raise ModelError(f"{role} file {path_text!r} does not exist" + (" or is not a file" if path.exists() else "")
                         + "; check the path")
    key = str(path.resolve())
    if modules is not None and key in modules:
        module = modules[key]
    else:
        module = _import(path, path_text, role)
        if modules is not None:
            modules[key] = module
    function = getattr(module, name, None)
    if function is None:
        available = sorted(key for key, value in vars(module).items() if callable(value) and not key.startswith("_")
                           and getattr(value, "__module__", None) == module.__name__)
        raise ModelError(f"{path_text!r} has no function {name!r}"
                         + (f"; it defines {', '.join(available[:8])}" if available else ""))
    if not callable(function):
        raise ModelError(f"{path_text}:{name} is a {type(function).__name__}, not a function; name the model or guide function")
    return function, path


def _import(path: Path, path_text: str, role: str):
    module_name = f"_pyro_vi_user_{path.stem}_{next(_counter)}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise ModelError(f"{role} file {path_text!r} cannot be imported as Python; give a .py file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
    sys.path.insert(0, str(path.resolve().parent))  # the file may import its neighbours
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as error:
        sys.modules.pop(module_name, None)
        other = error.filename and Path(error.filename).resolve() != path.resolve()
        raise ModelError(f"{role} file {path_text!r} has a syntax error at line {error.lineno}"
                         + (f" of {Path(error.filename).name}" if other else "") + f": {error.msg}") from None
    except (Exception, SystemExit) as error:  # noqa: BLE001 - whatever the user's file raises (or exits with) is one line
        sys.modules.pop(module_name, None)
        raise ModelError(f"{role} file {path_text!r} does not import: {describe_failure(error, (path,))}") from None
    finally:
        sys.path.remove(str(path.resolve().parent))
    return module


_counter = itertools.count()


def load_data(path: str | os.PathLike | None, device: torch.device | str = "cpu") -> Data:
    """Read a data file into tensors on ``device``: ``.npz`` arrays by name (keyword arguments);
    ``.npy``, ``.csv`` (numbers, an optional header row) or ``.pt`` one tensor (positional; a ``.pt``
    dict of tensors gives keyword arguments). Floats become ``torch.get_default_dtype()``.

    Raises:
        DataError: a missing, unreadable or empty file, an unknown suffix, non-numeric or NaN/inf data.
    """
    if path is None:
        return Data(None, (), {})
    path = Path(path)
    suffix = path.suffix.lower()
    _check_regular_file(path)
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


def make_guide(spec: str, model: Callable, modules: dict | None = None) -> tuple[Callable, Path | None]:
    """An auto guide built on ``model`` (a new object every call), or ``FILE.py:NAME``."""
    if spec in AUTO_GUIDES:
        from pyro.infer import autoguide

        return getattr(autoguide, AUTO_GUIDES[spec])(model), None
    if spec.startswith("auto-") and ":" not in spec:
        raise ModelError(f"unknown auto guide {spec!r}; choose one of {', '.join(AUTO_GUIDES)}, or give FILE.py:NAME")
    return load_function(spec, "guide", modules)


def build(model_spec: str, guide_spec: str, data: Data, seed: int | None = None) -> Pair:
    """Import the model (and guide) afresh, seed, and call the guide and model once.

    A fresh import and a fresh auto guide mean module-level ``nn.Module``s and ``PyroModule``s
    start from their initial values; with the same ``seed``, two calls create the same params.

    Raises:
        ModelError: a file or function problem, or the guide or model raising on the data.
    """
    if seed is not None:
        pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    modules: dict = {}  # one import per file: a model and guide of one file share its globals
    raw_model, model_path = load_function(model_spec, "model", modules)
    raw_guide, guide_path = make_guide(guide_spec, raw_model, modules)
    files = tuple(path for path in (model_path, guide_path) if path is not None)
    model, guide = raw_model, raw_guide
    if data.kwargs:
        model = functools.partial(raw_model, **data.kwargs)
        guide = functools.partial(raw_guide, **data.kwargs)
    pair = Pair(model, guide, data.args, model_spec, guide_spec, files)
    guide_trace, model_trace = probe(pair, data)
    return pair._replace(guide_trace=guide_trace, model_trace=model_trace)


def probe(pair: Pair, data: Data | None = None) -> tuple:
    """Run the guide, then the model on the guide's draws, once; return both traces.

    Raises:
        ModelError: one line naming which raised, the error and the user's line.
    """
    call = _call_text(data)
    guide_role = f"guide {pair.guide_spec}" + (" (built by running the model)" if pair.guide_spec in AUTO_GUIDES else "")
    with pyro.validation_enabled(True):
        try:
            guide_trace = poutine.trace(pair.guide).get_trace(*pair.args)
        except PyroVIError:
            raise
        except USER_FAILURES as error:  # noqa: BLE001
            raise ModelError(f"{guide_role} raised {describe_failure(error, pair.files)}{call}") from None
        try:
            model_trace = poutine.trace(poutine.replay(pair.model, trace=guide_trace)).get_trace(*pair.args)
        except PyroVIError:
            raise
        except USER_FAILURES as error:  # noqa: BLE001
            raise ModelError(f"model {pair.model_spec} raised {describe_failure(error, pair.files)}{call}") from None
    return guide_trace, model_trace


def _call_text(data: Data | None) -> str:
    if data is None or data.path is None:
        return "; it was called with no arguments (no --data)"
    given = [f"a tensor of shape {tuple(value.shape)}" for value in data.args]
    given += [f"{name}= of shape {tuple(value.shape)}" for name, value in data.kwargs.items()]
    return f"; it was called with {', '.join(given)} (from {Path(data.path).name})"


def describe_failure(error: BaseException, files=()) -> str:
    """``Type: message (file.py:line)``, the line being the last one of the user's files in the
    traceback (where the model or guide called what raised)."""
    if isinstance(error, SystemExit):
        message = f"sys.exit({error.code!r}); a model or guide must return or raise, not end the process"
    else:
        message = " ".join(str(error).split()) or "(no message)"
    where = ""
    resolved = {str(Path(path).resolve()) for path in files}
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        if str(Path(frame.filename).resolve()) in resolved:
            where = f" ({Path(frame.filename).name}:{frame.lineno})"
            break
    return f"{type(error).__name__}: {message}{where}"


# -- what the fit found -------------------------------------------------------------------------------


def latent_sites(model_trace) -> dict[str, tuple]:
    """The model's sample sites that are not observed (subsample sites excluded): name -> shape."""
    return {name: tuple(site["value"].shape) for name, site in model_trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and not params.is_hidden(site)
            and not site_is_subsample(site)}


class SiteSummary(NamedTuple):
    """One row of posterior.csv: a latent site's element and its posterior mean, sd and 5/50/95% quantiles."""

    site: str
    index: str  # "" for a scalar site, "i" or "i,j,..." for an element
    mean: float
    sd: float
    q5: float
    q50: float
    q95: float


def summary_rows(table: dict) -> list[SiteSummary]:
    """posterior.csv's rows, one per element of each site, from ``pyro_vi.engine.posterior.summary``."""
    rows = []
    for site, stats in table.items():
        shape = tuple(stats["mean"].shape)
        flat = {key: value.reshape(-1) for key, value in stats.items()}
        for element in range(flat["mean"].numel()):
            index = ",".join(map(str, _unravel(element, shape)))
            rows.append(SiteSummary(site, index, *(float(flat[key][element]) for key in ("mean", "sd", "q5", "q50", "q95"))))
    return rows


def _unravel(flat: int, shape) -> list[int]:
    index = []
    for size in reversed(list(shape)):
        flat, position = divmod(flat, size)
        index.append(position)
    return index[::-1]


def estimate_elbo(loss, pair: Pair, num_samples: int) -> tuple[float, float]:
    """ELBO at the current params, ``-loss.loss`` averaged over ``num_samples`` evaluations, and its
    Monte Carlo standard error (sd / sqrt(num_samples))."""
    values = torch.tensor([-float(loss.loss(pair.model, pair.guide, *pair.args)) for _ in range(num_samples)],
                          dtype=torch.float64)
    error = float(values.std() / math.sqrt(num_samples)) if num_samples > 1 else float("nan")
    return float(values.mean()), error


# -- checkpoints ----------------------------------------------------------------------------------------


def restore_params(path: str | os.PathLike) -> list[str]:
    """Copy the params of a ``pyro-vi fit`` checkpoint into the param store the model and guide
    created (in place, so modules keep training on them); an estimator's saved baselines come too.

    Returns:
        The restored param names.

    Raises:
        CheckpointError: an unreadable checkpoint, one lacking a param the model and guide create,
            holding one they do not, or one of another shape.
    """
    from pyro_vi.engine import checkpoint as checkpoints

    saved = checkpoints.load(path)
    values = saved["param_store"]["params"]
    constraints = saved["param_store"]["constraints"]
    store = pyro.get_param_store()
    missing = sorted(set(store.keys()) - set(values))
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} has no value for param {missing[0]!r} that the model and guide create; "
                              "give the checkpoint pyro-vi fit wrote for this model and guide")
    extra = sorted(name for name in values if name not in store and not name.startswith("__baseline"))
    if extra:
        raise CheckpointError(f"checkpoint {str(path)!r} holds params the model and guide do not create "
                              f"({', '.join(extra[:5])}); give the checkpoint pyro-vi fit wrote for this model and guide")
    for name, value in values.items():
        if name not in store:  # a score-baseline's running average, as training left it
            constraint = constraints.get(name, torch.distributions.constraints.real)
            store.setdefault(name, torch.distributions.transform_to(constraint)(value), constraint)
            with torch.no_grad():
                store.get_param(name).unconstrained().copy_(value)
            continue
        target = store.get_param(name).unconstrained()
        if target.shape != value.shape:
            raise CheckpointError(f"checkpoint param {name!r} has shape {tuple(value.shape)}; the model makes it "
                                  f"{tuple(target.shape)}; give the checkpoint written for this model and data")
        with torch.no_grad():
            target.copy_(value.to(dtype=target.dtype, device=target.device))
    return sorted(values)
