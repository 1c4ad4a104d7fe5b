"""IWAE log p(x) evaluation: seconds and peak memory for k = 5000 over 1,000 test images.

Two contenders estimate the same per-image bound L_k on the same VAE (784-400-50 by default, or a
``pyro-vi vae`` checkpoint) and the same binarized images:

* ``pyro_vi``  ``pyro_vi.vae.evaluate.iwae_log_likelihood``: generic Pyro traces of model and guide
               under a particle plate, chunked (any model/guide pair works);
* ``torch``    the same estimator written by hand for this VAE (encoder -> rsample -> decoder ->
               logsumexp), chunked identically: the ceiling for a PyTorch implementation.

Each contender runs alone in a fresh process, so its peak RSS is its own; the run reports seconds,
images/s, peak memory, the ratio pyro_vi/torch and the mean log p(x) of both (they must agree
within Monte Carlo error).

    python benchmarks/bench_evaluate.py                 # k = 5000, 1,000 images
    python benchmarks/bench_evaluate.py --quick         # k = 100, 50 images: seconds
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

CONTENDERS = ("pyro_vi", "torch")


def _images(args) -> torch.Tensor:
    from pyro_vi.vae.data import binarize, load_dataset

    if args.dataset == "synthetic":
        generator = torch.Generator().manual_seed(args.seed)
        grey = torch.rand(16, 784, generator=generator)
        weights = torch.rand(args.num_images, 16, generator=generator).softmax(-1)
        return (torch.rand(args.num_images, 784, generator=generator) < weights @ grey).float()
    dataset = load_dataset(args.dataset, args.data_dir)
    return binarize(dataset.test_images[: args.num_images], "dynamic", torch.Generator().manual_seed(0))


def _vae(args, x_dim: int):
    import pyro

    from pyro_vi.vae.model import VAE

    if args.checkpoint:
        from pyro_vi.commands.gap import load_vae

        return load_vae(args.checkpoint, torch.device("cpu"))[0]
    pyro.set_rng_seed(args.seed)
    return VAE(x_dim, 50, (400,))


@torch.no_grad()
def _iwae_by_hand(vae, images, num_samples: int, chunk_size: int, batch_size: int) -> torch.Tensor:
    estimates = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        q = vae.posterior(x)
        prior = vae.prior(x.shape[0], x)
        log_sum = None
        for first in range(0, num_samples, chunk_size):
            z = q.sample((min(chunk_size, num_samples - first),))  # (chunk, batch, z_dim)
            weights = vae.likelihood(vae.decoder(z)).log_prob(x) + prior.log_prob(z) - q.log_prob(z)
            chunk = weights.logsumexp(0)
            log_sum = chunk if log_sum is None else torch.logaddexp(log_sum, chunk)
        estimates.append(log_sum - math.log(num_samples))
    return torch.cat(estimates)


def run_contender(args) -> dict:
    """One contender alone in this process."""
    from pyro_vi.vae import evaluate

    _common.setup_threads(args.threads)
    images = _images(args)
    vae = _vae(args, images.shape[-1])
    vae.eval()
    start = time.perf_counter()
    if args.contender == "pyro_vi":
        log_px = evaluate.iwae_log_likelihood(vae, images, args.iwae_k, args.chunk_size, args.batch_size)
    else:
        log_px = _iwae_by_hand(vae, images, args.iwae_k, args.chunk_size, args.batch_size)
    seconds = time.perf_counter() - start
    return {
        "contender": args.contender,
        "seconds": seconds,
        "images_per_second": images.shape[0] / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "log_px": float(log_px.mean()),
        "log_px_standard_error": float(log_px.std() / math.sqrt(log_px.numel())),
    }


def main(args) -> dict:
    if args.quick:
        args.iwae_k, args.num_images = min(args.iwae_k, 100), min(args.num_images, 50)
    results = {}
    for contender in CONTENDERS:
        command = [sys.executable, __file__, "--contender", contender, *_forwarded(args)]
        completed = subprocess.run(command, capture_output=True, text=True, check=True)
        results[contender] = json.loads(completed.stdout.strip().splitlines()[-1])
    ratio = results["pyro_vi"]["seconds"] / results["torch"]["seconds"]
    payload = {
        "benchmark": "bench_evaluate", "command": _common.command_line(), "commit": _common.commit(),
        "machine": _common.machine(), "iwae_k": args.iwae_k, "num_images": args.num_images,
        "chunk_size": args.chunk_size, "batch_size": args.batch_size, "dataset": args.dataset,
        "checkpoint": args.checkpoint, "results": results, "time_ratio_pyro_vi_over_torch": ratio,
    }
    path = _common.write_json("bench_evaluate" + ("_quick" if args.quick else ""), payload, args.out_dir)
    numbers = "; ".join(
        f"{name}: {r['seconds']:.1f} s, {r['images_per_second']:.1f} images/s, peak {r['peak_rss_mb']:.0f} MB, "
        f"log p(x) {r['log_px']:.2f} ± {r['log_px_standard_error']:.2f}"
        for name, r in results.items()
    )
    title = f"IWAE log p(x), k={args.iwae_k}, {args.num_images} images ({args.dataset})"
    if not args.no_table:
        _common.append_results_row(title, numbers, f"pyro_vi/torch time {ratio:.2f}", args.results_table)
    print(f"{title}: {numbers}; pyro_vi/torch time {ratio:.2f}; wrote {path}")
    return payload


def _forwarded(args) -> list[str]:
    forwarded = ["--iwae-k", str(args.iwae_k), "--num-images", str(args.num_images), "--chunk-size", str(args.chunk_size),
                 "--batch-size", str(args.batch_size), "--dataset", args.dataset, "--seed", str(args.seed)]
    if args.threads:
        forwarded += ["--threads", str(args.threads)]
    if args.data_dir:
        forwarded += ["--data-dir", args.data_dir]
    if args.checkpoint:
        forwarded += ["--checkpoint", args.checkpoint]
    return forwarded


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iwae-k", type=int, default=5000)
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--chunk-size", type=int, default=250)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--dataset", default="synthetic", help="synthetic (default, offline), digits, mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--checkpoint", default=None, help="a pyro-vi vae checkpoint (default: a fresh 784-400-50 VAE)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--contender", choices=CONTENDERS, default=None, help=argparse.SUPPRESS)
    _common.add_common_arguments(parser)
    arguments = parser.parse_args()
    if arguments.contender:
        print(json.dumps(run_contender(arguments)))
    else:
        main(arguments)
