# %% [markdown]
# # Tutorial 4: the variational autoencoder
#
# A VAE is amortized variational inference with a learned model:
#
# $$ z \sim \mathcal N(0, I), \qquad x \mid z \sim p_\theta(x \mid z) \ \text{(the decoder network)}, \qquad
#    q_\phi(z \mid x) = \mathcal N(\mu_\phi(x), \mathrm{diag}\,\sigma^2_\phi(x)) \ \text{(the encoder network)}, $$
#
# trained by maximizing the ELBO = E_q[log p(x | z)] - KL(q(z | x) || p(z)), a *reconstruction*
# term minus a *KL* term. This tutorial trains `pyro_vi.VAE` on handwritten digits
# (`pyro_vi.fit_images`, the VAE's data path on the engine) and looks at
#
# 1. the two terms of the ELBO during training, and **KL annealing** (a KL weight warmed up from 0);
# 2. **posterior collapse** and **active units**: latent dimensions the decoder ignores;
# 3. **Bernoulli vs continuous Bernoulli** likelihoods for grey-level pixels;
# 4. the **latent manifold** of a 2-D VAE.
#
# Data: MNIST (a 10,000-image training subset, 28x28) in full mode, found as `pyro-vi vae --dataset
# mnist --data-dir DIR` finds it: DIR is the environment variable `PYRO_VI_MNIST_DIR` (the four IDX
# files, flat or in torchvision's `MNIST/raw/` layout, gzipped or not). When it is unset, or holds no
# MNIST, the first cell says so and the notebook runs on scikit-learn's 8x8 digits instead (the
# numbers then differ from the stored ones). *Small mode* (`PYRO_VI_TUTORIAL_SMALL=1`, how the test
# suite runs this notebook) uses the 8x8 digits and a couple of epochs; the stored outputs are from
# the full mode with `PYRO_VI_MNIST_DIR` set.

# %%
import os
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets: plain bars, no warning

import matplotlib.pyplot as plt
import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from torch.distributions import kl_divergence

import pyro_vi
from pyro_vi.errors import DataNotFoundError
from pyro_vi.vae import evaluate

SMALL = os.environ.get("PYRO_VI_TUTORIAL_SMALL", "0") == "1"
MNIST_DIR = os.environ.get("PYRO_VI_MNIST_DIR")  # as pyro-vi vae's --data-dir; never a path of one machine
mnist, why_not = None, "small mode" if SMALL else "PYRO_VI_MNIST_DIR is not set"
if not SMALL and MNIST_DIR:
    try:
        mnist = pyro_vi.load_dataset("mnist", data_dir=MNIST_DIR, download=False)
    except DataNotFoundError as error:
        why_not = f"no MNIST in PYRO_VI_MNIST_DIR={MNIST_DIR} ({error})"
USE_MNIST = mnist is not None
EPOCHS = 1 if SMALL else (8 if USE_MNIST else 60)
torch.set_default_dtype(torch.float32)
print("small mode" if SMALL else "full mode", f"- MNIST from PYRO_VI_MNIST_DIR={MNIST_DIR}" if USE_MNIST
      else f"- 8x8 digits: {why_not} (set it to the folder of the MNIST IDX files to run on MNIST)")

# %%
if USE_MNIST:
    dataset = mnist
    subset = torch.randperm(dataset.train_images.shape[0], generator=torch.Generator().manual_seed(0))[:10_000]
    dataset = dataset._replace(train_images=dataset.train_images[subset], train_labels=dataset.train_labels[subset],
                               test_images=dataset.test_images[:2000], test_labels=dataset.test_labels[:2000])
    HIDDEN, BATCH = (256,), 100
else:
    dataset = pyro_vi.load_dataset("digits")
    HIDDEN, BATCH = (128,), 64
if SMALL:  # a few minibatches: the notebook runs top to bottom, the numbers mean little
    dataset = dataset._replace(train_images=dataset.train_images[:256], train_labels=dataset.train_labels[:256])
train, test = dataset.train_images, dataset.test_images
# Bernoulli likelihoods need binary pixels: training draws x ~ Bernoulli(grey level) afresh for
# every minibatch ("dynamic binarization"); the test set is binarized once, with a fixed seed.
test_binary = pyro_vi.binarize(test, "dynamic", torch.Generator().manual_seed(0))
print(f"{dataset.name}: {train.shape[0]} training and {test.shape[0]} test images of {dataset.image_shape}")


def show(images, title, rows=1, axis=None):
    """A grid of images (rows x columns)."""
    height, width = dataset.image_shape
    columns = images.shape[0] // rows
    grid = images[: rows * columns].reshape(rows, columns, height, width).permute(0, 2, 1, 3).reshape(rows * height, columns * width)
    axis = axis or plt.gca()
    axis.imshow(grid.detach().clamp(0, 1).numpy(), cmap="gray_r", vmin=0, vmax=1)
    axis.set_title(title, fontsize=10)
    axis.axis("off")


show(test[:12], "test images (grey levels)")
plt.show()

# %% [markdown]
# ## 1. Training, and the two terms of the ELBO
#
# `pyro_vi.VAE(pixels, z_dim, hidden_dims, likelihood)` holds the two networks; `vae.model` and
# `vae.guide` are an ordinary Pyro model/guide pair. `pyro_vi.fit_images` trains them in epochs of
# minibatches (`TrainConfig`), and calls `evaluate(epoch)` after every epoch: there we record the
# test ELBO split into its two terms (`pyro_vi.vae.evaluate.elbo_terms`, the KL in closed form) and the
# active units (section 2).
#
# `TrainConfig(kl_warmup_epochs=W)` multiplies the KL term by a weight rising linearly from 0 to 1
# over the first W epochs (`poutine.scale` on the latent site, in model and guide). The argument
# for it: early in training the decoder is poor, and the cheapest way to raise the ELBO is to make
# q(z | x) equal the prior (KL = 0), after which the decoder may learn to ignore z; a low KL weight
# lets the encoder carry information first. We train the same VAE (Z_DIM = 50 latent dimensions on
# MNIST; 20 on the 8x8 digits) with and without it, and see whether that argument applies here.

# %%
def train_vae(z_dim, likelihood="bernoulli", kl_warmup_epochs=0.0, binarization="dynamic", epochs=EPOCHS, seed=0,
              x_scale=0.1, loss=None):
    """A fresh VAE trained on ``train`` (with ``loss``, Trace_ELBO by default); returns it and its
    per-epoch history of test ELBO, its two terms and the active units."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    vae = pyro_vi.VAE(dataset.pixels, z_dim=z_dim, hidden_dims=HIDDEN, likelihood=likelihood, x_scale=x_scale)
    evaluation = test_binary if binarization == "dynamic" else test

    def after_epoch(epoch):
        terms = evaluate.elbo_terms(vae, evaluation)
        return {"test_elbo": terms.elbo, "test_recon": terms.recon, "test_kl": terms.kl,
                "active_units": evaluate.active_units(vae, evaluation).count}

    config = pyro_vi.TrainConfig(epochs=epochs, batch_size=BATCH, learning_rate=1e-3, kl_warmup_epochs=kl_warmup_epochs,
                                 binarization=binarization, seed=seed, compile=None if loss is None else False)
    result = pyro_vi.fit_images(vae.model, vae.guide, train, config, loss=loss or Trace_ELBO(), evaluate=after_epoch,
                                progress=False)
    return vae, result.history


Z_DIM = 50 if USE_MNIST else 20
runs = {"no annealing": train_vae(Z_DIM), "KL warm-up": train_vae(Z_DIM, kl_warmup_epochs=EPOCHS / 2)}
for name, (vae, history) in runs.items():
    last = history[-1]
    print(f"{name:13s} test ELBO {last['test_elbo']:8.2f} = recon {last['test_recon']:8.2f} - KL {last['test_kl']:6.2f} nats; "
          f"{last['active_units']} of {Z_DIM} units active")

# %%
figure, axes = plt.subplots(1, 3, figsize=(15, 3.8))
weight_axis = axes[1].twinx()
for (name, (vae, history)), color in zip(runs.items(), ["C0", "C1"]):
    epochs = [h["epoch"] for h in history]
    axes[0].plot(epochs, [h["test_elbo"] for h in history], "o-", ms=3, color=color, label=name)
    axes[1].plot(epochs, [h["test_kl"] for h in history], "o-", ms=3, color=color, label=f"{name}: KL")
    weight_axis.plot(epochs, [h["kl_weight"] for h in history], ":", color=color, label=f"{name}: KL weight")
    axes[2].plot(epochs, [h["active_units"] for h in history], "o-", ms=3, color=color, label=name)
weight_axis.set(ylabel="KL weight in training (dotted)", ylim=(0, 1.05))
axes[0].set(xlabel="epoch", ylabel="test ELBO per image (nats)", title="ELBO")
axes[1].set(xlabel="epoch", ylabel="KL(q(z|x) || p(z)) per image (nats)", title="the KL term")
axes[2].set(xlabel="epoch", ylabel=f"active units (of {Z_DIM})", title="active units", ylim=(0, Z_DIM + 1))
for axis in axes:
    axis.legend(fontsize=8)
figure.tight_layout()
plt.show()

# %% [markdown]
# (The KL weight is dotted, on the right axis; the test ELBO and KL are always the unweighted
# ones.) With the weight near 0 the encoder is free to spread its codes and the KL starts high;
# without annealing the KL starts lower and grows as the decoder learns to use z. The training
# objective during warm-up is not the ELBO (the KL is under-weighted), so compare the runs once
# the weight has reached 1. Here the two runs end close together, with the same number of
# active units (printed above): with this likelihood and decoder nothing collapses, with or without
# annealing, so annealing has nothing to rescue. Section 2 builds a VAE in which collapse does
# happen.
#
# ## 2. Posterior collapse and active units
#
# A latent dimension j is *active* (Burda et al. 2016) if its posterior mean changes with the input,
# Var_x(E_q[z_j | x]) > 0.01. An inactive unit has q(z_j | x) = p(z_j) for every x: it costs no KL
# and carries no information; the decoder ignores it: it has collapsed onto the prior. First the
# Bernoulli VAE of section 1: the spread of each unit's posterior mean over the test set, sorted,
# and what the decoder does when we replace the least active units, or the most active ones, by
# noise.

# %%
vae = runs["no annealing"][0]
units = evaluate.active_units(vae, test_binary)
order = torch.argsort(units.variances, descending=True)
figure, axis = plt.subplots(figsize=(8, 3.2))
axis.bar(range(vae.z_dim), units.variances[order].numpy(), color=["C0" if v > units.threshold else "C7" for v in units.variances[order]])
axis.axhline(units.threshold, color="k", ls="--", lw=1, label=f"threshold {units.threshold}")
axis.set(yscale="log", xlabel="latent dimension (sorted)", ylabel="Var_x(E_q[z_j | x])",
         title=f"{units.count} active units of {vae.z_dim} (no annealing)")
axis.legend()
figure.tight_layout()
plt.show()

with torch.no_grad():
    q = vae.posterior(test_binary[:8])
    reconstruction = vae.likelihood(vae.decoder(q.mean)).base_dist.mean
    num_resampled = max(vae.z_dim - units.count, vae.z_dim // 4)  # the inactive units, or the least active quarter
    z = q.mean.clone()
    z[:, order[-num_resampled:]] = torch.randn(z.shape[0], num_resampled)  # resample the least active units
    reconstruction_inactive = vae.likelihood(vae.decoder(z)).base_dist.mean
    z = q.mean.clone()
    z[:, order[:num_resampled]] = torch.randn(z.shape[0], num_resampled)  # resample as many of the most active
    reconstruction_active = vae.likelihood(vae.decoder(z)).base_dist.mean
figure, axes = plt.subplots(4, 1, figsize=(8, 4.8))
show(test_binary[:8], "inputs (binarized)", axis=axes[0])
show(reconstruction, "decoder mean at the encoder mean", axis=axes[1])
show(reconstruction_inactive, f"... with the {num_resampled} least active units replaced by noise", axis=axes[2])
show(reconstruction_active, f"... with the {num_resampled} most active units replaced by noise", axis=axes[3])
figure.tight_layout()
plt.show()

# %% [markdown]
# ### A VAE whose posterior collapses
#
# Every latent dimension costs its KL in the ELBO and buys reconstruction. Where what the decoder
# gains from z_j is worth less than that cost, the ELBO's optimum *is* q(z_j | x) = p(z_j):
# collapse is then what the objective asks for, not an accident of optimization. A knob that sets
# the price: a Gaussian likelihood N(x | decoder(z), sigma^2 I) on the grey levels (`likelihood=
# "gaussian"`, `x_scale=sigma`; `pyro-vi vae --likelihood gaussian --x-scale`). Its reconstruction
# term is -||x - decoder(z)||^2 / (2 sigma^2) + const: the larger the observation noise sigma, the
# less a sharper reconstruction is worth, while the KL costs the same (Lucas et al. 2019, "Don't
# blame the ELBO!"). The same networks, the same epochs, three values of sigma:

# %%
SCALES = (0.1, 1.0, 2.0) if USE_MNIST else (0.1, 0.3, 1.0)
collapse_runs = {sigma: train_vae(Z_DIM, likelihood="gaussian", x_scale=sigma, binarization="none") for sigma in SCALES}
print(f"Gaussian likelihood, {EPOCHS} epochs, z_dim {Z_DIM}; test set (grey levels), nats per image:")
for sigma, (model, history) in collapse_runs.items():
    last = history[-1]
    print(f"sigma = {sigma:3}: ELBO {last['test_elbo']:9.2f} = recon {last['test_recon']:9.2f} - KL {last['test_kl']:6.2f};"
          f" {last['active_units']} of {Z_DIM} units active")

figure, (left, right) = plt.subplots(1, 2, figsize=(13, 3.8))
for (sigma, (model, history)), color in zip(collapse_runs.items(), ["C0", "C1", "C3"]):
    spread = evaluate.active_units(model, test).variances.sort(descending=True).values
    left.plot(range(1, Z_DIM + 1), spread.clamp(min=1e-6).numpy(), "o-", ms=3, color=color, label=f"sigma = {sigma}")
    right.plot([h["epoch"] for h in history], [h["test_kl"] for h in history], "o-", ms=3, color=color, label=f"sigma = {sigma}")
left.axhline(0.01, color="k", ls="--", lw=1, label="active-unit threshold 0.01")
left.set(yscale="log", xlabel="latent dimension (sorted by spread)", ylabel="Var_x(E_q[z_j | x])",
         title="how much each unit's code moves with the input")
right.set(yscale="log", xlabel="epoch", ylabel="test KL(q(z|x) || p(z)) per image (nats)",
          title="the KL term: near 0 is a collapsed posterior")
for axis in (left, right):
    axis.legend(fontsize=8)
figure.tight_layout()
plt.show()

# %% [markdown]
# At the largest sigma the KL is a few hundredths of a nat per image and no unit is active: every
# q(z | x) is the prior, and the decoder outputs one image, the one closest to all the data. In
# between, units can pass the 0.01 threshold while carrying little information (a KL of a couple of
# nats spread over all of them): look at the KL as well as the count.
#
# ### What KL annealing and free bits change
#
# At the collapsing sigma we try the two usual remedies:
#
# * **KL annealing** (`kl_warmup_epochs`): the KL weight rises from 0 to 1 over the first half of
#   training. It changes the path, not the objective: once the weight is 1 the optimum is the same.
# * **free bits** (Kingma et al. 2016): each latent dimension's KL, averaged over the minibatch,
#   counts only above a floor of lambda nats, max(lambda, KL_j). The first lambda nats per unit are
#   free, so the encoder has no reason to give them up. The objective is no longer the ELBO; we
#   still report the true ELBO. It is a Pyro loss like any other, written from a trace of guide and
#   model, and `pyro_vi.fit_images` trains with it as it trains with `Trace_ELBO`.

# %%
class FreeBitsELBO(Trace_ELBO):
    """-(recon - sum_j max(nats, KL_j)) with KL_j the minibatch mean of latent dimension j's
    analytic KL, scaled as Pyro scales the sites (the data plate's N / B, the KL weight)."""

    def __init__(self, nats):
        super().__init__()
        self.nats = nats

    def differentiable_loss(self, model, guide, *args, **kwargs):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        x, prior, q = model_trace.nodes["x"], model_trace.nodes["z"], guide_trace.nodes["z"]
        recon = x["fn"].log_prob(x["value"]).sum() * x["scale"]
        kl = kl_divergence(q["fn"].base_dist, prior["fn"].base_dist)  # (batch, z_dim)
        return kl.mean(0).clamp(min=self.nats).sum() * kl.shape[0] * q["scale"] - recon

    def loss(self, model, guide, *args, **kwargs):
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs):
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return float(loss.detach())


SIGMA = SCALES[-1]
FREE_NATS = 0.5
remedies = {
    "no remedy": collapse_runs[SIGMA],
    "KL warm-up": train_vae(Z_DIM, likelihood="gaussian", x_scale=SIGMA, binarization="none", kl_warmup_epochs=EPOCHS / 2),
    f"free bits, {FREE_NATS} nats/unit": train_vae(Z_DIM, likelihood="gaussian", x_scale=SIGMA, binarization="none",
                                                 loss=FreeBitsELBO(FREE_NATS)),
}
print(f"sigma = {SIGMA}, test set, nats per image:")
for name, (model, history) in remedies.items():
    last = history[-1]
    print(f"{name:24s} ELBO {last['test_elbo']:9.2f} = recon {last['test_recon']:9.2f} - KL {last['test_kl']:6.2f};"
          f" {last['active_units']} of {Z_DIM} units active")

figure, axes = plt.subplots(1, 2, figsize=(13, 3.8))
for (name, (model, history)), color in zip(remedies.items(), ["C3", "C1", "C2"]):
    epochs = [h["epoch"] for h in history]
    axes[0].plot(epochs, [max(h["test_kl"], 1e-3) for h in history], "o-", ms=3, color=color, label=name)
    axes[1].plot(epochs, [h["active_units"] for h in history], "o-", ms=3, color=color, label=name)
axes[0].set(yscale="log", xlabel="epoch", ylabel="test KL per image (nats)", title=f"the KL term at sigma = {SIGMA}")
axes[1].set(xlabel="epoch", ylabel=f"active units (of {Z_DIM})", title=f"active units at sigma = {SIGMA}", ylim=(-1, Z_DIM + 1))
for axis in axes:
    axis.legend(fontsize=8)
figure.tight_layout()
plt.show()

with torch.no_grad():
    rows = {"grey-level inputs": test[:8]}
    for label, model in [(f"sigma = {SCALES[0]}", collapse_runs[SCALES[0]][0])] + [
            (f"sigma = {SIGMA}, {name}", model) for name, (model, _) in remedies.items()]:
        rows[label + ": decoder mean at the encoder mean"] = model.likelihood(model.decoder(model.posterior(test[:8]).mean)).base_dist.mean
figure, axes = plt.subplots(len(rows), 1, figsize=(8, 1.2 * len(rows)))
for axis, (label, images) in zip(axes, rows.items()):
    show(images, label, axis=axis)
figure.tight_layout()
plt.show()

# %% [markdown]
# Read the three runs in the printed lines and the figures (the numbers are this run's):
#
# * without a remedy the posterior has collapsed: KL near 0, no active unit, and every input gets
#   the same reconstruction, the decoder's one image for all data;
# * the KL warm-up lets the KL grow while its weight is small, and the units collapse again as the
#   weight reaches 1 (the curves fall back): annealing helps an optimizer find a solution that the
#   ELBO prefers, and here the ELBO prefers the collapsed one;
# * free bits keeps every unit's KL near its floor of lambda nats, so the units stay active and the
#   reconstructions differ from input to input; the true ELBO is lower than the collapsed model's,
#   since at this sigma the information was not worth its KL. Free bits is the tool when you want
#   the latent code used (for a representation), not when you want the best ELBO.
#
# So: measure collapse (KL per unit or per image, active units), and ask first whether your
# likelihood makes the code worth having (a smaller sigma, a learned sigma, `x_scale=None`, or a
# Bernoulli likelihood on binarized pixels, as in section 1, where nothing collapsed).

# %% [markdown]
# ## 3. Bernoulli vs continuous Bernoulli
#
# MNIST pixels are grey levels in [0, 1]. The usual Bernoulli likelihood is a distribution over
# {0, 1}; applied to grey levels directly, log p(x | lambda) = x log lambda + (1 - x) log(1 - lambda)
# is not a normalized density, so "the ELBO" is not a bound on anything. Hence the binarization
# above. The continuous Bernoulli (Loaiza-Ganem and Cunningham 2019) adds the missing normalizing
# constant C(lambda), a proper density on [0, 1]. One consequence: its mean is not lambda, so the
# decoder's lambda must not be shown as the image. We train on the grey levels
# (`binarization="none"`) with each likelihood, for half as many epochs as above.

# %%
grey_runs = {
    "bernoulli": train_vae(Z_DIM, likelihood="bernoulli", binarization="none", epochs=max(1, EPOCHS // 2)),
    "continuous-bernoulli": train_vae(Z_DIM, likelihood="continuous-bernoulli", binarization="none", epochs=max(1, EPOCHS // 2)),
}
figure, axes = plt.subplots(4, 1, figsize=(8, 4.8))
show(test[:8], "grey-level inputs", axis=axes[0])
with torch.no_grad():
    for axis, (name, (model, _)) in zip(axes[1:3], grey_runs.items()):
        decoded = model.likelihood(model.decoder(model.posterior(test[:8]).mean))
        show(decoded.base_dist.mean, f"{name}: the mean of p(x | z)", axis=axis)
    lambdas = grey_runs["continuous-bernoulli"][0].likelihood(
        grey_runs["continuous-bernoulli"][0].decoder(grey_runs["continuous-bernoulli"][0].posterior(test[:8]).mean)).base_dist.probs
    show(lambdas, "continuous-bernoulli: its parameter lambda (not the mean)", axis=axes[3])
figure.tight_layout()
plt.show()
for name, (model, history) in grey_runs.items():
    print(f"{name:21s} test ELBO on grey levels {history[-1]['test_elbo']:9.2f} nats "
          f"({'a proper bound on log p(x)' if name != 'bernoulli' else 'not a bound: the Bernoulli is not a density on [0, 1]'})")

# %% [markdown]
# The continuous Bernoulli's ELBO can be positive: it is a log *density* on [0, 1]^D, which can
# exceed 1. Its lambda is pushed towards 0 and 1 (sharp), while its mean is the grey image.
#
# ## 4. The latent manifold
#
# With a 2-D latent space we can look at the whole model: the encoder means of the test images
# coloured by digit class, and the decoder's mean image on a grid of z over [-2.5, 2.5]^2, which
# sweeps continuously through the classes.

# %%
vae_2d, history_2d = train_vae(2)
print(f"2-D VAE: test ELBO {history_2d[-1]['test_elbo']:.2f} nats")
with torch.no_grad():
    means = vae_2d.posterior(test_binary).mean
    grid_size = 12 if USE_MNIST else 10
    values = torch.linspace(-2.5, 2.5, grid_size)
    z = torch.stack(torch.meshgrid(values, values.flip(0), indexing="xy"), -1).reshape(-1, 2)
    images = vae_2d.likelihood(vae_2d.decoder(z)).base_dist.mean
figure, (left, right) = plt.subplots(1, 2, figsize=(13, 6))
scatter = left.scatter(*means.T.numpy(), c=dataset.test_labels.numpy(), cmap="tab10", s=6)
left.legend(*scatter.legend_elements(), title="digit", fontsize=8, loc="upper right", framealpha=0.6)
left.set(xlabel="$z_1$", ylabel="$z_2$", title="encoder means of the test images", xlim=(-3.5, 3.5), ylim=(-3.5, 3.5))
show(images, "decoder means on a grid over [-2.5, 2.5]^2", rows=grid_size, axis=right)
figure.tight_layout()
plt.show()

# %% [markdown]
# ## What to take away
#
# * Watch the two terms, not only the ELBO: a KL near 0 is a collapsed posterior (the decoder
#   ignores z); count active units (`evaluate.active_units`; `pyro-vi vae` prints them).
# * Collapse can be the ELBO's own optimum (a broad likelihood, here a large Gaussian sigma): KL
#   annealing (`TrainConfig(kl_warmup_epochs=...)`, `--kl-warmup-epochs`) changes the path, not that
#   optimum; free bits changes the objective and keeps the units, at a lower ELBO. Only the curves
#   after a warm-up are ELBOs.
# * Match the likelihood to the data: Bernoulli for binary pixels (binarize grey levels, dynamically),
#   continuous Bernoulli (or Gaussian) for grey levels, and show the distribution's mean.
# * The command line does all of this: `pyro-vi vae --z-dim 2 --kl-warmup-epochs 5
#   --likelihood continuous-bernoulli --binarization none ...` writes the same figures.
