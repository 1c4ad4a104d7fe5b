"""pyro_vi.fit_many: R independent runs as one batched step, checked against fit and closed forms."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vi import conjugate, fit
from pyro_vi.engine.many import BatchingFallback, fit_many, run_seeds
from pyro_vi.errors import ConfigError

NORMAL = conjugate.NormalNormal(torch.zeros(2), torch.eye(2), torch.eye(2))
NORMAL_DATA = torch.tensor([[1.2, 0.4], [0.8, 1.9], [2.1, 0.7], [1.0, 1.1], [0.3, 1.6]] * 4)  # (20, 2)
COIN = conjugate.BetaBernoulli(10.0, 10.0)


def normal_model(data):
    """NORMAL's model written with diagonal Normals (its covariances are identities, so the same
    model and posterior): MultivariateNormal's triangular solves under vmap cost ~40 ms a step here."""
    z = pyro.sample("z", dist.Normal(data.new_zeros(2), 1.0).to_event(1))
    with pyro.plate("data", data.shape[0]):
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=data)
COIN_DATA = torch.tensor([1.0] * 6 + [0.0] * 4)  # the tutorial's coin: posterior Beta(16, 14)


def coin_guide(data):
    """q = Beta(alpha, beta) from the tutorial's start (15, 15)."""
    alpha = pyro.param("alpha", data.new_tensor(15.0), constraint=dist.constraints.positive)
    beta = pyro.param("beta", data.new_tensor(15.0), constraint=dist.constraints.positive)
    pyro.sample("probs", dist.Beta(alpha, beta))


STEPS = 300  # with annealed(): the learning rate sums to 6.6, enough to travel from the start (loc 0, scale 1)


def annealed():
    # ClippedAdam's learning-rate decay (0.1 * 0.985^t, 0.0011 at step 300) lets the runs settle.
    return pyro.optim.ClippedAdam({"lr": 0.1, "lrd": 0.985})


def normal_kl(loc, scale):
    q = dist.Normal(loc, scale).to_event(1)
    return float(NORMAL.log_evidence(NORMAL_DATA) - NORMAL.elbo(q, NORMAL_DATA))


def coin_kl(alpha, beta):
    return float(torch.distributions.kl_divergence(dist.Beta(alpha, beta), COIN.posterior(COIN_DATA)))


# -- structure -----------------------------------------------------------------------------------


def test_result_shapes_and_runs_are_not_copies():
    result = fit_many(NORMAL.model, NORMAL.mean_field_guide, NORMAL_DATA, runs=4, num_steps=5, progress=False)
    assert result.batched and result.fallback_reason is None and result.per_run_streams
    assert result.params["z_loc"].shape == (4, 2) and result.params["z_scale"].shape == (4, 2)
    assert result.losses.shape == (4, 5) and result.losses.dtype == torch.float64
    assert result.times.shape == (5,) and bool((result.times.diff() >= 0).all()) and float(result.times[0]) > 0
    assert bool(torch.isfinite(result.losses).all()) and not bool(result.diverged.any())
    assert result.seeds == run_seeds(0, 4)
    # Every pair of runs differs in every step's loss and in its params: no run is a copy of another.
    for i in range(4):
        for j in range(i):
            assert bool((result.losses[i] != result.losses[j]).all())
            assert not torch.equal(result.params["z_loc"][i], result.params["z_loc"][j])


def test_run_seeds_depend_on_seed_and_run_only():
    assert run_seeds(3, 8)[:2] == run_seeds(3, 2)
    assert run_seeds(3, 2) != run_seeds(4, 2)
    assert len({s for pair in run_seeds(0, 8) for s in pair}) == 16


def test_options_are_checked():
    with pytest.raises(ConfigError, match="runs must be a positive integer"):
        fit_many(NORMAL.model, NORMAL.mean_field_guide, NORMAL_DATA, runs=0, num_steps=1)
    with pytest.raises(ConfigError, match="on_nan"):
        fit_many(NORMAL.model, NORMAL.mean_field_guide, NORMAL_DATA, runs=2, num_steps=1, on_nan="ignore")


# -- correctness against closed forms ------------------------------------------------------------


def test_normal_normal_runs_reach_the_posterior_as_a_single_fit_does():
    # Tolerance from the Monte Carlo error of the final params. The posterior is N(m, s^2 I), s = 21^-0.5
    # = 0.218. With one reparameterized draw, the loc's gradient is (loc - m)/s^2 + noise of sd 1/s;
    # Adam divides by sqrt(E g^2) ~ 1/s, so in units delta = (loc - m)/s a step of size eta moves
    # delta by -(eta/s)(delta + e), e of unit variance (Adam's momentum averages e but keeps the sum of its
    # autocorrelations at 1): stationary Var(delta) = eta/(2s). The decaying rate freezes that spread
    # where the relaxation time s/eta reaches the decay time 1/(1 - 0.985), eta* = 0.015 s: Var(delta)
    # ~ 0.0075, E[KL from the 2 locs] = sum delta^2/2 ~ 0.0075; the log-scales (gradient noise sd
    # sqrt 2, pull 2 rho) add E[rho^2] ~ eta*/(2 sqrt 2) ~ 0.001 each. So E[KL] ~ 0.01 nats per run, a
    # weighted chi-square with 4 dof: 0.1 nats per run (P(chi2_1 > 13) = 3e-4 even if one term carried
    # it all) and 0.05 for the mean of 8 runs (chi2_32 at 5x its mean: < 1e-9) fail only a biased run.
    # One plain fit with the same optimizer and steps meets the same bound (asserted first).
    tolerance = 0.1
    single = fit(normal_model, NORMAL.mean_field_guide, NORMAL_DATA, num_steps=STEPS, optim=annealed(), seed=1, progress=False)
    assert normal_kl(single.params["z_loc"], single.params["z_scale"]) < tolerance
    pyro.clear_param_store()
    result = fit_many(normal_model, NORMAL.mean_field_guide, NORMAL_DATA, runs=8, num_steps=STEPS, optim=annealed(), progress=False)
    assert result.batched
    kls = [normal_kl(result.params["z_loc"][r], result.params["z_scale"][r]) for r in range(8)]
    assert max(kls) < tolerance and sum(kls) / len(kls) < tolerance / 2, kls


def test_coin_runs_reach_the_beta_posterior_as_a_single_fit_does():
    # Beta(16, 14) exactly. The same Monte Carlo argument as for the Normal pair, per direction of the
    # KL's Hessian in (log alpha, log beta) at the optimum (eigenvalues h = 0.26, 15.4; the one-draw
    # gradient's noise along them sd = 0.51, 3.9, both computed once with 20,000 draws): E[KL] ~
    # sum eta_i sd_i / 4 with eta_i = max(final rate 0.0011, freezing rate 0.015 sd_i / h_i) ~ 0.0075
    # nats per run; the tolerances are the Normal pair's (over 10x that per run, 5x for the mean).
    # The batched runs draw their Betas from taped gammas (Marsaglia-Tsang) with torch's gamma gradient.
    tolerance = 0.1
    single = fit(COIN.model, coin_guide, COIN_DATA, num_steps=STEPS, optim=annealed(), seed=1, progress=False)
    assert coin_kl(single.params["alpha"], single.params["beta"]) < tolerance
    pyro.clear_param_store()
    result = fit_many(COIN.model, coin_guide, COIN_DATA, runs=8, num_steps=STEPS, optim=annealed(), progress=False)
    assert result.batched and result.per_run_streams
    kls = [coin_kl(result.params["alpha"][r], result.params["beta"][r]) for r in range(8)]
    assert max(kls) < tolerance and sum(kls) / len(kls) < tolerance / 2, kls


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["normal", "coin"])
def test_spread_across_runs_matches_separate_fits(problem):
    """Two-sample Kolmogorov-Smirnov test of the final first param across 24 batched runs against
    24 separate ``fit`` runs (the batch's sequential path: ``batched=False``, each run a plain
    ``fit``). Under equal distributions the statistic exceeds the 0.001 critical value with
    probability 0.001 (seeded: the test is deterministic); the critical value for n = m = 24 is
    1.95 * sqrt(2 / 24) = 0.56, so a batch whose spread were off by a factor 2 would fail."""
    from scipy import stats

    model, guide, data, name = ((normal_model, NORMAL.mean_field_guide, NORMAL_DATA, "z_loc") if problem == "normal"
                                else (COIN.model, coin_guide, COIN_DATA, "alpha"))
    options = {"runs": 24, "num_steps": 150, "progress": False}
    batched = fit_many(model, guide, data, optim=pyro.optim.Adam({"lr": 0.05}), **options)
    separate = fit_many(model, guide, data, optim=pyro.optim.Adam({"lr": 0.05}), batched=False, **options)
    assert batched.batched and not separate.batched
    first = lambda values: values.reshape(24, -1)[:, 0].numpy()
    assert stats.ks_2samp(first(batched.params[name]), first(separate.params[name])).pvalue > 1e-3
    # and the losses of the last step, as a second statistic of the same runs
    assert stats.ks_2samp(batched.losses[:, -1].numpy(), separate.losses[:, -1].numpy()).pvalue > 1e-3


# -- per-run generators, resume, NaN ---------------------------------------------------------------


def test_a_run_alone_and_in_a_batch_of_eight_agree():
    options = {"num_steps": 30, "optim": pyro.optim.Adam({"lr": 0.05}), "progress": False}
    batch = fit_many(COIN.model, coin_guide, COIN_DATA, runs=8, **options)
    alone = fit_many(COIN.model, coin_guide, COIN_DATA, runs=1, **options)
    assert batch.per_run_streams and alone.per_run_streams
    # Run 0 draws the same numbers from its own generator either way; only the batched reductions'
    # float rounding may differ (a few ulps over 30 steps).
    torch.testing.assert_close(alone.losses[0], batch.losses[0], rtol=1e-5, atol=1e-5)
    for name in ("alpha", "beta"):
        torch.testing.assert_close(alone.params[name][0], batch.params[name][0], rtol=1e-5, atol=1e-6)


def test_resume_of_a_batch_is_bit_exact(tmp_path):
    options = {"runs": 3, "optim": pyro.optim.Adam({"lr": 0.05}), "progress": False}
    straight = fit_many(normal_model, NORMAL.mean_field_guide, NORMAL_DATA, num_steps=20, **options)
    path = tmp_path / "batch.pt"
    first = fit_many(normal_model, NORMAL.mean_field_guide, NORMAL_DATA, num_steps=10, checkpoint=path, **options)
    assert first.steps == 10 and path.is_file()
    resumed = fit_many(normal_model, NORMAL.mean_field_guide, NORMAL_DATA, num_steps=20, checkpoint=path, resume=True, **options)
    assert resumed.steps == 20 and resumed.steps_this_call == 10
    assert torch.equal(resumed.losses, straight.losses)
    for name, value in straight.params.items():
        assert torch.equal(resumed.params[name], value)


def _sqrt_model(data, scale_of):
    def model(data):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, scale_of(pyro.param("s"))), obs=data)
    return model


def _sqrt_guide(data):
    pyro.param("s", torch.randn(()))  # a random start per run: negative in some runs
    loc = pyro.param("loc", torch.zeros(()))
    pyro.sample("z", dist.Normal(loc, 1.0))


def test_a_nan_in_one_run_freezes_it_and_leaves_the_others_unchanged():
    # sqrt(s) is NaN for the runs that start with s < 0; with |s| instead no run diverges, and the
    # runs with s > 0 compute exactly the same numbers in both.
    data = torch.tensor(0.5)
    options = {"runs": 8, "num_steps": 15, "optim": pyro.optim.Adam({"lr": 0.01}), "progress": False}
    with pyro.validation_enabled(False):  # Pyro would refuse a NaN scale before the engine sees it
        nan = fit_many(_sqrt_model(data, torch.sqrt), _sqrt_guide, data, **options)
        clean = fit_many(_sqrt_model(data, lambda s: s.abs().sqrt()), _sqrt_guide, data, **options)
    assert nan.batched
    negative = clean.params["s"] < 0  # s moves by at most 15 * 0.01, far less than the starts' gaps from 0 here
    assert 0 < int(negative.sum()) < 8
    assert torch.equal(nan.diverged, negative)
    assert bool(torch.isnan(nan.losses[negative]).all())
    for name in ("s", "loc"):
        assert torch.equal(nan.params[name][~negative], clean.params[name][~negative])
    assert torch.equal(nan.losses[~negative], clean.losses[~negative])
    start = torch.stack([_start(seed) for seed, _ in run_seeds(0, 8)])
    assert torch.equal(nan.params["s"][negative], start[negative])  # frozen where they started


def _start(init_seed):
    pyro.set_rng_seed(init_seed)
    return torch.randn(())


def test_skip_keeps_a_run_going_past_its_nan_steps():
    data = torch.tensor(0.5)
    with pyro.validation_enabled(False):
        result = fit_many(_sqrt_model(data, torch.sqrt), _sqrt_guide, data, runs=8, num_steps=5, on_nan="skip",
                          optim=pyro.optim.Adam({"lr": 0.01}), progress=False)
    assert not bool(result.diverged.any())
    stuck = torch.isnan(result.losses).all(-1)
    assert bool(stuck.any()) and torch.equal(result.skipped_steps, stuck.to(torch.int64) * 5)


def test_every_run_diverging_raises():
    data = torch.tensor(0.5)
    from pyro_vi.errors import TrainingDivergedError

    with pyro.validation_enabled(False), pytest.raises(TrainingDivergedError, match="every one of the 2 runs"):
        fit_many(_sqrt_model(data, lambda s: -s.abs().sqrt()), _sqrt_guide, data, runs=2, num_steps=3, progress=False)


# -- the one-after-another path ------------------------------------------------------------------


def _branching_model(data):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    if z > 0:  # data-dependent control flow: vmap cannot follow it
        pyro.sample("x", dist.Normal(z, 1.0), obs=data)
    else:
        pyro.sample("x", dist.Normal(-z, 1.0), obs=data)


def _branching_guide(data):
    loc = pyro.param("loc", torch.randn(()))
    pyro.sample("z", dist.Normal(loc, 1.0))


def test_a_model_vmap_cannot_follow_runs_one_after_another_as_fit():
    data = torch.tensor(1.0)
    with pytest.warns(BatchingFallback, match="one after another: vmap cannot follow"):
        result = fit_many(_branching_model, _branching_guide, data, runs=2, num_steps=10, progress=False)
    assert not result.batched and result.fallback_reason.startswith("vmap cannot follow")
    assert result.times.shape == (10,) and bool((result.times.diff() >= 0).all()) and float(result.times[0]) > 0
    for r, (init_seed, _) in enumerate(run_seeds(0, 2)):
        pyro.clear_param_store()
        single = fit(_branching_model, _branching_guide, data, num_steps=10, seed=init_seed, progress=False)
        assert torch.equal(result.params["loc"][r], single.params["loc"])
        assert result.losses[r].tolist() == single.losses
    with pytest.raises(ConfigError, match="cannot batch"):
        fit_many(_branching_model, _branching_guide, data, runs=2, num_steps=1, batched=True, progress=False)


def test_a_stateful_estimator_runs_one_after_another():
    from pyro_vi import get_estimator

    with pytest.warns(BatchingFallback, match="keeps state"):
        result = fit_many(COIN.model, coin_guide, COIN_DATA, runs=2, num_steps=5, loss=get_estimator("score-baseline"), progress=False)
    assert not result.batched and result.params["alpha"].shape == (2,)


@pytest.mark.parametrize("name", ["rloo", "stl"])
def test_pyro_vi_estimators_are_batched(name):
    from pyro_vi import get_estimator

    result = fit_many(COIN.model, coin_guide, COIN_DATA, runs=3, num_steps=5, loss=get_estimator(name, num_particles=2), progress=False)
    assert result.batched and bool(torch.isfinite(result.losses).all())



def test_ctrl_c_checkpoints_the_batch_and_resume_finishes_it_bit_exact(tmp_path):
    import os
    import signal

    from pyro_vi.errors import TrainingInterrupted

    calls = [0]

    def interrupted_model(data):
        calls[0] += 1
        if calls[0] == 12:  # a few steps in (the first calls create and check the params)
            os.kill(os.getpid(), signal.SIGINT)
        normal_model(data)

    options = {"runs": 3, "num_steps": 20, "optim": pyro.optim.Adam({"lr": 0.05}), "progress": False}
    straight = fit_many(normal_model, NORMAL.mean_field_guide, NORMAL_DATA, **options)
    path = tmp_path / "batch.pt"
    with pytest.raises(TrainingInterrupted, match="checkpoint saved") as caught:
        fit_many(interrupted_model, NORMAL.mean_field_guide, NORMAL_DATA, checkpoint=path, **options)
    assert 0 < caught.value.step < 20 and path.is_file()
    resumed = fit_many(normal_model, NORMAL.mean_field_guide, NORMAL_DATA, checkpoint=path, resume=True, **options)
    assert resumed.steps_this_call == 20 - caught.value.step
    assert torch.equal(resumed.losses, straight.losses)
    for name, value in straight.params.items():
        assert torch.equal(resumed.params[name], value)
