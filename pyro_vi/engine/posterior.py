"""What a fitted guide says, and whether the run that fitted it had stopped moving.

* :func:`draws`        ``num_samples`` draws of every latent site from the fitted guide, one guide call
  per draw (so any model's plates and shapes work: nothing is vectorized that the model did not
  vectorize itself); sites only the model samples are drawn by replaying the model on each guide draw,
  and listed in ``Draws.undrawn`` (not raised) when that fails
* :func:`summary`      mean, sd and 5/50/95% quantiles per site: name -> {mean, sd, q5, q50, q95}
* :func:`fitted_draws`, :func:`fitted_summary`  the same from a ``FitResult`` (its model, guide,
  arguments and params), without rerunning anything: ``result.draws()``, ``result.summary()``
* :func:`params_set_to`  the param store at given (constrained) values for a block, put back after
* :func:`convergence`  whether the smoothed ELBO still moves by more than its noise over the last
  tenth of the run
* :class:`ParamTrace`  the params (an ``AutoContinuous`` guide's loc and scale per site) recorded
  every few steps, for a trace plot; :func:`smoothed` the running mean of the ELBO beside it

Why one guide call per draw: ``pyro.infer.Predictive(model, guide=guide, parallel=False)`` still
reshapes each guide draw to the *guide's* plate nesting before replaying the model, so a site outside
every plate (``beta``, an event of 3) comes back as ``(1, 3)`` when the guide has a plate elsewhere,
and ``x @ beta`` in the model fails (``320x3 and 1x3``). Drawing from traces of the guide keeps each
site's own shape.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Callable, Iterator, Mapping

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from pyro_vi.engine import params
from pyro_vi.errors import ConfigError

__all__ = ["Draws", "draws", "summary", "fitted_draws", "fitted_summary", "params_set_to", "convergence", "smoothed",
           "ParamTrace", "QUANTILES"]

QUANTILES = {"q5": 0.05, "q50": 0.5, "q95": 0.95}
# Two-sided 99% quantile of Student's t with 8 degrees of freedom: ten batch means, a line fitted
# through them (convergence's test of "still moving").
_T_99_8 = 3.355


class Draws(dict):
    """Draws of each latent site, ``name -> (num_samples, *site shape)`` (a ``dict``), and
    ``undrawn``: the latent sites that could not be drawn, ``name -> why``."""

    def __init__(self, values: Mapping[str, Tensor], undrawn: Mapping[str, str] | None = None):
        super().__init__(values)
        self.undrawn = dict(undrawn or {})


def _latent(site) -> bool:
    return (site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
            and not site["infer"].get("is_auxiliary") and not params.is_hidden(site))


def _subsampled_plate(site) -> str | None:
    """The name of a subsampled plate the site is in (each draw would see another minibatch)."""
    for frame in site["cond_indep_stack"]:
        if frame.full_size is not None and frame.full_size != frame.size:
            return frame.name
    return None


def _failure(error: BaseException) -> str:
    message = " ".join(str(error).split()).split(" Trace Shapes:")[0] or "(no message)"
    return f"{type(error).__name__}: {message}"


def draws(model: Callable, guide: Callable, *args, num_samples: int = 1000, **kwargs) -> Draws:
    """Draw every latent site of ``model`` from the fitted ``guide``, ``num_samples`` times.

    Each draw is one call of the guide under ``poutine.trace``; a latent site of the model that the
    guide does not sample is drawn by replaying the model on that guide draw (the model runs only
    if there is such a site). Draws use the global RNG (seed it for reproducible draws) and no
    gradients.

    Args:
        model, guide: the fitted pair (the param store holds the guide's params).
        \\*args, \\*\\*kwargs: the arguments of ``model`` and ``guide`` (the data).
        num_samples: draws per site.

    Returns:
        Draws: ``name -> tensor (num_samples, *site shape)`` for every site drawn; ``.undrawn``
        names the latent sites left out and why: a site in a subsampled plate (each draw would see
        another minibatch), a model-only site when replaying the model failed, a site whose shape
        changes between draws.

    Raises:
        ConfigError: ``num_samples`` below 1.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"num_samples must be a positive integer, got {num_samples!r}")
    collected: dict[str, list[Tensor]] = {}
    undrawn: dict[str, str] = {}
    guide_names: list[str] | None = None  # known after the first draw, with the model-only sites
    model_only: list[str] = []
    with torch.no_grad():
        for index in range(num_samples):
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            if guide_names is None:
                guide_names, model_only = _sites(model, guide_trace, undrawn, args, kwargs)
            latent = {name: guide_trace.nodes[name] for name in guide_names if name in guide_trace.nodes}
            if model_only:
                try:
                    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
                    latent.update({name: model_trace.nodes[name] for name in model_only})
                except Exception as error:  # noqa: BLE001 - listed, not fatal
                    undrawn.update({name: f"replaying the model on draw {index + 1} raised {_failure(error)}"
                                    for name in model_only})
                    for name in model_only:
                        collected.pop(name, None)
                    model_only = []
            for name, site in latent.items():
                if name in undrawn:
                    continue
                plate = _subsampled_plate(site)
                if plate is not None:
                    undrawn[name] = f"in the subsampled plate {plate!r}: each draw sees another minibatch"
                    collected.pop(name, None)
                    continue
                values = collected.setdefault(name, [])
                if values and values[0].shape != site["value"].shape:
                    undrawn[name] = f"its shape changes between draws ({tuple(values[0].shape)}, then {tuple(site['value'].shape)})"
                    del collected[name]
                    continue
                values.append(site["value"].detach())
    return Draws({name: torch.stack(values) for name, values in collected.items()}, undrawn)


def _sites(model, guide_trace, undrawn: dict, args, kwargs) -> tuple[list[str], list[str]]:
    """(the guide's latent sites that are latent sites of the model, the model's latent sites the
    guide does not sample), from the model replayed on the first draw; when the model cannot run,
    every latent site of the guide, and the model's other sites (from a prior trace, if that runs)
    go to ``undrawn``."""
    guide_latent = [name for name, site in guide_trace.nodes.items() if _latent(site)]
    try:
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - listed, not fatal
        try:
            with poutine.block():
                prior = poutine.trace(model).get_trace(*args, **kwargs)
        except Exception:  # noqa: BLE001
            return guide_latent, []
        reason = f"replaying the model on the guide's draw raised {_failure(error)}"
        undrawn.update({name: reason for name, site in prior.nodes.items() if _latent(site) and name not in guide_latent})
        return guide_latent, []
    model_latent = [name for name, site in model_trace.nodes.items() if _latent(site)]
    return ([name for name in guide_latent if name in model_latent],
            [name for name in model_latent if name not in guide_latent])


def summary(draws: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """Mean, sd and 5/50/95% quantiles of each site's draws, over the first (draw) dimension.

    Args:
        draws: ``name -> (num_samples, *site shape)``, e.g. from :func:`draws`.

    Returns:
        ``name -> {"mean", "sd", "q5", "q50", "q95"}``, each a float64 CPU tensor of the site's
        shape (``sd`` is 0 for a single draw).
    """
    table = {}
    levels = torch.tensor(list(QUANTILES.values()), dtype=torch.float64)
    for name, values in draws.items():
        values = values.detach().to("cpu", torch.float64)
        num_samples, shape = values.shape[0], values.shape[1:]
        flat = values.reshape(num_samples, -1)  # (num_samples, elements)
        quantiles = torch.quantile(flat, levels, dim=0).reshape(len(levels), *shape)
        table[name] = {
            "mean": values.mean(0),
            "sd": values.std(0) if num_samples > 1 else torch.zeros(shape, dtype=torch.float64),
            **{key: quantiles[i] for i, key in enumerate(QUANTILES)},
        }
    return table


@contextlib.contextmanager
def params_set_to(values: Mapping[str, Tensor], create: Callable[[], object] | None = None) -> Iterator[None]:
    """The param store's params at ``values`` (constrained, as ``FitResult.params`` holds them) inside
    the block, written in place (an ``nn.Module``'s or ``PyroModule``'s own tensors see them); the
    previous values are put back after, and params the block created are removed.

    Args:
        values: name -> constrained value.
        create: called first (without gradients, its trace discarded) to create params that are
            not in the store (e.g. the guide, after ``pyro.clear_param_store()``).
    """
    from torch.distributions import transform_to

    store = pyro.get_param_store()
    before = set(store.keys())
    if create is not None and any(name not in store for name in values):
        with torch.no_grad(), poutine.block():
            create()
    constraints = store.get_state()["constraints"]
    saved = {}
    try:
        with torch.no_grad():
            for name, value in values.items():
                if name not in store:
                    continue
                target = store.get_param(name).unconstrained()
                if torch.equal(store.get_param(name).detach(), value.to(target.device)):
                    continue  # already there (right after fit): nothing to do, nothing to round
                saved[name] = target.detach().clone()
                target.copy_(transform_to(constraints[name]).inv(value.to(target.device, target.dtype)))
        yield
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                store.get_param(name).unconstrained().copy_(value)
        for name in set(store.keys()) - before:
            del store[name]


def fitted_draws(result, num_samples: int = 1000) -> Draws:
    """:func:`draws` from a ``FitResult``: its guide at its params (``result.params``, whatever the
    param store holds now), called with its arguments (a ``PerStep`` argument at the last step).

    Args:
        result: a ``pyro_vi.FitResult`` (``model``, ``guide``, ``args``, ``kwargs``, ``params``, ``steps``).
        num_samples: draws per site.

    Raises:
        ConfigError: the result does not hold its model and guide, or ``num_samples`` below 1.
    """
    from pyro_vi.engine.subsample import step_values

    if getattr(result, "model", None) is None or getattr(result, "guide", None) is None:
        raise ConfigError("this FitResult does not hold its model and guide; call "
                          "pyro_vi.engine.posterior.draws(model, guide, *args) with them")
    args, kwargs = step_values(result.args, result.kwargs, max(result.steps - 1, 0))
    with params_set_to(result.params, create=lambda: result.guide(*args, **kwargs)):
        return draws(result.model, result.guide, *args, num_samples=num_samples, **kwargs)


def fitted_summary(result, num_samples: int = 1000) -> dict[str, dict[str, Tensor]]:
    """:func:`summary` of :func:`fitted_draws`: name -> {mean, sd, q5, q50, q95} (the sites that
    could not be drawn are in ``fitted_draws(result).undrawn``)."""
    return summary(fitted_draws(result, num_samples))


def smoothed(losses, window: int | None = None) -> list[float]:
    """The running mean of the ELBO (``-loss``) over ``window`` steps (default a fiftieth of the
    run, at least 1), skipped (NaN) steps left out; one value per step from step ``window`` on."""
    values = [-float(x) for x in losses]
    window = max(1, len(values) // 50) if window is None else max(1, int(window))
    out, total, count, queue = [], 0.0, 0, []
    for value in values:
        queue.append(value)
        if math.isfinite(value):
            total, count = total + value, count + 1
        if len(queue) > window:
            old = queue.pop(0)
            if math.isfinite(old):
                total, count = total - old, count - 1
        if len(queue) == window:
            out.append(total / count if count else math.nan)
    return out


def convergence(losses, fraction: float = 0.1, min_steps: int = 20) -> dict:
    """Whether the smoothed ELBO still moves by more than its noise over the last ``fraction`` of the run.

    The window (the last tenth, at least ``min_steps`` steps) is cut into ten batches; a line is
    fitted through the ten batch means (batch means absorb the step-to-step correlation of SVI's
    loss). The run counts as still moving when the line's change across the window exceeds its
    standard error times Student's t(8) two-sided 99% quantile (3.36): a stationary run is called
    moving about one time in a hundred.

    Args:
        losses: the loss (``-ELBO``) of every step; NaN (skipped) steps are left out.
        fraction: the part of the run tested.
        min_steps: the smallest window; shorter runs get ``converged: None``.

    Returns:
        A dict: ``converged`` (bool, or None when the run is too short to tell), ``window`` (steps
        tested), ``elbo_change`` (change of the fitted ELBO across the window), ``noise`` (its
        standard error), ``threshold`` (the change counted as moving), ``smoothed_elbo`` (mean ELBO of
        the last batch) and ``note`` (one line saying so).
    """
    values = torch.tensor([float(x) for x in losses if math.isfinite(float(x))], dtype=torch.float64)
    window = max(min_steps, math.ceil(fraction * len(values)))
    result = {"converged": None, "window": int(min(window, len(values))), "elbo_change": None, "noise": None,
              "threshold": None, "smoothed_elbo": None}
    if len(values) < window:
        result["note"] = (f"too few steps to tell ({len(values)} finite losses; the test needs {window}): "
                          "run longer to see whether the ELBO has settled")
        return result
    batches = 10
    usable = window - window % batches
    means = -values[-usable:].reshape(batches, -1).mean(1)  # the ELBO's batch means, (batches,)
    x = torch.arange(batches, dtype=torch.float64) - (batches - 1) / 2
    slope = float((x * (means - means.mean())).sum() / (x * x).sum())
    residual = means - means.mean() - slope * x
    slope_error = math.sqrt(float((residual * residual).sum()) / (batches - 2) / float((x * x).sum()))
    change, noise = slope * (batches - 1), slope_error * (batches - 1)
    threshold = max(_T_99_8 * noise, 1e-9 * max(1.0, abs(float(means.mean()))))  # float rounding of a flat run
    converged = abs(change) <= threshold
    direction = "rises" if change > 0 else "falls"
    if converged:
        note = (f"converged: over the last {usable} steps the smoothed ELBO moved by {change:+.3g}, within its noise "
                f"(threshold {threshold:.3g})")
    else:
        note = (f"not converged: over the last {usable} steps the smoothed ELBO still {direction} by {change:+.3g}, "
                f"more than its noise (threshold {threshold:.3g}); "
                + ("train longer or raise the learning rate" if change > 0 else "lower the learning rate"))
    result.update(converged=bool(converged), window=usable, elbo_change=change, noise=noise, threshold=threshold,
                  smoothed_elbo=float(means[-1]), note=note)
    return result


class ParamTrace:
    """The params' values against steps: every param in the store (first ``max_elements`` elements
    of each), an ``AutoContinuous`` guide's flat params replaced by its loc and scale per site.

    Call :meth:`record` from ``fit``'s callback every few steps; ``steps`` and ``values``
    (``name -> one list of floats per recorded step``) are plain lists, so :meth:`state` can travel
    in a checkpoint's ``state`` and a resumed run keeps its earlier trace (:meth:`load`).

    Args:
        guide: the guide (for an ``AutoContinuous`` guide's per-site loc and scale), or ``None``.
        max_elements: elements kept per param (a trace plot shows a few lines per panel).
    """

    def __init__(self, guide: Callable | None = None, max_elements: int = 8):
        while isinstance(guide, functools.partial):  # data bound by name: the auto guide is inside
            guide = guide.func
        self.guide = guide
        self.max_elements = max_elements
        self.steps: list[int] = []
        self.values: dict[str, list[list[float]]] = {}
        self.sizes: dict[str, int] = {}

    def _current(self) -> dict[str, Tensor]:
        current = {}
        sites = params.auto_continuous_loc_scale(self.guide)
        prefix = params.module_name(self.guide) if sites is not None else None
        for name, value in pyro.get_param_store().items():
            if prefix is None or not name.startswith(prefix + "."):
                current[name] = value
        for site, (loc, scale) in (sites or {}).items():
            current[f"{site} loc"], current[f"{site} scale"] = loc, scale
        return current

    def record(self, step: int) -> None:
        """Append the values at ``step``."""
        with torch.no_grad():
            current = self._current()
        for name, value in current.items():
            flat = value.detach().reshape(-1)
            self.sizes[name] = flat.numel()
            row = flat[: self.max_elements].to("cpu", torch.float64).tolist()
            self.values.setdefault(name, [[math.nan] * len(row) for _ in self.steps]).append(row)
        for name, rows in self.values.items():
            if name not in current:
                rows.append([math.nan] * len(rows[-1]) if rows else [])
        self.steps.append(int(step))

    def state(self) -> dict:
        """The trace as plain lists (for ``fit``'s ``state``)."""
        return {"steps": list(self.steps), "values": {k: [list(r) for r in v] for k, v in self.values.items()},
                "sizes": dict(self.sizes)}

    def load(self, state: Mapping) -> None:
        """Continue the trace of :meth:`state` (a resumed run)."""
        self.steps = [int(step) for step in state.get("steps", [])]
        self.values = {name: [list(row) for row in rows] for name, rows in state.get("values", {}).items()}
        self.sizes = {name: int(size) for name, size in state.get("sizes", {}).items()}
