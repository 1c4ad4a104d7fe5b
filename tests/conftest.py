import os
import resource
import time

import pyro
import pytest
import torch

# Keep the 2-core CI machine from oversubscribing threads: the cores are shared among pytest-xdist's
# workers (2 cores, 2 workers: one thread each). OMP_NUM_THREADS, when set, wins (on a shared
# machine, OMP_NUM_THREADS=1 keeps idle OpenMP workers from spinning on a busy core).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
_THREADS = int(os.environ.get("OMP_NUM_THREADS") or max(1, min(2, os.cpu_count() or 1) // _WORKERS))
torch.set_num_threads(_THREADS)
if _WORKERS > 1:  # the commands and scripts the tests start share the worker's cores too
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))


@pytest.fixture(autouse=True)
def _clean_pyro_state():
    """Each test starts with an empty param store, a fixed seed and validation on."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA, which is not available here")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


# --------------------------------------------------------------------------------------------
# --cpu-durations=N (with -n 0): the N tests that take the most CPU time (this process and the
# subprocesses it waited for, setup and teardown included). Wall-clock durations (--durations) swell with the load
# on a shared machine; CPU seconds stay close to what the test costs on idle cores.


def pytest_addoption(parser):
    parser.addoption(
        "--cpu-durations",
        type=int,
        default=None,
        metavar="N",
        help="show the N tests taking the most CPU seconds, subprocesses included (0 for all)",
    )


def _cpu_seconds() -> float:
    import launch  # the commands forked by tests/launch.py's warm interpreter are its children, not ours

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime + launch.child_cpu_seconds


_CPU_SECONDS: dict[str, float] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if item.config.getoption("cpu_durations") is None:
        yield
        return
    start = _cpu_seconds()
    yield
    _CPU_SECONDS[item.nodeid] = _cpu_seconds() - start


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    count = config.getoption("cpu_durations")
    if count is None or not _CPU_SECONDS:
        return
    ranked = sorted(_CPU_SECONDS.items(), key=lambda pair: pair[1], reverse=True)
    terminalreporter.write_sep("=", f"CPU seconds per test (total {sum(_CPU_SECONDS.values()):.1f} s)")
    for nodeid, seconds in ranked[: count or None]:
        terminalreporter.write_line(f"{seconds:8.2f}s  {nodeid}")
