"""``pyro_vi.fit_many``: R runs as one batched step against one run, on Pyro's tutorial models.

For the coin (its Beta guide) and eight schools (``AutoNormal``), in one process, alternating rounds
(a loaded machine slows every contender alike): ``fit`` (one run, ``pyro_vi.fit``'s default step) and
``fit_many`` with R = 1, 4, 16, 32, 64 runs (``--runs``), every contender the same Adam (lr 0.01)
and ``--steps`` steps, each call timed whole (params created, the step checked, the steps); and, when
NumPyro is installed, NumPyro running the same R runs vectorized (``jax.vmap`` over its SVI update
in one ``jit(fori_loop)``; its init and compilation untimed, so NumPyro's steady state against
pyro_vi's whole call). Reported
per model: the median wall time of each contender, its ratio to one ``fit`` run (target: 32 runs
within 3x one run) and the aggregate steps per second (runs x steps / wall time). Writes the JSON
and a figure of wall time against R (``bench_many.png``) to ``--out-dir``.

Threads: 1 by default (``--threads``): on a machine shared with other jobs, torch's OpenMP threads
wait at their barriers for a descheduled sibling, which makes a small op cost milliseconds.

    python benchmarks/bench_many.py                 # ~3 min on 2 loaded cores
    python benchmarks/bench_many.py --quick
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import pyro
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import _common  # noqa: E402
from tutorial_models import load  # noqa: E402

import pyro_vi  # noqa: E402


def _pair(name: str):
    from pyro.infer.autoguide import AutoNormal

    module = load(name)
    data = torch.as_tensor(module.make_data()["data"])
    guide = module.guide if name == "coin" else AutoNormal(module.model)
    return module.model, guide, data


def _contenders(name: str, steps: int, run_counts: list[int]) -> dict:
    model, guide, data = _pair(name)

    def single() -> float:
        pyro.clear_param_store()
        start = time.perf_counter()
        pyro_vi.fit(model, guide, data, num_steps=steps, optim=pyro.optim.Adam({"lr": 0.01}), seed=0, progress=False)
        return time.perf_counter() - start

    def many(runs: int):
        def chunk() -> float:
            start = time.perf_counter()
            result = pyro_vi.fit_many(model, guide, data, runs=runs, num_steps=steps, optim=pyro.optim.Adam({"lr": 0.01}),
                                      seed=0, progress=False)
            assert result.batched, result.fallback_reason
            return time.perf_counter() - start
        return chunk

    return {"fit": single, **{f"R={runs}": many(runs) for runs in run_counts}}


def _numpyro_program(name: str):
    """The same model and guide in NumPyro (the coin's Beta guide; eight schools with AutoNormal)."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as ndist
    from numpyro.infer.autoguide import AutoNormal as NumPyroAutoNormal

    data = jnp.asarray(load(name).make_data()["data"])
    if name == "coin":
        def model(data):
            f = numpyro.sample("latent_fairness", ndist.Beta(10.0, 10.0))
            with numpyro.plate("data", data.shape[0]):
                numpyro.sample("obs", ndist.Bernoulli(f), obs=data)

        def guide(data):
            alpha = numpyro.param("alpha_q", 15.0, constraint=ndist.constraints.positive)
            beta = numpyro.param("beta_q", 15.0, constraint=ndist.constraints.positive)
            numpyro.sample("latent_fairness", ndist.Beta(alpha, beta))
        return model, guide, data

    def model(data):
        y, sigma = data[:, 0], data[:, 1]
        with numpyro.plate("data", 8):
            eta = numpyro.sample("eta", ndist.Normal(0.0, 1.0))
            mu = numpyro.sample("mu", ndist.Normal(0.0, 10.0))
            tau = numpyro.sample("tau", ndist.HalfCauchy(25.0))
            numpyro.sample("obs", ndist.Normal(mu + tau * eta, sigma), obs=y)
    return model, NumPyroAutoNormal(model), data


def _numpyro_contenders(name: str, steps: int, run_counts: list[int]) -> dict:
    """NumPyro running R runs vectorized: each run's state from ``svi.init`` with its own key
    (stacked, untimed), then ``steps`` updates of ``jax.vmap(svi.update)`` in one
    ``jax.jit(lax.fori_loop)`` (compiled in the untimed warm-up call): NumPyro's steady state."""
    import jax
    import jax.numpy as jnp
    import numpyro
    from numpyro.infer import SVI, Trace_ELBO

    model, guide, data = _numpyro_program(name)
    svi = SVI(model, guide, numpyro.optim.Adam(0.01), Trace_ELBO())

    def chunk_for(runs: int):
        initial = [svi.init(key, data) for key in jax.random.split(jax.random.PRNGKey(0), runs)]
        states = jax.tree.map(lambda *leaves: jnp.stack(leaves), *initial)
        update = jax.vmap(lambda state: svi.update(state, data)[0])

        @jax.jit
        def train(states):
            return jax.lax.fori_loop(0, steps, lambda i, s: update(s), states)

        def chunk() -> float:
            start = time.perf_counter()
            jax.block_until_ready(train(states))
            return time.perf_counter() - start
        return chunk

    return {f"numpyro R={runs}": chunk_for(runs) for runs in run_counts}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_common_arguments(parser)
    parser.add_argument("--steps", type=int, default=500, help="steps of every run (default 500)")
    parser.add_argument("--runs", default="1,4,16,32,64", help="run counts R (default 1,4,16,32,64)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: see the docstring)")
    parser.add_argument("--models", default="coin,eight_schools")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.runs, args.rounds = 20, "1,4", 1
    torch.set_num_threads(args.threads)
    run_counts = [int(r) for r in args.runs.split(",")]
    report = {"machine": _common.machine(), "command": _common.command_line(), "steps": args.steps, "models": {}}
    lines, ratios = [], []
    try:
        import numpyro  # noqa: F401

        numpyro_note = None
    except ImportError:
        numpyro_note = "NumPyro not installed (pip install 'pyro-vi[bench]'): its contenders skipped"
        print(numpyro_note)
    report["numpyro"] = numpyro_note or "jax.vmap over svi.update in one jit(fori_loop); init and compilation untimed"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="There is a performance drop")
        for name in args.models.split(","):
            contenders = _contenders(name, args.steps, run_counts)
            warm = _contenders(name, 5, run_counts)
            if numpyro_note is None:
                numpyro_contenders = _numpyro_contenders(name, args.steps, run_counts)
                contenders.update(numpyro_contenders)
                warm.update(numpyro_contenders)  # jax compiles on the first call
            for chunk in warm.values():  # imports, first vmap passes, compilation: not timed
                chunk()
            times = _common.interleaved(contenders, rounds=args.rounds, warmup_rounds=0)
            medians = {key: _common.median(values) for key, values in times.items()}
            one = medians["fit"]
            rows = {key: {"seconds": seconds, "ratio_to_one_fit": seconds / one,
                          "runs_x_steps_per_second": (1 if key == "fit" else int(key.split("R=")[1])) * args.steps / seconds,
                          "rounds": times[key]} for key, seconds in medians.items()}
            report["models"][name] = rows
            lines.append(f"{name}: " + ", ".join(f"{key} {row['seconds']:.2f} s ({row['ratio_to_one_fit']:.2f}x, "
                                                 f"{row['runs_x_steps_per_second']:.0f} run-steps/s)" for key, row in rows.items()))
            ratios.append(f"{name}: " + ", ".join(f"{key} {row['ratio_to_one_fit']:.2f}x" for key, row in rows.items() if key != "fit"))
    for line in lines:
        print(line)
    path = _common.write_json("bench_many", report, args.out_dir)
    _figure(report, run_counts, path.with_suffix(".png"))
    print(f"wrote {path} and {path.with_suffix('.png').name}")
    if not args.no_table:
        _common.append_results_row(f"bench_many ({args.steps} steps)", "; ".join(lines), "; ".join(ratios), args.results_table)
    return 0


def _figure(report: dict, run_counts: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for name, rows in report["models"].items():
        line = axis.plot(run_counts, [rows[f"R={r}"]["ratio_to_one_fit"] for r in run_counts], marker="o", label=name)
        axis.plot(run_counts, run_counts, linestyle=":", color=line[0].get_color(), alpha=0.5)
    axis.set(xscale="log", yscale="log", xlabel="runs R", ylabel="wall time / one fit run",
             title=f"fit_many, {report['steps']} steps (dotted: R runs one after another)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
