"""compile="auto" (pyro_vi.engine.compile.policy, the built-in families' choice): long runs replay the
recorded step and end where the plain run ends, bit for bit (losses included); short runs, callbacks
and keyword arguments run plain, and the report says why; the audit catches a model that reads a
value from outside its arguments within AUDIT_EVERY steps. fit's own default is SVI's plain step."""

import re

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from tutorial_models import load

import pyro_vi
from pyro_vi.engine.compile import policy as autocompile
from pyro_vi.errors import ConfigError

# The shortest run compile="auto" records, lowered from AUTO_MIN_STEPS (1000) so that these runs take
# a fraction of a second; the decision logic is the same.
STEPS = 60


@pytest.fixture(autouse=True)
def _short_threshold(monkeypatch):
    monkeypatch.setattr(autocompile, "AUTO_MIN_STEPS", STEPS)


def _runs(make_pair, args, num_steps=STEPS, modes=("auto", False), **options):
    results = {}
    for mode in modes:
        pyro.clear_param_store()
        model, guide = make_pair()
        results[mode] = pyro_vi.fit(model, guide, *args, num_steps=num_steps, seed=0, progress=False, compile=mode,
                                    optim=pyro_vi.engine.optim.Adam({"lr": 0.01}), **options)
    return results


def _assert_same_run(a, b):
    assert a.losses == b.losses  # Trace_ELBO's loss summed as Pyro sums it: the same doubles
    assert a.params.keys() == b.params.keys()
    assert all(torch.equal(a.params[name], b.params[name]) for name in a.params)


def _coin():
    module = load("coin")
    return module.model, module.guide


def _regression():
    module = load("bayesian_regression")
    return module.model, AutoNormal(module.model)


def _regression_args():
    module = load("bayesian_regression")
    data = module.make_data()
    return tuple(torch.as_tensor(data[key]) for key in ("x", "y"))


@pytest.mark.parametrize("case", ["coin", "regression-autonormal"])
def test_a_long_run_is_compiled_under_auto_and_ends_where_the_plain_run_ends(case):
    make_pair, args = (_coin, (torch.as_tensor(load("coin").make_data()["data"]),)) if case == "coin" else (
        _regression, _regression_args())
    runs = _runs(make_pair, args, modes=("auto", False, None))
    assert runs["auto"].compiled_steps == STEPS - 1 and runs[False].compiled_steps == 0  # all but the first step
    assert runs["auto"].compile.plain_steps == 1 and runs["auto"].compile.fallbacks == ()
    _assert_same_run(runs["auto"], runs[False])
    # fit's default (None) is SVI's plain step, whatever the run's length
    assert runs[None].compiled_steps == 0 and runs[None].compile.mode is False
    _assert_same_run(runs[None], runs[False])


def test_short_runs_callbacks_and_keyword_arguments_run_plain_under_auto_and_say_why():
    args = (torch.as_tensor(load("coin").make_data()["data"]),)
    short = _runs(_coin, args, num_steps=STEPS - 1, modes=("auto",))["auto"]
    assert short.compiled_steps == 0 and "too short" in short.compile.fallbacks[0]
    called = _runs(_coin, args, modes=("auto",), callback=lambda step, loss: None)["auto"]
    assert called.compiled_steps == 0 and "callback" in called.compile.fallbacks[0]
    forced = _runs(_coin, args, num_steps=20, modes=(True,))[True]
    assert forced.compiled_steps == 19  # compile=True records whatever the length


def _subsampled_pair():
    data = torch.randn(10, generator=torch.Generator().manual_seed(0)) + 2.0

    def model(indices):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 10, subsample=indices):
            pyro.sample("obs", dist.Normal(z, 1.0), obs=data[indices])

    def guide(indices):
        loc = pyro.param("loc", torch.tensor(0.0))
        scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
        pyro.sample("z", dist.Normal(loc, scale))

    return model, guide


def test_an_epochs_smaller_last_batch_gets_its_own_recording():
    """10 points in batches of 4: sizes 4, 4, 2 each epoch. Two signatures, two programs; the first
    step of each is plain (the first of the run, the first batch of 2)."""
    runs = _runs(_subsampled_pair, (pyro_vi.EpochSubsample(10, 4, drop_last=False),), num_steps=STEPS + 2)
    assert runs["auto"].compiled_steps == STEPS + 2 - 2
    _assert_same_run(runs["auto"], runs[False])


def _counting_pair():
    """A model that reads a Python value it changes itself: a recording would freeze it."""
    calls = [0]

    def model(x):
        calls[0] += 1
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(z, 1.0 + calls[0] % 3), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.tensor(0.0))
        scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
        pyro.sample("z", dist.Normal(loc, scale))

    return model, guide


def _numpy_pair():
    """A model drawing from NumPy's generator (not Pyro's): each step a new constant."""

    def model(x):
        shift = float(np.random.randn())
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(z + shift, 1.0), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.tensor(0.0))
        pyro.sample("z", dist.Normal(loc, 1.0))

    return model, guide


def test_the_audit_catches_a_model_reading_values_from_outside_its_arguments():
    """The first recorded step is audited against the plain loss from the same torch generator: the
    counting model (a different scale every step) and the NumPy-drawing model differ there, so the
    default runs them plain from that step on, and compile=True refuses them (before any update)."""
    x = torch.randn(8) + 1.0
    counting = _runs(_counting_pair, (x,), num_steps=STEPS)
    assert counting["auto"].compiled_steps == 0  # caught by the recording's own check (its extra calls)
    numpy_runs = _runs(_numpy_pair, (x,))
    assert numpy_runs["auto"].compiled_steps == 0  # caught at the first audit, that step retaken plain
    _assert_same_run(numpy_runs["auto"], numpy_runs[False])  # with NumPy's generator put back too
    for make_pair in (_counting_pair, _numpy_pair):
        with pytest.raises(ConfigError, match="differs from"):  # at the recording's check or the first audit
            _runs(make_pair, (x,), num_steps=20, modes=(True,))


def test_a_change_in_the_models_own_python_is_caught_at_the_audit_that_makes_it():
    """Recorded steps do not call the model, audits do: a model that changes its constant at its
    8th call makes that call in an audit, whose plain loss then differs; the step is retaken plain,
    the rest of the run is plain, and the report says why."""
    calls = [0]

    def model(x):
        calls[0] += 1
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(z, 1.0 if calls[0] < 8 else 3.0), obs=x)

    def guide(x):
        pyro.sample("z", dist.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0))

    pyro.clear_param_store()
    result = pyro_vi.fit(model, guide, torch.randn(8), num_steps=300, seed=0, progress=False, compile="auto")
    caught_at = result.compiled_steps + 1  # the audited recorded step that failed, taken plain
    assert result.compiled_steps > 0 and autocompile.audited(caught_at)
    assert "differs from the plain one" in result.compile.fallbacks[0]
    assert result.compile.plain_steps == 300 - result.compiled_steps


@pytest.mark.parametrize("change_at", [8, 150, 230])
def test_a_value_changed_from_outside_trains_at_most_audit_every_steps_on_the_stale_program(change_at):
    """compile=True is jax.jit's contract: a global the model reads, changed by a callback at step
    ``change_at``, is not seen by replays. The audits (recorded steps 1, 2, 4, ..., 64, then every
    AUDIT_EVERY-th) bound how long the run trains on the stale program: the ConfigError comes at
    most AUDIT_EVERY steps after the change (a power-of-two schedule let a change at 300 run to 512)."""
    scale = [1.0]

    def model(x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(z, scale[0]), obs=x)

    def guide(x):
        pyro.sample("z", dist.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0))

    def temper(step, loss):
        if step == change_at:
            scale[0] = 3.0

    pyro.clear_param_store()
    with pytest.raises(ConfigError, match="differs from the plain one") as caught:
        pyro_vi.fit(model, guide, torch.randn(8), num_steps=400, seed=0, progress=False, compile=True,
                    callback=temper)
    compiled = int(re.search(r"after (\d+) compiled steps", str(caught.value)).group(1))
    # the first step is plain, so recorded step ``compiled + 1`` is fit's step ``compiled + 2``
    assert autocompile.audited(compiled + 1)
    assert change_at < compiled + 2 <= change_at + autocompile.AUDIT_EVERY


def test_a_program_reused_by_later_calls_audits_their_first_step_then_its_schedule():
    """Audits count a program's steps over all calls: a second 60-step call on the same loss and
    params audits its first recorded step (a value may have changed between calls) and the
    program's 64th and 100th steps, not its own steps 1, 2, 4, ..., 32 again; its run is the plain one."""
    args = (torch.as_tensor(load("coin").make_data()["data"]),)
    loss = Trace_ELBO()
    audits = []
    plain_loss = loss.loss

    def counted(*a, **k):
        audits[-1] += 1
        return plain_loss(*a, **k)

    loss.loss = counted  # the audit's plain loss (the plain steps call loss_and_grads)
    pyro.clear_param_store()
    model, guide = _coin()
    optim = pyro_vi.engine.optim.Adam({"lr": 0.01})
    results = []
    for _ in range(2):
        audits.append(0)
        results.append(pyro_vi.fit(model, guide, *args, num_steps=STEPS, progress=False, compile=True, loss=loss,
                                   optim=optim))
    assert [r.compiled_steps for r in results] == [STEPS - 1] * 2
    # recorded steps 1-59 (audits at 1, 2, 4, 8, 16, 32), then 60-118 (60: the call's first, 64 and 100)
    assert audits == [6, 3]


def test_compile_must_be_none_true_false_inductor_or_auto():
    for wrong in ("yes", 1, np.True_):  # by identity: 1 and NumPy's True are not taken for True
        with pytest.raises(ConfigError, match="compile must be None"):
            pyro_vi.fit(*_coin(), torch.ones(3), num_steps=1, compile=wrong, progress=False)


def test_the_recorded_steps_loss_is_trace_elbos_own_double():
    """Trace_ELBO adds its sites' log-prob sums as Python floats; the recorded program returns the
    sums and the engine adds them the same way: the reported loss is the same double."""
    args = (torch.as_tensor(load("coin").make_data()["data"]),)
    pyro.clear_param_store()
    model, guide = _coin()
    loss = Trace_ELBO()
    loss.loss_and_grads(model, guide, *args)
    program = pyro_vi.engine.compile.record.compile_loss(model, guide, args, loss)
    state = torch.get_rng_state()
    got = program.loss_and_grads(*args)
    torch.set_rng_state(state)
    want = loss.loss_and_grads(model, guide, *args)
    assert isinstance(got, float) and got == want


# compile="inductor" on the coin, ending near the plain run: tests/engine/test_wholestep.py
# (test_the_update_runs_in_the_program_and_ends_near_the_unfused_run[coin-pyro_vi.Adam]).


def _scaled_pair():
    data = torch.randn(8, generator=torch.Generator().manual_seed(1)) + 1.0

    def model(weight):
        with pyro.poutine.scale(scale=weight):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 8):
            pyro.sample("obs", dist.Normal(z, 1.0), obs=data)

    def guide(weight):
        loc = pyro.param("loc", torch.tensor(0.0))
        with pyro.poutine.scale(scale=weight):
            pyro.sample("z", dist.Normal(loc, 1.0))

    return model, guide


def test_a_float_that_changes_every_step_stops_auto_a_tensor_one_compiles():
    """A KL weight annealed as a Python float is a new recording each step: the default stops at its
    second value (one recording, not one per step) and the run is the plain one; the same
    weight as a tensor is one recording."""
    as_float = pyro_vi.PerStep(lambda step: min(1.0, (step + 1) / 50))
    runs = _runs(_scaled_pair, (as_float,))
    assert runs["auto"].compiled_steps == 0  # recorded at weight 1/50; step 2's 2/50 stops the recording
    assert "non-tensor argument" in runs["auto"].compile.fallbacks[0]
    _assert_same_run(runs["auto"], runs[False])
    as_tensor = pyro_vi.PerStep(lambda step: torch.tensor(min(1.0, (step + 1) / 50)))
    tensor_runs = _runs(_scaled_pair, (as_tensor,))
    assert tensor_runs["auto"].compiled_steps == STEPS - 1
    _assert_same_run(tensor_runs["auto"], tensor_runs[False])


@pytest.mark.filterwarnings("ignore:Encountered NaN:UserWarning")  # Pyro's, from the plain steps: NaN on purpose here
def test_a_nan_in_a_recorded_step_is_caught_before_the_update():
    """The recorded program checks the loss and gradients for NaN/inf itself (fit's check, computed
    in the program): a param turned NaN after step 5 stops the compiled run at step 6, as the plain
    run stops, with the same error; and on_nan="skip" skips the same steps."""
    from pyro_vi.errors import TrainingDivergedError

    args = (torch.as_tensor(load("coin").make_data()["data"]),)

    def poison(step, loss):
        if step == 5:
            with torch.no_grad():
                pyro.get_param_store().get_param("alpha_q").unconstrained().fill_(float("nan"))

    for mode in (True, False):  # compile="inductor": tests/engine/test_wholestep.py (the whole-step program)
        with pytest.raises(TrainingDivergedError, match="at step 6") as caught:
            _runs(_coin, args, num_steps=10, modes=(mode,), callback=poison)
        assert caught.value.step == 6
        skipped = _runs(_coin, args, num_steps=10, modes=(mode,), callback=poison, on_nan="skip")[mode]
        assert skipped.skipped_steps == 5 and skipped.compiled_steps == (0 if mode is False else 9)


def test_a_recording_that_fails_leaves_the_auto_run_plain_and_says_why(monkeypatch):
    """Whatever the recording trips on (here torch raising inside it), the default run is the plain
    run, bit for bit, as SVI would have trained it; compile=True lets the error through."""
    args = (torch.as_tensor(load("coin").make_data()["data"]),)

    def broken(*a, **k):
        raise RuntimeError("an operation the recorder cannot follow")

    monkeypatch.setattr(pyro_vi.engine.compile.policy, "recorded_loss", broken)
    runs = _runs(_coin, args)
    assert runs["auto"].compiled_steps == 0 and "recording failed" in runs["auto"].compile.fallbacks[0]
    _assert_same_run(runs["auto"], runs[False])
    with pytest.raises(RuntimeError, match="cannot follow"):
        _runs(_coin, args, num_steps=5, modes=(True,))
