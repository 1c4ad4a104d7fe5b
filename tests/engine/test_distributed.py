"""Data-parallel SVI: 2 CPU processes (gloo on loopback) take the one-process step, and train.

The exactness tests fix the noise: the guide draws z = loc + scale * eps[n] with a fixed eps per
datapoint n, so one process and two processes see the same z for the same datapoint and any
difference comes from the sharding and the all-reduce alone (float64, so round-off is ~1e-15).
A control run without the all-reduce must differ, so the comparison can fail.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.multiprocessing

import pyro_vi

from pyro_vi import cli, io
from pyro_vi.engine import distributed
from pyro_vi.engine import checkpoint as checkpoints
from pyro_vi.errors import ConfigError, OutputError
from pyro_vi.vae.model import VAE
from pyro_vi.errors import TrainingInterrupted
from pyro_vi.vae.train import TrainConfig, fit

NUM_DATA, PIXELS, Z_DIM = 16, 12, 3
WORLD_SIZE = 2
TINY = ["--z-dim", "2", "--hidden-dims", "8", "--batch-size", "100", "--no-progress", "--device", "cpu"]


class _FixedNoiseNormal(dist.Normal):
    """N(loc, scale) whose reparameterized draw uses given standard-normal noise."""

    def __init__(self, loc, scale, noise):
        super().__init__(loc, scale)
        self.noise = noise

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return _FixedNoiseNormal(self.loc.expand(batch_shape), self.scale.expand(batch_shape), self.noise.expand(batch_shape))

    def rsample(self, sample_shape=torch.Size()):
        return self.loc + self.scale * self.noise


def _problem():
    """Binary images, a float64 VAE and a guide whose noise is fixed per datapoint."""
    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(NUM_DATA, PIXELS, generator=generator, dtype=torch.float64) < 0.5).double()
    noise = torch.randn(NUM_DATA, Z_DIM, generator=generator, dtype=torch.float64)
    pyro.clear_param_store()
    torch.manual_seed(1)  # the same initial networks in every process
    vae = VAE(PIXELS, z_dim=Z_DIM, hidden_dims=(6,)).double()

    def guide(x, indices, num_data, kl_weight=1.0):
        pyro.module("encoder", vae.encoder)
        with pyro.plate("data", num_data, subsample=indices):
            loc, log_variance = vae.encoder(x)
            pyro.sample("z", _FixedNoiseNormal(loc, torch.exp(0.5 * log_variance), noise[indices]).to_event(1))

    return images, vae, guide


def _params() -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in pyro.get_param_store().items()}


class _WithoutAllReduce(distributed.DataParallel):
    """Shards the batch but never communicates: the control that must not match."""

    def reduce(self, loss, grads):
        return loss


def _run(data_parallel, optimizer: str, epochs: int, batch_size: int):
    images, vae, guide = _problem()
    config = TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=0.1, binarization="none")
    optim = pyro.optim.SGD({"lr": 0.1}) if optimizer == "sgd" else pyro.optim.Adam({"lr": 0.01})
    result = fit(vae.model, guide, images, config, optimizer=optim, progress=False, data_parallel=data_parallel)
    return {"params": _params(), "train_elbo": [r["train_elbo"] for r in result.history]}


# Two runs: one SGD step on the whole data (the update is -lr * gradient, so it shows the gradient
# itself), and 2 epochs of Adam on batches of 8 (4 steps; the permutation comes from the rule of
# pyro_vi.engine.distributed, which a world of size 1 shares).
RUNS = {"one-sgd-step": ("sgd", 1, NUM_DATA), "adam-4-steps": ("adam", 2, 8)}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _join(rank: int, world_size: int, port: int) -> distributed.DataParallel:
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    return distributed.init("cpu", timeout_seconds=120)


def _exactness_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    data_parallel = _join(rank, world_size, port)
    try:
        results = {}
        for name, (optimizer, epochs, batch_size) in RUNS.items():
            results[name] = _run(data_parallel, optimizer, epochs, batch_size)
            control = _WithoutAllReduce(rank, world_size, rank, "cpu")
            results[f"{name}/without-all-reduce"] = _run(control, optimizer, epochs, batch_size)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        data_parallel.close()


def _spawn(worker, out_dir: Path) -> None:
    # fork: the children inherit the imported torch/pyro instead of importing them again (seconds
    # each on a loaded machine); each uses one thread.
    torch.multiprocessing.start_processes(
        worker, args=(WORLD_SIZE, _free_port(), str(out_dir)), nprocs=WORLD_SIZE, start_method="fork"
    )


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("distributed")
    _spawn(_exactness_worker, out_dir)
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE)]


@pytest.mark.parametrize("name", list(RUNS))
@pytest.mark.smoke  # its fixture spawns the workers
def test_distributed_step_equals_one_process_step(name, distributed_results):
    optimizer, epochs, batch_size = RUNS[name]
    # one-SGD-step compares with the plain one-process loop; the Adam run with a world of size 1
    one_process = _run(None if name == "one-sgd-step" else distributed.DataParallel(), optimizer, epochs, batch_size)
    rank0, rank1 = (results[name] for results in distributed_results)
    for param, reference in one_process["params"].items():
        assert torch.equal(rank0["params"][param], rank1["params"][param]), f"{param} differs between ranks"
        # float64: one process and two differ only by the order of the sums
        torch.testing.assert_close(rank0["params"][param], reference, rtol=1e-11, atol=1e-13)
    torch.testing.assert_close(rank0["train_elbo"], one_process["train_elbo"], rtol=1e-11, atol=0.0)


@pytest.mark.parametrize("name", list(RUNS))
@pytest.mark.smoke  # its fixture spawns the workers
def test_without_all_reduce_the_update_differs(name, distributed_results):
    """The control: sharding alone gives each rank a different (half-batch) update."""
    rank0, rank1 = (results[f"{name}/without-all-reduce"] for results in distributed_results)
    reference = distributed_results[0][name]["params"]
    largest = max(float((rank0["params"][p] - reference[p]).abs().max()) for p in reference)
    assert largest > 1e-4
    assert any(not torch.equal(rank0["params"][p], rank1["params"][p]) for p in reference)


def test_shards_partition_each_global_batch():
    batch = torch.arange(100, 112)
    shards = [distributed.DataParallel(rank, 3).shard(batch) for rank in range(3)]
    assert sorted(torch.cat(shards).tolist()) == batch.tolist()
    assert [len(s) for s in shards] == [4, 4, 4]
    permutations = [distributed.DataParallel(rank, 3).permutation(50, 7, 2, torch.device("cpu")) for rank in range(3)]
    assert all(torch.equal(p, permutations[0]) for p in permutations)
    assert not torch.equal(permutations[0], distributed.DataParallel().permutation(50, 7, 3, torch.device("cpu")))


def test_batch_size_must_split_over_ranks():
    with pytest.raises(ConfigError, match="does not split evenly over 2 processes"):
        distributed.DataParallel(0, 2).validate(101)


@pytest.mark.parametrize("num_data, batch_size, ranks", [(11, 10, 2), (103, 10, 2), (25, 6, 3)])
def test_an_uneven_last_batch_over_ranks_is_refused_up_front(num_data, batch_size, ranks):
    """drop_last=False with a last batch of 1 point over 2 ranks (an empty shard: Pyro's plate would
    divide by zero while the other rank waits in the all-reduce), or 3 over 2, or 1 over 3."""
    from pyro_vi.errors import ConfigError

    with pytest.raises(ConfigError, match="do not split evenly over"):
        pyro_vi.EpochSubsample(num_data, batch_size, drop_last=False, data_parallel=distributed.DataParallel(0, ranks))
    pyro_vi.EpochSubsample(num_data, batch_size, data_parallel=distributed.DataParallel(0, ranks))  # drop_last: fine
    even = pyro_vi.EpochSubsample(num_data - num_data % batch_size + ranks, batch_size, drop_last=False,
                                  data_parallel=distributed.DataParallel(1, ranks))
    assert all(len(even(step)) > 0 for step in range(2 * even.steps_per_epoch))


def test_distributed_without_launcher_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    status = cli.main(["vae", *TINY, "--epochs", "1", "--distributed", "--out", str(tmp_path / "run")])
    stderr = capsys.readouterr().err
    assert status == 2
    assert stderr.count("\n") == 1 and "torchrun --nproc_per_node" in stderr
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------
# A short distributed run through the CLI: rank 0 alone writes, ranks stay identical, it trains.


def _cli_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    writes = []
    original = io.atomic_write

    def recording_write(path, *args, **kwargs):
        writes.append(Path(path).name)
        return original(path, *args, **kwargs)

    io.atomic_write = checkpoints.atomic_write = recording_write
    status = cli.main(["vae", *TINY, "--epochs", "3", "--out", str(Path(out_dir) / "run")])  # WORLD_SIZE=2: automatic
    torch.save({"status": status, "writes": writes, "params": _params()}, Path(out_dir) / f"cli{rank}.pt")


@pytest.mark.smoke
def test_short_distributed_run_trains(tmp_path):
    _spawn(_cli_worker, tmp_path)
    rank0, rank1 = (torch.load(tmp_path / f"cli{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE))
    assert rank0["status"] == rank1["status"] == 0
    assert rank1["writes"] == []
    assert {"checkpoint.pt", "metrics.json", "elbo.png"} <= set(rank0["writes"])
    for name, value in rank0["params"].items():
        assert torch.equal(value, rank1["params"][name]), f"{name} differs between ranks"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["processes"] == 2
    elbos = [record["test_elbo"] for record in metrics["history"]]
    # Measured with 2 processes: about -44.5 nats/image after epoch 1, -42.7 after epoch 2.
    assert elbos[-1] > elbos[0] + 1.0, elbos
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert saved["run"]["step"] == 3 * (1497 // 100) and len(saved["run"]["state"]["history"]) == 3


# --------------------------------------------------------------------------------------------
# Ctrl-C seen by one rank stops every rank at the same step (no rank left waiting in a collective),
# and a distributed --resume then ends where an uninterrupted distributed run ends (the fixed-noise
# guide and binarization "none" leave no randomness, so the comparison is bit for bit).


def _interrupt_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    import signal

    data_parallel = _join(rank, world_size, port)
    try:
        images, vae, guide = _problem()
        calls = {"count": 0}

        def model(x, indices, num_data, kl_weight=1.0):
            calls["count"] += 1
            if rank == 1 and calls["count"] == 3:  # only rank 1 is interrupted, during step 3
                os.kill(os.getpid(), signal.SIGINT)
            vae.model(x, indices, num_data, kl_weight)

        config = TrainConfig(epochs=2, batch_size=4, binarization="none")
        path = Path(out_dir) / "checkpoint.pt"
        try:
            fit(model, guide, images, config, checkpoint_path=path, progress=False, data_parallel=data_parallel)
            interrupted = None
        except TrainingInterrupted as stopped:  # raised on every rank, after rank 0 wrote the checkpoint
            interrupted = stopped.step
        data_parallel.barrier()  # rank 0 has written the checkpoint
        at_stop = checkpoints.load(path)["run"]
        fit(vae.model, guide, images, config, checkpoint_path=path, resume=True, progress=False, data_parallel=data_parallel)
        resumed = _params()
        images, vae, guide = _problem()
        fit(vae.model, guide, images, config, progress=False, data_parallel=data_parallel)
        output = {"interrupted_at": interrupted, "at_stop": at_stop["step"]}
        output.update(resumed=resumed, uninterrupted=_params())
        torch.save(output, Path(out_dir) / f"interrupt{rank}.pt")
    finally:
        data_parallel.close()


@pytest.mark.smoke
def test_interrupt_on_one_rank_stops_all_ranks_then_resume_is_exact(tmp_path):
    _spawn(_interrupt_worker, tmp_path)
    results = [torch.load(tmp_path / f"interrupt{rank}.pt") for rank in range(WORLD_SIZE)]
    for result in results:
        assert (result["interrupted_at"], result["at_stop"]) == (3, 3)
    saved = checkpoints.load(tmp_path / "checkpoint.pt")  # written by rank 0, at the end of the resumed run
    assert saved["run"]["step"] == 2 * (NUM_DATA // 4)  # 2 epochs of batches of 4
    for name, value in results[0]["uninterrupted"].items():
        for result in results:
            assert torch.equal(result["resumed"][name], value), name


@pytest.mark.slow
@pytest.mark.smoke
def test_torchrun_two_processes_through_the_console(tmp_path):
    """The documented launch: torchrun starts 2 gloo processes; rank 0 writes; --resume continues."""
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    out = tmp_path / "run"
    base = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "pyro_vi", "vae", *TINY, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run([*base, "--epochs", "1"], capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr
    assert json.loads((out / "metrics.json").read_text())["processes"] == 2
    second = subprocess.run([*base, "--epochs", "2", "--resume"], capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and [r["epoch"] for r in metrics["history"]] == [1, 2]
    assert second.stdout.count("test ELBO") == 1  # one report, from rank 0


def test_port_in_use_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        environment = dict(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        with pytest.raises(ConfigError, match="cannot join the process group .*address already in use"):
            distributed.init("cpu", timeout_seconds=10)
        status = cli.main(["vae", *TINY, "--epochs", "1", "--out", str(tmp_path / "run")])
    stderr = capsys.readouterr().err
    assert status == 2 and stderr.count("\n") == 1 and "cannot join the process group" in stderr, stderr
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------
# OUT on rank 0's disk only (machines without a shared filesystem): rank 0 reads the checkpoint
# and broadcasts it, so a resume on the other ranks needs no file of their own.


def _own_disk_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    data_parallel = _join(rank, world_size, port)
    try:
        images, vae, guide = _problem()
        path = Path(out_dir) / f"disk{rank}" / "checkpoint.pt"  # each rank's own OUT; only rank 0 writes
        if rank == 0:
            path.parent.mkdir()
        config = TrainConfig(epochs=1, batch_size=4, binarization="none")
        fit(vae.model, guide, images, config, checkpoint_path=path, progress=False, data_parallel=data_parallel)
        has_file = path.exists()
        refused = None
        try:  # a fresh run into rank 0's used OUT is refused on every rank, none left waiting
            fit(vae.model, guide, images, config, checkpoint_path=path, progress=False, data_parallel=data_parallel)
        except OutputError as error:
            refused = str(error)
        images, vae, guide = _problem()  # a fresh network: the resumed state must come from rank 0's file
        config = TrainConfig(epochs=2, batch_size=4, binarization="none")
        fit(vae.model, guide, images, config, checkpoint_path=path, resume=True, progress=False, data_parallel=data_parallel)
        resumed = _params()
        images, vae, guide = _problem()
        fit(vae.model, guide, images, config, progress=False, data_parallel=data_parallel)
        output = {"has_file": has_file, "refused": refused, "resumed": resumed, "uninterrupted": _params()}
        torch.save(output, Path(out_dir) / f"disk-result{rank}.pt")
    finally:
        data_parallel.close()


@pytest.mark.smoke
def test_resume_reads_rank_0_checkpoint_on_every_rank(tmp_path):
    _spawn(_own_disk_worker, tmp_path)
    results = [torch.load(tmp_path / f"disk-result{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE)]
    assert [result["has_file"] for result in results] == [True, False]  # rank 1 never had a checkpoint
    assert all("already holds a checkpoint" in (result["refused"] or "") for result in results)
    for name, value in results[0]["uninterrupted"].items():
        for result in results:
            assert torch.equal(result["resumed"][name], value), name


# A bad input seen by one rank only stops every rank, and is reported once, by rank 0.


def _bad_on_rank_1_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    import contextlib
    import io as text_io

    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    batch_size = "100" if rank == 0 else "5000"  # more than the 1,497 digits, on rank 1 only
    stderr = text_io.StringIO()
    with contextlib.redirect_stderr(stderr):
        status = cli.main(["vae", *TINY, "--epochs", "1", "--batch-size", batch_size, "--out", str(Path(out_dir) / "run")])
    (Path(out_dir) / f"bad{rank}.json").write_text(json.dumps({"status": status, "stderr": stderr.getvalue()}))


@pytest.mark.smoke
def test_bad_input_on_one_rank_stops_all_and_rank_0_reports_it(tmp_path):
    _spawn(_bad_on_rank_1_worker, tmp_path)
    rank0, rank1 = (json.loads((tmp_path / f"bad{rank}.json").read_text()) for rank in range(WORLD_SIZE))
    assert rank0["status"] == rank1["status"] == 2
    assert rank1["stderr"] == ""
    assert rank0["stderr"].count("\n") == 1, rank0["stderr"]
    assert rank0["stderr"].startswith("pyro-vi vae: error: on rank 1: batch size 5000 is larger than the 1497"), rank0["stderr"]
    assert not (tmp_path / "run").exists()
