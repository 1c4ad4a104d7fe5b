"""The batched step of :func:`pyro_vi.engine.many.fit_many`: R runs' gradients in one ``vmap`` pass.

Each run's params are one slice of tensors stacked along a leading run dimension. One step is::

    noise_r = run r's own torch.Generator: normals and uniforms, as many as one step draws
    grads, losses = vmap(grad_and_value(loss_of_one_run))(params, noise)   # (R, ...), (R,)
    Adam (or ClippedAdam) on the stacked tensors, masked per run           # elementwise, exact

* **The loss of one run** is the estimator's ``differentiable_loss`` (a pyro_vi estimator), or for
  ``Trace_ELBO`` (the default) its surrogate written without ``.item()``
  (:func:`trace_elbo_loss`: pathwise where a site rsamples, score function times the plate-level
  log-ratio elsewhere), with the run's slice of every param in the store's place
  (:mod:`pyro_vi.engine.params`): store entries, ``PyroModule`` attributes (AutoGuides) and modules
  registered with ``pyro.module`` (through ``torch.func.functional_call``).
* **Noise from a tape.** Inside the pass every Gaussian draw (torch's and Pyro's
  ``_standard_normal``) and every Gamma draw (Gamma, and Beta and Dirichlet as normalized gammas)
  reads the run's slice of a tape filled before the pass from the run's own generator. A run's
  numbers therefore do not depend on which runs share its batch, and a checkpoint holds each
  generator's state. Gammas are drawn by Marsaglia and Tsang's method from ``_GAMMA_TRIES``
  proposals (the chance that all fail is below 0.05 ** 16 per draw) with torch's own implicit
  reparameterization gradient (``_standard_gamma_grad``): the same distribution and the same
  pathwise gradient as torch's sampler, other numbers. ``torch.randn`` and ``torch.rand`` called with
  a size alone (Uniform, a guide's throwaway initial values) read the tape too. A sampler that draws
  elsewhere (a Bernoulli, ``normal_``) is caught by ``vmap(randomness="error")`` on the first step; the batch then draws
  such noise with ``randomness="different"`` from the global generator (independent runs, but a run
  alone and in a batch no longer agree): :attr:`BatchedStep.per_run_streams` says which.
* **Adam per run**: :mod:`pyro_vi.engine.many_adam`.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from typing import NamedTuple

import pyro
import torch
import torch.distributions.gamma as torch_gamma
from pyro import poutine
from pyro.distributions.util import is_identically_zero
from pyro.infer import JitTrace_ELBO, Trace_ELBO
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor, nn

from pyro_vi.engine import params

__all__ = ["BatchedStep", "CannotBatch", "loss_function", "taped_samplers", "trace_elbo_loss"]

_GAMMA_TRIES = 16  # Marsaglia-Tsang proposals per Gamma draw; each is accepted with probability > 0.95


class CannotBatch(Exception):
    """The model, loss or optimizer cannot take the batched step; the message says why (one line)."""


# -- the loss of one run -------------------------------------------------------------------------


def trace_elbo_loss(model: Callable, guide: Callable, args, kwargs, num_particles: int = 1) -> Tensor:
    """``Trace_ELBO``'s differentiable loss without ``.item()``: value -ELBO, gradient Trace_ELBO's.

    Pathwise at sites that rsample, the score function times the log-ratio of the site's plates
    elsewhere (Pyro's ``_compute_log_r``), averaged over ``num_particles`` sequential particles.
    """
    loss = 0.0
    for _ in range(num_particles):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        guide_trace, model_trace = prune_subsample_sites(guide_trace), prune_subsample_sites(model_trace)
        model_trace.compute_log_prob()
        guide_trace.compute_score_parts()
        log_p = sum(site["log_prob_sum"] for site in model_trace.nodes.values() if site["type"] == "sample")
        log_q = sum(site["log_prob_sum"] for site in guide_trace.nodes.values() if site["type"] == "sample")
        surrogate, log_r = log_p, None
        for site in guide_trace.nodes.values():
            if site["type"] != "sample":
                continue
            _, score_function, entropy_term = site["score_parts"]
            if not is_identically_zero(entropy_term):
                surrogate = surrogate - entropy_term.sum()
            if not is_identically_zero(score_function):
                log_r = params.compute_log_r(model_trace, guide_trace) if log_r is None else log_r
                surrogate = surrogate + (log_r.sum_to(site["cond_indep_stack"]) * score_function).sum()
        elbo = torch.as_tensor(log_p - log_q)
        surrogate = torch.as_tensor(surrogate)
        loss = loss - (elbo.detach() + (surrogate - surrogate.detach())) / num_particles
    return loss


def loss_function(loss) -> Callable:
    """``f(model, guide, args, kwargs) -> differentiable loss`` for the batched pass.

    Raises:
        CannotBatch: a loss whose value is not a tensor function of the params (Pyro's other ELBOs
            read values with ``.item()``), or one that keeps state between steps.
    """
    if loss is None or type(loss) in (Trace_ELBO, JitTrace_ELBO):
        particles = 1 if loss is None else loss.num_particles
        return lambda model, guide, args, kwargs: trace_elbo_loss(model, guide, args, kwargs, particles)
    if getattr(loss, "keeps_state", False):
        raise CannotBatch(f"estimator {getattr(loss, 'name', type(loss).__name__)!r} keeps state between steps (a baseline)")
    if not hasattr(loss, "differentiable_loss") or isinstance(loss, pyro.infer.ELBO) and type(loss).__module__.startswith("pyro."):
        raise CannotBatch(f"loss {type(loss).__name__} reads values with .item(); use Trace_ELBO or a pyro_vi estimator")
    return lambda model, guide, args, kwargs: loss.differentiable_loss(model, guide, *args, **kwargs)


# -- noise from a tape ---------------------------------------------------------------------------


_RANDN, _RAND = torch.randn, torch.rand  # torch's own, whatever the block has patched


class _Tape:
    """One run's noise for one step (a slice inside ``vmap``), read front to back; or, with no
    tensors, a counter of what a step draws (drawing from the global generator)."""

    def __init__(self, normals: Tensor | None = None, uniforms: Tensor | None = None):
        self.sources = (normals, uniforms)
        self.used = [0, 0]

    def take(self, kind: int, shape, dtype) -> Tensor:
        count = math.prod(shape)
        start, source = self.used[kind], self.sources[kind]
        self.used[kind] = start + count
        if source is None:
            return (_RANDN if kind == 0 else _RAND)(tuple(shape), dtype=dtype)
        if start + count > source.shape[-1]:
            raise RuntimeError("a step drew more noise than the first step did (the model's draws change from step to step)")
        return source[start:start + count].reshape(shape).to(dtype)


class _Noise:
    """Which tape the patched samplers read (``None``: torch's own samplers)."""

    tape: _Tape | None = None


def _standard_gamma(concentration: Tensor) -> Tensor:
    """Standard Gamma draws from the tape (Marsaglia-Tsang), with torch's implicit gradient."""
    tape = _Noise.tape
    if tape is None:
        return torch._standard_gamma(concentration)
    alpha = concentration.detach()
    boosted = alpha < 1  # Gamma(a) = Gamma(a + 1) U^(1/a)
    a = torch.where(boosted, alpha + 1, alpha)
    d = a - 1.0 / 3.0
    c = (9.0 * d).rsqrt()
    x = tape.take(0, (_GAMMA_TRIES, *alpha.shape), alpha.dtype)
    u = tape.take(1, (_GAMMA_TRIES + 1, *alpha.shape), alpha.dtype)
    v = (1 + c * x) ** 3
    tiny = torch.finfo(alpha.dtype).tiny
    accepted = (v > 0) & (u[:-1].clamp(min=tiny).log() < 0.5 * x * x + d - d * v + d * v.clamp(min=tiny).log())
    first = accepted.to(torch.uint8).argmax(0, keepdim=True)  # the first accepted proposal
    draw = (d * v).gather(0, first).squeeze(0)
    draw = torch.where(boosted, draw * u[-1].clamp(min=tiny).pow(1 / alpha), draw).clamp(min=tiny)
    slope = torch._standard_gamma_grad(draw, alpha)  # d draw / d alpha at fixed quantile (torch's backward)
    return draw + (concentration - alpha) * slope


def _dirichlet_rsample(self, sample_shape=()):
    shape = self._extended_shape(sample_shape)
    gammas = _standard_gamma(self.concentration.expand(shape))
    return gammas / gammas.sum(-1, keepdim=True)


def _taped(original: Callable, kind: int) -> Callable:
    """``torch.randn`` (kind 0) or ``torch.rand`` (1) reading the tape when one is set and the call
    asks for nothing but a size, dtype and device."""

    def draw(*size, **options):
        tape = _Noise.tape
        if tape is None or set(options) - {"dtype", "device"}:
            return original(*size, **options)
        shape = size[0] if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        return tape.take(kind, tuple(shape), options.get("dtype") or torch.get_default_dtype())

    return draw


@contextlib.contextmanager
def taped_samplers() -> Iterator[None]:
    """Within the block, Gaussian and Gamma/Beta/Dirichlet draws read ``_Noise.tape`` when one is
    set (torch's samplers otherwise); everything is put back after."""
    dirichlet, original_rsample = torch.distributions.Dirichlet, torch.distributions.Dirichlet.rsample
    original_gamma = torch_gamma._standard_gamma

    def normal(shape, dtype=None, device=None):
        tape = _Noise.tape
        if tape is None:
            return torch.randn(shape, dtype=dtype, device=device)
        return tape.take(0, shape, dtype or torch.get_default_dtype())

    torch_gamma._standard_gamma = _standard_gamma
    dirichlet.rsample = _dirichlet_rsample
    original_randn, original_rand = torch.randn, torch.rand
    torch.randn, torch.rand = _taped(original_randn, 0), _taped(original_rand, 1)
    try:
        with params.standard_normal_replaced(normal), warnings.catch_warnings():
            # torch's note that an op without a batching rule (_standard_gamma_grad, clamp_) loops over the runs
            warnings.filterwarnings("ignore", message="There is a performance drop")
            yield
    finally:
        torch.randn, torch.rand = original_randn, original_rand
        torch_gamma._standard_gamma = original_gamma
        dirichlet.rsample = original_rsample
        _Noise.tape = None


# -- the params as function inputs ---------------------------------------------------------------


class _Runner(nn.Module):
    """Holds the modules registered with ``pyro.module`` so ``functional_call`` swaps their parameters."""

    def __init__(self, modules: list[nn.Module]):
        super().__init__()
        self.nets = nn.ModuleList(modules)

    def forward(self, function):
        return function()


class _Swaps(NamedTuple):
    runner: _Runner
    module_keys: dict  # store name -> functional_call key (pyro.module parameters)
    pyro_module_owners: dict  # store name -> [(PyroModule, key in its _parameters)]


def _swaps(modules: dict[str, nn.Module], names: list[str]) -> _Swaps:
    """Where each param lives besides the store, for the modules recorded while the pair ran."""
    registered = [m for key, m in modules.items() if not key.startswith(params.PYRO_MODULE_PREFIX)]
    pyro_modules = {key: m for key, m in modules.items() if key.startswith(params.PYRO_MODULE_PREFIX)}
    index = {id(m): i for i, m in enumerate(registered)}
    module_owners = params.owners({str(i): m for i, m in enumerate(registered)})
    direct_owners = params.owners(pyro_modules, direct=True)
    module_keys, pyro_owners = {}, {}
    for name in names:
        tensor = params.unconstrained(name)
        if "$$$" in name and id(tensor) in module_owners:
            module, key = module_owners[id(tensor)][0]
            module_keys[name] = f"nets.{index[id(module)]}.{key}"
        elif id(tensor) in direct_owners:
            pyro_owners[name] = direct_owners[id(tensor)]
    return _Swaps(_Runner(registered), module_keys, pyro_owners)


# -- the step ------------------------------------------------------------------------------------


class BatchedStep:
    """``vmap(grad_and_value(loss of one run))`` over stacked params and per-run noise.

    Built on the param store as one run's ``pyro.param`` calls left it (names, constraints, the
    modules behind them); checked on that run before any batched pass.
    """

    def __init__(self, model, guide, args, kwargs, loss, names: list[str], modules: dict):
        self.model, self.guide, self.args, self.kwargs = model, guide, args, kwargs
        self.objective = loss_function(loss)
        self.names = names
        self.swaps = _swaps(modules, names)
        self.randomness = "error"
        self.per_run_streams = True
        self.num_normals = self.num_uniforms = 0

    def _loss(self, values: tuple[Tensor, ...]) -> Tensor:
        functional, stored, swaps = {}, {}, {}
        for name, value in zip(self.names, values):
            if name in self.swaps.module_keys:
                functional[self.swaps.module_keys[name]] = value
            stored[name] = value
            for module, key in self.swaps.pyro_module_owners.get(name, ()):
                swaps.setdefault(id(module), (module, {}))[1][key] = value
        with params.substituted(stored), params.module_parameters_swapped(swaps):
            run = lambda: self.objective(self.model, self.guide, self.args, self.kwargs)
            return torch.func.functional_call(self.swaps.runner, functional, (run,), strict=False)

    def probe(self, values: tuple[Tensor, ...]) -> None:
        """Count one step's noise and check that every param the plain loss differentiates is
        reached through its functional input, on one run's ``values``, drawing from the global
        generator (restored after).

        Raises:
            CannotBatch: a param the swap misses (its gradient would read as zero).
        """
        from pyro_vi.engine import rng

        with rng.preserved():
            plain = [params.unconstrained(name) for name in self.names]
            plain_loss = self.objective(self.model, self.guide, self.args, self.kwargs)
            by_plain = _reached(plain_loss, plain)
            leaves = tuple(v.detach().clone().requires_grad_(True) for v in values)
            tape = _Tape()
            with taped_samplers():
                _Noise.tape = tape
                with pyro.validation_enabled(False):
                    by_inputs = _reached(self._loss(leaves), leaves)
        missed = [n for n, a, b in zip(self.names, by_plain, by_inputs) if a and not b]
        if missed:
            raise CannotBatch(f"params {', '.join(missed)} are not reached through the param store or a module the step can swap")
        self.num_normals, self.num_uniforms = tape.used

    def gradients(self, values: tuple[Tensor, ...], normals: Tensor, uniforms: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        """Each run's gradients (stacked like ``values``) and loss ``(R,)``, in one batched pass
        (within :func:`taped_samplers`).

        Raises:
            CannotBatch: ``vmap`` refuses the model (data-dependent control flow, ``.item()``, ...).
        """

        def one_run(run_values, run_normals, run_uniforms):
            _Noise.tape = _Tape(run_normals, run_uniforms)
            return self._loss(run_values)

        batched = torch.func.vmap(torch.func.grad_and_value(one_run), randomness=self.randomness)
        with pyro.validation_enabled(False):
            try:
                return batched(values, normals, uniforms)
            except RuntimeError as error:
                if self.randomness == "error" and "randomness" in str(error):
                    # a sampler the tape does not cover: draw it per batch from the global generator
                    self.randomness, self.per_run_streams = "different", False
                    return torch.func.vmap(torch.func.grad_and_value(one_run), randomness="different")(values, normals, uniforms)
                raise CannotBatch(_reason(error)) from error
            finally:
                _Noise.tape = None


def _reason(error: Exception) -> str:
    """One line saying why ``vmap`` refused the step."""
    text = " ".join(str(error).split())
    if "data-dependent control flow" in text:
        return "vmap cannot follow the model (.item() or data-dependent control flow on a sampled value)"
    return text if len(text) <= 200 else text[:197] + "..."


def _reached(loss, inputs) -> list[bool]:
    if not getattr(loss, "requires_grad", False):
        return [False] * len(inputs)
    return [g is not None for g in torch.autograd.grad(loss, list(inputs), allow_unused=True)]
