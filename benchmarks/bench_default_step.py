"""``pyro_vi.fit``'s default step (SVI's semantics) against ``pyro.infer.SVI.step`` on Pyro's
tutorial models (tests/tutorial_models), and the opt-in recorded steps beside them.

For each model, in one process, alternating rounds (so a loaded machine slows every contender
alike): ``svi`` (a ``SVI.step`` loop), ``fit`` (``pyro_vi.fit``, default options: the same step),
``fit-record`` (``compile=True``: recorded once, replayed) and, unless ``--quick``,
``fit-inductor`` (``compile="inductor"``). Reported: steady-state ms/step (the median round,
recording excluded by a warm-up call on the same params), the ratio to ``svi`` (target: fit's
default at most ~1.0x SVI: the same work plus its bookkeeping), and the one-off recording time.
Finally the size of ``engine.fit`` itself (lines, branches, parameters).

    python benchmarks/bench_default_step.py            # ~3 min on 2 cores
    python benchmarks/bench_default_step.py --quick
"""

from __future__ import annotations

import argparse
import ast
import inspect
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from tutorial_models import load  # noqa: E402

import pyro_vi  # noqa: E402

MODELS = {  # name -> (pair, args, loss factory)
    "coin": (lambda m: (m.model, m.guide), lambda d: (d["data"],), Trace_ELBO),
    "bayesian_regression": (lambda m: (m.model, m.guide), lambda d: (d["x"], d["y"]), Trace_ELBO),
    "eight_schools": (lambda m: (m.model, m.guide), lambda d: (d["data"],), Trace_ELBO),
    "gmm": (lambda m: (m.model, m.global_guide), lambda d: (d["data"],), lambda: TraceEnum_ELBO(max_plate_nesting=1)),
}


def _setup(name):
    pair, make_args, loss = MODELS[name]
    module = load(name)
    data = {key: torch.as_tensor(value) for key, value in module.make_data().items()}
    model, guide = pair(module)
    return model, guide, make_args(data), loss


def _time_svi(name, steps):
    model, guide, args, loss = _setup(name)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), loss())
    svi.step(*args)
    start = time.perf_counter()
    for _ in range(steps):
        svi.step(*args)
    return (time.perf_counter() - start) / steps


def _time_fit(name, steps, compile):
    model, guide, args, loss = _setup(name)
    pyro.clear_param_store()
    optim = pyro.optim.Adam({"lr": 0.01})
    objective = loss()
    first = time.perf_counter()
    # past the audited steps 1, 2, 4, 8 (the whole step of "inductor" is built at the first unaudited one)
    pyro_vi.fit(model, guide, *args, num_steps=12, loss=objective, optim=optim, seed=0, progress=False, compile=compile)
    setup = time.perf_counter() - first  # includes the recording (and inductor's compiling) for compile modes
    start = time.perf_counter()
    result = pyro_vi.fit(model, guide, *args, num_steps=steps, loss=objective, optim=optim, progress=False, compile=compile)
    return (time.perf_counter() - start) / steps, setup, result.compile


def fit_size() -> dict:
    """Lines, branches (if/for/while/try/with/boolean operators, conditional expressions) and
    parameters of ``pyro_vi.engine.loop.fit``."""
    source = inspect.getsource(pyro_vi.engine.loop.fit)
    tree = ast.parse(source).body[0]
    kinds = (ast.If, ast.For, ast.While, ast.Try, ast.With, ast.IfExp, ast.BoolOp, ast.ExceptHandler)
    branches = sum(isinstance(node, kinds) for node in ast.walk(tree))
    params = len(tree.args.args) + len(tree.args.kwonlyargs) + bool(tree.args.vararg) + bool(tree.args.kwarg)
    return {"lines": len(source.splitlines()), "branches": branches, "parameters": params}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    options = parser.parse_args(argv)
    steps = options.steps or (40 if options.quick else 300)
    rounds = options.rounds or (2 if options.quick else 5)
    contenders = ["svi", "fit", "fit-record"] + ([] if options.quick else ["fit-inductor"])
    modes = {"fit": None, "fit-record": True, "fit-inductor": "inductor"}
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, pyro {pyro.__version__}, {steps} steps x {rounds} rounds, 1 thread")
    print(f"{'model':22s}" + "".join(f"{c:>22s}" for c in contenders))
    for name in MODELS:
        times = {c: [] for c in contenders}
        setups = {c: [] for c in contenders}
        for _ in range(rounds):
            for contender in contenders:
                if contender == "svi":
                    times[contender].append(_time_svi(name, steps))
                else:
                    per_step, setup, _report = _time_fit(name, steps, modes[contender])
                    times[contender].append(per_step)
                    setups[contender].append(setup)
        base = statistics.median(times["svi"])
        cells = []
        for contender in contenders:
            ms = statistics.median(times[contender]) * 1e3
            extra = "" if contender in ("svi", "fit") else f" +{statistics.median(setups[contender]):.1f}s"
            cells.append(f"{ms:6.3f}ms {ms / 1e3 / base:4.2f}x{extra}")
        print(f"{name:22s}" + "".join(f"{cell:>22s}" for cell in cells))
    print("engine.fit:", fit_size())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
