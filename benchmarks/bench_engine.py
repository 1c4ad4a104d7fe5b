"""pyro_vi.fit against Pyro's own loop (``for step: svi.step(...)``) on tutorial models: the engine's
per-step cost (NaN/inf check, checkpoint bookkeeping, PerStep arguments, callback) side by side.

Models, as Pyro's tutorials write them: the coin of "SVI Part I" (Beta guide), Bayesian regression
with ``PyroModule[nn.Linear]`` + ``AutoNormal``, and eight schools with ``AutoNormal``. Contenders:
``pyro-svi`` (SVI.step), ``pyro_vi.fit`` with ``compile=False`` (the plain step) and
``pyro_vi.fit-compiled`` (``compile=True``, what ``fit``'s default does on runs of 1000+ steps: the
step recorded once as a tensor program, ``pyro_vi.engine.compile.record``; each ``fit`` call's first step
is plain, the recording is kept on the loss object and reused by later calls),
``pyro_vi.fit-inductor`` (``compile="inductor"``: that program compiled by ``torch.compile``, in the
untimed warm-up round; not in ``--quick``), and ``numpyro`` (the
same model and guide in NumPyro, a chunk of steps compiled as one ``jax.jit(lax.fori_loop)``, as
``SVI.run`` does; skipped when NumPyro is not installed). All use Adam (lr 0.01) and
``Trace_ELBO`` and take a fixed number of steps per timed chunk, each with its own param store;
rounds alternate (benchmarks/_common.py). Reported: steps per second (medians), the ratio of
pyro_vi's step time to SVI's (target: <= 1.0), of the compiled step time to the plain one, and of
the compiled step time to NumPyro's.

    python benchmarks/bench_engine.py            # full
    python benchmarks/bench_engine.py --quick    # seconds
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
from pyro.infer import SVI, Trace_ELBO  # noqa: E402
from pyro.infer.autoguide import AutoNormal  # noqa: E402
from pyro.nn import PyroModule, PyroSample  # noqa: E402
from torch.distributions import constraints  # noqa: E402

import pyro_vi  # noqa: E402


def coin():
    data = torch.cat([torch.ones(6), torch.zeros(4)])

    def model(data):
        fairness = pyro.sample("latent_fairness", dist.Beta(10.0, 10.0))
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Bernoulli(fairness), obs=data)

    def guide(data):
        alpha_q = pyro.param("alpha_q", torch.tensor(15.0), constraint=constraints.positive)
        beta_q = pyro.param("beta_q", torch.tensor(15.0), constraint=constraints.positive)
        pyro.sample("latent_fairness", dist.Beta(alpha_q, beta_q))

    return model, lambda: guide, (data,)


def regression():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=generator)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 9.0 + 0.5 * torch.randn(50, generator=generator)

    class BayesianRegression(PyroModule):
        def __init__(self):
            super().__init__()
            self.linear = PyroModule[torch.nn.Linear](3, 1)
            self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, 3]).to_event(2))
            self.linear.bias = PyroSample(dist.Normal(0.0, 10.0).expand([1]).to_event(1))

        def forward(self, x, y=None):
            mean = self.linear(x).squeeze(-1)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("obs", dist.Normal(mean, 0.5), obs=y)

    model = BayesianRegression()
    return model, lambda: AutoNormal(model), (x, y)


def eight_schools():
    y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
    sigma = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])

    def model(sigma, y=None):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = pyro.sample("tau", dist.HalfCauchy(5.0))
        with pyro.plate("schools", len(sigma)):
            theta = pyro.sample("theta", dist.Normal(mu, tau))
            pyro.sample("obs", dist.Normal(theta, sigma), obs=y)

    return model, lambda: AutoNormal(model), (sigma, y)


MODELS = {"coin": coin, "regression-autonormal": regression, "eight-schools": eight_schools}


def numpyro_program(name: str, args):
    """The same model and guide in NumPyro (NumPyro has no PyroModule: the regression's weight and
    bias are sampled as its PyroSamples declare them)."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as ndist
    from numpyro.infer.autoguide import AutoNormal as NumPyroAutoNormal

    data = tuple(jnp.asarray(a.numpy()) for a in args)
    if name == "coin":
        def model(data):
            fairness = numpyro.sample("latent_fairness", ndist.Beta(10.0, 10.0))
            with numpyro.plate("data", data.shape[0]):
                numpyro.sample("obs", ndist.Bernoulli(fairness), obs=data)

        def guide(data):
            alpha_q = numpyro.param("alpha_q", 15.0, constraint=ndist.constraints.positive)
            beta_q = numpyro.param("beta_q", 15.0, constraint=ndist.constraints.positive)
            numpyro.sample("latent_fairness", ndist.Beta(alpha_q, beta_q))

        return model, guide, data
    if name == "regression-autonormal":
        def model(x, y=None):
            weight = numpyro.sample("weight", ndist.Normal(0.0, 1.0).expand([1, 3]).to_event(2))
            bias = numpyro.sample("bias", ndist.Normal(0.0, 10.0).expand([1]).to_event(1))
            mean = (x @ weight.T + bias).squeeze(-1)
            with numpyro.plate("data", x.shape[0]):
                numpyro.sample("obs", ndist.Normal(mean, 0.5), obs=y)

        return model, NumPyroAutoNormal(model), data

    def model(sigma, y=None):
        mu = numpyro.sample("mu", ndist.Normal(0.0, 5.0))
        tau = numpyro.sample("tau", ndist.HalfCauchy(5.0))
        with numpyro.plate("schools", sigma.shape[0]):
            theta = numpyro.sample("theta", ndist.Normal(mu, tau))
            numpyro.sample("obs", ndist.Normal(theta, sigma), obs=y)

    return model, NumPyroAutoNormal(model), data


def build_numpyro(name: str, args, steps: int):
    import jax
    import numpyro

    model, guide, data = numpyro_program(name, args)
    svi = numpyro.infer.SVI(model, guide, numpyro.optim.Adam(0.01), numpyro.infer.Trace_ELBO())
    state = svi.init(jax.random.PRNGKey(0), *data)
    return _common.numpyro_chunk(svi, state, steps, *data)


def contenders(name: str, steps: int, inductor: bool = True) -> dict:
    model, make_guide, args = MODELS[name]()
    slots = {key: _common.ParamStoreSlot() for key in ("pyro-svi", "pyro_vi.fit", "pyro_vi.fit-compiled", "pyro_vi.fit-inductor")}
    guides = {}
    for key, slot in slots.items():
        with slot.active():
            guides[key] = make_guide()
            pyro.set_rng_seed(0)
            Trace_ELBO().loss(model, guides[key], *args)  # create the params
    optimizers = {key: pyro.optim.Adam({"lr": 0.01}) for key in slots}
    svi = SVI(model, guides["pyro-svi"], optimizers["pyro-svi"], Trace_ELBO())

    def pyro_svi() -> float:
        with slots["pyro-svi"].active():
            start = _common.timer()
            for _ in range(steps):
                svi.step(*args)
            return _common.timer() - start

    def pyro_vi_fit() -> float:
        with slots["pyro_vi.fit"].active():
            start = _common.timer()
            pyro_vi.fit(model, guides["pyro_vi.fit"], *args, num_steps=steps, loss=Trace_ELBO(),
                        optim=optimizers["pyro_vi.fit"], progress=False, compile=False)  # the plain step
            return _common.timer() - start

    compiled_loss = Trace_ELBO()  # one object: the recording made in the warm-up round is kept on it

    def pyro_vi_fit_compiled() -> float:
        with slots["pyro_vi.fit-compiled"].active():
            start = _common.timer()
            pyro_vi.fit(model, guides["pyro_vi.fit-compiled"], *args, num_steps=steps, loss=compiled_loss,
                        optim=optimizers["pyro_vi.fit-compiled"], progress=False, compile=True)
            return _common.timer() - start

    inductor_loss = Trace_ELBO()  # the recording and its inductor compilation (warm-up round) kept on it

    def pyro_vi_fit_inductor() -> float:
        with slots["pyro_vi.fit-inductor"].active():
            start = _common.timer()
            pyro_vi.fit(model, guides["pyro_vi.fit-inductor"], *args, num_steps=steps, loss=inductor_loss,
                        optim=optimizers["pyro_vi.fit-inductor"], progress=False, compile="inductor")
            return _common.timer() - start

    chunks = {"pyro-svi": pyro_svi, "pyro_vi.fit": pyro_vi_fit, "pyro_vi.fit-compiled": pyro_vi_fit_compiled}
    if inductor:
        chunks["pyro_vi.fit-inductor"] = pyro_vi_fit_inductor
    if _common.optional_version("numpyro") is not None:
        chunks["numpyro"] = build_numpyro(name, args, steps)
    return chunks


def main(args) -> int:
    _common.setup_threads(args.threads)
    steps, rounds = (20, 3) if args.quick else (args.steps, 9)
    results, numbers, ratios = {}, [], []
    for name in args.models.split(","):
        times = _common.interleaved(contenders(name, steps, inductor=not args.quick), rounds=rounds)
        rate = {key: steps / _common.median(values) for key, values in times.items()}
        ratio = rate["pyro-svi"] / rate["pyro_vi.fit"]  # pyro_vi's step time / SVI's
        compiled_ratio = rate["pyro_vi.fit"] / rate["pyro_vi.fit-compiled"]  # compiled step time / plain
        versus_numpyro = rate["numpyro"] / rate["pyro_vi.fit-compiled"] if "numpyro" in rate else None
        results[name] = {"steps_per_second": rate, "step_time_ratio_vs_svi": ratio,
                         "compiled_step_time_ratio_vs_plain": compiled_ratio,
                         "compiled_step_time_ratio_vs_svi": rate["pyro-svi"] / rate["pyro_vi.fit-compiled"],
                         "compiled_step_time_ratio_vs_numpyro": versus_numpyro}
        if "pyro_vi.fit-inductor" in rate:
            results[name]["inductor_step_time_ratio_vs_plain"] = rate["pyro_vi.fit"] / rate["pyro_vi.fit-inductor"]
            results[name]["inductor_step_time_ratio_vs_numpyro"] = (
                rate["numpyro"] / rate["pyro_vi.fit-inductor"] if "numpyro" in rate else None)
        inductor_rate = f", inductor {rate['pyro_vi.fit-inductor']:.0f}" if "pyro_vi.fit-inductor" in rate else ""
        numpyro_rate = f"{inductor_rate}, NumPyro {rate['numpyro']:.0f}" if "numpyro" in rate else inductor_rate
        numbers.append(f"{name}: pyro_vi {rate['pyro_vi.fit']:.0f}, compiled {rate['pyro_vi.fit-compiled']:.0f}, "
                       f"SVI {rate['pyro-svi']:.0f}{numpyro_rate} steps/s")
        numpyro_ratio = f", {versus_numpyro:.1f}x NumPyro's" if versus_numpyro is not None else ""
        ratios.append(f"{name}: {ratio:.2f}x SVI's step time, compiled {compiled_ratio:.2f}x the plain one{numpyro_ratio}")
        print(f"{name:24s} pyro_vi.fit {rate['pyro_vi.fit']:8.0f} steps/s   compiled {rate['pyro_vi.fit-compiled']:8.0f} "
              f"steps/s   SVI.step {rate['pyro-svi']:8.0f} steps/s{numpyro_rate}   pyro_vi step time = {ratio:.2f}x SVI's, "
              f"compiled = {compiled_ratio:.2f}x plain{numpyro_ratio}")
    _common.write_json("bench_engine" + ("_quick" if args.quick else ""),
                       {"machine": _common.machine(), "steps": steps, "rounds": rounds, "results": results}, args.out_dir)
    if not args.no_table:
        _common.append_results_row("engine vs SVI.step (tutorial models)", "; ".join(numbers), "; ".join(ratios), args.results_table)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common.add_common_arguments(parser)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=200,
                        help="steps per timed chunk (one fit call; each call's first step is plain and its recorded "
                             "steps 1, 2, 4, ... are audited, so longer chunks show the steady state)")
    sys.exit(main(parser.parse_args()))
