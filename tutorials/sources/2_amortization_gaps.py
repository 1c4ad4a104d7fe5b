# %% [markdown]
# # Tutorial 2: per-datapoint, amortized and semi-amortized inference
#
# In a latent-variable model p(x, z) = p(z) p_theta(x | z) every datapoint x_n has its own
# posterior p(z | x_n), and VI needs a q for each. Three ways to get it:
#
# * **per-datapoint (mean-field)**: free parameters (loc_n, scale_n) for every point, optimized
#   directly: the most flexible within the Gaussian family, but a new point needs its own
#   optimization, and in training each q_n moves only when its point is in the minibatch;
# * **amortized**: an encoder network maps x to q(z | x) in one pass (the VAE): cheap, shared
#   across points, but limited by what the encoder can represent;
# * **semi-amortized**: start from the encoder's q and take a few gradient steps on each point's
#   own ELBO (Kim et al. 2018; Marino et al. 2018).
#
# The ELBO of the encoder's q falls short of log p(x) by two *gaps* (Cremer et al. 2018):
#
# $$ \log p(x) - \mathrm{ELBO}(q_\phi) = \underbrace{\log p(x) - \mathrm{ELBO}(q^*)}_{\text{approximation gap}}
#    + \underbrace{\mathrm{ELBO}(q^*) - \mathrm{ELBO}(q_\phi)}_{\text{amortization gap}}, $$
#
# with q* the best Gaussian for each point: the approximation gap is the price of the Gaussian
# family, the amortization gap the price of predicting q with a network. This tutorial trains
# decoders with each kind of q (`pyro_vi.fit_images`, `pyro_vi.fit_local` with a
# `pyro_vi.LocalGuide`), then measures the two gaps of a VAE (`pyro_vi.vae.evaluate.gaps`, the same
# functions as `pyro-vi gap`).
#
# Data: MNIST training subsets (6,000 images) in full mode, found as `pyro-vi vae --dataset mnist
# --data-dir DIR` finds them: DIR is the environment variable `PYRO_VI_MNIST_DIR` (the four IDX
# files, flat or in torchvision's `MNIST/raw/` layout, gzipped or not). When it is unset, or holds no
# MNIST, the first cell says so and the notebook runs on scikit-learn's 8x8 digits instead (the
# numbers then differ from the stored ones). *Small mode* (`PYRO_VI_TUTORIAL_SMALL=1`, how the test
# suite runs this notebook) uses a few digits, one epoch and few samples; the stored outputs are
# from the full mode with `PYRO_VI_MNIST_DIR` set.

# %%
import os
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets: plain bars, no warning

import matplotlib.pyplot as plt
import numpy as np
import pyro
import torch
from pyro.infer import Trace_ELBO

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
torch.set_default_dtype(torch.float32)
if SMALL:
    NUM_TRAIN, EPOCHS, GAP_POINTS, IWAE_K, REFINE_STEPS, MEANFIELD_STEPS, COMPARE_TRAIN, COMPARE_EPOCHS = 256, 1, 20, 50, (0, 1, 5), 5, 128, 1
elif USE_MNIST:
    NUM_TRAIN, EPOCHS, GAP_POINTS, IWAE_K, REFINE_STEPS, MEANFIELD_STEPS, COMPARE_TRAIN, COMPARE_EPOCHS = 6000, 8, 200, 500, (0, 1, 5, 20, 100), 100, 1000, 8
else:
    NUM_TRAIN, EPOCHS, GAP_POINTS, IWAE_K, REFINE_STEPS, MEANFIELD_STEPS, COMPARE_TRAIN, COMPARE_EPOCHS = 1497, 60, 300, 1000, (0, 1, 5, 20, 100), 100, 1497, 30
print("small mode" if SMALL else "full mode", f"- MNIST from PYRO_VI_MNIST_DIR={MNIST_DIR}" if USE_MNIST
      else f"- 8x8 digits: {why_not} (set it to the folder of the MNIST IDX files to run on MNIST)")

# %%
dataset = mnist if USE_MNIST else pyro_vi.load_dataset("digits")
order = torch.randperm(dataset.train_images.shape[0], generator=torch.Generator().manual_seed(0))
train = dataset.train_images[order[:NUM_TRAIN]]
# Bernoulli likelihood: training binarizes each minibatch afresh; the test points are binarized once.
test_binary = pyro_vi.binarize(dataset.test_images[:GAP_POINTS], "dynamic", torch.Generator().manual_seed(0))
Z_DIM, HIDDEN, BATCH = (20, (256,), 100) if USE_MNIST else (10, (128,), 64)
print(f"{dataset.name}: {train.shape[0]} training images, {test_binary.shape[0]} test images for the gaps; z_dim {Z_DIM}")

# %% [markdown]
# ## 1. Training with amortized vs per-datapoint q
#
# The same decoder architecture trained three ways on the same images for the same number of
# epochs:
#
# * **amortized**: a VAE, encoder and decoder trained jointly (`pyro_vi.fit_images`);
# * **mean-field, joint**: a `LocalGuide` (one Gaussian per image, Pyro params indexed by the
#   minibatch) and the decoder, one gradient step on both per minibatch
#   (`pyro_vi.fit_local`, `LocalTrainConfig(local_steps=0)`);
# * **mean-field, Hoffman-style**: K = 5 steps on the minibatch's q_n with the decoder fixed, then
#   one decoder step (`local_steps=5`), the stochastic VI of Hoffman et al. (2013).

# %%
compare_images = train[:COMPARE_TRAIN]
histories = {}
pyro.clear_param_store()
amortized = pyro_vi.VAE(dataset.pixels, z_dim=Z_DIM, hidden_dims=HIDDEN)
config = pyro_vi.TrainConfig(epochs=COMPARE_EPOCHS, batch_size=BATCH, learning_rate=1e-3, seed=0)
histories["amortized (VAE)"] = pyro_vi.fit_images(amortized.model, amortized.guide, compare_images, config,
                                                  loss=Trace_ELBO(), progress=False).history
for name, local_steps in [("mean-field, joint", 0), ("mean-field, Hoffman K=5", 5)]:
    pyro.clear_param_store()
    decoder_only = pyro_vi.VAE(dataset.pixels, z_dim=Z_DIM, hidden_dims=HIDDEN)
    local_guide = pyro_vi.LocalGuide(compare_images.shape[0], Z_DIM)
    local_config = pyro_vi.LocalTrainConfig(epochs=COMPARE_EPOCHS, batch_size=BATCH, learning_rate=1e-3,
                                            local_learning_rate=1e-2, local_steps=local_steps, seed=0)
    histories[name] = pyro_vi.fit_local(decoder_only, local_guide, compare_images, local_config).history

figure, axis = plt.subplots(figsize=(7, 4))
for (name, history), color in zip(histories.items(), ["C0", "C2", "C3"]):
    axis.plot([h["epoch"] for h in history], [h["train_elbo"] for h in history], "o-", ms=3, color=color, label=name)
axis.set(xlabel="epoch", ylabel="training ELBO per image (nats)", title=f"the same decoder, {compare_images.shape[0]} images")
axis.legend()
figure.tight_layout()
plt.show()
for name, history in histories.items():
    print(f"{name:25s} training ELBO after {history[-1]['epoch']} epochs: {history[-1]['train_elbo']:8.2f} nats")

# %% [markdown]
# Each q_n of a per-datapoint guide is updated only when its image is in the minibatch, once per
# epoch, so the decoder learns against poor q's for a long time; the encoder shares what it learns
# from every image with all the others. Hoffman-style local steps improve each q_n before the
# decoder moves, at K + 1 times the gradient evaluations. And the per-datapoint q's say nothing about
# a *new* image: for that we would optimize a fresh q from scratch, which is the mean-field
# reference of the next section.
#
# ## 2. The two gaps of a VAE
#
# We train a VAE on the larger training set, then, for test images (never seen in training):
#
# * log p(x) by importance sampling with the encoder as proposal (the IWAE bound with k samples,
#   `evaluate.iwae_log_likelihood`, a lower bound that tightens as k grows);
# * the ELBO of the encoder's q (amortized);
# * the ELBO after K gradient steps on each point's (loc, scale) from the encoder's q
#   (semi-amortized, `pyro_vi.refine`), for increasing K;
# * the ELBO of a q optimized from the prior for the same number of steps (mean-field).
#
# `evaluate.gaps` does all four and takes q* as the better of the last refined q and the mean-field q.

# %%
pyro.clear_param_store()
vae = pyro_vi.VAE(dataset.pixels, z_dim=Z_DIM, hidden_dims=HIDDEN)
config = pyro_vi.TrainConfig(epochs=EPOCHS, batch_size=BATCH, learning_rate=1e-3, seed=0)
result = pyro_vi.fit_images(vae.model, vae.guide, train, config, loss=Trace_ELBO(), progress=False)
print(f"VAE: {result.epochs} epochs on {train.shape[0]} images, {result.seconds:.0f} s; "
      f"test ELBO {evaluate.elbo_terms(vae, test_binary).elbo:.2f} nats")

pyro.set_rng_seed(0)
gaps = evaluate.gaps(vae, test_binary, iwae_k=IWAE_K, refine_steps=REFINE_STEPS, meanfield_steps=MEANFIELD_STEPS,
                     learning_rate=3e-2, elbo_samples=20, refine_samples=2,
                     batch_size=100)
print(f"log p(x) (IWAE, k = {gaps.iwae_k})       {gaps.log_px:9.2f} nats per image")
print(f"ELBO, amortized (encoder's q)     {gaps.elbo_amortized:9.2f}")
for steps, elbo in zip(gaps.refine_steps, gaps.elbo_refined):
    print(f"ELBO, refined {steps:4d} steps          {elbo:9.2f}")
print(f"ELBO, mean-field from the prior ({gaps.meanfield_steps} steps) {gaps.elbo_meanfield:9.2f}")
print(f"approximation gap {gaps.approximation_gap:.2f} nats, amortization gap {gaps.amortization_gap:.2f} nats "
      f"(q* = the {gaps.optimal_local} q)")

# %%
figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [2, 1]})
steps = np.array(gaps.refine_steps)
left.plot(np.maximum(steps, 0.5), gaps.elbo_refined, "o-", color="C0", label="semi-amortized: encoder's q + K refinement steps")
left.axhline(gaps.log_px, color="k", ls="--", label=f"log p(x) (IWAE, k = {gaps.iwae_k})")
left.axhline(gaps.elbo_meanfield, color="C3", ls=":", label=f"mean-field q from the prior, {gaps.meanfield_steps} steps")
left.set(xscale="log", xlabel="refinement steps K (0 plotted at 0.5)", ylabel="nats per test image",
         title="refining the encoder's q narrows the amortization gap")
left.set_xticks(np.maximum(steps, 0.5))
left.set_xticklabels([str(s) for s in steps])
left.legend(fontsize=8, loc="lower right")
right.bar([0], [gaps.amortization_gap], width=0.5, color="C1", label=f"amortization gap {gaps.amortization_gap:.2f}")
right.bar([0], [gaps.approximation_gap], width=0.5, bottom=[gaps.amortization_gap], color="C4",
          label=f"approximation gap {gaps.approximation_gap:.2f}")
right.set_xlim(-1, 1)
right.set_xticks([])
right.set(ylabel="nats per test image", title="log p(x) - ELBO(encoder q)")
right.legend(fontsize=8)
figure.tight_layout()
plt.show()

# %% [markdown]
# Reading the numbers: the amortization gap is what a better encoder (or refinement at test time)
# could recover; the approximation gap needs a richer family than a diagonal Gaussian (flows,
# full covariance) or a tighter bound (IWAE, `pyro-vi vae --objective iwae`). Cremer et al.
# (2018) report the two of similar size on MNIST (approximation 1.43, amortization 1.34 nats, for
# a VAE trained far longer than this one). With a fixed step size and a hundred steps q* is not
# exactly optimal, so the approximation gap is an over- and the amortization gap an
# under-estimate.
#
# The gaps vary across images: the per-image ELBO of the encoder's q against the IWAE log p(x).

# %%
per_point_gap = (gaps.log_px_per_point - gaps.elbo_refined_per_point[0]).numpy()
refined_gap = (gaps.log_px_per_point - gaps.elbo_refined_per_point[-1]).numpy()
figure, axis = plt.subplots(figsize=(7, 3.5))
bins = np.linspace(min(0, refined_gap.min()), np.percentile(per_point_gap, 99), 40)
axis.hist(per_point_gap, bins=bins, alpha=0.6, color="C0", label="encoder's q")
axis.hist(refined_gap, bins=bins, alpha=0.6, color="C1", label=f"after {gaps.refine_steps[-1]} refinement steps")
axis.axvline(0, color="k", lw=1)
axis.set(xlabel="log p(x) - ELBO per test image (nats)", ylabel="images", title="the gap, image by image")
axis.legend()
figure.tight_layout()
plt.show()

# %% [markdown]
# Some images have a *negative* gap after refinement, although log p(x) - ELBO(q) = KL(q || p(z | x))
# can never be below 0. Neither side is exact: both are Monte Carlo estimates for each image,
#
# * the refined ELBO is a mean over 20 draws of z from q (`elbo_samples=20`), with a standard error
#   of its own, in either direction;
# * log p(x) is the IWAE estimate log (1/k) sum_i p(x, z_i) / q(z_i | x): noisy too, and *biased low*
#   (it is a lower bound on log p(x) in expectation, tighter as k grows).
#
# Once refinement has made the true gap small, it is smaller than this noise, and the estimated gap
# falls below 0 for some images. We measure both noises on the same images: the ELBO's standard
# error from the spread of its draws (under the encoder's q, a proxy for the refined one), and the
# IWAE estimate's from two runs with different seeds.

# %%
with torch.no_grad():
    q = vae.posterior(test_binary)
    z = q.sample((20,))  # 20 draws per image, as elbo_samples=20
    draws = vae.likelihood(vae.decoder(z)).log_prob(test_binary) - torch.distributions.kl_divergence(q, vae.prior(len(test_binary), test_binary))
    elbo_standard_error = draws.std(0) / 20**0.5  # per image
    pyro.set_rng_seed(1)
    iwae_a = evaluate.iwae_log_likelihood(vae, test_binary, num_samples=IWAE_K)
    pyro.set_rng_seed(2)
    iwae_b = evaluate.iwae_log_likelihood(vae, test_binary, num_samples=IWAE_K)
iwae_standard_error = (iwae_a - iwae_b).std() / 2**0.5  # sd of one estimate, over images
negative = refined_gap < 0
print(f"after {gaps.refine_steps[-1]} refinement steps: median gap {np.median(refined_gap):.3f} nats; "
      f"{negative.sum()} of {len(refined_gap)} images below 0 (the lowest {refined_gap.min():.3f})")
print(f"noise per image: ELBO (20 draws) standard error median {elbo_standard_error.median():.3f} nats; "
      f"IWAE (k = {IWAE_K}) standard deviation between seeds {iwae_standard_error:.3f} nats")

# %% [markdown]
# The negative gaps are of the size of these standard errors: estimate noise, not a bug and not a
# q better than the posterior. For a single image, read a gap only with its error bar; averaged over
# the test images (the table above) the noise shrinks as 1/sqrt(number of images), and the IWAE
# bias (log p(x) too low) makes the reported approximation gap, if anything, too small.

# %% [markdown]
# ## What to take away
#
# * Amortization makes inference one network pass and shares learning across points; its price,
#   the amortization gap, is measurable and can be recovered at test time by refinement.
# * Per-datapoint q's are flexible but learn slowly (each moves once per epoch) and need an
#   optimization for every new point.
# * Report log p(x) with a tight bound (IWAE, large k), not the ELBO, when comparing models; the
#   difference is the sum of the two gaps.
# * From the command line: `pyro-vi gap --checkpoint runs/vae/checkpoint.pt --num-points 1000
#   --iwae-k 5000` on a VAE trained by `pyro-vi vae`.
