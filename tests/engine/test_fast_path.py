"""The fast paths of the training loop give what the plain Pyro path gives.

``pyro_vi.fit`` differs from Pyro's ``SVI(..., pyro.optim.Adam, Trace_ELBO()).step`` in two ways that
must not change any number: its default optimizer (``pyro_vi.engine.optim.Adam``, one foreach call over
all parameters) and Pyro's validation running on the first step only. Each is checked against the
plain path step by step: same losses, same parameters after every update (exactly, on CPU).
"""

import pyro
import pyro.optim
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

import pyro_vi
from pyro_vi.engine import optim
from pyro_vi.vae.model import VAE

NUM_DATA, X_DIM, BATCH = 64, 12, 16


def _images(seed=1):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(NUM_DATA, X_DIM, generator=generator) < 0.4).float()


def _vae():
    torch.manual_seed(0)  # the same initial weights in every run
    return VAE(X_DIM, z_dim=3, hidden_dims=(8,))


def _params():
    store = pyro.get_param_store()
    return {name: store.get_param(name).detach().clone() for name in store.keys()}


def _svi_run(optimizer, num_steps, images, validate=True):
    """Pyro's plain loop over the batches ``fit`` visits; returns the losses and final params."""
    pyro.clear_param_store()
    vae = _vae()
    svi = SVI(vae.model, vae.guide, optimizer, Trace_ELBO())
    pyro.set_rng_seed(0)
    # fit's data order: epoch e of seed s is randperm from a generator seeded s * 1_000_003 + e.
    permutation = torch.randperm(NUM_DATA, generator=torch.Generator().manual_seed(0))
    losses = []
    with pyro.validation_enabled(validate):
        for step in range(num_steps):
            indices = permutation[step * BATCH : (step + 1) * BATCH]
            losses.append(svi.step(images[indices], indices, NUM_DATA, 1.0))
    return losses, _params()


OPTIONS = [{"lr": 0.01}, {"lr": 0.01, "betas": (0.8, 0.99), "weight_decay": 0.1}]


@pytest.mark.parametrize("optim_args", OPTIONS, ids=["default", "options"])
def test_foreach_adam_updates_equal_pyro_adam_exactly(optim_args):
    images = _images()
    plain_losses, plain = _svi_run(pyro.optim.Adam(optim_args), 4, images)
    fast_losses, fast = _svi_run(optim.Adam({**optim_args, "foreach": True}), 4, images)
    assert fast_losses == plain_losses
    assert plain.keys() == fast.keys()
    for name in plain:
        torch.testing.assert_close(fast[name], plain[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("optim_args", OPTIONS, ids=["default", "options"])
def test_fused_adam_updates_equal_pyro_adam_to_rounding(optim_args):
    """The fused kernel orders its float operations differently: after 4 steps of lr 0.01 the
    parameters agree to ~1e-6 (a few float32 ulps of the update), and so do the losses."""
    images = _images()
    plain_losses, plain = _svi_run(pyro.optim.Adam(optim_args), 4, images)
    fast_losses, fast = _svi_run(optim.Adam(optim_args), 4, images)  # fused by default
    assert fast_losses == pytest.approx(plain_losses, rel=1e-6)
    for name in plain:
        torch.testing.assert_close(fast[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)


def test_fit_equals_plain_svi():
    """fit (foreach Adam, validation on the first step only) vs SVI + pyro.optim.Adam: equal bit for
    bit. (fit's default fused Adam is held to rounding by the test above.)"""
    images = _images()
    steps = NUM_DATA // BATCH
    plain_losses, plain = _svi_run(pyro.optim.Adam({"lr": 0.01}), steps, images)

    pyro.clear_param_store()
    vae = _vae()
    config = pyro_vi.TrainConfig(epochs=1, batch_size=BATCH, learning_rate=0.01, binarization="none", seed=0)
    result = pyro_vi.fit_images(vae.model, vae.guide, images, config, optimizer=optim.Adam({"lr": 0.01, "foreach": True}), progress=False)
    fast = _params()

    expected_elbo = -sum(plain_losses) / steps / NUM_DATA
    assert result.history[0]["train_elbo"] == pytest.approx(expected_elbo, rel=1e-12)
    for name in plain:
        torch.testing.assert_close(fast[name], plain[name], rtol=0, atol=0, msg=name)


def test_fit_restores_validation_and_validates_first_step():
    images = _images()
    vae = _vae()
    config = pyro_vi.TrainConfig(epochs=1, batch_size=BATCH, binarization="none")
    pyro_vi.fit_images(vae.model, vae.guide, images, config, progress=False)
    assert pyro.infer.is_validation_enabled()  # conftest turns it on; fit gives it back

    def bad_model(x, indices, num_data, kl_weight):
        vae.model(x, indices, num_data, kl_weight)
        pyro.sample("extra", pyro.distributions.Normal(0.0, 1.0))  # not in the guide

    pyro.clear_param_store()
    with pytest.warns(UserWarning, match="extra"):  # Pyro's model/guide check, on step one
        pyro_vi.fit_images(bad_model, vae.guide, images, config, progress=False)


@pytest.mark.parametrize("direction", ["pyro-to-fast", "fast-to-pyro", "pyro-to-fused"])
def test_optimizer_state_moves_between_pyro_and_fast_adam(direction):
    """get_state/set_state share Pyro's format: 2 steps with one optimizer, then 2 with the other,
    equal 4 steps with Pyro's alone."""
    images = _images()
    _, expected = _svi_run(pyro.optim.Adam({"lr": 0.01}), 4, images)

    first, second = (optim.Adam, pyro.optim.Adam) if direction == "fast-to-pyro" else (pyro.optim.Adam, optim.Adam)
    pyro.clear_param_store()
    vae = _vae()
    pyro.set_rng_seed(0)
    permutation = torch.randperm(NUM_DATA, generator=torch.Generator().manual_seed(0))  # as _svi_run
    options = {"lr": 0.01}
    fast_options = {"lr": 0.01} if direction == "pyro-to-fused" else {"lr": 0.01, "foreach": True}
    optimizer = first(options if first is pyro.optim.Adam else fast_options)
    for step in range(4):
        if step == 2:
            state = optimizer.get_state()
            optimizer = second(options if second is pyro.optim.Adam else fast_options)
            optimizer.set_state(state)
        svi = SVI(vae.model, vae.guide, optimizer, Trace_ELBO())
        indices = permutation[step * BATCH : (step + 1) * BATCH]
        svi.step(images[indices], indices, NUM_DATA, 1.0)
    exact = direction != "pyro-to-fused"
    for name, value in _params().items():
        torch.testing.assert_close(value, expected[name], rtol=0 if exact else 1e-5, atol=0 if exact else 1e-6, msg=name)


def test_only_the_given_params_are_stepped():
    a = torch.zeros(3, requires_grad=True)
    b = torch.zeros(3, requires_grad=True)
    adam = optim.Adam({"lr": 0.1})
    a.grad, b.grad = torch.ones(3), torch.ones(3)
    adam([a, b])
    b_after_first = b.detach().clone()
    a.grad, b.grad = torch.ones(3), torch.ones(3)
    adam([a])  # b keeps its (stale) gradient but is not stepped
    assert torch.equal(b.detach(), b_after_first)
    assert not torch.equal(a.detach(), b_after_first)
    assert torch.equal(b.grad, torch.ones(3))


def test_resume_is_exact_with_the_default_optimizer(tmp_path):
    images = _images()
    config = pyro_vi.TrainConfig(epochs=2, batch_size=BATCH, binarization="dynamic", seed=3)
    vae = _vae()
    straight = pyro_vi.fit_images(vae.model, vae.guide, images, config, progress=False)
    expected = _params()

    pyro.clear_param_store()
    vae = _vae()
    path = tmp_path / "checkpoint.pt"
    first = pyro_vi.TrainConfig(epochs=1, batch_size=BATCH, binarization="dynamic", seed=3)
    pyro_vi.fit_images(vae.model, vae.guide, images, first, checkpoint_path=path, progress=False)
    pyro.clear_param_store()
    vae = _vae()
    resumed = pyro_vi.fit_images(
        vae.model, vae.guide, images, config, checkpoint_path=path, resume=True, progress=False
    )
    assert [h["train_elbo"] for h in resumed.history] == [h["train_elbo"] for h in straight.history]
    for name, value in _params().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("optim_args", OPTIONS, ids=["default", "options"])
def test_the_direct_fused_step_equals_torch_adams_fused_step_exactly(optim_args, monkeypatch):
    """Adam's direct call of the fused kernel (no Optimizer.step wrapper) against torch's own
    ``Adam(fused=True).step()``, same gradients, 5 steps: every parameter and state bit for bit; and
    the direct call is really taken from the second step on."""
    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(3, 4, generator=generator), torch.randn(5, generator=generator)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(5)]
    ours = [p.clone().requires_grad_() for p in start]
    theirs = [p.clone().requires_grad_() for p in start]
    pyro.clear_param_store()
    fast = optim.Adam(optim_args)
    reference = torch.optim.Adam(theirs, **{**optim_args, "fused": True})
    taken = []
    direct = fast._fused_step
    monkeypatch.setattr(fast, "_fused_step", lambda params: taken.append(direct(params)) or taken[-1])
    for step_grads in grads:
        for p, q, g in zip(ours, theirs, step_grads):
            p.grad, q.grad = g.clone(), g.clone()
        fast(ours)
        reference.step()
    assert taken == [False] + [True] * 4  # the first step creates the state through torch's step, then direct
    for p, q in zip(ours, theirs):
        assert torch.equal(p, q)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(fast._optimizer.state[p][key], reference.state[q][key])


def _coin_with_two_sites():
    data = torch.cat([torch.ones(6), torch.zeros(4)])

    def model(data):
        fairness = pyro.sample("fairness", pyro.distributions.Beta(10.0, 10.0))
        shift = pyro.sample("shift", pyro.distributions.Normal(0.0, 1.0))
        with pyro.plate("data", len(data)):
            pyro.sample("obs", pyro.distributions.Bernoulli(fairness), obs=data)
            pyro.sample("y", pyro.distributions.Normal(shift, 1.0), obs=data)

    def guide(data):
        a = pyro.param("a", torch.tensor(15.0), constraint=pyro.distributions.constraints.positive)
        b = pyro.param("b", torch.tensor(15.0), constraint=pyro.distributions.constraints.positive)
        loc = pyro.param("loc", torch.zeros(()))
        pyro.sample("fairness", pyro.distributions.Beta(a, b))
        pyro.sample("shift", pyro.distributions.Normal(loc, 0.5))

    return model, guide, (data,)


@pytest.mark.parametrize("optim_args", [
    {"lr": 0.01},
    lambda module, name: {"lr": 0.05 if name == "loc" else 0.01, "betas": (0.8, 0.99), "weight_decay": 0.1 * (name == "a")},
], ids=["one-lr", "per-param-options"])
@pytest.mark.parametrize("compile", [False, True])
def test_pyro_adam_through_fit_is_one_update_call_and_equals_svi_exactly(optim_args, compile, monkeypatch):
    """fit with pyro.optim.Adam (as Pyro's tutorials write it): after the first step (which makes
    each parameter's torch.optim.Adam and its state), the update skips Optimizer.step's wrapper and
    calls torch's own Adam function (engine.optim.pyro_adam_step), once per set of options; losses
    and params equal SVI's with pyro.optim.Adam, bit for bit."""
    model, guide, args = _coin_with_two_sites()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svi = SVI(model, guide, pyro.optim.Adam(optim_args), Trace_ELBO())
    plain_losses = [svi.step(*args) for _ in range(30)]
    plain = _params()

    wrapped_steps = []
    step = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: (wrapped_steps.append(1), step(self, *a, **k))[1])
    pyro.clear_param_store()
    result = pyro_vi.fit(model, guide, *args, num_steps=30, loss=Trace_ELBO(), optim=pyro.optim.Adam(optim_args), seed=0,
                         progress=False, compile=compile)
    assert len(wrapped_steps) == 3  # the first step only, one per parameter: the other 29 took the direct call
    assert result.losses == plain_losses
    fast = _params()
    for name in plain:
        torch.testing.assert_close(fast[name], plain[name], rtol=0, atol=0, msg=name)


def test_pyro_adam_with_gradient_clipping_keeps_its_own_step():
    """ClippedAdam / clip_args: pyro.optim clips each gradient before its step, so fit leaves it alone."""
    model, guide, args = _coin_with_two_sites()
    params = []
    for optimizer in (pyro.optim.Adam({"lr": 0.05}, {"clip_norm": 0.1}), None):
        pyro.clear_param_store()
        if optimizer is None:
            pyro.set_rng_seed(0)
            svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}, {"clip_norm": 0.1}), Trace_ELBO())
            for _ in range(10):
                svi.step(*args)
        else:
            pyro_vi.fit(model, guide, *args, num_steps=10, loss=Trace_ELBO(), optim=optimizer, seed=0, progress=False)
            loc = pyro.get_param_store().get_param("loc").unconstrained()
            loc.grad = torch.ones_like(loc)  # everything the direct call needs but the clipping
            assert not optim.pyro_adam_step(optimizer, [loc]) and torch.equal(loc.grad, torch.ones_like(loc))
            loc.grad = None
        params.append(_params())
    for name in params[0]:
        torch.testing.assert_close(params[0][name], params[1][name], rtol=0, atol=0, msg=name)
