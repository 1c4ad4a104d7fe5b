"""``pyro_vi.fit``'s default step is ``pyro.infer.SVI.step``, bit for bit, on the models Pyro users
write that a recorded step would get wrong: a Python branch on a sampled value reading a different
param in each branch, a model that changes with its own call count or with a global a callback
sets, a param read without a gradient in some steps, and Pyro programs generated at random.

Each case runs the same model/guide through ``pyro_vi.fit`` (default options) and through
``pyro.infer.SVI`` from the same seed with the same loss and optimizer, then compares every loss and
every param with ``==``/``torch.equal``. ``compile="auto"`` (opt-in, jax.jit's contract) is held to
the same equality where the contract holds (no Python state), and must report its fall-backs.
"""

from __future__ import annotations

import random

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO

import pyro_vi
from pyro_vi.engine.compile import policy


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only contend on the shared cores
    yield
    torch.set_num_threads(previous)


def run_svi(model, guide, num_steps, *args, lr=0.01, seed=0, loss=Trace_ELBO, after_step=None):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), loss())
    losses = []
    for step in range(1, num_steps + 1):
        losses.append(svi.step(*args))
        if after_step is not None:
            after_step(step, losses[-1])
    return losses, {name: value.detach().clone() for name, value in pyro.get_param_store().items()}


def run_fit(model, guide, num_steps, *args, lr=0.01, seed=0, loss=Trace_ELBO, after_step=None, **options):
    pyro.clear_param_store()
    result = pyro_vi.fit(model, guide, *args, num_steps=num_steps, optim=pyro.optim.Adam({"lr": lr}), loss=loss(),
                         seed=seed, progress=False, callback=after_step, **options)
    return result.losses, result.params, result


def assert_same(svi_run, fit_run):
    (svi_losses, svi_params), (fit_losses, fit_params) = svi_run, fit_run[:2]
    assert sorted(fit_params) == sorted(svi_params)
    for name, value in svi_params.items():
        assert torch.equal(fit_params[name], value), f"param {name!r}: fit {fit_params[name]} vs SVI {value}"
    assert fit_losses == svi_losses


# --------------------------------------------------------------------------------------------
# 1. A param read under stochastic control flow.


def branch_model(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    if z > 0:
        s = pyro.param("s_pos", torch.tensor(1.0), constraint=constraints.positive)
    else:
        s = pyro.param("s_neg", torch.tensor(1.0), constraint=constraints.positive)
    pyro.sample("x", dist.Normal(z, s), obs=x)


def branch_guide(x):
    pyro.sample("z", dist.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0))


@pytest.mark.parametrize("compile", [None, "auto"])
def test_a_param_read_in_one_branch_of_a_sampled_value_is_trained_as_svi_trains_it(compile, monkeypatch):
    """Issue 21's case 1 (the old default recorded runs of 1000+ steps and froze ``s_neg`` at its
    initial value; here "auto" records from 10 steps on). The default is SVI's step; ``"auto"``
    replays with a guard on ``z > 0`` and takes the differing steps plain, stepping the params that
    plain run read: also SVI's run."""
    monkeypatch.setattr(policy, "AUTO_MIN_STEPS", 10)
    x = torch.tensor(0.5)
    steps = 1100 if compile is None else 400  # the default: past the old default's 1000-step recording threshold
    expected = run_svi(branch_model, branch_guide, steps, x, lr=0.03)
    got = run_fit(branch_model, branch_guide, steps, x, lr=0.03, compile=compile)
    assert_same(expected, got)
    assert abs(float(expected[1]["s_neg"]) - 1.0) > 0.05  # both params really move under SVI
    report = got[2].compile
    if compile is None:
        assert report.mode is False and report.compiled_steps == 0 and report.plain_steps == steps
    else:
        assert report.compiled_steps > 0 and report.compiled_steps + report.plain_steps == steps


# --------------------------------------------------------------------------------------------
# 2. Python state: a model that changes with its own call count, a global a callback sets.


def test_a_model_that_tempers_itself_after_300_calls_is_fit_as_svi_fits_it():
    """The old default called such a model 15 times in 2000 steps and landed on the untempered posterior."""

    def make():
        calls = [0]

        def model(x):
            calls[0] += 1
            scale = 1.0 if calls[0] <= 300 else 4.0
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            with pyro.plate("data", x.shape[0]):
                pyro.sample("obs", dist.Normal(z, scale), obs=x)

        def guide(x):
            loc = pyro.param("loc", torch.tensor(0.0))
            scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
            pyro.sample("z", dist.Normal(loc, scale))

        return model, guide

    x = torch.full((20,), 2.0)
    # 1100 steps: past the old default's 1000-step recording threshold, where it went wrong
    expected = run_svi(*make(), 1100, x, lr=0.05)
    assert_same(expected, run_fit(*make(), 1100, x, lr=0.05))
    # the tempered posterior: Normal-Normal conjugacy, precision 1 + 20 / 16
    assert abs(float(expected[1]["loc"]) - 40 / 16 / (1 + 20 / 16)) < 0.1


def test_a_global_set_by_a_callback_is_read_by_every_step():
    weight = [1.0]

    def model(x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]), pyro.poutine.scale(scale=weight[0]):
            pyro.sample("obs", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        pyro.sample("z", dist.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0))

    def anneal(step, loss):
        weight[0] = min(1.0, step / 150)

    x = torch.full((10,), 1.0)
    weight[0] = 1.0
    expected = run_svi(model, guide, 300, x, after_step=anneal)
    weight[0] = 1.0
    assert_same(expected, run_fit(model, guide, 300, x, after_step=anneal))


# --------------------------------------------------------------------------------------------
# 3. A param read without a gradient in some steps: SVI zeroes its .grad, Adam still moves it.


def test_a_param_read_without_a_gradient_is_stepped_as_svi_steps_it():
    calls = [0]

    def model():
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(0.5))

    def guide():
        calls[0] += 1
        loc = pyro.param("loc", torch.tensor(0.0))
        w = pyro.param("w", torch.tensor(1.0))
        scale = w.exp() if calls[0] % 3 == 0 else w.detach().exp()  # a gradient every third step only
        pyro.sample("z", dist.Normal(loc, scale))

    expected = run_svi(model, guide, 50)
    calls[0] = 0
    got = run_fit(model, guide, 50)
    assert_same(expected, got)


def test_a_param_first_read_late_and_one_read_only_sometimes_match_svi():
    """A param created at step 7 (Adam's state starts there, as SVI's), and one read every other step."""
    calls = [0]

    def model():
        calls[0] += 1
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        shift = pyro.param("shift", torch.tensor(0.0)) if calls[0] >= 7 else 0.0
        b = pyro.param("b", torch.tensor(0.3)) if calls[0] % 2 else 0.0
        pyro.sample("x", dist.Normal(z + shift + b, 1.0), obs=torch.tensor(0.5))

    def guide():
        pyro.sample("z", dist.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0))

    expected = run_svi(model, guide, 40)
    calls[0] = 0
    assert_same(expected, run_fit(model, guide, 40))


# --------------------------------------------------------------------------------------------
# Pyro programs generated at random: default fit == SVI, bit for bit.


class RandomProgram:
    """A random model/guide pair: 1-3 global latents (Normal, LogNormal, Gamma, Beta priors with
    matching guides), an optional plate of observations, an optional branch on a sampled value
    reading a branch-specific param, an optional param read only on some calls, an optional call
    counter that changes the likelihood, and rsample or score-function guide sites."""

    KINDS = ("normal", "lognormal", "gamma", "beta")

    def __init__(self, seed: int):
        rng = random.Random(seed)
        self.latents = [(f"z{i}", rng.choice(self.KINDS)) for i in range(rng.randint(1, 3))]
        self.plate = rng.choice([None, 5])
        self.branch = rng.random() < 0.5
        self.sometimes = rng.random() < 0.5
        self.counter = rng.choice([None, rng.randint(3, 20)])
        self.score = rng.random() < 0.3  # a guide site without rsample: TraceGraph_ELBO's estimator
        self.calls = 0
        self.x = torch.linspace(0.2, 0.8, self.plate or 1)

    def model(self):
        self.calls += 1
        values = []
        for name, kind in self.latents:
            prior = {"normal": dist.Normal(0.0, 1.0), "lognormal": dist.LogNormal(0.0, 0.5),
                     "gamma": dist.Gamma(2.0, 2.0), "beta": dist.Beta(2.0, 2.0)}[kind]
            values.append(pyro.sample(name, prior))
        mean = sum(values)
        if self.branch:
            scale = pyro.param("s_hi", torch.tensor(1.0), constraint=constraints.positive) if values[0] > 0.5 \
                else pyro.param("s_lo", torch.tensor(1.0), constraint=constraints.positive)
        else:
            scale = torch.tensor(1.0)
        if self.sometimes and self.calls % 2:
            mean = mean + pyro.param("offset", torch.tensor(0.1))
        if self.counter is not None and self.calls > self.counter:
            scale = scale * 2.0
        with pyro.plate("data", len(self.x)):
            pyro.sample("obs", dist.Normal(mean, scale), obs=self.x)

    def guide(self):
        for name, kind in self.latents:
            a = pyro.param(f"{name}_a", torch.tensor(0.5 if kind == "beta" else 0.0))
            b = pyro.param(f"{name}_b", torch.tensor(1.0), constraint=constraints.positive)
            if kind == "normal":
                q = dist.Normal(a, b)
            elif kind == "lognormal":
                q = dist.LogNormal(a, b)
            elif kind == "gamma":
                q = dist.Gamma(a.exp() + 1.0, b)
            else:
                q = dist.Beta(a.exp() + 1.0, b + 1.0)
            if self.score:
                q = pyro.distributions.Normal(a, b) if kind == "normal" else q
                q.has_rsample = False
            pyro.sample(name, q)


@pytest.mark.parametrize("seed", range(12))
def test_random_pyro_programs_fit_exactly_as_svi(seed):
    """Twelve random programs (RandomProgram), 60 steps each, default fit vs SVI: equal losses and params."""
    program = RandomProgram(seed)
    loss = TraceGraph_ELBO if program.score else Trace_ELBO
    expected = run_svi(program.model, program.guide, 60, loss=loss, lr=0.05, seed=seed)
    program.calls = 0
    got = run_fit(program.model, program.guide, 60, loss=loss, lr=0.05, seed=seed)
    assert_same(expected, got)


@pytest.mark.parametrize("seed", range(6))
def test_random_stateless_programs_under_auto_compile_match_svi_or_say_why(seed, monkeypatch):
    """``compile="auto"`` on random programs without Python state (no call counter, no param read
    only on some calls): where it replays, the run is still SVI's bit for bit (guards take the
    branch-dependent steps plain); where it cannot record, the report says why and the run is plain."""
    monkeypatch.setattr(policy, "AUTO_MIN_STEPS", 10)
    program = RandomProgram(seed)
    program.counter, program.sometimes = None, False
    loss = TraceGraph_ELBO if program.score else Trace_ELBO
    expected = run_svi(program.model, program.guide, 60, loss=loss, lr=0.05, seed=seed)
    got = run_fit(program.model, program.guide, 60, loss=loss, lr=0.05, seed=seed, compile="auto")
    assert_same(expected, got)
    report = got[2].compile
    assert report.compiled_steps + report.plain_steps == 60
    if report.compiled_steps == 0:
        assert report.fallbacks, "a plain 'auto' run says why"
