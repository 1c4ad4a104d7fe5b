"""What recording a step costs: the price ``fit``'s default compile pays once before its first replay.

The recording (``pyro_vi.engine.compile.record.compile_loss``: the loss traced by ``make_fx``, its backward
joined into one program, checked once against the plain loss) is timed on two models: the coin of
Pyro's "SVI Part I" (Beta guide, a Python loop over ten observations) and the enumerated Gaussian
mixture of ``pyro_vi.mixture`` (TraceEnum_ELBO, AutoDelta; N = 100,000, K = 5, D = 2; ``--quick``:
N = 5,000). Contenders, interleaved in one process: ``one-fake-mode`` (what pyro_vi does:
``pyro_vi.engine.compile.graph_passes.one_fake_mode``, one FakeTensorMode for the recording's metadata) and
``mode-per-value`` (make_fx's own behaviour without it: a FakeTensorMode per recorded value, each
capturing the Python stack). Reported: seconds per recording (medians) and their ratio.

    python benchmarks/bench_recording.py
    python benchmarks/bench_recording.py --quick
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
from pyro.infer import Trace_ELBO, TraceEnum_ELBO  # noqa: E402
from torch.distributions import constraints  # noqa: E402

from pyro_vi.engine.compile import graph_passes as programs  # noqa: E402
from pyro_vi.engine.compile import record as compiled  # noqa: E402
from pyro_vi.mixture import em as mixture_em  # noqa: E402
from pyro_vi.mixture import model as gmm  # noqa: E402
from pyro_vi.mixture.data import synthetic  # noqa: E402


def coin(num_data: int):
    """SVI Part I, as the tutorial writes it (num_data is not used: the tutorial's ten flips)."""
    data = torch.cat([torch.ones(6), torch.zeros(4)])

    def model(data):
        fairness = pyro.sample("latent_fairness", dist.Beta(10.0, 10.0))
        for i in range(len(data)):
            pyro.sample(f"obs_{i}", dist.Bernoulli(fairness), obs=data[i])

    def guide(data):
        alpha_q = pyro.param("alpha_q", torch.tensor(15.0), constraint=constraints.positive)
        beta_q = pyro.param("beta_q", torch.tensor(15.0), constraint=constraints.positive)
        pyro.sample("latent_fairness", dist.Beta(alpha_q, beta_q))

    return model, guide, (data,), Trace_ELBO()


def mixture(num_data: int):
    data = synthetic(5, 2, num_data, 3.0, 0).train
    initial = mixture_em.initialize(data, 5, "full", "random", torch.Generator().manual_seed(0))
    return gmm.enumerated_model, gmm.make_map_guide(initial), (data, 5, "full", None), TraceEnum_ELBO(max_plate_nesting=1)


MODELS = {"coin": coin, "gmm-enum": mixture}


def recording(build, num_data: int, one_mode: bool):
    """A chunk: a fresh param store, one plain step (creates the params, as fit does), then the
    timed recording."""

    def chunk() -> float:
        pyro.clear_param_store()
        model, guide, args, loss = build(num_data)
        loss.loss_and_grads(model, guide, *args)
        original = programs.one_fake_mode
        programs.one_fake_mode = original if one_mode else contextlib.nullcontext
        try:
            start = _common.timer()
            compiled.compile_loss(model, guide, args, loss)
            return _common.timer() - start
        finally:
            programs.one_fake_mode = original

    return chunk


def main(args) -> int:
    _common.setup_threads(args.threads)
    num_data, rounds = (5_000, 2) if args.quick else (100_000, 7)
    results, numbers, ratios = {}, [], []
    for name in args.models.split(","):
        build = MODELS[name]
        times = _common.interleaved({"one-fake-mode": recording(build, num_data, True),
                                     "mode-per-value": recording(build, num_data, False)}, rounds=rounds)
        seconds = {key: _common.median(values) for key, values in times.items()}
        ratio = seconds["one-fake-mode"] / seconds["mode-per-value"]
        results[name] = {"seconds": seconds, "ratio": ratio}
        numbers.append(f"{name}: one fake mode {seconds['one-fake-mode']:.3f} s, a mode per value {seconds['mode-per-value']:.3f} s")
        ratios.append(f"{name}: {ratio:.2f}x")
        print(f"{name:10s} recording: one fake mode {seconds['one-fake-mode']:.3f} s, a mode per value "
              f"{seconds['mode-per-value']:.3f} s, ratio {ratio:.2f}")
    _common.write_json("bench_recording" + ("_quick" if args.quick else ""),
                       {"machine": _common.machine(), "num_data": num_data, "rounds": rounds, "results": results}, args.out_dir)
    if not args.no_table:
        _common.append_results_row(f"recording cost (N = {num_data:,} for the GMM)", "; ".join(numbers),
                                   "; ".join(ratios), args.results_table)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_common_arguments(parser)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=None)
    sys.exit(main(parser.parse_args()))
