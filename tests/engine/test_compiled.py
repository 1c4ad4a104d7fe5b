"""The recorded ELBO program (pyro_vi.engine.compile.record) equals Trace_ELBO: value, gradients, whole runs."""

import dataclasses
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO

import pyro_vi
from pyro_vi.engine.compile import record as compiled
from pyro_vi.errors import ConfigError


def normal_model(x, *unused):
    """z ~ N(0, I_2);  x_n | z ~ N(z, I_2)."""
    z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(z, 1.0).to_event(1), obs=x)


def normal_guide(x, *unused):
    loc = pyro.param("loc", lambda: x.new_zeros(2))
    scale = pyro.param("scale", lambda: x.new_ones(2), constraint=constraints.positive)
    pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def _tiny_vae():
    return pyro_vi.VAE(16, z_dim=2, hidden_dims=(8,))


def _grads(value, params):
    return torch.autograd.grad(value, params, allow_unused=True)


@pytest.mark.parametrize("case", ["normal", "vae"])
def test_compiled_loss_equals_trace_elbo_on_new_batches_and_noise(case):
    if case == "normal":
        model, guide = normal_model, normal_guide
        batches = [(torch.randn(5, 2) + 1.0,), (torch.randn(5, 2) - 2.0,)]
    else:
        vae = _tiny_vae()
        model, guide = vae.model, vae.guide
        batches = [
            ((torch.rand(4, 16) < 0.5).float(), torch.arange(4), 100, torch.tensor(0.3)),
            ((torch.rand(4, 16) < 0.5).float(), torch.tensor([7, 9, 11, 13]), 100, torch.tensor(1.0)),
        ]
    Trace_ELBO().loss_and_grads(model, guide, *batches[0])  # creates the params
    program = compiled.compile_loss(model, guide, batches[0])
    assert program.params and all(p.requires_grad for p in program.params)
    for seed, args in enumerate(batches):  # a batch, indices, KL weight and noise it was not recorded on
        torch.manual_seed(seed)
        value = program(*args)
        grads = _grads(value, program.params)
        torch.manual_seed(seed)
        plain = Trace_ELBO().differentiable_loss(model, guide, *args)
        plain_grads = _grads(plain, program.params)
        # Same operations in the same order on the same noise: equal to float rounding.
        assert torch.allclose(value, plain, rtol=1e-6, atol=1e-6)
        for got, want in zip(grads, plain_grads):
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


def test_fit_with_compile_gives_the_plain_run():
    dataset = pyro_vi.load_dataset("digits")
    images = dataset.train_images[:128]
    config = pyro_vi.TrainConfig(epochs=2, batch_size=32, kl_warmup_epochs=1.5, seed=3)
    finals = {}
    for flag in (False, True):
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = pyro_vi.VAE(images.shape[1], z_dim=2, hidden_dims=(16,))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = pyro_vi.fit_images(vae.model, vae.guide, images, dataclasses.replace(config, compile=flag), progress=False)
        if flag:  # issue 14: a compiled run prints no warning (it printed torch.fx's)
            assert [str(w.message) for w in caught] == []
        finals[flag] = ({k: v.detach().clone() for k, v in pyro.get_param_store().items()}, result.history)
    (plain, plain_history), (fast, fast_history) = finals[False], finals[True]
    assert plain.keys() == fast.keys()
    for name in plain:  # the same operations on the same noise: the same parameters, bit for bit (CPU)
        assert torch.equal(plain[name], fast[name]), name
    for a, b in zip(plain_history, fast_history):  # the warm-up weight reaches the program every step
        assert a["kl_weight"] == b["kl_weight"]
        assert a["train_elbo"] == pytest.approx(b["train_elbo"], rel=1e-5)


def test_compile_refuses_what_it_cannot_record():
    x = torch.randn(5, 2)
    Trace_ELBO().loss_and_grads(normal_model, normal_guide, x)
    with pytest.raises(ConfigError, match="not TraceMeanField_ELBO"):
        compiled.compile_loss(normal_model, normal_guide, (x,), TraceMeanField_ELBO())
    with pytest.raises(ConfigError, match="vectorize"):
        compiled.compile_loss(normal_model, normal_guide, (x,), Trace_ELBO(num_particles=2, vectorize_particles=True))

    def coin_model(x):
        p = pyro.sample("p", dist.Bernoulli(0.5))
        pyro.sample("obs", dist.Normal(p, 1.0).expand(x.shape).to_event(2), obs=x)

    def coin_guide(x):
        pyro.sample("p", dist.Bernoulli(pyro.param("q", torch.tensor(0.5), constraint=constraints.unit_interval)))

    Trace_ELBO().loss_and_grads(coin_model, coin_guide, x)
    with pytest.raises(ConfigError, match="reparameterized"):
        compiled.compile_loss(coin_model, coin_guide, (x,))

    def reading_model(x):
        z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
        spread = float(x.std())  # a value read off the data into Python: cannot be recorded
        pyro.sample("obs", dist.Normal(z, spread).expand(x.shape).to_event(2), obs=x)

    Trace_ELBO().loss_and_grads(reading_model, normal_guide, x)
    with pytest.raises(ConfigError, match="control flow"):
        compiled.compile_loss(reading_model, normal_guide, (x,))


def test_a_branch_on_the_data_is_guarded_and_the_other_branch_runs_plain():
    """A model that branches on its data (``if x.sum() > 0``) is recorded along the branch of the
    compiling batch, with the branch condition as a guard: a batch taking the other branch is
    stepped by the plain path from the same RNG state. Both give Trace_ELBO's value and gradients."""

    def branching_model(x):
        z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
        if x.sum() > 0:  # structure read off the data
            pyro.sample("obs", dist.Normal(z, 1.0).expand(x.shape).to_event(2), obs=x)
        else:
            pyro.sample("obs", dist.Normal(z, 2.0).expand(x.shape).to_event(2), obs=x)

    positive = torch.randn(5, 2).abs()
    Trace_ELBO().loss_and_grads(branching_model, normal_guide, positive)
    program = compiled.compile_loss(branching_model, normal_guide, (positive,))
    assert program.guards == [True]
    for seed, batch in enumerate([positive + 1.0, -positive, positive]):
        torch.manual_seed(seed)
        value = program(batch)
        grads = _grads(value, program.params)
        torch.manual_seed(seed)
        plain = Trace_ELBO().differentiable_loss(branching_model, normal_guide, batch)
        assert torch.allclose(value, plain, rtol=1e-6, atol=1e-6)  # float rounding only (same ops, same noise)
        for got, want in zip(grads, _grads(plain, program.params)):
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    assert program.fallbacks == 1  # the negative batch only


def test_compile_check_catches_a_program_that_disagrees():
    """The check at compile time refuses a program whose value differs from Trace_ELBO's (here a
    recorded program shifted by one nat) and passes the true one."""
    x = torch.randn(5, 2)
    Trace_ELBO().loss_and_grads(normal_model, normal_guide, x)
    program = compiled.compile_loss(normal_model, normal_guide, (x,), check=False)
    shifted = compiled.CompiledLoss(lambda params, *args: program._graph(params, *args)[0] + 1.0, program.names, program.params)
    with pytest.raises(ConfigError, match="differs"):
        compiled._check(shifted, normal_model, normal_guide, (x,), Trace_ELBO())
    compiled._check(program, normal_model, normal_guide, (x,), Trace_ELBO())  # the true program passes


def test_the_recorded_program_is_kept_on_the_loss_while_the_params_are_the_same():
    x = torch.randn(6, 2) + 1.0
    loss = Trace_ELBO()
    config = pyro_vi.TrainConfig(epochs=3, batch_size=6, learning_rate=0.01, binarization="none", compile=True)
    pyro_vi.fit_images(normal_model, normal_guide, x, config, loss=loss, progress=False)
    (key, first), = loss._pyro_vi_recorded.items()  # one argument signature: one program
    pyro_vi.fit_images(normal_model, normal_guide, x, config, loss=loss, progress=False)
    assert loss._pyro_vi_recorded[key] is first  # the same store tensors: not recorded again
    pyro.clear_param_store()  # new tensors: the old program would train stale ones
    pyro_vi.fit_images(normal_model, normal_guide, x, config, loss=loss, progress=False)
    again = loss._pyro_vi_recorded[key]
    assert again is not first
    assert all(pyro.get_param_store()._params[n] is p for n, p in zip(again.names, again.params))


@pytest.mark.parametrize(
    "autoguide",
    ["AutoNormal", "AutoDiagonalNormal", "AutoMultivariateNormal", "AutoLowRankMultivariateNormal", "AutoDelta"],
)
def test_autoguides_compile_to_the_plain_runs_parameters_bit_for_bit_without_warnings(autoguide):
    """Issue 14: compile refused every AutoGuide ("structure depends on values") and printed a
    torch.fx warning. An AutoGuide is a PyroModule that re-wraps a store value which is not its own
    attribute as a new nn.Parameter, a constant to the recording; the recording now swaps the
    module attribute with the store entry, and folded constants are registered buffers."""
    import warnings

    from pyro.infer import autoguide as autoguides

    x = torch.randn(50, generator=torch.Generator().manual_seed(0)) + 3.0

    def model(x):
        loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", 50):
            pyro.sample("obs", dist.Normal(loc, scale), obs=x)

    params = {}
    for flag in (False, True):
        pyro.clear_param_store()
        guide = getattr(autoguides, autoguide)(model)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            result = pyro_vi.fit(model, guide, x, num_steps=30, compile=flag, seed=0, progress=False,
                                 optim=pyro_vi.engine.optim.Adam({"lr": 0.01, "foreach": True}))
        params[flag] = result.params
    assert params[True].keys() == params[False].keys()
    for name in params[False]:
        assert torch.equal(params[True][name], params[False][name]), name
