"""R gradient replicates: vectorized gradient_variance vs the naive loop.

The naive loop is R x (Pyro ``Trace_ELBO().differentiable_loss`` + ``torch.autograd.grad``); the
vectorized path is ``pyro_vi.gradient_variance(..., vectorize=True)`` (vmap over replicates).
Problems: the D = 10 Gaussian toy, and a VAE (64-256-10 encoder/decoder) on a batch of 64 digits.
Targets: >= 20x on the toy, >= 3x on the VAE. Both contenders run interleaved, after a warm-up.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402

from pyro_vi import gradient_variance  # noqa: E402
from pyro_vi.estimators import problems as variance_models  # noqa: E402


def _problem(name):
    if name == "gaussian":
        return variance_models.make_problem("gaussian", dim=10)
    from pyro_vi.vae.data import binarize, load_dataset

    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = variance_models.TinyVAE(pixels=64, z_dim=10, hidden_dim=256)
    images = binarize(load_dataset("digits").train_images[:64], "threshold")
    problem = variance_models.VarianceProblem("vae", vae.model, vae.guide, (images,), {}, None)
    pyro.infer.Trace_ELBO().loss(problem.model, problem.guide, images)  # register params
    return problem


def _contenders(problem, num_replicates):
    store = pyro.get_param_store()
    params = [value for _, value in store.named_parameters()]

    def naive():
        start = time.perf_counter()
        elbo = pyro.infer.Trace_ELBO()
        grads = []
        for _ in range(num_replicates):
            loss = elbo.differentiable_loss(problem.model, problem.guide, *problem.args)
            grads.append(torch.autograd.grad(loss, params, allow_unused=True))
        return time.perf_counter() - start

    def vectorized():
        start = time.perf_counter()
        gradient_variance(problem.model, problem.guide, *problem.args, num_replicates=num_replicates, vectorize=True)
        return time.perf_counter() - start

    return {"loop": naive, "vectorized": vectorized}


def main(args):
    _common.setup_threads()
    num_replicates = 50 if args.quick else args.replicates
    rounds = 1 if args.quick else args.rounds
    results = {}
    for name in ("gaussian", "vae"):
        problem = _problem(name)
        times = _common.interleaved(_contenders(problem, num_replicates), rounds=rounds, warmup_rounds=1)
        loop, vectorized = _common.median(times["loop"]), _common.median(times["vectorized"])
        results[name] = {"loop_seconds": loop, "vectorized_seconds": vectorized, "speedup": loop / vectorized, "rounds": times}
        print(f"{name}: R = {num_replicates}: loop {loop:.3f} s, vectorized {vectorized:.3f} s, {loop / vectorized:.1f}x")
    payload = {"replicates": num_replicates, "machine": _common.machine(), "commit": _common.commit(), "results": results}
    _common.write_json("bench_variance_speed" + ("_quick" if args.quick else ""), payload, args.out_dir)
    if not args.no_table:
        numbers = "; ".join(
            f"{n}: loop {r['loop_seconds']:.3f} s, vectorized {r['vectorized_seconds']:.3f} s" for n, r in results.items()
        )
        ratios = "; ".join(f"{n}: {r['speedup']:.1f}x (target {20 if n == 'gaussian' else 3}x)" for n, r in results.items())
        _common.append_results_row(f"gradient_variance R={num_replicates}, vectorized vs loop", numbers, ratios, args.results_table)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    _common.add_common_arguments(parser)
    main(parser.parse_args())
