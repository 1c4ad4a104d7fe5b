"""Gaps, log p(x) and active units on VAEs: closed form on the linear-Gaussian VAE, orderings on a
trained digits VAE, and the ``pyro-vi gap`` command."""

import json
import math
import subprocess
import sys

import pytest
import torch

from pyro_vi import evaluate
from pyro_vi.data import binarize, load_dataset
from pyro_vi.models import conjugate
from pyro_vi.models.vae import VAE
from pyro_vi.train import TrainConfig, fit

NOISE_SCALE = 0.5


def test_gaps_of_the_linear_gaussian_vae_match_the_closed_form():
    """Linear decoder + Gaussian likelihood = probabilistic PCA, with a linear encoder set to the
    right loc but twice the best diagonal scale. Then, per point and in closed form:
        approximation gap = KL(q* || posterior)           (q* the best diagonal q)
        amortization gap  = KL(q_enc || posterior) - KL(q* || posterior)."""
    pixels, z_dim, num_points = 6, 2, 50
    vae = VAE(pixels, z_dim, hidden_dims=(), likelihood="gaussian", x_scale=NOISE_SCALE)
    weight, bias = torch.randn(pixels, z_dim), torch.randn(pixels)
    ppca = conjugate.ProbabilisticPCA(weight, bias, NOISE_SCALE)
    posterior_precision = weight.T @ weight / NOISE_SCALE**2 + torch.eye(z_dim)
    to_loc = torch.linalg.solve(posterior_precision, weight.T) / NOISE_SCALE**2  # loc = to_loc (x - b)
    encoder_scale = 2 * posterior_precision.diagonal().rsqrt()  # twice the best diagonal q's scale
    with torch.no_grad():
        vae.decoder.body[0].weight.copy_(weight)
        vae.decoder.body[0].bias.copy_(bias)
        vae.encoder.body[0].weight.copy_(torch.cat([to_loc, torch.zeros(z_dim, pixels)]))
        vae.encoder.body[0].bias.copy_(torch.cat([-to_loc @ bias, 2 * encoder_scale.log()]))  # log-variance
    images = torch.randn(num_points, z_dim) @ weight.T + bias + NOISE_SCALE * torch.randn(num_points, pixels)

    result = evaluate.gaps(vae, images, iwae_k=2000, refine_steps=(0, 300), meanfield_steps=300,
                           learning_rate=0.03, elbo_samples=1000, batch_size=25)
    posterior = ppca.posterior(images)
    exact_approximation_gap = float(conjugate.mean_field_kl_gap(posterior).mean())
    encoder_q = torch.distributions.Independent(torch.distributions.Normal(posterior.loc, encoder_scale.expand(num_points, z_dim)), 1)
    exact_amortization_gap = float(torch.distributions.kl_divergence(
        conjugate._as_multivariate(encoder_q), posterior).mean()) - exact_approximation_gap

    # log p(x): exact per point; the IWAE mean over 50 points (ESS in the hundreds) is within
    # ~0.01 nats. Each ELBO: 1000 draws per point, mean SE ~0.01 nats. The refined q keeps a
    # fixed-step jitter around its optimum that costs 0.01-0.02 nats (measured). A gap combines
    # two estimates: tolerance 0.06 per estimate, 0.08 per gap.
    assert result.log_px == pytest.approx(float(ppca.log_evidence(images).mean()), abs=0.06)
    assert result.elbo_amortized == pytest.approx(float(ppca.elbo(encoder_q, images).mean()), abs=0.06)
    assert result.approximation_gap == pytest.approx(exact_approximation_gap, abs=0.08)
    assert result.amortization_gap == pytest.approx(exact_amortization_gap, abs=0.08)
    assert exact_amortization_gap > 0.3 and exact_approximation_gap > 0.05  # both gaps are real here
    assert result.optimal_local in ("refined", "meanfield")


def _train_digits_vae(kl_weight: float, epochs: int = 12) -> VAE:
    dataset = load_dataset("digits")
    vae = VAE(dataset.pixels, z_dim=8, hidden_dims=(64,))

    def model(x, indices, num_data, _):
        return vae.model(x, indices, num_data, kl_weight)

    def guide(x, indices, num_data, _):
        return vae.guide(x, indices, num_data, kl_weight)

    fit(model, guide, dataset.train_images, TrainConfig(epochs=epochs, batch_size=100, learning_rate=3e-3), progress=False)
    return vae


@pytest.fixture(scope="module")
def digits_vae():
    torch.manual_seed(0)
    return _train_digits_vae(kl_weight=1.0)


@pytest.fixture(scope="module")
def digits_test_images():
    images = load_dataset("digits").test_images[:100]
    return binarize(images, "dynamic", torch.Generator().manual_seed(0))


def test_ordering_on_a_trained_digits_vae(digits_vae, digits_test_images):
    """elbo_amortized <= elbo_refined <= log p(x): paired per image, within 3 standard errors of
    the mean difference (the ELBOs are 100-draw estimates, log p(x) a k = 1000 IWAE bound)."""
    result = evaluate.gaps(digits_vae, digits_test_images, iwae_k=1000, refine_steps=(0, 5, 50),
                           meanfield_steps=0, elbo_samples=100)
    refined, log_px = result.elbo_refined_per_point, result.log_px_per_point

    def lower_or_equal(smaller, larger):
        difference = larger - smaller
        return float(difference.mean()) >= -3 * float(difference.std()) / math.sqrt(difference.numel())

    assert lower_or_equal(refined[0], refined[1]) and lower_or_equal(refined[1], refined[2])
    assert lower_or_equal(refined[2], log_px)
    assert result.amortization_gap > 0 and result.approximation_gap > 0


@pytest.mark.slow  # trains a second VAE
def test_active_units_collapse_under_a_forced_high_kl_weight(digits_vae, digits_test_images):
    torch.manual_seed(0)
    collapsed = _train_digits_vae(kl_weight=20.0)
    normal_units = evaluate.active_units(digits_vae, digits_test_images)
    collapsed_units = evaluate.active_units(collapsed, digits_test_images)
    assert normal_units.variances.shape == (8,)
    assert normal_units.count >= 3
    assert collapsed_units.count <= 1


def test_iwae_log_likelihood_is_per_image_and_chunk_independent(digits_vae, digits_test_images):
    images = digits_test_images[:10]
    one = evaluate.iwae_log_likelihood(digits_vae, images, num_samples=2000, chunk_size=2000, batch_size=10)
    many = evaluate.iwae_log_likelihood(digits_vae, images, num_samples=2000, chunk_size=300, batch_size=4)
    assert one.shape == (10,)
    # Independent draws; the k = 2000 estimates differ by their Monte Carlo error (~0.05 nats here).
    torch.testing.assert_close(one, many, atol=0.3, rtol=0)


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pyro_vi", "gap", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_gap_command_writes_metrics_and_figure(tmp_path):
    out = tmp_path / "gap"
    completed = _cli("--epochs", "1", "--z-dim", "2", "--hidden-dims", "16", "--num-points", "8", "--iwae-k", "20",
                     "--refine-steps", "0,2", "--meanfield-steps", "3", "--elbo-samples", "5", "--device", "cpu",
                     "--no-progress", "--out", str(out))
    assert completed.returncode == 0, completed.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("log_px", "elbo_amortized", "elbo_refined", "elbo_meanfield", "approximation_gap", "amortization_gap",
                "active_units", "refine_steps", "iwae_k", "num_points"):
        assert key in metrics, key
    assert metrics["refine_steps"] == [0, 2] and metrics["iwae_k"] == 20 and metrics["num_points"] == 8
    assert (out / "refinement.png").stat().st_size > 0


@pytest.mark.parametrize(
    "args, message",
    [(["--num-points", "0"], "--num-points must be a positive integer"),
     pytest.param(["--num-points", "5000"], "exceeds the 300 test images", marks=pytest.mark.slow),
     (["--checkpoint", "missing.pt"], "no checkpoint at")],
    ids=["zero-points", "too-many-points", "missing-checkpoint"],
)
def test_gap_command_rejects_bad_input_in_one_line_before_writing(tmp_path, args, message):
    out = tmp_path / "never"
    completed = _cli(*args, "--out", str(out), "--device", "cpu")
    assert completed.returncode == 2
    assert message in completed.stderr and len(completed.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow  # a subprocess that trains
def test_vae_command_trains_the_iwae_objective_and_reports_test_nll(tmp_path):
    out = tmp_path / "vae"
    completed = subprocess.run(
        [sys.executable, "-m", "pyro_vi", "vae", "--epochs", "1", "--z-dim", "2", "--hidden-dims", "16",
         "--objective", "iwae", "--particles", "5", "--iwae-k", "20", "--iwae-points", "10",
         "--device", "cpu", "--no-progress", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["loss"] == "iwae-k5" and metrics["iwae_k"] == 20 and metrics["iwae_points"] == 10
    # -log p(x) estimate <= -ELBO on average; both are per image (different subsets, so loosely).
    assert 0 < metrics["test_nll_iwae"] < -metrics["test_elbo"] + 5


@pytest.mark.slow  # a subprocess that trains two small models
def test_gap_example_runs_with_tiny_arguments():
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "gap.py"
    completed = subprocess.run(
        [sys.executable, str(example), "--epochs", "1", "--num-points", "10", "--iwae-k", "20", "--meanfield-steps", "5",
         "--local-epochs", "1", "--device", "cpu"],
        capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr
    assert "amortization gap" in completed.stdout and "Hoffman" in completed.stdout
