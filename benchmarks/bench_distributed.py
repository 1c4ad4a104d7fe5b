"""Data-parallel SVI step time: 2 processes (gloo on loopback) against 1 process, same global batch.

Contenders train the same VAE (784-400-50 by default, Bernoulli likelihood, Trace_ELBO, pyro_vi's
default Adam) with ``pyro_vi.fit`` on the same global batches of synthetic binary images:

* ``1 process, 1 thread``   the plain loop;
* ``1 process, 2 threads``  the plain loop using both cores through torch's intra-op threads;
* ``2 processes``           ``fit(..., data_parallel=...)``, one thread each: every rank takes half
                            of each global batch and the gradients are all-reduced with gloo.

The two worker processes are forked once, join the process group, and then take turns with the
in-process contenders (round robin, medians over rounds; ``benchmarks/_common.interleaved``), so
machine load hits all of them alike. Times are training seconds per optimizer step.

    python benchmarks/bench_distributed.py            # global batch 128 and 512
    python benchmarks/bench_distributed.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

import pyro
import torch
import torch.multiprocessing

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from pyro_vi.engine import distributed  # noqa: E402
from pyro_vi.vae.model import VAE  # noqa: E402
from pyro_vi.vae.train import TrainConfig, fit  # noqa: E402

WORLD_SIZE = 2


def make_images(num_data: int, x_dim: int, seed: int) -> torch.Tensor:
    """Smooth random grey levels in [0, 1] (binarized dynamically by the loop, as in training)."""
    generator = torch.Generator().manual_seed(seed)
    basis = torch.rand(16, x_dim, generator=generator)
    weights = torch.rand(num_data, 16, generator=generator).softmax(-1)
    return weights @ basis


def _chunk(args, batch_size: int, data_parallel=None):
    """A callable that trains ``args.steps`` steps of ``batch_size`` and returns seconds per step."""
    images = make_images(args.steps * batch_size, args.x_dim, args.seed)
    torch.manual_seed(args.seed)
    vae = VAE(args.x_dim, args.z_dim, args.hidden_dims)
    config = TrainConfig(epochs=1, batch_size=batch_size, learning_rate=1e-3, seed=args.seed)

    def run() -> float:
        pyro.clear_param_store()
        result = fit(vae.model, vae.guide, images, config, progress=False, data_parallel=data_parallel)
        return batch_size / result.images_per_second  # training seconds per step (global images/s)

    return run


def _worker(rank: int, port: int, args, connection) -> None:
    """A rank: join the group, then run one timed chunk per request until told to stop."""
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    data_parallel = distributed.init("cpu", timeout_seconds=600)
    try:
        chunks = {batch_size: _chunk(args, batch_size, data_parallel) for batch_size in args.batch_sizes}
        while (batch_size := connection.recv()) is not None:
            connection.send(chunks[batch_size]())
    finally:
        data_parallel.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main(args) -> dict:
    context = torch.multiprocessing.get_context("fork")
    port, connections, workers = _free_port(), [], []
    for rank in range(WORLD_SIZE):
        parent_end, child_end = context.Pipe()
        worker = context.Process(target=_worker, args=(rank, port, args, child_end), daemon=True)
        worker.start()
        connections.append(parent_end)
        workers.append(worker)

    def two_processes(batch_size):
        def run() -> float:
            for connection in connections:
                connection.send(batch_size)
            return max(connection.recv() for connection in connections)  # ranks wait for each other

        return run

    def with_threads(run, num_threads):
        def timed() -> float:
            torch.set_num_threads(num_threads)
            return run()

        return timed

    results = {}
    try:
        for batch_size in args.batch_sizes:
            one_process = _chunk(args, batch_size)
            contenders = {
                "1 process, 1 thread": with_threads(one_process, 1),
                "1 process, 2 threads": with_threads(one_process, 2),
                "2 processes": two_processes(batch_size),
            }
            times = _common.interleaved(contenders, rounds=args.rounds, warmup_rounds=1)
            step_ms = {name: 1000 * _common.median(t) for name, t in times.items()}
            results[str(batch_size)] = {
                "step_ms": step_ms,
                "step_seconds_per_round": times,
                "ratio_2_processes_to_1_process_1_thread": step_ms["2 processes"] / step_ms["1 process, 1 thread"],
                "ratio_2_processes_to_1_process_2_threads": step_ms["2 processes"] / step_ms["1 process, 2 threads"],
            }
            print(f"global batch {batch_size}: " + ", ".join(f"{name} {ms:.2f} ms/step" for name, ms in step_ms.items()))
    finally:
        for connection in connections:
            connection.send(None)
        for worker in workers:
            worker.join(timeout=60)

    network = f"{args.x_dim}-{'-'.join(map(str, args.hidden_dims))}-{args.z_dim}"
    num_params = sum(p.numel() for p in VAE(args.x_dim, args.z_dim, args.hidden_dims).parameters())
    payload = {
        "benchmark": "distributed",
        "command": _common.command_line(),
        "commit": _common.commit(),
        "machine": _common.machine(),
        "network": network,
        "parameters_all_reduced": num_params,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "backend": "gloo (loopback)",
        "load_average_1_5_15_min": os.getloadavg(),  # other work on the machine competes for the cores
        "results": results,
    }
    path = _common.write_json("distributed" + ("_quick" if args.quick else ""), payload, args.out_dir)
    print(f"wrote {path}")
    if not args.no_table:
        numbers = "; ".join(
            f"b{b}: " + ", ".join(f"{name} {ms:.1f}" for name, ms in entry["step_ms"].items()) + " ms/step"
            for b, entry in results.items()
        )
        numbers += f" (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
        ratios = "; ".join(
            f"b{b}: 2p/1p1t {entry['ratio_2_processes_to_1_process_1_thread']:.2f}, "
            f"2p/1p2t {entry['ratio_2_processes_to_1_process_2_threads']:.2f}"
            for b, entry in results.items()
        )
        _common.append_results_row(f"Distributed SVI step {network}", numbers, ratios, args.results_table)
    return payload


def _dims(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_common_arguments(parser)
    parser.add_argument("--batch-sizes", type=_dims, default=None, help="global batches, even (default 128,512)")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed chunk (default 20; quick 5)")
    parser.add_argument("--rounds", type=int, default=None, help="timed chunks per contender (default 5; quick 2)")
    parser.add_argument("--x-dim", type=int, default=784)
    parser.add_argument("--z-dim", type=int, default=50)
    parser.add_argument("--hidden-dims", type=_dims, default=(400,))
    args = parser.parse_args(argv)
    args.batch_sizes = args.batch_sizes or ((128,) if args.quick else (128, 512))
    args.steps = args.steps or (5 if args.quick else 20)
    args.rounds = args.rounds or (2 if args.quick else 5)
    return args


if __name__ == "__main__":
    main(parse_args())
