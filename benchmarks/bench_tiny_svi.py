"""Tiny-model SVI step overhead: steps/s where the per-step cost of the library is all there is.

Three models whose arithmetic is negligible, so steps/s measures the machinery around it:

* ``normal-normal``  z ~ N(0, I_2);  x_n | z ~ N(z, I_2), 16 points; mean-field Normal guide,
                     Trace_ELBO (one reparameterized sample).
* ``gmm-enum``       1-D mixture of 3 Gaussians, 500 points, weights/locs/scales as point
                     estimates, z_n summed out: TraceEnum_ELBO (exact, no sampling).
* ``vae-tiny``       the VAE 16-8-2 at batch 4 (as ``bench_vae_throughput.py``).

Contenders per model: ``pyro_vi`` (``pyro_vi.fit``), ``pyro_vi-compiled`` (``pyro_vi.fit`` with
``TrainConfig(compile=True)``: the step recorded once as a tensor program, TraceEnum_ELBO's
included), ``pyro_vi-inductor`` (``compile="inductor"``: that program compiled to fused kernels by
inductor, in the untimed warm-up; not in ``--quick``), ``torch`` (the same objective, parametrization
and Adam written by hand), ``pyro`` (``SVI.step`` with ``pyro.optim.Adam``) and ``numpyro`` (the
same model in NumPyro, a chunk of steps compiled as one ``jax.jit(lax.fori_loop)``). NumPyro's
enumeration needs ``funsor``; its GMM sums z out with ``MixtureSameFamily`` instead (the same
objective). Ratios are step times relative to the hand-written loop (1.0 = as fast; the target is
pyro_vi <= 2x).

    python benchmarks/bench_tiny_svi.py
    python benchmarks/bench_tiny_svi.py --quick
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import bench_vae_throughput  # noqa: E402

import pyro_vi  # noqa: E402
import pyro_vi.engine.optim  # noqa: E402

MODELS = ("normal-normal", "gmm-enum", "vae-tiny")
CONTENDERS = ("pyro_vi", "pyro_vi-compiled", "pyro_vi-inductor", "torch", "pyro", "numpyro")
LEARNING_RATE = 0.01
_HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


def _normal_log_prob(value: Tensor, loc, scale) -> Tensor:
    return -0.5 * ((value - loc) / scale) ** 2 - torch.log(torch.as_tensor(scale)) - _HALF_LOG_TWO_PI


# ------------------------------------------------------------------------------------------------
# normal-normal
# ------------------------------------------------------------------------------------------------


class NormalNormal:
    """z ~ N(0, I);  x_n | z ~ N(z, I), with a mean-field Normal guide."""

    num_data, dim = 16, 2

    @staticmethod
    def data(seed: int) -> Tensor:
        generator = torch.Generator().manual_seed(seed)
        return 1.5 + torch.randn(NormalNormal.num_data, NormalNormal.dim, generator=generator)

    @staticmethod
    def model(x: Tensor, *unused) -> None:
        z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[-1]), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(z, 1.0).to_event(1), obs=x)

    @staticmethod
    def guide(x: Tensor, *unused) -> None:
        z_loc = pyro.param("z_loc", lambda: x.new_zeros(x.shape[-1]))
        z_scale = pyro.param("z_scale", lambda: x.new_ones(x.shape[-1]), constraint=constraints.positive)
        pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))

    loss = staticmethod(lambda: pyro.infer.Trace_ELBO())

    @staticmethod
    def init_params(x: Tensor) -> dict:
        """Unconstrained parameters, as the param store holds them (scale = exp(log_scale))."""
        return {"z_loc": x.new_zeros(x.shape[-1]), "z_scale": x.new_zeros(x.shape[-1])}

    @staticmethod
    def handwritten_loss(params: dict, x: Tensor) -> Tensor:
        """-ELBO with the noise drawn as ``dist.Normal.rsample`` draws it."""
        loc, scale = params["z_loc"], params["z_scale"].exp()
        epsilon = torch.empty_like(loc).normal_()
        z = loc + scale * epsilon
        log_q = (-0.5 * epsilon**2 - torch.log(scale) - _HALF_LOG_TWO_PI).sum()
        log_prior = (-0.5 * z**2 - _HALF_LOG_TWO_PI).sum()
        log_likelihood = (-0.5 * (x - z) ** 2 - _HALF_LOG_TWO_PI).sum()
        return -(log_likelihood + log_prior - log_q)

    @staticmethod
    def numpyro_program(x):
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as ndist

        def model(x):
            z = numpyro.sample("z", ndist.Normal(jnp.zeros(x.shape[-1]), 1.0).to_event(1))
            with numpyro.plate("data", x.shape[0]):
                numpyro.sample("obs", ndist.Normal(z, 1.0).to_event(1), obs=x)

        def guide(x):
            z_loc = numpyro.param("z_loc", jnp.zeros(x.shape[-1]))
            z_scale = numpyro.param("z_scale", jnp.ones(x.shape[-1]), constraint=ndist.constraints.positive)
            numpyro.sample("z", ndist.Normal(z_loc, z_scale).to_event(1))

        return model, guide, numpyro.infer.Trace_ELBO()


# ------------------------------------------------------------------------------------------------
# gmm-enum
# ------------------------------------------------------------------------------------------------


class GMMEnum:
    """weights, locs, scales as point estimates; z_n ~ Categorical(weights) summed out."""

    num_data, num_components = 500, 3

    @staticmethod
    def data(seed: int) -> Tensor:
        generator = torch.Generator().manual_seed(seed)
        component = torch.randint(0, 3, (GMMEnum.num_data,), generator=generator)
        x = torch.tensor([-4.0, 0.0, 5.0])[component] + torch.tensor([1.0, 0.5, 1.5])[component] * torch.randn(
            GMMEnum.num_data, generator=generator
        )
        return x.unsqueeze(-1)  # (num_data, 1): pyro_vi.fit takes (num_data, features)

    @staticmethod
    def _initial(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        k = GMMEnum.num_components
        return x.new_ones(k) / k, torch.linspace(-1.0, 1.0, k, dtype=x.dtype), x.new_ones(k)

    @staticmethod
    def model(x: Tensor, *unused) -> None:
        weights0, locs0, scales0 = GMMEnum._initial(x)
        weights = pyro.param("weights", weights0, constraint=constraints.simplex)
        locs = pyro.param("locs", locs0)
        scales = pyro.param("scales", scales0, constraint=constraints.positive)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
            pyro.sample("obs", dist.Normal(locs[z], scales[z]), obs=x[:, 0])

    @staticmethod
    def guide(x: Tensor, *unused) -> None:
        pass

    loss = staticmethod(lambda: pyro.infer.TraceEnum_ELBO(max_plate_nesting=1))

    @staticmethod
    def init_params(x: Tensor) -> dict:
        weights0, locs0, scales0 = GMMEnum._initial(x)
        return {
            "weights": torch.distributions.transform_to(constraints.simplex).inv(weights0),
            "locs": locs0.clone(),
            "scales": scales0.log(),
        }

    @staticmethod
    def handwritten_loss(params: dict, x: Tensor) -> Tensor:
        """-log p(x | weights, locs, scales), z summed out with logsumexp."""
        weights = params["weights"].softmax(-1)  # transform_to(simplex), as the param store does
        scales = params["scales"].exp()
        log_joint = weights.log() + _normal_log_prob(x, params["locs"], scales)  # (num_data, num_components)
        return -torch.logsumexp(log_joint, -1).sum()

    @staticmethod
    def numpyro_program(x):
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as ndist

        k = GMMEnum.num_components

        def model(x):
            weights = numpyro.param("weights", jnp.ones(k) / k, constraint=ndist.constraints.simplex)
            locs = numpyro.param("locs", jnp.linspace(-1.0, 1.0, k))
            scales = numpyro.param("scales", jnp.ones(k), constraint=ndist.constraints.positive)
            with numpyro.plate("data", x.shape[0]):
                mixture = ndist.MixtureSameFamily(ndist.Categorical(weights), ndist.Normal(locs, scales))
                numpyro.sample("obs", mixture, obs=x[:, 0])

        def guide(x):
            pass

        return model, guide, numpyro.infer.Trace_ELBO()


# ------------------------------------------------------------------------------------------------
# Contenders on the two small models: each returns ``chunk()``, timing ``steps`` steps
# ------------------------------------------------------------------------------------------------


def build_pyro_vi(case, x: Tensor, steps: int, seed: int, compile: bool = False):
    config = pyro_vi.TrainConfig(
        epochs=steps, batch_size=x.shape[0], learning_rate=LEARNING_RATE, binarization="none", seed=seed, compile=compile
    )
    optimizer = pyro_vi.engine.optim.Adam({"lr": LEARNING_RATE})
    loss = case.loss()
    slot = _common.ParamStoreSlot()

    def chunk() -> float:
        with slot.active():
            start = _common.timer()
            pyro_vi.fit_images(case.model, case.guide, x, config, loss=loss, optimizer=optimizer, progress=False)
            return _common.timer() - start

    return chunk


def build_torch(case, x: Tensor, steps: int, seed: int):
    params = {name: value.requires_grad_() for name, value in case.init_params(x).items()}
    optimizer = torch.optim.Adam(params.values(), lr=LEARNING_RATE)
    torch.manual_seed(seed)

    def chunk() -> float:
        start = _common.timer()
        for _ in range(steps):
            loss = case.handwritten_loss(params, x)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return _common.timer() - start

    return chunk


def build_pyro(case, x: Tensor, steps: int, seed: int):
    svi = pyro.infer.SVI(case.model, case.guide, pyro.optim.Adam({"lr": LEARNING_RATE}), case.loss())
    slot = _common.ParamStoreSlot()
    torch.manual_seed(seed)

    def chunk() -> float:
        with slot.active():
            start = _common.timer()
            for _ in range(steps):
                svi.step(x)
            return _common.timer() - start

    return chunk


def build_numpyro(case, x: Tensor, steps: int, seed: int):
    import jax
    import jax.numpy as jnp
    import numpyro

    model, guide, loss = case.numpyro_program(x)
    data = jnp.asarray(x.numpy())
    svi = numpyro.infer.SVI(model, guide, numpyro.optim.Adam(LEARNING_RATE), loss)
    state = svi.init(jax.random.PRNGKey(seed), data)
    return _common.numpyro_chunk(svi, state, steps, data)


BUILDERS = {
    "pyro_vi": build_pyro_vi,
    "pyro_vi-compiled": functools.partial(build_pyro_vi, compile=True),
    "pyro_vi-inductor": functools.partial(build_pyro_vi, compile="inductor"),
    "torch": build_torch,
    "pyro": build_pyro,
    "numpyro": build_numpyro,
}
# What cannot be recorded (none since pyro_vi.engine.compile.record records TraceEnum_ELBO too).
UNSUPPORTED: dict[tuple[str, str], str] = {}
CASES = {"normal-normal": NormalNormal, "gmm-enum": GMMEnum}


def build(model: str, contender: str, steps: int, seed: int):
    """``chunk()`` for ``contender`` on ``model``; ``vae-tiny`` reuses the VAE benchmark's builders
    (one epoch of ``steps`` batches of 4)."""
    if model == "vae-tiny":
        vae_args = bench_vae_throughput.parse_args(
            ["--x-dim", "16", "--hidden-dims", "8", "--z-dim", "2", "--seed", str(seed), "--learning-rate", str(LEARNING_RATE)]
        )
        images = bench_vae_throughput.make_images(4 * steps, 16, seed)
        return bench_vae_throughput.BUILDERS[contender](images, vae_args, 4)
    case = CASES[model]
    return BUILDERS[contender](case, case.data(seed), steps, seed)


def main(args) -> dict:
    _common.setup_threads(args.threads)
    started_at = _common.commit()  # the code measured, whatever is committed meanwhile
    skipped = {}
    if "numpyro" in args.contenders and (why := bench_vae_throughput.available("numpyro")):
        skipped["numpyro"] = why
        print(f"numpyro: skipped, {why}")
    contenders = [c for c in args.contenders if c in BUILDERS and c not in skipped]
    results = {}
    for model in args.models:
        chunks = {}
        for contender in contenders:
            if (model, contender) in UNSUPPORTED:
                skipped[f"{model}/{contender}"] = UNSUPPORTED[model, contender]
                continue
            chunks[contender] = build(model, contender, args.steps, args.seed)
            chunks[contender]()  # warm-up (NumPyro: compilation), not timed
        times = _common.interleaved(chunks, rounds=args.rounds, warmup_rounds=0)
        rates = {name: args.steps / _common.median(t) for name, t in times.items()}
        entry = {"steps_per_second": rates, "chunk_seconds": times}
        if "torch" in rates:
            entry["step_time_ratio_to_torch"] = {name: rates["torch"] / rate for name, rate in rates.items()}
        if "numpyro" in rates:
            entry["step_time_ratio_to_numpyro"] = {name: rates["numpyro"] / rate for name, rate in rates.items()}
        results[model] = entry
        ratios = entry.get("step_time_ratio_to_torch", {})
        print(f"{model}: " + ", ".join(f"{n} {r:,.0f} steps/s ({ratios.get(n, float('nan')):.2f}x torch's step time)" for n, r in rates.items()))
    payload = {
        "benchmark": "tiny_svi",
        "command": _common.command_line(),
        "commit": started_at,
        "machine": _common.machine(),
        "steps_per_chunk": args.steps,
        "rounds": args.rounds,
        "skipped": skipped,
        "results": results,
    }
    path = _common.write_json("tiny_svi" + ("_quick" if args.quick else ""), payload, args.out_dir)
    print(f"wrote {path}")
    if not args.no_table:
        numbers = "; ".join(
            f"{m}: " + ", ".join(f"{n} {r:,.0f}" for n, r in e["steps_per_second"].items()) + " steps/s" for m, e in results.items()
        )
        ratios = "; ".join(
            f"{m}: step time pyro_vi/torch {e.get('step_time_ratio_to_torch', {}).get('pyro_vi', float('nan')):.2f}, "
            f"pyro_vi-compiled/torch {e.get('step_time_ratio_to_torch', {}).get('pyro_vi-compiled', float('nan')):.2f}, "
            f"pyro/torch {e.get('step_time_ratio_to_torch', {}).get('pyro', float('nan')):.2f}"
            for m, e in results.items()
        )
        if skipped:
            ratios += "; skipped: " + ", ".join(skipped)
        _common.append_results_row("Tiny-model SVI step overhead", numbers, ratios, args.results_table, started_at)
    return payload


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_common_arguments(parser)
    parser.add_argument("--models", type=lambda s: s.split(","), default=list(MODELS))
    parser.add_argument("--contenders", type=lambda s: s.split(","), default=list(CONTENDERS))
    parser.add_argument("--steps", type=int, default=None, help="steps per timed chunk (default 200; quick 10)")
    parser.add_argument("--rounds", type=int, default=None, help="timed chunks per contender (default 7; quick 2)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.quick and "pyro_vi-inductor" in args.contenders:  # seconds of compiling: full runs only
        args.contenders = [name for name in args.contenders if name != "pyro_vi-inductor"]
    args.steps = args.steps or (10 if args.quick else 200)
    args.rounds = args.rounds or (2 if args.quick else 7)
    return args


if __name__ == "__main__":
    main(parse_args())
