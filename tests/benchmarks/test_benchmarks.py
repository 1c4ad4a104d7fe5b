"""Benchmarks measure the same work: each pyro_vi/Pyro path and its hand-written reference compute
the same loss and gradients on the same batch and seed; and every ``benchmarks/bench_*.py`` runs
with ``--quick``. (Speed itself is measured only by the benchmark scripts, never here.)"""

import importlib
import sys
from pathlib import Path

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

import launch  # tests/launch.py: commands in a forked warm interpreter

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
bench_vae_throughput = importlib.import_module("bench_vae_throughput")
bench_tiny_svi = importlib.import_module("bench_tiny_svi")
run_all = importlib.import_module("run_all")
_common = importlib.import_module("_common")


def _loss_and_grads(elbo, model, guide, *args):
    """Pyro's loss and the gradients of the unconstrained params, by name."""
    with poutine.trace(param_only=True) as capture:
        loss = elbo.loss_and_grads(model, guide, *args)
    grads = {name: site["value"].unconstrained().grad.clone() for name, site in capture.trace.nodes.items()}
    return loss, grads


def test_vae_handwritten_loss_equals_trace_elbo():
    """Same weights, batch and seed: the hand-written loop's loss and gradients are Pyro's."""
    from pyro_vi.vae.model import VAE

    images = bench_vae_throughput.make_images(64, 20, seed=0)
    torch.manual_seed(0)
    vae = VAE(20, z_dim=3, hidden_dims=(8,))
    indices = torch.arange(16, 32)
    x = images[indices]

    pyro.set_rng_seed(1)
    loss, grads = _loss_and_grads(Trace_ELBO(), vae.model, vae.guide, x, indices, 64, 1.0)

    vae.zero_grad(set_to_none=True)
    pyro.set_rng_seed(1)
    reference = bench_vae_throughput.handwritten_loss(vae, x, 64)
    reference.backward()
    # float32 sums in a different order: agreement to ~1e-6 relative
    assert reference.item() == pytest.approx(loss, rel=1e-5)
    for module_name, module in (("encoder", vae.encoder), ("decoder", vae.decoder)):
        for name, parameter in module.named_parameters():
            torch.testing.assert_close(parameter.grad, grads[f"{module_name}$$${name}"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", ["normal-normal", "gmm-enum"])
def test_tiny_handwritten_loss_equals_pyro(case):
    case_class = bench_tiny_svi.CASES[case]
    x = case_class.data(seed=0)
    pyro.set_rng_seed(1)
    loss, grads = _loss_and_grads(case_class.loss(), case_class.model, case_class.guide, x)

    params = {name: value.requires_grad_() for name, value in case_class.init_params(x).items()}
    pyro.set_rng_seed(1)
    reference = case_class.handwritten_loss(params, x)
    reference.backward()
    assert reference.item() == pytest.approx(loss, rel=1e-5)
    assert params.keys() == grads.keys()
    for name, value in params.items():
        torch.testing.assert_close(value.grad, grads[name], rtol=1e-4, atol=1e-5)


def test_numpyro_gmm_loss_equals_handwritten():
    """NumPyro's GMM (z summed out by MixtureSameFamily) has the same objective at the same start."""
    pytest.importorskip("numpyro")
    import jax
    import jax.numpy as jnp
    import numpyro

    case = bench_tiny_svi.GMMEnum
    x = case.data(seed=0)
    model, guide, elbo = case.numpyro_program(x)
    data = jnp.asarray(x.numpy())
    svi = numpyro.infer.SVI(model, guide, numpyro.optim.Adam(0.01), elbo)
    state = svi.init(jax.random.PRNGKey(0), data)
    numpyro_loss = float(svi.evaluate(state, data))
    params = case.init_params(x)
    assert case.handwritten_loss(params, x).item() == pytest.approx(numpyro_loss, rel=1e-5)


def test_results_row_goes_to_its_section(tmp_path):
    table = tmp_path / "RESULTS.md"
    table.write_text("# Benchmark results\n\n## another benchmark\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    _common.append_results_row("first", "1 img/s", "1.0x", table)
    _common.append_results_row("second", "2 img/s", "2.0x", table)
    text = table.read_text()
    assert "| 1 | 2 |\n" in text  # the other section is untouched
    section = text[text.index(_common.SECTION) :]
    rows = [line for line in section.splitlines() if line.startswith("| 20")]
    assert [row.split(" | ")[1] for row in rows] == ["first", "second"]


# On top of --quick: vae-tiny runs the VAE benchmark's builders, smoke-tested by the VAE run.
EXTRA = {"bench_tiny_svi": ["--models", "normal-normal,gmm-enum"]}


# Scripts whose --quick run is already a test of their owner's (not run twice).
TESTED_ELSEWHERE = {
    "bench_gmm": "tests/commands/test_gmm_cli.py",
    "bench_variance_speed": "tests/benchmarks/test_variance_benchmarks.py",
    **{path.stem: "tests/benchmarks/test_variance_benchmarks.py" for path in BENCHMARKS.glob("repro_*.py")},
}


@pytest.mark.parametrize(
    "script", [s for s in run_all.scripts() if s.stem not in TESTED_ELSEWHERE], ids=lambda path: path.stem
)
@pytest.mark.smoke
def test_benchmark_runs_quick(script, tmp_path):
    command = run_all.command_for(script, quick=True, table=False, threads=None)
    source = script.read_text()
    if "--out-dir" in source or "add_common_arguments" in source:
        command += ["--out-dir", str(tmp_path)]
    elif "--out" in source:
        command += ["--out", str(tmp_path / f"{script.stem}.json")]
    if "--results-md" in source:
        command += ["--results-md", str(tmp_path / "RESULTS.md")]
    command += EXTRA.get(script.stem, [])
    done = launch.run(command, cwd=BENCHMARKS.parent, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_evaluate_handwritten_iwae_agrees_with_pyro_vi_within_monte_carlo_error():
    """bench_evaluate's two contenders estimate the same L_k: per image, two independent estimates
    (pyro_vi's traced one and the hand-written one) differ by Monte Carlo noise only, so the mean
    difference over images lies within 4 standard errors (SE = sd of the differences / sqrt(n))."""
    from pyro_vi.vae import evaluate
    from pyro_vi.vae.model import VAE

    bench_evaluate = importlib.import_module("bench_evaluate")
    pyro.set_rng_seed(0)
    vae = VAE(30, z_dim=4, hidden_dims=(16,))
    x = (torch.rand(200, 30) < torch.rand(30)).float()
    torch.manual_seed(1)
    ours = evaluate.iwae_log_likelihood(vae, x, num_samples=64, chunk_size=20, batch_size=50)
    torch.manual_seed(2)
    theirs = bench_evaluate._iwae_by_hand(vae, x, num_samples=64, chunk_size=20, batch_size=50)
    differences = ours - theirs
    standard_error = differences.std() / differences.numel() ** 0.5
    assert differences.mean().abs() < 4 * standard_error
    assert standard_error < 0.05 * ours.abs().mean()  # the check has power: the noise is small against L_k
