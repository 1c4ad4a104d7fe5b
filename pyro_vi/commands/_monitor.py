"""What ``pyro-vi fit`` writes while the run goes: ``metrics.jsonl``, the param trace, TensorBoard.

:class:`Monitor` is ``fit``'s callback. Every ``every`` steps it appends one JSON line to
``OUT/metrics.jsonl`` (flushed, so ``tail -f`` shows it) and, with ``--tensorboard``, the same
scalars to a ``SummaryWriter`` in ``OUT/tensorboard``; every ``trace_every`` steps it records the
params (``pyro_vi.engine.posterior.ParamTrace``) for ``traces.png``. The trace travels in the
checkpoint's ``state``, so a resumed run's figure covers the whole run; on ``--resume`` the lines
past the checkpoint's step (the interrupted run's, about to be taken again) are dropped first.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

__all__ = ["Monitor", "check_tensorboard", "default_every"]


def default_every(num_steps: int) -> int:
    """A hundredth of the run, at least 1: about a hundred lines per run."""
    return max(1, num_steps // 100)


def check_tensorboard():
    """``torch.utils.tensorboard.SummaryWriter``.

    Raises:
        ConfigError: the ``tensorboard`` package is not installed.
    """
    from pyro_vi.errors import ConfigError

    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard "
                          "(metrics.jsonl has the same numbers without it)") from None
    return SummaryWriter


class Monitor:
    """``fit``'s callback: metrics.jsonl every ``every`` steps, the param trace, TensorBoard.

    Args:
        out: the output directory.
        guide: the guide (an auto guide's per-site loc and scale are traced).
        num_steps: steps of the whole run.
        every: steps between lines of metrics.jsonl.
        state: the dict given to ``fit(state=...)`` (the trace is kept there, checkpointed).
        resume: the run continues a checkpoint (keep metrics.jsonl's lines before it).
        tensorboard: also write a TensorBoard event file in ``out/tensorboard``.
    """

    def __init__(self, out: Path, guide, num_steps: int, every: int, state: dict, resume: bool = False,
                 tensorboard: bool = False):
        from pyro_vi.engine.posterior import ParamTrace

        self.path = Path(out) / "metrics.jsonl"
        self.every, self.num_steps, self.state, self.resume = every, num_steps, state, resume
        self.trace = ParamTrace(guide)
        self.trace_every = max(1, num_steps // 200)
        self.completed = 0
        self._file = None
        self._window: list[float] = []
        self._writer = check_tensorboard()(log_dir=str(Path(out) / "tensorboard")) if tensorboard else None
        self._start = self._last_time = time.perf_counter()
        self._last_step = None

    def __call__(self, step: int, loss: float | None) -> None:
        if self._file is None:
            self._open(step)
        self.completed = step
        self._window.append(math.nan if loss is None else float(loss))
        if step % self.trace_every == 0 or step == self.num_steps:
            self.trace.record(step)
        if step % self.every == 0 or step == self.num_steps:
            self._write(step, loss)

    def _open(self, first_step: int) -> None:
        from pyro_vi import io

        saved = self.state.get("param_trace")
        if self.resume and saved:
            self.trace.load(saved)
        self.state["param_trace"] = {"steps": self.trace.steps, "values": self.trace.values, "sizes": self.trace.sizes}
        kept = []
        if self.resume and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] < first_step:
                        kept.append(line + "\n")
                except (ValueError, KeyError, TypeError):
                    break  # a torn last line of a killed run
        io.atomic_write(self.path, lambda file: file.write("".join(kept)), mode="w")
        self._file = open(self.path, "a", buffering=1)  # line-buffered: a reader sees whole lines
        self._last_step = first_step - 1

    def _write(self, step: int, loss: float | None) -> None:
        now = time.perf_counter()
        finite = [value for value in self._window if math.isfinite(value)]
        line = {
            "step": step,
            "loss": None if loss is None else float(loss),
            "elbo_smoothed": -sum(finite) / len(finite) if finite else None,  # over the steps since the last line
            "skipped_steps": len(self._window) - len(finite),
            "seconds": now - self._start,
            "steps_per_second": (step - self._last_step) / max(now - self._last_time, 1e-9),
        }
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key in ("loss", "elbo_smoothed", "steps_per_second"):
                if line[key] is not None:
                    self._writer.add_scalar(key, line[key], step)
            self._writer.flush()
        self._window, self._last_time, self._last_step = [], now, step

    def discard(self) -> None:
        """Close and remove what this run wrote (a run that failed before its first checkpoint leaves nothing)."""
        import shutil

        self.close()
        self.path.unlink(missing_ok=True)
        shutil.rmtree(self.path.parent / "tensorboard", ignore_errors=True)

    def close(self) -> None:
        """Close metrics.jsonl and the TensorBoard writer."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
