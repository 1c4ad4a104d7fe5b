"""The user's own model: ``FILE.py:NAME`` functions, auto guides, posterior summaries (data files: user_data).

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
import sys
import traceback
from pathlib import Path
from typing import Callable, NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyro_vi.commands.user_data import DATA_SUFFIXES, Data, load_data, tensors_fingerprint
from pyro_vi.engine import params
from pyro_vi.errors import CheckpointError, PyroVIError

__all__ = ["AUTO_GUIDES", "DATA_SUFFIXES", "USER_FAILURES", "ModelError", "Data", "tensors_fingerprint", "Pair", "SiteSummary", "load_data", "load_function",
           "make_guide", "build", "probe", "latent_sites", "summary_rows", "estimate_elbo", "restore_params",
           "describe_failure"]  # Data, DATA_SUFFIXES, load_data, tensors_fingerprint: pyro_vi.commands.user_data


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
# What a user's model, guide or file may raise that becomes one ModelError line: any exception, and
# sys.exit (SystemExit is not an Exception; let through, it would end the command with status 0).
USER_FAILURES = (Exception, SystemExit)


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
    given += [f"{name}= of shape {tuple(getattr(value, 'shape', ()))}" for name, value in data.kwargs.items()]
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


def restore_params(path: str | os.PathLike, guide_trace=None) -> list[str]:
    """Copy the params of a ``pyro-vi fit`` checkpoint into the param store the model and guide
    created (in place, so modules keep training on them); an estimator's saved baselines come too:
    ``__baseline_avg_downstream_cost_SITE`` (Pyro's running average) of a sample site SITE of
    ``guide_trace`` (a trace of the guide), of a shape that broadcasts to the site's batch shape.

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
    baselines = _baseline_shapes(guide_trace)
    extra = sorted(name for name in values if name not in store and name not in baselines)
    if extra:
        raise CheckpointError(f"checkpoint {str(path)!r} holds params the model and guide do not create "
                              f"({', '.join(extra[:5])}); give the checkpoint pyro-vi fit wrote for this model and guide")
    for name, value in values.items():
        if name not in store and not _broadcasts(tuple(value.shape), baselines[name]):
            raise CheckpointError(f"checkpoint {str(path)!r}: baseline {name!r} has shape {tuple(value.shape)}, which does not fit "
                                  f"the site's batch shape {baselines[name]}; give the checkpoint pyro-vi fit wrote for this model and data")
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


_BASELINE_PREFIX = "__baseline_avg_downstream_cost_"  # Pyro's param-store key of a site's running average


def _baseline_shapes(guide_trace) -> dict[str, tuple[int, ...]]:
    """``{baseline param name: the site's batch shape}`` for every sample site of ``guide_trace``."""
    if guide_trace is None:
        return {}
    return {_BASELINE_PREFIX + name: tuple(site["fn"].batch_shape) for name, site in guide_trace.nodes.items()
            if site["type"] == "sample" and hasattr(site.get("fn"), "batch_shape")}


def _broadcasts(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    try:
        return tuple(torch.broadcast_shapes(shape, target)) == tuple(target)
    except RuntimeError:
        return False
