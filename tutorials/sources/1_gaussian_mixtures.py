# %% [markdown]
# # Tutorial 1: Gaussian mixtures, EM and SVI on the same ELBO
#
# A K-component Gaussian mixture,
#
# $$ z_n \sim \mathrm{Cat}(\pi), \qquad x_n \mid z_n = k \sim \mathcal N(\mu_k, \Sigma_k), $$
#
# is the model where variational inference and the classic EM algorithm meet. For any
# distribution q_n(z) over the assignment of point n, Jensen's inequality gives the ELBO
#
# $$ \mathcal L(q, \theta) = \sum_n \mathbb E_{q_n}\big[\log p(x_n, z_n \mid \theta) - \log q_n(z_n)\big] \le \log p(x \mid \theta), $$
#
# with equality when q_n(z) = p(z | x_n, theta). This tutorial shows
#
# 1. **EM as coordinate ascent** on L: the E-step maximizes over q (exactly), the M-step over theta
#    (in closed form), so L rises monotonically (`pyro_vi.fit_em`);
# 2. the **same model with SVI** (`pyro_vi.fit_svi`): a MAP guide with the assignments summed out
#    by enumeration (`TraceEnum_ELBO`), and a Bayesian guide (distributions over the parameters) whose assignments are sampled;
# 3. **scikit-learn's** `GaussianMixture` from the same start, as the reference.
#
# *Small mode.* With `PYRO_VI_TUTORIAL_SMALL=1` (how the test suite runs this notebook) the SVI
# runs are a few steps; the stored outputs are from the full mode.

# %%
import os
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets: plain bars, no warning

import matplotlib.pyplot as plt
import numpy as np
import torch

import pyro_vi
from pyro_vi import mixture

SMALL = os.environ.get("PYRO_VI_TUTORIAL_SMALL", "0") == "1"
MAP_STEPS = 15 if SMALL else 300          # SVI steps, MAP guide (enumerated assignments)
BAYESIAN_STEPS = 15 if SMALL else 6000   # SVI steps, Bayesian guide (sampled assignments): run until its ELBO stops moving
print("small mode" if SMALL else "full mode")

# %% [markdown]
# ## The data
#
# 500 points from a random mixture of three full-covariance Gaussians that overlap a little
# (`mixture.data.synthetic`: locations at least 3 standard deviations apart). We know the true
# parameters, so we can say how well every method did.

# %%
data = mixture.data.synthetic(num_components=3, dim=2, num_data=500, separation=3.0, seed=0)
x = data.train  # (500, 2), float64
print(x.shape, "true weights", data.true_params.weights.numpy().round(3))
print("average log-likelihood at the true parameters", round(mixture.eval.average_log_likelihood(x, data.true_params), 4))

COLORS = np.array([[0.12, 0.47, 0.71], [1.0, 0.5, 0.05], [0.17, 0.63, 0.17]])


def draw(axis, params, title, probabilities=None):
    """Points coloured by their responsibilities (a mix of the component colours), 2-sd ellipses."""
    probabilities = mixture.model.assignment_probabilities(x, params) if probabilities is None else probabilities
    axis.scatter(*x.T.numpy(), c=(probabilities.numpy() @ COLORS).clip(0, 1), s=6)
    angles = torch.linspace(0, 2 * torch.pi, 100, dtype=x.dtype)
    circle = torch.stack([angles.cos(), angles.sin()])
    for k in range(params.loc.shape[0]):
        outline = params.loc[k].unsqueeze(-1) + 2 * params.scale_tril[k] @ circle
        axis.plot(*outline.detach().numpy(), color=COLORS[k], lw=2)
        axis.plot(*params.loc[k].detach().numpy(), "kx")
    axis.set_title(title, fontsize=10)
    axis.set_xticks([])
    axis.set_yticks([])


figure, axis = plt.subplots(figsize=(4, 4))
draw(axis, data.true_params, "the data, coloured by the true components")
plt.show()

# %% [markdown]
# ## 1. EM is coordinate ascent on the ELBO
#
# `pyro_vi.fit_em` runs EM from an initialization, here `init="random"` (locations at random
# data points, every component with the data's covariance), so that it has work to do.
# `record_iterations` keeps the parameters after the iterations we want to look at.

# %%
em = pyro_vi.fit_em(x, num_components=3, init="random", seed=0, tol=1e-6, max_iter=300,
                    record_iterations=[0, 1, 2, 5, 20])
print(f"EM: {em.iterations} iterations, converged {em.converged}, "
      f"average log-likelihood {em.log_likelihoods[0]:.4f} -> {em.log_likelihoods[-1]:.4f}")

figure, axes = plt.subplots(1, 6, figsize=(16, 3))
for axis, iteration in zip(axes, [0, 1, 2, 5, 20]):
    draw(axis, em.snapshots[iteration], "initialization" if iteration == 0 else f"after iteration {iteration}")
draw(axes[-1], em.params, f"converged (iteration {em.iterations})")
figure.tight_layout()
plt.show()

# %% [markdown]
# Each iteration is two exact maximizations of the same function L(q, theta):
#
# * **E-step**, q_n(k) = p(z_n = k | x_n, theta) (the "responsibilities", read off the model's log
#   joint `mixture.model.log_joint_table`): the best q for fixed theta; the bound becomes tight,
#   L = log p(x | theta).
# * **M-step**, theta = argmax_theta sum_n E_{q_n} log p(x_n, z_n | theta): weighted means,
#   covariances and weights, in closed form, with q fixed.
#
# `mixture.em.e_step` and `mixture.em.m_step` are those two steps. Evaluating L after each
# half-step shows the staircase: L never goes down, and after each E-step it touches the
# log-likelihood.

# %%
def elbo(responsibilities, log_responsibilities, params):
    """L(q, theta) / N for q_n(k) = responsibilities[n, k] (flat priors: the log joint is log pi + log N)."""
    log_joint = mixture.model.log_joint_table(x, params)  # (N, K)
    terms = responsibilities * (log_joint - log_responsibilities)
    return float(terms.nan_to_num().sum(-1).mean())


params = em.initial_params
half_steps, values, log_likelihoods = [], [], []
for iteration in range(12):
    log_likelihood, log_responsibilities = mixture.em.e_step(x, params)  # E-step: q <- p(z | x, theta)
    responsibilities = log_responsibilities.exp()
    half_steps.append(iteration)
    values.append(elbo(responsibilities, log_responsibilities, params))
    log_likelihoods.append(float(log_likelihood))
    params = mixture.em.m_step(x, responsibilities, "full", reg_covar=1e-6)  # M-step: theta <- argmax
    half_steps.append(iteration + 0.5)
    values.append(elbo(responsibilities, log_responsibilities, params))
    log_likelihoods.append(mixture.eval.average_log_likelihood(x, params))

print("after each E-step, L(q, theta) - log p(x | theta) =", f"{max(abs(a - b) for a, b in zip(values[::2], log_likelihoods[::2])):.1e}")
print("smallest change of L over a half-step:", f"{min(np.diff(values)):.2e} (never negative)")

figure, axis = plt.subplots(figsize=(8, 4))
axis.step(half_steps, values, where="post", color="C0", label="ELBO L(q, theta)")
axis.plot(half_steps, log_likelihoods, "k.", label="log p(x | theta)")
axis.set(xlabel="EM iteration (E-step at t, M-step at t + 1/2)", ylabel="per data point (nats)",
         title="EM: coordinate ascent, the bound tight after every E-step")
axis.legend(loc="lower right")
figure.tight_layout()
plt.show()

# %% [markdown]
# ## 2. The same model with SVI
#
# `pyro_vi.mixture.model.model` is the mixture written in Pyro, with priors on the weights,
# locations and covariances. SVI climbs the same kind of ELBO by stochastic gradient, with two
# guides (`pyro_vi.fit_svi`, which starts from exactly EM's initialization for the same `seed`):
#
# * **MAP** (`guide="map"`): point masses (`AutoDelta`) for the global parameters, and the
#   assignments *enumerated*: `TraceEnum_ELBO` sums z_n out exactly, which is what EM's E-step
#   does. With flat priors (`prior=None`) the ELBO per point is the log-likelihood, and gradient
#   ascent on it should reach EM's answer, only more slowly.
# * **Bayesian** (`guide="bayesian"`): a Categorical q_n(z) per point whose assignments are
#   *sampled*, so their gradients are score-function estimates (`TraceGraph_ELBO`, tutorial 3),
#   and Gaussian / LogNormal q for the global parameters under proper priors
#   (`mixture.Prior.from_data`). Its ELBO includes the priors and the entropies of q, so it is a
#   different number from the log-likelihood: compare the shapes of the curves, not the levels.
#   Its noisy gradients make it slow (at 1,500 steps its curve is still rising), so it runs 6,000
#   steps, and before its numbers go into a table we check that they stopped moving: the mean ELBO
#   of the run's last tenth against the tenth before, within two standard errors, else the table
#   says "not converged".

# %%
map_fit = pyro_vi.fit_svi(x, num_components=3, guide="map", init="random", seed=0,
                          num_steps=MAP_STEPS, learning_rate=0.05)
print(f"SVI, MAP guide: ELBO per point {map_fit.elbos[0]:.4f} -> {map_fit.elbos[-1]:.4f} in {map_fit.steps} steps; "
      f"log-likelihood {mixture.eval.average_log_likelihood(x, map_fit.params):.4f}")
bayesian_fit = pyro_vi.fit_svi(x, num_components=3, guide="bayesian", init="random", seed=0,
                               prior=mixture.Prior.from_data(x, 3), num_steps=BAYESIAN_STEPS, learning_rate=0.05)
print(f"SVI, Bayesian guide: ELBO per point {bayesian_fit.elbos[0]:.4f} -> {np.mean(bayesian_fit.elbos[-20:]):.4f} "
      f"(mean of the last 20 steps); log-likelihood at q's point estimate {mixture.eval.average_log_likelihood(x, bayesian_fit.params):.4f}")


def tenth_change(elbos, batches=10):
    """The mean ELBO of the run's last tenth minus that of the tenth before, and the standard error
    of that difference. Successive one-sample ELBOs are correlated (q moves slowly), so each tenth's
    standard error comes from the spread of the means of ``batches`` consecutive batches."""
    tenth = len(elbos) // 10 // batches * batches
    if tenth < 2 * batches:
        return float("nan"), float("nan")
    last, before = (np.asarray(part).reshape(batches, -1).mean(1) for part in (elbos[-tenth:], elbos[-2 * tenth:-tenth]))
    return last.mean() - before.mean(), np.hypot(last.std(ddof=1), before.std(ddof=1)) / np.sqrt(batches)


change, standard_error = tenth_change(bayesian_fit.elbos)
BAYESIAN_CONVERGED = bool(abs(change) < 2 * standard_error)  # False too when the run is too short to judge
print(f"Bayesian guide, last tenth of the run against the tenth before: mean ELBO moved {change:+.4f} per point, "
      f"2 standard errors {2 * standard_error:.4f}: " + ("converged (the curve no longer moves beyond its noise)"
      if BAYESIAN_CONVERGED else "NOT CONVERGED: the curve still moves; read its numbers as a snapshot"))
BAYESIAN_LABEL = "SVI, Bayesian (point estimate)" + ("" if BAYESIAN_CONVERGED else ", not converged")

# %% [markdown]
# ## 3. scikit-learn as the reference
#
# `mixture.eval.fit_sklearn` runs `sklearn.mixture.GaussianMixture` from exactly EM's initial
# parameters with the same tolerance: the two EM implementations should agree.

# %%
sklearn_fit = mixture.eval.fit_sklearn(x, em.initial_params, tol=1e-6, max_iter=300, reg_covar=1e-6)
rows = [
    ("true parameters", mixture.eval.average_log_likelihood(x, data.true_params), "-"),
    ("pyro_vi EM", em.log_likelihoods[-1], f"{em.iterations} iterations"),
    ("scikit-learn EM", sklearn_fit.train_log_likelihood, f"{sklearn_fit.iterations} iterations"),
    ("SVI, MAP + enumeration", mixture.eval.average_log_likelihood(x, map_fit.params), f"{map_fit.steps} steps"),
    (BAYESIAN_LABEL, mixture.eval.average_log_likelihood(x, bayesian_fit.params), f"{bayesian_fit.steps} steps"),
]
print(f"{'':50s}{'log-lik / point':>16s}   {'ARI':>5s}   cost")
for name, value, cost in rows:
    params = {"true parameters": data.true_params, "pyro_vi EM": em.params, "scikit-learn EM": sklearn_fit.params,
              "SVI, MAP + enumeration": map_fit.params, BAYESIAN_LABEL: bayesian_fit.params}[name]
    ari = mixture.eval.adjusted_rand_index(data.train_labels, mixture.model.assignment_probabilities(x, params).argmax(-1))
    print(f"{name:50s}{value:16.4f}   {ari:5.3f}   {cost}")

# %% [markdown]
# The maximum-likelihood fit is slightly *above* the true parameters' log-likelihood (it is fitted
# to these 500 points). Convergence side by side: EM per iteration, SVI per step (each SVI step is
# one gradient step on all 500 points).

# %%
figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 3.8))
left.plot(em.log_likelihoods, "o-", ms=3, color="C0", label="pyro_vi EM")
left.axhline(sklearn_fit.train_log_likelihood, color="k", ls="--", label="scikit-learn, converged")
left.set(xlabel="EM iteration", ylabel="log-likelihood per point", title="EM")
middle.plot(map_fit.elbos, color="C1", label="SVI, MAP + enumeration")
middle.axhline(sklearn_fit.train_log_likelihood, color="k", ls="--", label="scikit-learn, converged")
middle.set(xlabel="SVI step", ylabel="ELBO per point (= log-likelihood)", title="SVI, MAP guide")
right.plot(bayesian_fit.elbos, color="C2", lw=0.6, label="SVI, Bayesian guide (one-sample ELBO)")
right.set(xlabel="SVI step", ylabel="ELBO per point (priors and entropies included)",
          title="SVI, Bayesian guide" + ("" if BAYESIAN_CONVERGED else " (not converged)"))
for axis in (left, middle):
    axis.set_ylim(em.log_likelihoods[0] - 0.1, sklearn_fit.train_log_likelihood + 0.1)
for axis in (left, middle, right):
    axis.legend(loc="lower right", fontsize=8)
figure.tight_layout()
plt.show()

figure, axes = plt.subplots(1, 3, figsize=(12, 4))
draw(axes[0], em.params, "EM")
draw(axes[1], map_fit.params, f"SVI, MAP, {map_fit.steps} steps")
draw(axes[2], bayesian_fit.params, f"SVI, Bayesian guide, {bayesian_fit.steps} steps" + ("" if BAYESIAN_CONVERGED else ", not converged"),
     probabilities=bayesian_fit.assignment_probabilities.detach())
figure.tight_layout()
plt.show()

# %% [markdown]
# ## What to take away
#
# * EM is VI with the best possible q (the exact posterior over assignments) and point estimates
#   of theta; each half-step maximizes the same ELBO in one coordinate, so it never decreases.
# * SVI with enumeration climbs the same objective by gradient: it reaches the same fit, in more,
#   cheaper, and more general steps (any model Pyro can enumerate, any prior).
# * Sampling the discrete assignments instead (the Bayesian guide's q_n, score-function gradients)
#   is far noisier and slower: enumerate discrete latents when you can.
# * From the command line: `pyro-vi gmm --method em|svi-map|svi-bayesian` writes the same
#   figures and the comparison with scikit-learn.
