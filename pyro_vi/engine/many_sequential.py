"""``fit_many`` where the batched step does not apply: the R runs one after another with ``fit``.

Run ``r`` is ``pyro_vi.fit`` seeded with run r's init seed (:func:`pyro_vi.engine.many.run_seeds`),
with a fresh copy of the loss and optimizer (an estimator's baseline is the run's own), checkpointed
to its own file (:func:`run_checkpoint`); a run that diverges is marked and the others go on.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import pyro
import torch

from pyro_vi.engine import params
from pyro_vi.errors import TrainingDivergedError

__all__ = ["run_checkpoint", "sequential"]


def run_checkpoint(path: str | Path, run: int) -> Path:
    """Run ``run``'s checkpoint when the runs are trained one after another: ``NAME.runR.SUFFIX``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.run{run}{path.suffix}")


def sequential(model, guide, args, kwargs, runs, num_steps, loss, optim, seeds, on_nan, progress,
                checkpoint, checkpoint_every, resume, overwrite, reason):
    """The R runs one after another with ``pyro_vi.fit`` (a fresh copy of loss and optimizer each):
    the fields of a :class:`~pyro_vi.engine.many.ManyResult` (``batched=False``, ``fallback_reason=reason``)."""
    from tqdm.auto import tqdm

    from pyro_vi.engine.loop import fit

    losses = torch.full((runs, num_steps), math.nan, dtype=torch.float64)
    diverged = torch.zeros(runs, dtype=torch.bool)
    skipped = torch.zeros(runs, dtype=torch.int64)
    finals: list[dict] = []
    bar = tqdm(total=runs * num_steps, desc=f"svi {runs} runs", leave=False) if progress else None
    outer = params.snapshot()
    start, steps_this_call = time.perf_counter(), 0

    current = [0, start]  # the run, its start
    elapsed = torch.full((runs, num_steps), math.nan, dtype=torch.float64)  # each run's own seconds to each step

    def tick(step, step_loss):
        losses[current[0], step - 1] = math.nan if step_loss is None else step_loss
        elapsed[current[0], step - 1] = time.perf_counter() - current[1]
        if bar is not None:
            bar.update(1)

    try:
        for r, (init_seed, _) in enumerate(seeds):
            current[0], current[1] = r, time.perf_counter()
            pyro.clear_param_store()
            path = run_checkpoint(checkpoint, r) if checkpoint is not None else None
            again = bool(resume and path is not None and path.is_file())
            try:
                result = fit(model, guide, *args, num_steps=num_steps, loss=copy.deepcopy(loss), optim=copy.deepcopy(optim),
                             seed=None if again else init_seed, on_nan=on_nan, progress=False, callback=tick,
                             checkpoint=path, checkpoint_every=checkpoint_every, resume=again, overwrite=overwrite, **kwargs)
                losses[r, : len(result.losses)] = torch.tensor(result.losses, dtype=torch.float64)
                params_now = result.params
                skipped[r] = result.skipped_steps
                steps_this_call += result.steps_this_call
            except TrainingDivergedError:  # frozen at the last good step; the callback kept the losses before it
                diverged[r] = True
                params_now = {name: value.detach().clone() for name, value in pyro.get_param_store().items()}
            finals.append(params_now)
    finally:
        if bar is not None:
            bar.close()
        params.restore(outer)
    if on_nan == "raise" and bool(diverged.all()):
        raise TrainingDivergedError(f"every one of the {runs} runs became NaN/inf; lower the learning rate or check the data")
    names = list(finals[0])
    stacked = {name: torch.stack([final[name] for final in finals]) for name in names if all(name in f for f in finals)}
    reached = elapsed.nan_to_num(0.0).cummax(1).values  # a run that stopped early: its last time from then on
    return {"times": reached.sum(0), "params": stacked, "losses": losses, "seconds": time.perf_counter() - start, "batched": False,
            "fallback_reason": reason, "seeds": seeds, "diverged": diverged, "skipped_steps": skipped, "steps": num_steps,
            "steps_this_call": steps_this_call // runs if runs else 0, "per_run_streams": True}
