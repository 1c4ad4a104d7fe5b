"""What ``fit(..., compile=True)`` covers (issue 14): PyroModule/PyroSample models, Beta, Gamma and
Dirichlet guides, code that detaches; each compiled run ends with the plain run's parameters, bit for
bit, and prints no warning. Tutorial pairs from tests/tutorial_models, code as the tutorials write it.

Bit for bit holds because the recorded program runs the same tensor operations, in the same order,
on the same random draws as the plain step (torch's own samplers are recorded, not replaced), so
every check here is ``torch.equal``: no tolerance to derive.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO
from pyro.infer import autoguide as autoguides

import pyro_vi
from pyro_vi.engine.compile import record as compiled
from pyro_vi.engine.compile import samplers
from pyro_vi.errors import ConfigError
from tutorial_models import load


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second intra-op thread only contends with other jobs
    yield
    torch.set_num_threads(previous)


def _plain_and_compiled(make_pair, args, num_steps=25, loss=None, lr=0.01):
    """The params after ``num_steps`` of ``fit`` without and with compile, from seed 0, and the
    warnings the compiled run raised (every warning recorded, none filtered)."""
    finals, caught = {}, []
    for flag in (False, True):
        pyro.clear_param_store()
        model, guide = make_pair()
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            result = pyro_vi.fit(model, guide, *args, num_steps=num_steps, compile=flag, seed=0, progress=False,
                                 loss=loss() if loss else None, optim=pyro_vi.engine.optim.Adam({"lr": lr}))
        finals[flag] = result.params
        if flag:
            caught = [f"{w.category.__name__}: {w.message}" for w in records]
    return finals[False], finals[True], caught


def _assert_same(plain, fast):
    assert plain.keys() == fast.keys() and plain
    for name in plain:
        assert torch.equal(plain[name], fast[name]), (name, (plain[name] - fast[name]).abs().max())


def _regression_data():
    data = load("bayesian_regression").make_data()
    return torch.as_tensor(data["x"]), torch.as_tensor(data["y"])


@pytest.mark.parametrize("autoguide", ["AutoDiagonalNormal", "AutoNormal", "AutoMultivariateNormal"])
def test_pyro_module_regression_compiles_to_the_plain_run_bit_for_bit(autoguide):
    """The Bayesian regression tutorial (PyroModule[nn.Linear], PyroSample priors). It was refused
    ("reads a tensor's value"): the PyroSample priors are built while Pyro's validation is on and
    keep ``validate_args``, so their ``log_prob`` checks the value's support, which reads it. The
    recording runs without sample validation (the first, plain step validated the pair)."""

    def make_pair():
        module = load("bayesian_regression")
        return module.model, getattr(autoguides, autoguide)(module.model)

    plain, fast, caught = _plain_and_compiled(make_pair, _regression_data())
    _assert_same(plain, fast)  # AutoNormal's locs also pin the kept same-shape expands (see _simplify)
    assert caught == []


@pytest.mark.parametrize("name", ["coin", "eight_schools"])
def test_tutorial_pairs_compile_to_the_plain_run_bit_for_bit(name):
    """The coin of SVI Part I (a Beta guide: torch's Dirichlet sampler, an autograd.Function, was
    recorded as ``_sample_dirichlet``, which has no derivative) and eight schools."""

    def make_pair():
        module = load(name)
        return module.model, module.guide

    args = [torch.as_tensor(v) for v in load(name).make_data().values()]
    plain, fast, caught = _plain_and_compiled(make_pair, args)
    _assert_same(plain, fast)
    assert caught == []


def _gamma_dirichlet_pair():
    """A Gamma rate and Dirichlet weights, both latent, both guided by their own families."""

    def model(x):
        rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
        weights = pyro.sample("weights", dist.Dirichlet(torch.ones(3)))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Exponential(rate * weights).to_event(1), obs=x)

    def guide(x):
        shape = pyro.param("shape", torch.tensor(2.0), constraint=constraints.positive)
        rate = pyro.param("rate_of_rate", torch.tensor(1.0), constraint=constraints.positive)
        concentration = pyro.param("concentration", torch.ones(3), constraint=constraints.positive)
        pyro.sample("rate", dist.Gamma(shape, rate))
        pyro.sample("weights", dist.Dirichlet(concentration))

    return model, guide


def test_gamma_and_dirichlet_guides_compile_to_the_plain_run_bit_for_bit():
    x = torch.distributions.Exponential(torch.tensor([1.0, 2.0, 4.0])).sample((20,))
    plain, fast, caught = _plain_and_compiled(_gamma_dirichlet_pair, (x,))
    _assert_same(plain, fast)
    assert caught == []


@pytest.mark.parametrize("shape", [(2,), (4, 3)])
def test_traceable_dirichlet_is_torchs_draw_and_gradient(shape):
    """samplers.dirichlet_rsample: the same draw from the same RNG state as torch's Dirichlet, and
    the same vector-Jacobian product (torch's _Dirichlet_backward), bit for bit; Beta through it."""
    generator = torch.Generator().manual_seed(1)
    alpha = (torch.rand(shape, generator=generator) * 3 + 0.2).requires_grad_()
    beta = (torch.rand(shape, generator=generator) * 3 + 0.2).requires_grad_()
    weights = torch.randn(shape, generator=generator)

    def draw_and_grad(sample):
        torch.manual_seed(7)
        value = sample()
        return value.detach(), torch.autograd.grad((value * weights).sum(), [alpha, beta], allow_unused=True)

    want, want_grad = draw_and_grad(lambda: torch.distributions.Dirichlet(alpha).rsample())
    got, got_grad = draw_and_grad(lambda: samplers.dirichlet_rsample(alpha))
    assert torch.equal(got, want) and torch.equal(got_grad[0], want_grad[0])
    want, want_grad = draw_and_grad(lambda: dist.Beta(alpha, beta).rsample())
    with samplers.traceable():
        got, got_grad = draw_and_grad(lambda: dist.Beta(alpha, beta).rsample())
    assert torch.equal(got, want) and all(torch.equal(g, w) for g, w in zip(got_grad, want_grad))
    assert torch.distributions.dirichlet._Dirichlet is not samplers._TraceableDirichlet  # put back


def test_a_detached_param_stays_detached_in_the_recording():
    """A guide that detaches (here its scale) gets no gradient there on the plain path; a recording
    below autograd turned ``detach`` into ``alias`` and sent one (refused by the compile-time check).
    The recording keeps ``detach`` and ``no_grad`` (make_fx pre_dispatch)."""

    def model(x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.tensor(0.0))
        scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
        with torch.no_grad():
            shift = loc * 0.5  # read under no_grad: a constant to autograd
        pyro.sample("z", dist.Normal(loc + shift, scale.detach()))

    x = torch.randn(10) + 2.0
    plain, fast, caught = _plain_and_compiled(lambda: (model, guide), (x,), num_steps=10, lr=0.1)
    _assert_same(plain, fast)
    assert plain["scale"] == 1.0  # never stepped: no gradient reached it, on either path
    assert caught == []


def test_can_compile_names_what_it_refuses_in_one_line():
    x = torch.randn(3)
    assert compiled.can_compile(None, None, (x,), Trace_ELBO()) is None
    assert compiled.can_compile(None, None, (x,), None) is None
    for loss, cause in [
        (TraceEnum_ELBO(num_particles=2, vectorize_particles=True), "vectorize"),
        (Trace_ELBO(num_particles=2, vectorize_particles=True), "vectorize"),
    ]:
        reason = compiled.can_compile(None, None, (x,), loss)
        assert reason is not None and cause in reason and "\n" not in reason


def test_compiled_module_reads_no_pyro_internals():
    """Pyro's internals (the store's dicts, pyro.module) are reached through engine.params only."""
    source = (Path(compiled.__file__)).read_text()
    assert not re.findall(r"store\._|_params\b|pyro\.module = ", source)


def _coin_pair():
    module = load("coin")
    return module.model, module.guide


def _discrete_pair():
    """A Beta weight and a Bernoulli label per datapoint, both in the guide: score-function sites."""

    def model(x):
        p = pyro.sample("p", dist.Beta(2.0, 2.0))
        with pyro.plate("data", x.shape[0]):
            label = pyro.sample("label", dist.Bernoulli(p))
            pyro.sample("obs", dist.Normal(3.0 * label, 1.0), obs=x)

    def guide(x):
        a = pyro.param("a", torch.tensor(2.0), constraint=constraints.positive)
        b = pyro.param("b", torch.tensor(2.0), constraint=constraints.positive)
        probs = pyro.param("probs", torch.full((x.shape[0],), 0.5), constraint=constraints.unit_interval)
        pyro.sample("p", dist.Beta(a, b))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("label", dist.Bernoulli(probs))

    return model, guide


_COIN_DATA = (torch.as_tensor(load("coin").make_data()["data"]),)
_DISCRETE_DATA = (torch.randn(20, generator=torch.Generator().manual_seed(0)) + 1.5,)


@pytest.mark.parametrize(
    "estimator, make_pair, args",
    [(name, _coin_pair, _COIN_DATA) for name in ("reparam", "stl", "analytic-kl", "score", "score-naive", "rloo",
                                                  "score-graph", "iwae", "dreg")]
    + [(name, _discrete_pair, _DISCRETE_DATA) for name in ("score", "rloo", "score-graph", "score-nn-baseline", "gumbel")],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_pyro_vi_estimators_compile_to_the_plain_run_bit_for_bit(estimator, make_pair, args):
    """Score-function estimators included: their surrogates are tensor operations of the traces, the
    detach() in them is kept by the recording, and an estimator's own params (score-nn-baseline's
    networks) are found by running the loss itself once."""
    num_particles = 3 if estimator in ("rloo", "iwae", "dreg") else 1
    loss = lambda: pyro_vi.estimators.get_estimator(estimator, num_particles=num_particles)  # noqa: E731
    assert loss().not_recordable is None and compiled.can_compile(None, None, (), loss()) is None
    plain, fast, caught = _plain_and_compiled(make_pair, args, num_steps=10, loss=loss)
    _assert_same(plain, fast)
    assert caught == []


def test_enumerated_gmm_tutorial_compiles_to_the_plain_run_bit_for_bit():
    """TraceEnum_ELBO (and the enum estimator) on the GMM tutorial: Pyro's Dice contraction reads
    ``mask.all()`` (are all enumerated probabilities positive), recorded as a guard."""
    module = load("gmm")
    args = (torch.as_tensor(module.make_data()["data"]),)

    def make_pair():
        fresh = load("gmm")
        return fresh.model, fresh.guide

    for loss in (lambda: TraceEnum_ELBO(max_plate_nesting=1), lambda: pyro_vi.estimators.get_estimator("enum")):
        plain, fast, caught = _plain_and_compiled(make_pair, args, num_steps=20, loss=loss, lr=0.1)
        _assert_same(plain, fast)
        assert caught == []


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_enumerated_mixture_with_the_map_guide_compiles_to_the_plain_run_bit_for_bit(covariance):
    """pyro_vi.mixture's enumerated model with its MAP guide (AutoDelta), as run_svi trains it."""
    from pyro_vi.mixture import em as mixture_em
    from pyro_vi.mixture import model as gmm

    generator = torch.Generator().manual_seed(0)
    data = torch.cat([torch.randn(100, 2, generator=generator) + 3, torch.randn(100, 2, generator=generator) - 3])
    initial = mixture_em.initialize(data, 3, covariance, "kmeans++", torch.Generator().manual_seed(1), 1e-6)

    def make_pair():  # the guide trains its initial tensors in place: each run gets its own copy
        fresh = type(initial)(*[v.clone() if isinstance(v, torch.Tensor) else v for v in initial])
        return gmm.enumerated_model, gmm.make_map_guide(fresh)

    plain, fast, caught = _plain_and_compiled(make_pair, (data, 3, covariance, None), num_steps=20,
                                              loss=lambda: TraceEnum_ELBO(max_plate_nesting=1), lr=0.05)
    _assert_same(plain, fast)
    assert caught == []


def test_what_compile_refuses_is_named_in_one_line_and_fit_refuses_it():
    from pyro.infer import TraceMeanField_ELBO

    x = _DISCRETE_DATA[0]
    for loss, cause in [
        (pyro_vi.estimators.get_estimator("score-baseline"), "decaying-average baselines are state"),
        (TraceMeanField_ELBO(), "not TraceMeanField_ELBO"),
        (TraceEnum_ELBO(num_particles=2, vectorize_particles=True), "TraceEnum_ELBO(vectorize_particles=False)"),
    ]:
        reason = compiled.can_compile(None, None, (x,), loss)
        assert reason is not None and cause in reason and "\n" not in reason, reason
    model, guide = _discrete_pair()
    with pytest.raises(ConfigError, match="decaying-average baselines are state"):
        pyro_vi.fit(model, guide, x, num_steps=3, loss=pyro_vi.estimators.get_estimator("score-baseline"),
                    compile=True, progress=False)


def _steps_by_hand(make_pair, args, loss, num_steps, joint):
    """A fit-like loop: a first plain step (creates the params), then ``num_steps`` steps of either
    ``loss.loss_and_grads`` (plain) or ``CompiledLoss.loss_and_grads`` (the joint program), each
    followed by Adam and dropped gradients. Returns every param, unconstrained."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)  # before the pair: a network draws its initial weights
    model, guide = make_pair()
    optim = pyro.optim.Adam({"lr": 0.02})
    loss.loss_and_grads(model, guide, *args)
    params = [value for _, value in pyro.get_param_store().named_parameters()]
    optim([p for p in params if p.grad is not None])
    for p in params:
        p.grad = None
    program = compiled.compile_loss(model, guide, args, loss) if joint else None
    values = []
    for _ in range(num_steps):
        value = program.loss_and_grads(*args) if joint else loss.loss_and_grads(model, guide, *args)
        values.append(float(value))
        optim([p for p in params if p.grad is not None])
        for p in params:
            p.grad = None
    return {name: value.detach().clone() for name, value in pyro.get_param_store().named_parameters()}, values, program


def _vae_pair():
    vae = pyro_vi.VAE(16, z_dim=2, hidden_dims=(8,))
    return vae.model, vae.guide


_VAE_ARGS = ((torch.rand(4, 16, generator=torch.Generator().manual_seed(0)) < 0.5).float(), torch.arange(4), 100,
             torch.tensor(0.5))


@pytest.mark.parametrize(
    "case",
    ["vae", "regression-autonormal", "coin", "gmm-enum", "score-discrete", "rloo-discrete"],
)
def test_joint_program_loss_and_grads_trains_as_the_plain_loss_bit_for_bit(case):
    """CompiledLoss.loss_and_grads (forward and backward recorded as one program, replayed without
    the autograd engine) takes the plain run's steps exactly: same losses, same parameters."""
    if case == "vae":
        make_pair, args, loss = _vae_pair, _VAE_ARGS, Trace_ELBO()
    elif case == "regression-autonormal":
        def make_pair():
            module = load("bayesian_regression")
            return module.model, autoguides.AutoNormal(module.model)
        args, loss = _regression_data(), Trace_ELBO()
    elif case == "coin":
        make_pair, args, loss = _coin_pair, _COIN_DATA, Trace_ELBO()
    elif case == "gmm-enum":
        def make_pair():
            module = load("gmm")
            return module.model, module.guide
        args, loss = (torch.as_tensor(load("gmm").make_data()["data"]),), TraceEnum_ELBO(max_plate_nesting=1)
    else:
        name = case.split("-")[0]
        make_pair, args = _discrete_pair, _DISCRETE_DATA
        loss = pyro_vi.estimators.get_estimator(name, num_particles=3 if name == "rloo" else 1)
    plain, plain_values, _ = _steps_by_hand(make_pair, args, loss, 15, joint=False)
    fast, fast_values, program = _steps_by_hand(make_pair, args, loss, 15, joint=True)
    assert program._joint is not None and program.fallbacks == 0
    # The loss values too: Trace_ELBO's summed from the program's site terms as Pyro sums them (in
    # double precision), the others' the same float32 value.
    assert fast_values == plain_values
    _assert_same(plain, fast)


def test_joint_program_falls_back_to_the_plain_step_when_a_guard_differs():
    """The branching model: on a batch taking the other branch, loss_and_grads runs the plain loss
    from the same RNG state and its backward; the gradients are the plain ones."""

    def model(x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        scale = 1.0 if x.sum() > 0 else 2.0  # structure read off the data
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(z, scale), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.tensor(0.0))
        scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
        pyro.sample("z", dist.Normal(loc, scale))

    positive = torch.rand(6) + 0.5
    Trace_ELBO().loss_and_grads(model, guide, positive)
    program = compiled.compile_loss(model, guide, (positive,))
    for p in program.params:
        p.grad = None
    for seed, batch in enumerate([positive, -positive]):
        torch.manual_seed(seed)
        value = program.loss_and_grads(batch)
        got = [p.grad.clone() for p in program.params]
        for p in program.params:
            p.grad = None
        torch.manual_seed(seed)
        want_value = Trace_ELBO().differentiable_loss(model, guide, batch)
        want = torch.autograd.grad(want_value, program.params)
        assert value == pytest.approx(float(want_value.detach()), rel=1e-6, abs=1e-6)  # Trace_ELBO's double vs float32
        assert all(torch.allclose(g, w, rtol=1e-5, atol=1e-6) for g, w in zip(got, want))
    assert program.fallbacks == 1


@pytest.mark.parametrize("num_particles", [1, 3])
@pytest.mark.parametrize("make_pair, args", [(_discrete_pair, _DISCRETE_DATA), (_coin_pair, _COIN_DATA)],
                         ids=["score-function-sites", "coin"])
def test_tracegraph_elbo_compiles_to_the_plain_run_bit_for_bit(make_pair, args, num_particles):
    """TraceGraph_ELBO (once refused: it reads its loss with .item()): its Rao-Blackwellized surrogate
    recorded, its loss returned as the float of the same float32 sum; the run's losses and params
    are the plain run's, bit for bit, with Bernoulli (score-function) sites and a Beta guide."""
    runs = {}
    for flag in (False, True):
        pyro.clear_param_store()
        model, guide = make_pair()
        runs[flag] = pyro_vi.fit(model, guide, *args, num_steps=25, compile=flag, seed=0, progress=False,
                                 loss=TraceGraph_ELBO(num_particles=num_particles), optim=pyro_vi.engine.optim.Adam({"lr": 0.05}))
    assert runs[True].compiled_steps == 24
    assert runs[True].losses == runs[False].losses
    _assert_same(runs[False].params, runs[True].params)


def test_tracegraph_elbo_with_a_decaying_average_baseline_is_refused_in_one_line_and_runs_plain_by_default(monkeypatch):
    """SVI Part III's coin: its decaying-average baseline is param-store state each step rewrites.
    The default (told that 3 steps are a long run) tries to record, is refused, and stays plain."""
    from pyro_vi.engine.compile import policy as autocompile

    monkeypatch.setattr(autocompile, "AUTO_MIN_STEPS", 2)
    module = load("coin_nonreparam")
    pyro.clear_param_store()
    with pytest.raises(ConfigError, match="decaying-average baseline at site 'latent_fairness'"):
        pyro_vi.fit(module.model, module.guide, True, num_steps=3, loss=TraceGraph_ELBO(), compile=True, progress=False)
    runs = {}
    for flag in (None, False):
        pyro.clear_param_store()
        runs[flag] = pyro_vi.fit(module.model, module.guide, True, num_steps=3, loss=TraceGraph_ELBO(), compile=flag,
                                 seed=0, progress=False)
    assert runs[None].compiled_steps == 0 and runs[None].losses == runs[False].losses
