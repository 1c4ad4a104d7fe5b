"""The whole step as one inductor program (pyro_vi.engine.compile.whole_step): with compile="inductor" and
plain Adam, the loss, gradients and Adam update run as one program that writes the params and the
optimizer's state in place; the run ends where the unfused run ends, to float rounding; what the
program cannot take (a new learning rate, a guard that differs, a NaN) is taken as before."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from test_engine import normal_mean_guide, normal_mean_model
from tutorial_models import load

import pyro_vi
from pyro_vi.engine.compile import whole_step as wholestep
from pyro_vi.engine.compile.record import CompiledLoss
from pyro_vi.errors import TrainingDivergedError

STEPS = 40
# fit's first step is plain; recorded steps 1, 2, 4, 8, 16, 32 are audited (and unfused)
FUSED = STEPS - 1 - 6


@pytest.fixture
def fused_calls(monkeypatch):
    """How many steps the whole-step program took."""
    calls = []
    original = CompiledLoss.loss_and_update

    def counted(self, run, *args):
        value, taken = original(self, run, *args)
        calls.append(taken)
        return value, taken

    monkeypatch.setattr(CompiledLoss, "loss_and_update", counted)
    return calls


def _coin():
    module = load("coin")
    return module.model, module.guide


def _coin_args():
    return (torch.as_tensor(load("coin").make_data()["data"]),)


def _run(make_pair, args, make_optim, mode, num_steps=STEPS, **options):
    pyro.clear_param_store()
    model, guide = make_pair()
    optim = make_optim()
    result = pyro_vi.fit(model, guide, *args, num_steps=num_steps, seed=0, progress=False, compile=mode, optim=optim,
                         **options)
    return result, optim.get_state()  # by param name: read before the next run clears the store


def _normal():
    """test_engine's conjugate Normal-mean pair: the cheapest program to compile (the coin's Beta
    guide records torch's Dirichlet sampler; tests of the update's bookkeeping use this one)."""
    return normal_mean_model, normal_mean_guide


def _normal_args():
    return (torch.tensor([0.5, 1.5, 2.0, 1.0]),)


def _per_param_adam():
    # pyro.optim.Adam as Pyro's tutorials write it, with per-parameter options
    return pyro.optim.Adam(lambda module_name, param_name: {"lr": 0.02 if param_name == "loc" else 0.01})


def _assert_near(got, want):
    # Inductor fuses and reorders the update's float32 arithmetic: 1e-6 relative per step (measured);
    # 1e-4 after 40 Adam steps leaves room for its growth, far below a skipped or doubled update
    # (lr 0.01-0.02 moves these params by ~1e-2 a step).
    assert got.losses == pytest.approx(want.losses, rel=1e-4)
    for name, value in want.params.items():
        assert torch.allclose(got.params[name], value, rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("make_pair, args, make_optim, names", [
    # SVI Part I's coin (a Beta guide: torch's Dirichlet sampler recorded) with fit's default optimizer
    (_coin, _coin_args(), lambda: pyro_vi.engine.optim.Adam({"lr": 0.01}), {"alpha_q", "beta_q"}),
    (_normal, _normal_args(), _per_param_adam, {"loc", "scale"}),
], ids=["coin-pyro_vi.Adam", "normal-pyro.optim.Adam"])
def test_the_update_runs_in_the_program_and_ends_near_the_unfused_run(make_pair, args, make_optim, names, fused_calls):
    """compile="inductor" ends near the plain run (this also covers the joint program compiled by
    inductor: audited steps run it unfused, with the same noise as the plain step)."""
    fused, got = _run(make_pair, args, make_optim, "inductor")
    assert fused_calls == [True] * FUSED
    assert fused.compiled_steps == STEPS - 1
    plain, want = _run(make_pair, args, make_optim, False)
    _assert_near(fused, plain)
    # the optimizer's own state was written in place: step counts exact, moments to rounding
    assert got.keys() == want.keys() == names
    for name in want:
        got_state, want_state = got[name]["state"][0], want[name]["state"][0]
        assert float(got_state["step"]) == float(want_state["step"]) == STEPS
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(got_state[key], want_state[key], rtol=1e-3, atol=1e-7), (name, key)


def test_a_learning_rate_changed_by_a_callback_is_not_frozen(fused_calls):
    """The program holds the learning rate it was made with; after a callback lowers it, the steps are
    taken unfused with the new rate (without the check, the run would keep lr 0.01: far off)."""
    def lower(step, loss):
        if step == 20:
            for optimizer in optim_of["run"].optim_objs.values():
                optimizer.param_groups[0]["lr"] = 0.001

    optim_of = {}

    def make_optim():
        optim_of["run"] = pyro.optim.Adam({"lr": 0.01})
        return optim_of["run"]

    fused, _ = _run(_normal, _normal_args(), make_optim, "inductor", callback=lower)
    assert fused_calls == [True] * (19 - 5)  # recorded steps 1-19, less the audits 1, 2, 4, 8, 16
    plain, _ = _run(_normal, _normal_args(), make_optim, False, callback=lower)
    _assert_near(fused, plain)


def test_optimizer_state_loaded_mid_run_is_the_state_the_program_updates(fused_calls):
    """A callback loading saved optimizer state (set_state, as a checkpoint's restore does) gives the
    optimizer new state tensors: the program is made again for them (without the check, the fused
    steps would go on updating the old, orphaned moments, and the run would end elsewhere)."""
    saved, optim_of = {}, {}

    def reload(step, loss):
        if step == 10:
            saved["state"] = optim_of["run"].get_state()
        if step == 20:
            optim_of["run"].set_state(saved["state"])

    def make_optim():
        optim_of["run"] = pyro_vi.engine.optim.Adam({"lr": 0.01})
        return optim_of["run"]

    fused, got = _run(_normal, _normal_args(), make_optim, "inductor", callback=reload)
    assert fused_calls == [True] * FUSED
    plain, want = _run(_normal, _normal_args(), make_optim, False, callback=reload)
    _assert_near(fused, plain)
    for name in want:  # 10 steps counted at step 10, then 20 more
        assert float(got[name]["state"][0]["step"]) == float(want[name]["state"][0]["step"]) == STEPS - 10


def _branching():
    def model(data):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(data)):
            if data.sum() > 0:  # a guard: the recording follows one branch
                pyro.sample("obs", dist.Normal(loc, 1.0), obs=data)
            else:
                pyro.sample("obs", dist.Normal(-loc, 2.0), obs=data)

    def guide(data):
        mean = pyro.param("mean", torch.tensor(0.0))
        scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
        pyro.sample("loc", dist.Normal(mean, scale))

    return model, guide


def test_a_step_whose_guard_differs_writes_nothing_and_is_taken_plain(fused_calls):
    data = torch.tensor([0.5, 1.5, 2.0])
    # recorded on step 2's positive data; every 7th step the data flips sign and the branch with it
    args = (pyro_vi.PerStep(lambda step: -data if step % 7 == 3 else data),)
    make_optim = lambda: pyro.optim.Adam({"lr": 0.05})  # noqa: E731
    fused, _ = _run(_branching, args, make_optim, "inductor")
    flipped = [step for step in range(1, STEPS) if step % 7 == 3]  # 0-based step numbers 3, 10, ..., 38
    audited = {2 ** k for k in range(6)}  # recorded step r is 0-based step r
    assert fused_calls.count(False) == len([step for step in flipped if step not in audited])
    assert fused_calls.count(True) == STEPS - 1 - len(audited) - fused_calls.count(False)
    plain, _ = _run(_branching, args, make_optim, False)
    _assert_near(fused, plain)


@pytest.mark.filterwarnings("ignore:Encountered NaN:UserWarning")  # Pyro's, from the plain steps: NaN on purpose here
def test_a_nan_step_writes_nothing_and_is_skipped_or_raised(fused_calls):
    """A param turned NaN after step 5: the program writes nothing on each later step; fit skips the
    step (on_nan="skip") or raises at it (on_nan="raise"), as its check does unfused."""
    def poison(step, loss):
        if step == 5:
            with torch.no_grad():
                pyro.get_param_store().get_param("loc").unconstrained().fill_(float("nan"))

    make_optim = lambda: pyro.optim.Adam({"lr": 0.01})  # noqa: E731
    result, state = _run(_normal, _normal_args(), make_optim, "inductor", num_steps=12, callback=poison, on_nan="skip")
    assert result.skipped_steps == 7 and result.compiled_steps == 11
    assert fused_calls.count(True) == 11 - 4  # recorded steps 1, 2, 4, 8 audited
    assert all(float(saved["state"][0]["step"]) == 5 for saved in state.values())
    assert torch.isnan(result.params["loc"]) and torch.isfinite(result.params["scale"])
    # on_nan="raise": step 6 (recorded step 5, fused) raises, as the plain run does, nothing written
    fused_calls.clear()
    with pytest.raises(TrainingDivergedError, match="at step 6") as caught:
        _run(_normal, _normal_args(), make_optim, "inductor", num_steps=12, callback=poison)
    assert caught.value.step == 6 and fused_calls == [True, True]  # recorded steps 3 and 5


def test_adam_slots_takes_plain_adam_only():
    model, guide = _coin()
    args = _coin_args()

    def slots(optim):
        pyro.clear_param_store()
        pyro_vi.fit(model, guide, *args, num_steps=1, progress=False, compile=False, optim=optim)
        params = [pyro.get_param_store().get_param(name).unconstrained() for name in ("alpha_q", "beta_q")]
        return wholestep.adam_slots(optim, params)

    taken = slots(pyro.optim.Adam({"lr": 0.01, "weight_decay": 0.1}))
    assert [slot.hyper for slot in taken] == [(0.01, 0.9, 0.999, 1e-8, 0.1)] * 2
    assert all(float(slot.step) == 1 for slot in taken)
    assert slots(pyro.optim.Adam({"lr": 0.01, "amsgrad": True})) is None
    assert slots(pyro.optim.Adam({"lr": 0.01}, {"clip_norm": 1.0})) is None
    assert slots(pyro.optim.ClippedAdam({"lr": 0.01})) is None
    assert slots(pyro.optim.SGD({"lr": 0.01})) is None
    scheduler = pyro.optim.ExponentialLR({"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.01}, "gamma": 0.9})
    assert slots(scheduler) is None
