"""Benchmark: how close is q to the posterior? posteriordb's reference posteriors x guides x estimators.

For each posterior with a Pyro port (``pyro_vi.posteriordb.PORTS``), each guide (AutoNormal,
AutoLowRankMultivariateNormal, AutoMultivariateNormal, AutoIAFNormal: a flow) and each estimator
(Pyro's ``Trace_ELBO``, pyro_vi's ``stl``): a fixed step budget of ``pyro_vi.fit`` (ClippedAdam, the
learning rate decayed 10x over the run (``--decay``), Stan's initialization: uniform(-2, 2) unconstrained), then
``pyro_vi.check`` against the reference draws: max |mean error| (reference sds), min and max sd ratio
q / reference (and of the PSIS-corrected moments where k-hat < 0.7), k-hat, the final ELBO and the wall time. With ``--numpyro``, NumPyro's SVI on its own
ports of four posteriors with the same guides, optimizer schedule and budget (Trace_ELBO), side by
side: the same accuracy columns (k-hat from NumPyro's own log densities) and time.

Rows are appended to ``--out`` (JSON lines) as they finish, so a cut run keeps what it measured;
``--table`` prints the markdown table of a finished file.

    PYRO_VI_POSTERIORDB=DIR python benchmarks/bench_posteriordb.py --steps 2000 --numpyro
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro.infer import Trace_ELBO
from pyro.infer import autoguide as pyro_autoguide

import pyro_vi
from pyro_vi import posteriordb
from pyro_vi.estimators import get_estimator

HERE = Path(__file__).resolve().parent
GUIDES = {"normal": "AutoNormal", "lowrank": "AutoLowRankMultivariateNormal", "mvn": "AutoMultivariateNormal",
          "iaf": "AutoIAFNormal"}
ESTIMATORS = ("trace", "stl")
NUMPYRO_POSTERIORS = ("eight_schools-eight_schools_noncentered", "kidiq-kidscore_momiq", "earnings-logearn_interaction",
                      "arK-arK", "sblrc-blr")


def make_guide(kind: str, model):
    """A Pyro AutoGuide started as Stan starts: uniform(-2, 2) on the unconstrained space."""
    init = pyro_autoguide.init_to_uniform(radius=2.0)
    cls = getattr(pyro_autoguide, GUIDES[kind])
    if kind == "iaf":
        return cls(model, num_transforms=2, init_loc_fn=init)
    return cls(model, init_loc_fn=init)


def summarize(rows: list, reference: dict) -> dict:
    """max |mean error| in reference sds and the range of sd ratios, from (name, mean, sd) rows."""
    errors, ratios = [], []
    for name, mean, sd in rows:
        if name in reference:
            ref = reference[name]
            errors.append(abs(mean - ref.mean()) / ref.std(ddof=1))
            ratios.append(sd / ref.std(ddof=1))
    return {"max_mean_error_sd": float(max(errors)), "min_sd_ratio": float(min(ratios)), "max_sd_ratio": float(max(ratios)),
            "compared": len(errors)}


def run_pyro(problem, guide_kind: str, estimator: str, args) -> dict:
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    guide = make_guide(guide_kind, problem.model)
    loss = Trace_ELBO() if estimator == "trace" else get_estimator(estimator)
    optim = pyro.optim.ClippedAdam({"lr": args.learning_rate, "lrd": args.decay ** (1 / args.steps)})
    start = time.perf_counter()
    fitted = pyro_vi.fit(problem.model, guide, num_steps=args.steps, loss=loss, optim=optim, seed=args.seed, progress=False,
                         on_nan="skip", **problem.data)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    result = pyro_vi.check(problem.model, guide, num_samples=args.num_samples, reference=problem.reference, seed=args.seed,
                           **problem.data)
    check_seconds = time.perf_counter() - start
    rows = [(row.name, row.q_mean, row.q_sd) for row in result.parameters]
    record = {"khat": result.khat, "elbo": result.elbo, "seconds": seconds, "check_seconds": check_seconds,
              "skipped_steps": fitted.skipped_steps, **summarize(rows, problem.reference)}
    if all(row.psis_mean is not None for row in result.parameters):  # k-hat < 0.7: the PSIS-corrected moments too
        corrected = summarize([(row.name, row.psis_mean, row.psis_sd) for row in result.parameters], problem.reference)
        record.update({f"psis_{key}": value for key, value in corrected.items() if key != "compared"})
    return record


# -- NumPyro: its own ports of a few posteriors (the same Stan models) ---------------------------------


def numpyro_models():
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as ndist

    def eight_schools(y, sigma, **_):
        mu = numpyro.sample("mu", ndist.Normal(0.0, 5.0))
        tau = numpyro.sample("tau", ndist.HalfCauchy(5.0))
        with numpyro.plate("schools", y.shape[0]):
            theta_trans = numpyro.sample("theta_trans", ndist.Normal(0.0, 1.0))
            theta = numpyro.deterministic("theta", mu + tau * theta_trans)
            numpyro.sample("y", ndist.Normal(theta, sigma), obs=y)

    def regression(outcome, predictors, sigma_prior, beta_scale=1000.0):
        beta = numpyro.sample("beta", ndist.Normal(0.0, beta_scale).expand([predictors.shape[1]]).to_event(1))
        sigma = numpyro.sample("sigma", sigma_prior)
        numpyro.sample("outcome", ndist.Normal(predictors @ beta, sigma), obs=outcome)

    def kidscore_momiq(kid_score, mom_iq, **_):
        regression(kid_score, jnp.stack([jnp.ones_like(mom_iq), mom_iq], -1), ndist.HalfCauchy(2.5))

    def logearn_interaction(earn, height, male, **_):
        predictors = jnp.stack([jnp.ones_like(height), height, male, height * male], -1)
        regression(jnp.log(earn), predictors, ndist.HalfNormal(1000.0))

    def blr(X, y, **_):
        regression(y, X, ndist.HalfNormal(10.0), beta_scale=10.0)

    def ark(y, K, **_):
        order = int(K)
        lags = jnp.stack([y[order - lag: y.shape[0] - lag] for lag in range(1, order + 1)], -1)
        alpha = numpyro.sample("alpha", ndist.Normal(0.0, 10.0))
        beta = numpyro.sample("beta", ndist.Normal(0.0, 10.0).expand([order]).to_event(1))
        sigma = numpyro.sample("sigma", ndist.HalfCauchy(2.5))
        numpyro.sample("y", ndist.Normal(alpha + lags @ beta, sigma), obs=y[order:])

    return {"eight_schools-eight_schools_noncentered": eight_schools, "kidiq-kidscore_momiq": kidscore_momiq,
            "earnings-logearn_interaction": logearn_interaction, "sblrc-blr": blr, "arK-arK": ark}


def run_numpyro(name: str, problem, guide_kind: str, args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpyro
    from numpyro.infer import SVI
    from numpyro.infer import Trace_ELBO as NumPyroTraceELBO
    from numpyro.infer import autoguide as numpyro_autoguide
    from numpyro.infer.util import log_density

    model = numpyro_models()[name]
    data = {key: (jnp.asarray(value.numpy()) if isinstance(value, torch.Tensor) else value) for key, value in problem.data.items()}
    init = numpyro.infer.init_to_uniform(radius=2.0)
    cls = getattr(numpyro_autoguide, {"normal": "AutoNormal", "lowrank": "AutoLowRankMultivariateNormal",
                                      "mvn": "AutoMultivariateNormal", "iaf": "AutoIAFNormal"}[guide_kind])
    guide = cls(model, init_loc_fn=init, **({"num_flows": 2} if guide_kind == "iaf" else {}))
    schedule = lambda step: args.learning_rate * args.decay ** (step / args.steps)
    svi = SVI(model, guide, numpyro.optim.ClippedAdam(step_size=schedule), NumPyroTraceELBO())
    start = time.perf_counter()
    result = svi.run(jax.random.PRNGKey(args.seed), args.steps, progress_bar=False, **data)
    jax.block_until_ready(result.params)
    seconds = time.perf_counter() - start
    params = result.params
    # Draws from q, and log w = log p(x, z) - log q(z) from NumPyro's own densities.
    keys = jax.random.split(jax.random.PRNGKey(args.seed + 1), args.num_samples)

    def one(key):
        seeded = numpyro.handlers.seed(guide, key)
        guide_trace = numpyro.handlers.trace(numpyro.handlers.substitute(seeded, params)).get_trace(**data)
        draws = {site: entry["value"] for site, entry in guide_trace.items() if entry["type"] == "sample"
                 and not entry.get("is_observed")}
        log_q, _ = log_density(guide, (), data, {**params, **draws})
        log_p, model_trace = log_density(model, (), data, draws)
        values = {site: entry["value"] for site, entry in model_trace.items()
                  if entry["type"] in ("sample", "deterministic") and not entry.get("is_observed")}
        return log_p - log_q, values

    log_weights, values = jax.vmap(one)(keys)
    log_weights = np.asarray(log_weights, dtype=np.float64)
    khat = float(pyro_vi.diagnostics.psis.arviz().psislw(log_weights.copy())[1])
    rows = []
    for site, draws in values.items():
        draws = np.asarray(draws, dtype=np.float64)
        flat = draws.reshape(draws.shape[0], -1)
        for index, element in enumerate(pyro_vi.diagnostics.element_names(site, draws.shape[1:])):
            rows.append((element, flat[:, index].mean(), flat[:, index].std(ddof=1)))
    return {"khat": khat, "elbo": float(log_weights.mean()), "seconds": seconds, **summarize(rows, problem.reference)}


def _number(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def table(records: list) -> str:
    lines = ["| posterior | guide | estimator | library | max abs mean error (ref sd) | sd ratio min-max | k-hat | ELBO | fit s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['posterior']} | {r['guide']} | {r['estimator']} | {r['library']} | failed: {r['error'][:60]} | | | | |")
            continue
        lines.append(f"| {r['posterior']} | {r['guide']} | {r['estimator']} | {r['library']} | {_number(r['max_mean_error_sd'], '.3f')} | "
                     f"{_number(r['min_sd_ratio'], '.2f')}-{_number(r['max_sd_ratio'], '.2f')} | {_number(r['khat'], '.2f')} | "
                     f"{_number(r['elbo'], '.1f')} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def pivot(records: list, library: str = "pyro") -> str:
    """The README's table: a row per posterior, a column per guide and estimator, each cell
    "max |mean error| / min sd ratio / k-hat"; then how often k-hat reassured wrongly."""
    done = [r for r in records if r["library"] == library]
    columns = [(guide, estimator) for guide in GUIDES for estimator in ESTIMATORS
               if any(r["guide"] == guide and r["estimator"] == estimator for r in done)]
    lines = ["| posterior | " + " | ".join(f"{guide} {estimator}" for guide, estimator in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for name in dict.fromkeys(r["posterior"] for r in done):
        cells = []
        for guide, estimator in columns:
            found = [r for r in done if (r["posterior"], r["guide"], r["estimator"]) == (name, guide, estimator)]
            if not found:
                cells.append("")
            elif "error" in found[0]:
                cells.append("failed")
            else:
                r = found[0]
                bad = _bad(r)
                text = f"{_number(r['max_mean_error_sd'], '.2f')} / {_number(r['min_sd_ratio'], '.2f')} / {_number(r['khat'], '.2f')}"
                cells.append(f"**{text}**" if bad and not _khat_warns(r) else text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    finished = [r for r in done if "error" not in r]
    bad = [r for r in finished if _bad(r)]
    wrong = [r for r in bad if not _khat_warns(r)]
    good = [r for r in finished if not _bad(r)]
    lines.append("")
    lines.append(f"{len(finished)} fits: {len(bad)} off (mean error > 0.5 sd or sd ratio < 0.7), k-hat > 0.7 on "
                 f"{len(bad) - len(wrong)} of them (bold: k-hat reassured wrongly); k-hat > 0.7 on "
                 f"{sum(_khat_warns(r) for r in good)} of the {len(good)} fits that were not off.")
    return "\n".join(lines)


def _bad(r: dict) -> bool:
    return not (float(r["max_mean_error_sd"]) <= 0.5 and float(r["min_sd_ratio"]) >= 0.7)


def _khat_warns(r: dict) -> bool:
    return not float(r["khat"]) <= 0.7  # NaN or inf warn too


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posteriordb", default=None, help="a posteriordb folder (default $PYRO_VI_POSTERIORDB)")
    parser.add_argument("--posteriors", nargs="*", default=None, help="default: every ported posterior")
    parser.add_argument("--guides", nargs="*", default=list(GUIDES), choices=list(GUIDES))
    parser.add_argument("--estimators", nargs="*", default=list(ESTIMATORS), choices=list(ESTIMATORS))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--decay", type=float, default=0.1, help="the learning rate's factor over the run (default 0.1)")
    parser.add_argument("--num-samples", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--numpyro", action="store_true", help="also NumPyro on its ports of a few posteriors")
    parser.add_argument("--out", default=str(HERE / "results" / "posteriordb.jsonl"))
    parser.add_argument("--table", action="store_true", help="print the table of --out and stop")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: eight schools, AutoNormal and AutoMultivariateNormal, 30 steps, 200 draws "
                        "(without a posteriordb folder: a note, exit 0)")
    parser.add_argument("--pivot", action="store_true", help="print the README's table of --out and stop")
    args = parser.parse_args()
    out = Path(args.out)
    if args.table or args.pivot:
        records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
        libraries = [library for library in ("pyro", "numpyro") if any(r["library"] == library for r in records)]
        print(table(records) if args.table else "\n\n".join(pivot(records, library) for library in libraries))
        return 0
    if args.quick:
        try:
            posteriordb.files.database_root(args.posteriordb)
        except pyro_vi.ConfigError as error:
            print(f"bench_posteriordb --quick: skipped: {error}", file=sys.stderr)
            return 0
        args.posteriors = args.posteriors or ["eight_schools-eight_schools_noncentered"]
        args.guides, args.steps, args.num_samples = ["normal", "mvn"], 30, 200
    torch.set_num_threads(args.threads)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = args.posteriors or list(posteriordb.PORTS)
    with out.open("a") as file:
        for name in names:
            problem = posteriordb.load(name, args.posteriordb)
            jobs = [("pyro", guide, estimator) for guide in args.guides for estimator in args.estimators]
            if args.numpyro and name in NUMPYRO_POSTERIORS:
                jobs += [("numpyro", guide, "trace") for guide in args.guides]
            for library, guide, estimator in jobs:
                record = {"posterior": name, "guide": guide, "estimator": estimator, "library": library, "steps": args.steps,
                          "learning_rate": args.learning_rate, "decay": args.decay, "seed": args.seed}
                try:
                    if library == "pyro":
                        record.update(run_pyro(problem, guide, estimator, args))
                    else:
                        record.update(run_numpyro(name, problem, guide, args))
                except Exception as error:  # noqa: BLE001 - a failed cell is a row saying why
                    record["error"] = f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
                    if os.environ.get("BENCH_TRACEBACK"):
                        traceback.print_exc()
                for key, value in list(record.items()):
                    if isinstance(value, float) and not math.isfinite(value):
                        record[key] = str(value)
                file.write(json.dumps(record) + "\n")
                file.flush()
                print(table([record]).splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
