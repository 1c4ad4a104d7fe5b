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
# Data: MNIST (a 10,000-image training subset, 28x28) in full mode when the files are in
# `/work/shared/data/mnist` (or `$PYRO_VI_MNIST_DIR`), otherwise scikit-learn's 8x8 digits.
# *Small mode* (`PYRO_VI_TUTORIAL_SMALL=1`, how the test suite runs this notebook) uses the 8x8
# digits and a couple of epochs; the stored outputs are from the full mode.

# %%
import os
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets: plain bars, no warning
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pyro
import torch
from pyro.infer import Trace_ELBO

import pyro_vi
from pyro_vi.vae import evaluate

SMALL = os.environ.get("PYRO_VI_TUTORIAL_SMALL", "0") == "1"
MNIST_DIR = Path(os.environ.get("PYRO_VI_MNIST_DIR", "/work/shared/data/mnist"))
USE_MNIST = not SMALL and any(MNIST_DIR.glob("train-images-idx3-ubyte*"))
EPOCHS = 1 if SMALL else (8 if USE_MNIST else 60)
torch.set_default_dtype(torch.float32)
print("small mode" if SMALL else "full mode", "- MNIST" if USE_MNIST else "- 8x8 digits")

# %%
if USE_MNIST:
    dataset = pyro_vi.load_dataset("mnist", data_dir=str(MNIST_DIR))
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
# over the first W epochs (`poutine.scale` on the latent site, in model and guide). Early in
# training the decoder is poor and the cheapest way to raise the ELBO is to make q(z | x) equal
# the prior (KL = 0), after which the decoder learns to ignore z: annealing lets the encoder
# first carry information. We train the same VAE (Z_DIM = 50 latent dimensions on MNIST, as in the
# README's runs; 20 on the 8x8 digits) with and without it.

# %%
def train_vae(z_dim, likelihood="bernoulli", kl_warmup_epochs=0.0, binarization="dynamic", epochs=EPOCHS, seed=0):
    """A fresh VAE trained on ``train``; returns it and its per-epoch history."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    vae = pyro_vi.VAE(dataset.pixels, z_dim=z_dim, hidden_dims=HIDDEN, likelihood=likelihood)
    evaluation = test_binary if binarization == "dynamic" else test

    def after_epoch(epoch):
        terms = evaluate.elbo_terms(vae, evaluation)
        return {"test_elbo": terms.elbo, "test_recon": terms.recon, "test_kl": terms.kl,
                "active_units": evaluate.active_units(vae, evaluation).count}

    config = pyro_vi.TrainConfig(epochs=epochs, batch_size=BATCH, learning_rate=1e-3,
                                 kl_warmup_epochs=kl_warmup_epochs, binarization=binarization, seed=seed)
    result = pyro_vi.fit_images(vae.model, vae.guide, train, config, loss=Trace_ELBO(), evaluate=after_epoch, progress=False)
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
# without annealing the KL starts low and grows as the decoder learns to use z. The training
# objective during warm-up is not the ELBO (the KL is under-weighted), so compare the runs once
# the weight has reached 1.
#
# ## 2. Posterior collapse and active units
#
# A latent dimension j is *active* (Burda et al. 2016) if its posterior mean changes with the input,
# Var_x(E_q[z_j | x]) > 0.01. An inactive unit has q(z_j | x) = p(z_j) for every x: it costs no KL
# and carries no information; the decoder ignores it: it has collapsed onto the prior. How many
# units stay active depends on the latent size, the decoder and the training: short training
# keeps more of them moving (the README's 85-epoch MNIST VAE with 50 dimensions keeps 26 active).
# Below, the spread of each unit's posterior mean over the test set, sorted, and what the decoder
# does when we replace the least active units, or the most active ones, by noise.

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
#   ignores z); count active units (`evaluate.active_units`).
# * KL annealing (`TrainConfig(kl_warmup_epochs=...)`, `--kl-warmup-epochs`) changes how the
#   encoder starts; only the curves after the warm-up are ELBOs.
# * Match the likelihood to the data: Bernoulli for binary pixels (binarize grey levels, dynamically),
#   continuous Bernoulli (or Gaussian) for grey levels, and show the distribution's mean.
# * The command line does all of this: `pyro-vi vae --z-dim 2 --kl-warmup-epochs 5
#   --likelihood continuous-bernoulli --binarization none ...` writes the same figures.
