"""VAE training throughput: pyro_vi against what a user would otherwise write.

Four contenders train the same VAE (784-400-50 by default, Softplus MLPs, Bernoulli likelihood,
one-sample Trace_ELBO estimator with the minibatch scaled to the full data, Adam with lr 1e-3) on
the same binarized images, drawn by index from a device-resident tensor:

* ``pyro_vi``   ``pyro_vi.fit_images`` (the engine with the VAE's data path) with its defaults (the loop users of this library get);
* ``pyro_vi-compiled``  ``pyro_vi.fit_images`` with ``TrainConfig(compile=True)``: the step's Trace_ELBO
                recorded once as a tensor program (``pyro_vi.engine.compile.record``) and replayed;
* ``torch``     a hand-written PyTorch loop of the identical network, objective, batch and
                optimizer: the ceiling for any library built on PyTorch;
* ``pyro``      Pyro's ``SVI(model, guide, pyro.optim.Adam, Trace_ELBO()).step`` as a user writes it;
* ``numpyro``   NumPyro with a whole epoch compiled (``jax.jit`` over ``lax.fori_loop``, the shape
                of NumPyro's ``examples/vae.py``); skipped, with a note, when NumPyro is missing.

They take turns in one process (one epoch each per round); images/s are medians over rounds and
ratios are to the hand-written PyTorch loop. Peak memory is the growth of peak RSS while one
contender builds and trains alone in a fresh process (beyond imports and data).

    python benchmarks/bench_vae_throughput.py            # batch 32, 128, 512
    python benchmarks/bench_vae_throughput.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import pyro
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import pyro_vi  # noqa: E402
import pyro_vi.engine.optim  # noqa: E402
from pyro_vi.vae.model import VAE  # noqa: E402

CONTENDERS = ("pyro_vi", "pyro_vi-compiled", "torch", "pyro", "numpyro")
REFERENCE = "torch"


def make_images(num_data: int, x_dim: int, seed: int) -> Tensor:
    """Binarized synthetic images (smooth random grey levels, thresholded once): every contender
    sees the same bits, so none pays for binarization and the work is identical."""
    generator = torch.Generator().manual_seed(seed)
    basis = torch.rand(16, x_dim, generator=generator)
    weights = torch.rand(num_data, 16, generator=generator).softmax(-1)
    grey = weights @ basis
    return (torch.rand(num_data, x_dim, generator=generator) < grey).float()


# ------------------------------------------------------------------------------------------------
# The objective, written out by hand (the reference every contender must agree with)
# ------------------------------------------------------------------------------------------------

_HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


def handwritten_loss(vae: VAE, x: Tensor, num_data: int) -> Tensor:
    """-ELBO of the minibatch scaled to ``num_data`` points, one reparameterized sample of z.

    The noise is drawn exactly as ``dist.Normal.rsample`` draws it, so with the same seed this
    equals Pyro's ``Trace_ELBO`` on ``VAE.model``/``VAE.guide``.
    """
    loc, log_variance = vae.encoder(x)
    scale = torch.exp(0.5 * log_variance)
    epsilon = torch.empty_like(loc).normal_()
    z = loc + scale * epsilon
    log_q = (-0.5 * epsilon**2 - torch.log(scale) - _HALF_LOG_TWO_PI).sum(-1)
    log_prior = (-0.5 * z**2 - _HALF_LOG_TWO_PI).sum(-1)
    logits = vae.decoder(z)
    log_likelihood = -torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    return -(log_likelihood + log_prior - log_q).sum() * (num_data / x.shape[0])


# ------------------------------------------------------------------------------------------------
# Contenders: each returns an ``epoch()`` that trains one epoch and returns its seconds
# ------------------------------------------------------------------------------------------------


def build_pyro_vi(images: Tensor, args, batch_size: int, compile: bool | str = False):
    torch.manual_seed(args.seed)
    vae = VAE(images.shape[1], args.z_dim, args.hidden_dims).to(images.device)
    config = pyro_vi.TrainConfig(
        epochs=1, batch_size=batch_size, learning_rate=args.learning_rate, binarization="none", seed=args.seed,
        compile=compile,
    )  # fmt: skip
    store = _common.ParamStoreSlot()
    optimizer = pyro_vi.engine.optim.Adam({"lr": args.learning_rate})  # fit's default, kept across its calls
    loss = pyro.infer.Trace_ELBO()  # fit's default; kept, so a compiled program is recorded once

    def epoch() -> float:
        with store.active():
            start = _common.timer()
            pyro_vi.fit_images(vae.model, vae.guide, images, config, loss=loss, optimizer=optimizer, progress=False)
            return _common.timer() - start

    return epoch


def build_torch(images: Tensor, args, batch_size: int):
    torch.manual_seed(args.seed)
    vae = VAE(images.shape[1], args.z_dim, args.hidden_dims).to(images.device)
    optimizer = torch.optim.Adam(vae.parameters(), lr=args.learning_rate)
    num_data = images.shape[0]
    steps = num_data // batch_size

    def epoch() -> float:
        start = _common.timer()
        permutation = torch.randperm(num_data, device=images.device)
        for step in range(steps):
            x = images[permutation[step * batch_size : (step + 1) * batch_size]]
            loss = handwritten_loss(vae, x, num_data)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return _common.timer() - start

    return epoch


def build_pyro(images: Tensor, args, batch_size: int):
    from pyro.infer import SVI, Trace_ELBO

    torch.manual_seed(args.seed)
    vae = VAE(images.shape[1], args.z_dim, args.hidden_dims).to(images.device)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": args.learning_rate}), Trace_ELBO())
    num_data = images.shape[0]
    steps = num_data // batch_size
    store = _common.ParamStoreSlot()

    def epoch() -> float:
        with store.active():
            start = _common.timer()
            permutation = torch.randperm(num_data, device=images.device)
            for step in range(steps):
                indices = permutation[step * batch_size : (step + 1) * batch_size]
                svi.step(images[indices], indices, num_data, 1.0)
            return _common.timer() - start

    return epoch


def build_numpyro(images: Tensor, args, batch_size: int):
    """NumPyro's examples/vae.py shape: stax networks, SVI.update inside a jitted fori_loop epoch."""
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as ndist
    from jax.example_libraries import stax
    from numpyro.infer import SVI, Trace_ELBO

    x_dim, z_dim, hidden_dims = images.shape[1], args.z_dim, args.hidden_dims
    num_data = images.shape[0]
    steps = num_data // batch_size

    def mlp(sizes):
        layers = []
        for i, size_out in enumerate(sizes[1:]):
            layers.append(stax.Dense(size_out))
            if i < len(sizes) - 2:
                layers.append(stax.Softplus)
        return stax.serial(*layers)

    encoder_nn = mlp([x_dim, *hidden_dims, 2 * z_dim])
    decoder_nn = mlp([z_dim, *reversed(hidden_dims), x_dim])

    def model(x):
        decode = numpyro.module("decoder", decoder_nn, (batch_size, z_dim))
        with numpyro.plate("data", num_data, subsample_size=x.shape[0]):
            z = numpyro.sample("z", ndist.Normal(jnp.zeros((x.shape[0], z_dim)), 1.0).to_event(1))
            numpyro.sample("x", ndist.Bernoulli(logits=decode(z)).to_event(1), obs=x)

    def guide(x):
        encode = numpyro.module("encoder", encoder_nn, (batch_size, x_dim))
        with numpyro.plate("data", num_data, subsample_size=x.shape[0]):
            loc, log_variance = jnp.split(encode(x), 2, axis=-1)
            numpyro.sample("z", ndist.Normal(loc, jnp.exp(0.5 * log_variance)).to_event(1))

    data = jnp.asarray(images.cpu().numpy())
    svi = SVI(model, guide, numpyro.optim.Adam(args.learning_rate), Trace_ELBO())
    rng = jax.random.PRNGKey(args.seed)
    state = svi.init(rng, data[:batch_size])

    @jax.jit
    def epoch_train(svi_state, key):
        permutation = jax.random.permutation(key, num_data)

        def body(i, carry):
            loss_sum, svi_state = carry
            indices = jax.lax.dynamic_slice_in_dim(permutation, i * batch_size, batch_size)
            svi_state, loss = svi.update(svi_state, data[indices])
            return loss_sum + loss, svi_state

        return jax.lax.fori_loop(0, steps, body, (0.0, svi_state))

    counter = [0]

    def epoch() -> float:
        nonlocal state
        counter[0] += 1
        start = time.perf_counter()
        loss_sum, state = epoch_train(state, jax.random.fold_in(rng, counter[0]))
        jax.block_until_ready(loss_sum)
        return time.perf_counter() - start

    return epoch


BUILDERS = {
    "pyro_vi": build_pyro_vi,
    "pyro_vi-compiled": functools.partial(build_pyro_vi, compile=True),
    "pyro_vi-inductor": functools.partial(build_pyro_vi, compile="inductor"),  # bench_tiny_svi's vae-tiny; --contenders
    "torch": build_torch,
    "pyro": build_pyro,
    "numpyro": build_numpyro,
}


def available(name: str) -> str | None:
    """None if the contender can run here, else why not."""
    if name == "numpyro":
        missing = [m for m in ("numpyro", "jax") if _common.optional_version(m) is None]
        if missing:
            return f"{' and '.join(missing)} not installed (pip install 'pyro-vi[bench]')"
    return None


# ------------------------------------------------------------------------------------------------


def peak_memory(name: str, args, batch_size: int) -> float | None:
    """Peak memory (MiB) of ``name`` training alone in a fresh process."""
    command = [
        sys.executable, __file__, "--probe-memory", name, "--batch-sizes", str(batch_size),
        "--num-data", str(args.num_data), "--z-dim", str(args.z_dim),
        "--hidden-dims", ",".join(map(str, args.hidden_dims)), "--seed", str(args.seed),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"]


def _probe_memory(args) -> None:
    """Peak RSS while building and training, above the RSS after imports and data (Linux: the
    peak is reset through /proc/self/clear_refs, since imports alone can peak higher than training)."""
    images = make_images(args.num_data, args.x_dim, args.seed)
    baseline = _status_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM, the peak RSS
    except OSError:
        baseline = 0.0  # elsewhere: the process's whole peak
    epoch = BUILDERS[args.probe_memory](images, args, args.batch_sizes[0])
    for _ in range(2):
        epoch()
    peak = _status_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mib": (peak - baseline) / 1024}))


def _status_kib(field: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def main(args) -> dict:
    _common.setup_threads(args.threads)
    started_at = _common.commit()  # the code measured, whatever is committed meanwhile
    if args.probe_memory:
        _probe_memory(args)
        return {}
    contenders = [name for name in args.contenders if name in BUILDERS]
    skipped = {name: why for name in contenders if (why := available(name))}
    for name, why in skipped.items():
        print(f"{name}: skipped, {why}")
    runnable = [name for name in contenders if name not in skipped]
    images = make_images(args.num_data, args.x_dim, args.seed)
    results = {}
    for batch_size in args.batch_sizes:
        epochs = {}
        for name in runnable:
            build_start = time.perf_counter()
            epochs[name] = BUILDERS[name](images, args, batch_size)
            epochs[name]()  # first epoch: compilation (NumPyro), allocator warm-up; not timed
            print(f"  batch {batch_size}: {name} ready in {time.perf_counter() - build_start:.1f} s", flush=True)
        times = _common.interleaved(epochs, rounds=args.rounds, warmup_rounds=0)
        steps = args.num_data // batch_size
        rates = {name: steps * batch_size / _common.median(t) for name, t in times.items()}
        entry = {
            "images_per_second": rates,
            "epoch_seconds": times,
            "ratio_to_torch": {name: rate / rates[REFERENCE] for name, rate in rates.items()} if REFERENCE in rates else {},
        }
        if "numpyro" in rates:
            entry["ratio_to_numpyro"] = {name: rate / rates["numpyro"] for name, rate in rates.items()}
        if args.memory and batch_size == args.memory_batch_size:
            entry["peak_memory_mib"] = {name: peak_memory(name, args, batch_size) for name in runnable}
        results[str(batch_size)] = entry
        print(
            f"batch {batch_size}: "
            + ", ".join(f"{name} {rate:,.0f} img/s ({entry['ratio_to_torch'].get(name, float('nan')):.2f}x torch)" for name, rate in rates.items())
        )
    payload = {
        "benchmark": "vae_throughput",
        "command": _common.command_line(),
        "commit": started_at,
        "machine": _common.machine(),
        "network": f"{args.x_dim}-{'-'.join(map(str, args.hidden_dims))}-{args.z_dim}",
        "num_data": args.num_data,
        "rounds": args.rounds,
        "skipped": skipped,
        "results": results,
    }
    path = _common.write_json("vae_throughput" + ("_quick" if args.quick else ""), payload, args.out_dir)
    print(f"wrote {path}")
    if not args.no_table:
        numbers = "; ".join(
            f"b{b}: " + ", ".join(f"{n} {r / 1000:.1f}k" for n, r in e["images_per_second"].items()) + " img/s"
            for b, e in results.items()
        )
        memory = {b: e["peak_memory_mib"] for b, e in results.items() if "peak_memory_mib" in e}
        for b, peaks in memory.items():
            numbers += f"; peak RSS at b{b}: " + ", ".join(f"{n} {m:.0f} MiB" for n, m in peaks.items() if m)
        ratios = "; ".join(
            f"b{b}: pyro_vi/torch {e['ratio_to_torch'].get('pyro_vi', float('nan')):.2f}, "
            f"pyro_vi-compiled/torch {e['ratio_to_torch'].get('pyro_vi-compiled', float('nan')):.2f}, "
            f"pyro/torch {e['ratio_to_torch'].get('pyro', float('nan')):.2f}"
            + (f", pyro_vi/numpyro {e['ratio_to_numpyro']['pyro_vi']:.2f}" if "ratio_to_numpyro" in e else "")
            for b, e in results.items()
        )
        if skipped:
            ratios += "; skipped: " + ", ".join(skipped)
        _common.append_results_row(f"VAE throughput {payload['network']}", numbers, ratios, args.results_table, started_at)
    return payload


def _dims(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_common_arguments(parser)
    parser.add_argument("--batch-sizes", type=_dims, default=None, help="comma-separated (default 32,128,512)")
    parser.add_argument("--num-data", type=int, default=None, help="images per epoch (default 8192; quick 512)")
    parser.add_argument("--rounds", type=int, default=None, help="timed epochs per contender (default 5; quick 2)")
    parser.add_argument("--x-dim", type=int, default=784)
    parser.add_argument("--z-dim", type=int, default=50)
    parser.add_argument("--hidden-dims", type=_dims, default=(400,))
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--contenders", type=lambda s: s.split(","), default=list(CONTENDERS))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None, help="measure peak memory (default: on unless --quick)")
    parser.add_argument("--memory-batch-size", type=int, default=128, help="the batch size whose peak memory is measured")
    parser.add_argument("--probe-memory", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.batch_sizes = args.batch_sizes or ((128,) if args.quick else (32, 128, 512))
    args.num_data = args.num_data or (512 if args.quick else 8192)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.memory = (not args.quick) if args.memory is None else args.memory
    return args


if __name__ == "__main__":
    main(parse_args())
