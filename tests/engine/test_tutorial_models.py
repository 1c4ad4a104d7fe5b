"""Ten model/guide pairs from Pyro's own tutorials and examples (tests/tutorial_models/), each run
unchanged through ``pyro_vi.fit`` and through plain ``pyro.infer.SVI`` from the same seed with the
same loss and optimizer.

Same parameters, bit for bit (``torch.equal``), and the same loss at every step: ``fit``'s step is
``SVI.step`` spelled out (the same ``loss_and_grads`` call under ``poutine.trace(param_only=True)``,
the same Pyro optimizer on the same params), so every random draw and every float operation is the
same. (``fit`` drops the gradients after the update where ``SVI`` zeroes them; the next backward
then writes ``g`` instead of ``0 + g``, which is the same float.) Where the posterior has a closed
form it is checked too, with a tolerance from the measured Monte Carlo / optimization error.
"""

from __future__ import annotations


import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoDelta, AutoDiagonalNormal, AutoMultivariateNormal, AutoNormal

import pyro_vi
from pyro_vi import EpochSubsample, PerStep
from tutorial_models import MODELS, load



@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny tensors: intra-op threads only contend with the other jobs on the 2 shared cores (a
    # 16-element op measured 15x slower with 2 threads under load).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def data_of(module) -> dict:
    """``make_data()`` as the CLI passes an .npz: one tensor per array, by name."""
    return {key: torch.as_tensor(value) for key, value in module.make_data().items()}


def store_params() -> dict:
    return {name: value.detach().clone() for name, value in pyro.get_param_store().items()}


def fit_and_svi(name, pair, *, loss, optim, num_steps, seed=0, args=(), kwargs=None, after_step=None, compile=None):
    """Run ``pair(fresh module)`` = (model, guide) through ``pyro_vi.fit``, then a fresh copy through
    ``pyro.infer.SVI``, from ``seed``; ``loss``/``optim`` are factories (each run gets its own).
    ``after_step(module)`` runs after every step on both sides (fit: as its callback). A ``PerStep``
    argument is evaluated per step on the SVI side too. Returns (fit result, module of the fit
    run, SVI's params, SVI's losses)."""
    kwargs = kwargs or {}
    pyro.clear_param_store()
    fitted = load(name)
    model, guide = pair(fitted)
    result = pyro_vi.fit(
        model, guide, *args, num_steps=num_steps, loss=loss(), optim=optim(), seed=seed, progress=False,
        callback=None if after_step is None else (lambda step, value: after_step(fitted)), compile=compile, **kwargs,
    )

    pyro.clear_param_store()
    reference = load(name)
    model, guide = pair(reference)
    pyro.set_rng_seed(seed)
    svi = SVI(model, guide, optim(), loss=loss())
    losses = []
    for step in range(num_steps):
        step_args = [value(step) if isinstance(value, PerStep) else value for value in args]
        step_kwargs = {key: value(step) if isinstance(value, PerStep) else value for key, value in kwargs.items()}
        losses.append(svi.step(*step_args, **step_kwargs))
        if after_step is not None:
            after_step(reference)
    return result, fitted, store_params(), losses


def fit_alone(name, pair, *args, **options):
    """``pyro_vi.fit`` on a fresh copy of the pair; returns (result, module)."""
    pyro.clear_param_store()
    module = load(name)
    model, guide = pair(module)
    return pyro_vi.fit(model, guide, *args, progress=False, **options), module


def assert_same_run(result, svi_params, svi_losses):
    assert result.steps == len(svi_losses)
    assert sorted(result.params) == sorted(svi_params)
    assert svi_params, "no params to compare"
    for name, value in svi_params.items():
        assert torch.equal(result.params[name], value), f"param {name!r} differs from plain SVI's"
    assert result.losses == svi_losses


def beta_kl(a, b, a0, b0) -> float:
    return float(torch.distributions.kl_divergence(dist.Beta(float(a), float(b)), dist.Beta(float(a0), float(b0))))


# 1. SVI Part I: the coin, Beta guide. Exact posterior Beta(16, 14).
def test_coin_svi_part_i_reaches_beta_16_14_and_plain_svi():
    data = data_of(load("coin"))["data"]
    num_steps = 300
    # 16 particles and a learning rate decayed 50x: the Monte Carlo noise of the last iterates is small.
    loss = lambda: Trace_ELBO(num_particles=16, vectorize_particles=True)  # noqa: E731
    optim = lambda: pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.02 ** (1 / num_steps)})  # noqa: E731
    # The same run as plain SVI (its first 50 steps), then the closed form (fit alone, 300 steps).
    result, _, params, losses = fit_and_svi("coin", lambda m: (m.model, m.guide), args=(data,), num_steps=50, seed=0,
                                            loss=loss, optim=optim)
    assert_same_run(result, params, losses)
    result, _ = fit_alone("coin", lambda m: (m.model, m.guide), data, num_steps=num_steps, seed=0, loss=loss(), optim=optim())
    alpha, beta = result.params["alpha_q"].item(), result.params["beta_q"].item()
    # Measured over seeds 0-3: alpha 15.78-16.08, beta 13.59-14.18, posterior mean within 0.004 of
    # 16/30 (the posterior sd is 0.090), KL(q || Beta(16, 14)) 0.00007-0.0011. Bounds ~3-5x those
    # errors; the tutorial's own start, Beta(15, 15), is at KL 0.069 and mean 0.5.
    assert abs(alpha - 16) < 0.7 and abs(beta - 14) < 0.7
    assert abs(alpha / (alpha + beta) - 16 / 30) < 0.012
    assert beta_kl(alpha, beta, 16, 14) < 0.006 < beta_kl(15, 15, 16, 14)


# 2. SVI Part III: NonreparameterizedBeta guide, TraceGraph_ELBO, decaying-average baseline.
def test_coin_nonreparameterized_tracegraph_matches_plain_svi():
    result, _, params, losses = fit_and_svi(
        "coin_nonreparam", lambda m: (m.model, m.guide), args=(True,), num_steps=100, seed=0,
        loss=TraceGraph_ELBO, optim=lambda: pyro.optim.Adam({"lr": 0.0005, "betas": (0.93, 0.999)}),
    )
    assert_same_run(result, params, losses)
    assert result.params["alpha_q"].item() != 15.0  # the score-function gradient moved it


@pytest.mark.slow
def test_coin_nonreparameterized_reaches_beta_16_14():
    # The tutorial's stopping rule: both params within 0.8 of the exact posterior's (16, 14).
    module = load("coin_nonreparam")
    num_steps = 3000
    result = pyro_vi.fit(
        module.model, module.guide, True, num_steps=num_steps, loss=TraceGraph_ELBO(num_particles=8, vectorize_particles=True),
        optim=pyro.optim.ClippedAdam({"lr": 0.02, "betas": (0.93, 0.999), "lrd": 0.02 ** (1 / num_steps)}),
        seed=0, progress=False,
    )
    alpha, beta = result.params["alpha_q"].item(), result.params["beta_q"].item()
    assert abs(alpha - 16) < 0.8 and abs(beta - 14) < 0.8


# 3. MLE / MAP: an empty guide (no params in it), a Delta guide, AutoDelta.
@pytest.mark.parametrize(
    "pair, site, exact",
    [
        (lambda m: (m.model_mle, m.guide_mle), "latent_fairness", 0.6),  # MLE: 6/10
        (lambda m: (m.original_model, m.guide_map), "f_map", 15 / 28),  # MAP: mode of Beta(16, 14)
        (lambda m: (m.original_model, AutoDelta(m.original_model)), "AutoDelta.latent_fairness", 15 / 28),
    ],
    ids=["mle-empty-guide", "map-delta-guide", "map-autodelta"],
)
def test_mle_map_reach_the_exact_estimates_and_plain_svi(pair, site, exact):
    module = load("mle_map")
    data = data_of(module)["data"]
    result, _, params, losses = fit_and_svi(
        "mle_map", pair, args=(data,), num_steps=300, seed=0,
        loss=Trace_ELBO, optim=lambda: pyro.optim.Adam({"lr": 0.05}),
    )
    assert_same_run(result, params, losses)
    # No Monte Carlo noise (the Delta guide's sample is its param): only optimization error, which
    # measured below 1e-7 after 300 steps (float32 rounding); bound 1e-4.
    assert abs(result.params[site].item() - exact) < 1e-4


# 4. The GMM tutorial: config_enumerate model, AutoDelta(poutine.block(...)), TraceEnum_ELBO.
def test_gmm_tutorial_matches_plain_svi_and_the_tutorials_solution():
    module = load("gmm")
    data = data_of(module)["data"]

    # The tutorial's seed choice: the lowest initial loss (its own 100 seeds, here 10).
    def initial_loss(seed):
        pyro.clear_param_store()
        fresh = load("gmm")
        pyro.set_rng_seed(seed)
        return fresh.elbo.loss(fresh.model, fresh.global_guide, data)

    seed = min(range(10), key=initial_loss)
    result, fitted, params, losses = fit_and_svi(
        "gmm", lambda m: (m.model, m.global_guide), args=(data,), num_steps=200, seed=seed,
        loss=lambda: TraceEnum_ELBO(max_plate_nesting=1), optim=lambda: pyro.optim.Adam({"lr": 0.1, "betas": [0.8, 0.99]}),
    )
    assert_same_run(result, params, losses)
    estimates = fitted.global_guide.median(data)
    order = torch.argsort(estimates["locs"])
    # The tutorial prints weights [0.375, 0.625], locs [0.499, 10.98], scale 0.659 after 200 steps.
    # Enumeration and a Delta guide leave no Monte Carlo noise: the MAP weights are exactly
    # (n_k - 1/2) / (5 - 1) for the clusters {0, 1} and {10, 11, 12}. Measured (seed 4, the best of
    # 10): weights within 1e-6, locs 0.4990 and 10.9836, scale 0.651 (still shrinking at step 200;
    # the tutorial's run, from its own seed, printed 0.659). Bounds: 0.01, 0.02, 0.02.
    assert torch.allclose(estimates["weights"][order], torch.tensor([0.375, 0.625]), atol=0.01)
    assert torch.allclose(estimates["locs"][order], torch.tensor([0.499, 10.984]), atol=0.02)
    assert abs(estimates["scale"].item() - 0.659) < 0.02


# 5. Bayesian regression: PyroModule[nn.Linear] + PyroSample, the tutorial's AutoDiagonalNormal.
def test_bayesian_regression_tutorial_matches_plain_svi():
    module = load("bayesian_regression")
    data = data_of(module)
    result, fitted, params, losses = fit_and_svi(
        "bayesian_regression", lambda m: (m.model, m.guide), args=(data["x"], data["y"]), num_steps=300, seed=1,
        loss=Trace_ELBO, optim=lambda: pyro.optim.Adam({"lr": 0.1}),
    )
    assert_same_run(result, params, losses)
    # The fit starts with the bias at 0. Reference: the exact posterior with the noise fixed at its
    # true 0.9 has bias mean 9.03 (sd 0.16); least squares leaves residual sd 0.79. Measured: bias
    # 9.09, sigma 0.83 after these 300 steps (9.01 and 0.78 after 500); bounds ~2 posterior sds.
    median = fitted.guide.median(data["x"], data["y"])
    assert abs(median["linear.bias"].item() - 9.03) < 0.3
    assert abs(median["sigma"].item() - 0.79) < 0.15


# 5'. The same model with the noise known: Gaussian posterior in closed form.
@pytest.mark.parametrize("guide_class", [AutoNormal, AutoDiagonalNormal, AutoMultivariateNormal])
def test_regression_known_noise_reaches_the_gaussian_posterior(guide_class):
    module = load("regression_known_noise")
    data = data_of(module)
    mean, covariance = module.exact_posterior(data["x"], data["y"])
    # The same run as plain SVI (50 steps), then the closed form (fit alone, 600 steps).
    result, _, params, losses = fit_and_svi(
        "regression_known_noise", lambda m: (m.model, guide_class(m.model)), args=(data["x"], data["y"]),
        num_steps=50, seed=0, loss=Trace_ELBO, optim=lambda: pyro.optim.ClippedAdam({"lr": 0.2, "lrd": 0.999}),
    )
    assert_same_run(result, params, losses)
    num_steps = 600
    result, _ = fit_alone(
        "regression_known_noise", lambda m: (m.model, guide_class(m.model)), data["x"], data["y"], num_steps=num_steps,
        seed=0,
        # One particle (nn.Linear does not take vectorized particles), learning rate decayed 100x.
        loss=Trace_ELBO(), optim=pyro.optim.ClippedAdam({"lr": 0.2, "lrd": 0.01 ** (1 / num_steps)}),
    )
    q_mean, q_sd, q_cov = _guide_moments(guide_class, result.params)
    exact_sd = np.sqrt(np.diag(covariance))
    # Mean field (AutoNormal, AutoDiagonalNormal) on a Gaussian posterior: exact means, sds
    # 1/sqrt(precision_ii); the full-rank guide: the exact covariance.
    target_sd = exact_sd if guide_class is AutoMultivariateNormal else 1 / np.sqrt(np.diag(np.linalg.inv(covariance)))
    # Measured over seeds 0-2 (each guide): |q mean - exact| up to 0.27 posterior sd; sd ratios
    # 0.91-1.12 (mean field) and 0.84-1.05 (full rank, whose scale_tril converges more slowly). Bounds: 0.5 sd and 25%. The start (bias at 0) is
    # 57 posterior sds away.
    assert np.all(np.abs(q_mean - mean) < 0.5 * exact_sd), (q_mean, mean)
    assert np.all(np.abs(q_sd / target_sd - 1) < 0.25), (q_sd, target_sd)
    if q_cov is not None:
        correlation = q_cov / np.outer(q_sd, q_sd)
        exact_correlation = covariance / np.outer(exact_sd, exact_sd)
        assert np.abs(correlation - exact_correlation).max() < 0.2, (correlation, exact_correlation)


def _guide_moments(guide_class, params):
    """(mean, sd, covariance or None) of q over (weight_1..3, bias), from the fitted params."""
    if guide_class is AutoNormal:
        mean = np.concatenate([params["AutoNormal.locs.linear.weight"].reshape(-1).numpy(), params["AutoNormal.locs.linear.bias"].numpy()])
        sd = np.concatenate([params["AutoNormal.scales.linear.weight"].reshape(-1).numpy(), params["AutoNormal.scales.linear.bias"].numpy()])
        return mean.astype(np.float64), sd.astype(np.float64), None
    if guide_class is AutoDiagonalNormal:
        return params["AutoDiagonalNormal.loc"].double().numpy(), params["AutoDiagonalNormal.scale"].double().numpy(), None
    scale_tril = (params["AutoMultivariateNormal.scale"][:, None] * params["AutoMultivariateNormal.scale_tril"]).double()
    covariance = (scale_tril @ scale_tril.T).numpy()
    return params["AutoMultivariateNormal.loc"].double().numpy(), np.sqrt(np.diag(covariance)), covariance


# 6. Eight schools with JitTrace_ELBO.
# JitTrace_ELBO traces the model with torch.jit.trace: its TracerWarnings (len(data), torch.tensor constants
# inside torch.distributions) are the point of a traced model, as in Pyro's own JIT tests.
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_eight_schools_jit_matches_plain_svi():
    module = load("eight_schools")
    data = data_of(module)["data"]
    result, _, params, losses = fit_and_svi(
        "eight_schools", lambda m: (m.model, m.guide), args=(data,), num_steps=200, seed=0,
        loss=JitTrace_ELBO, optim=lambda: pyro.optim.Adam({"lr": 0.01}),
    )
    assert_same_run(result, params, losses)
    # The per-school effects stay per school (not washed out by a shuffled pairing).
    assert result.params["loc_eta"].shape == (8,) and result.params["loc_eta"].std() > 0.1


# 7. Sparse gamma DEF with clip_params() after every step (fit's callback).
def test_sparse_gamma_def_with_clip_params_callback_matches_plain_svi():
    module = load("sparse_gamma_def")
    data = data_of(module)["x"]
    bounds = {"alpha": -2.5, "mean": -4.5}  # the example's clip_params
    calls, clipped = {}, {}

    def after_step(m):
        # Before clipping: did the step push a param below its bound (so that the clip matters)?
        below = any(bool((value < bounds[name.split("_")[0]]).any()) for name, value in pyro.get_param_store().items())
        calls[id(m)] = calls.get(id(m), 0) + 1
        clipped[id(m)] = clipped.get(id(m), 0) + below
        m.clip_params()

    num_steps = 60
    result, fitted, params, losses = fit_and_svi(
        "sparse_gamma_def", lambda m: (m.model, m.guide), args=(data,), num_steps=num_steps, seed=0,
        loss=TraceMeanField_ELBO, optim=lambda: pyro.optim.AdagradRMSProp({"eta": 4.5, "t": 0.1}),
        after_step=after_step,
    )
    assert_same_run(result, params, losses)
    assert calls[id(fitted)] == num_steps  # clip_params ran after every step of fit
    assert clipped[id(fitted)] > 0  # and the clip changed params at some steps (not a no-op)
    for name, value in result.params.items():
        assert value.min() >= bounds[name.split("_")[0]], name


# 8. The VAE tutorial (pyro.module), minibatches as the tutorial's DataLoader gives them.
def test_vae_tutorial_minibatches_match_plain_svi():
    module = load("vae")
    images = data_of(module)["x"]
    batches = EpochSubsample(len(images), 8, seed=0)
    minibatch = PerStep(lambda step: images[batches(step)])
    result, _, params, losses = fit_and_svi(
        "vae", lambda m: (m.model, m.guide), args=(minibatch,), num_steps=40, seed=0,
        loss=Trace_ELBO, optim=lambda: pyro.optim.Adam({"lr": 1e-2}),
    )
    assert_same_run(result, params, losses)
    assert any(name.startswith("encoder$$$") for name in params) and any(name.startswith("decoder$$$") for name in params)
    # Bernoulli pixels starting near 0.5: ~784 log 2 = 543 nats/image; 40 steps learn the sparsity.
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4


# 9. Nested plates (x_axis dim -2, y_axis dim -1): two-way random effects, exact posterior.
def test_nested_plates_reach_the_exact_posterior_and_plain_svi():
    module = load("nested_plates")
    data = data_of(module)["data"]
    num_steps = 500
    loss = lambda: Trace_ELBO(num_particles=16, vectorize_particles=True)  # noqa: E731
    optim = lambda: pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.01 ** (1 / num_steps)})  # noqa: E731
    # The same run as plain SVI (its first 50 steps), then the closed form (fit alone, 500 steps).
    result, _, params, losses = fit_and_svi("nested_plates", lambda m: (m.model, m.guide), args=(data,), num_steps=50,
                                            seed=0, loss=loss, optim=optim)
    assert_same_run(result, params, losses)
    result, _ = fit_alone("nested_plates", lambda m: (m.model, m.guide), data, num_steps=num_steps, seed=0,
                          loss=loss(), optim=optim())
    mean, sd = module.exact_posterior(data)
    q_mean = np.concatenate([result.params["row_loc"].reshape(-1).numpy(), result.params["column_loc"].numpy()])
    q_sd = np.concatenate([result.params["row_scale"].reshape(-1).numpy(), result.params["column_scale"].numpy()])
    # Mean field on a Gaussian posterior: exact means, sds 1/sqrt(precision_ii). Measured over seeds
    # 0-2: mean errors up to 0.04 posterior sd, sds within 2%; bounds ~4x.
    assert np.all(np.abs(q_mean - mean) < 0.15 * sd), (q_mean, mean)
    assert np.all(np.abs(q_sd / sd - 1) < 0.08), (q_sd, sd)


# 10. Discrete latents in the guide: Bernoulli sites enumerated (TraceEnum) or sampled (TraceGraph).
@pytest.mark.parametrize("enumerated", [True, False], ids=["traceenum-enumerated-guide", "tracegraph-sampled-guide"])
def test_discrete_guide_matches_plain_svi(enumerated):
    def pair(module):
        module.enumerated = enumerated
        return module.model, module.guide_enumerated if enumerated else module.guide

    loss = (lambda: TraceEnum_ELBO(max_plate_nesting=2)) if enumerated else TraceGraph_ELBO
    result, _, params, losses = fit_and_svi(
        "discrete_guide", pair, num_steps=50, seed=0, loss=loss, optim=lambda: pyro.optim.Adam({"lr": 0.05}),
    )
    assert_same_run(result, params, losses)
    assert result.params["p_x"].item() != pytest.approx(0.1)


# Resume, in a fresh copy of the model file (as a new process would): bit for bit the uninterrupted
# run, also where the run's first call draws random numbers later calls do not.
RESUMED = {
    "autoguide-init-to-median": ("bayesian_regression", lambda m: (m.model, m.guide), Trace_ELBO, None),
    "random-param-init": ("sparse_gamma_def", lambda m: (m.model, m.guide), TraceMeanField_ELBO, None),
    "max-plate-nesting-guess": ("coin", lambda m: (m.model, m.guide), lambda: Trace_ELBO(num_particles=4, vectorize_particles=True), None),
    "jit-compile": ("eight_schools", lambda m: (m.model, m.guide), JitTrace_ELBO, None),
    "tracegraph-baseline": ("coin_nonreparam", lambda m: (m.model, m.guide), TraceGraph_ELBO, (True,)),
    "pyro-module": ("vae", lambda m: (m.model, m.guide), Trace_ELBO, None),
    "enumeration-autodelta": ("gmm", lambda m: (m.model, m.global_guide), lambda: TraceEnum_ELBO(max_plate_nesting=1), None),
}


@pytest.mark.parametrize("case", sorted(RESUMED))
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the jit-compile case: see test_eight_schools_jit_matches_plain_svi
def test_resume_is_bit_exact(tmp_path, case):
    name, pair, loss, args = RESUMED[case]
    args = tuple(data_of(load(name)).values()) if args is None else args
    path = tmp_path / "run.pt"

    def run(**options):
        pyro.clear_param_store()
        model, guide = pair(load(name))
        return pyro_vi.fit(model, guide, *args, num_steps=16, loss=loss(), optim=pyro.optim.Adam({"lr": 0.01}),
                           progress=False, **options)

    reference = run(seed=0)
    assert run(seed=0, checkpoint=path, callback=lambda step, value: step == 8).steps == 8
    pyro.set_rng_seed(123)  # the checkpoint's RNG state, not this one, must drive the rest
    resumed = run(checkpoint=path, resume=True)
    assert resumed.losses == reference.losses
    assert sorted(resumed.params) == sorted(reference.params)
    for key, value in reference.params.items():
        assert torch.equal(resumed.params[key], value), key


@pytest.mark.parametrize("name", ["coin", "gmm", "bayesian_regression", "eight_schools", "coin_nonreparam"])
def test_auto_compile_on_tutorial_models_matches_plain_svi(name, monkeypatch):
    """compile="auto" (here on runs of 30+ steps instead of 1000, the same decisions) on
    tutorial models run unchanged: the steps are replayed from step 2 on, and the run is still plain
    SVI's, bit for bit (losses and parameters), for the Beta guide, the enumerated GMM (TraceEnum_ELBO,
    AutoDelta), the PyroModule regression with AutoDiagonalNormal and eight schools (whose guide draws
    torch.randn on every call), and SVI Part III's non-reparameterized coin with TraceGraph_ELBO (its
    baseline switch off: a decaying average is refused, see test_compiled_coverage)."""
    from pyro_vi.engine.compile import policy as autocompile

    monkeypatch.setattr(autocompile, "AUTO_MIN_STEPS", 30)
    data = data_of(load(name))
    if name == "gmm":
        pair, loss = (lambda m: (m.model, m.global_guide)), (lambda: TraceEnum_ELBO(max_plate_nesting=1))
    elif name == "coin_nonreparam":
        pair, loss = (lambda m: (m.model, m.guide)), TraceGraph_ELBO
    else:
        pair, loss = (lambda m: (m.model, m.guide)), Trace_ELBO
    if name == "coin_nonreparam":
        args = (False,)  # the tutorial's use_decaying_avg_baseline
    else:
        args = (data["x"], data["y"]) if name == "bayesian_regression" else (data["data"],)
    result, _, params, losses = fit_and_svi(name, pair, args=args, num_steps=40, seed=1, loss=loss,
                                            optim=lambda: pyro.optim.Adam({"lr": 0.05}), compile="auto")
    assert result.compiled_steps == 39
    assert_same_run(result, params, losses)
