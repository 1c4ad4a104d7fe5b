"""``pyro-vi gap``: amortized vs semi-amortized vs mean-field inference on one trained VAE.

Loads a checkpoint written by ``pyro-vi vae`` (``--checkpoint``) or trains a VAE from scratch, then
on ``--num-points`` test images measures, in nats per image: log p(x) (IWAE, k = ``--iwae-k``), the
ELBO of the encoder's q, of q refined for each of ``--refine-steps`` gradient steps, and of a
mean-field q optimized from the prior; the approximation and amortization gaps (Cremer et al.
2018); and the active units (Burda et al. 2016). Writes OUT/metrics.json and OUT/refinement.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

__all__ = ["HELP", "add_arguments", "load_vae", "run"]

HELP = "measure the amortization and approximation gaps of a VAE (log p(x) by IWAE, refinement)"


def _steps(text: str) -> list[int]:
    try:
        steps = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"refinement steps must be comma-separated integers, got {text!r}") from None
    if not steps or steps[0] < 0:
        raise argparse.ArgumentTypeError(f"refinement steps must be >= 0, got {text!r}")
    return steps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``pyro-vi gap``'s options to ``parser``."""
    from pyro_vi.commands._args import add_device, add_no_progress, add_output, add_seed
    from pyro_vi.commands._args import hidden_dims as _hidden_dims
    from pyro_vi.vae.data import BINARIZATIONS, DATASETS

    source = parser.add_argument_group("model (a checkpoint, or train one from scratch)")
    source.add_argument("--checkpoint", default=None, help="checkpoint.pt written by pyro-vi vae; omit to train")
    # Training options default to None so that one given with --checkpoint (which fixes them) is refused.
    source.add_argument("--epochs", type=int, default=None, help="training epochs when no --checkpoint (default 20)")
    source.add_argument("--z-dim", type=int, default=None, help="default 10")
    source.add_argument("--hidden-dims", type=_hidden_dims, default=None, help="default 256")
    source.add_argument("--batch-size", type=int, default=None, help="default 128")
    source.add_argument("--learning-rate", type=float, default=None, help="default 0.001")
    source.add_argument("--kl-weight", type=float, default=None,
                        help="weight of the KL term in training (>1 forces collapse; default 1)")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default=None, choices=DATASETS, help="default: the checkpoint's, else digits")
    data.add_argument("--data-dir", default=None)
    data.add_argument("--binarization", default="dynamic", choices=BINARIZATIONS)
    measure = parser.add_argument_group("measurement")
    measure.add_argument("--num-points", type=int, default=1000, help="test images to evaluate (first N)")
    measure.add_argument("--iwae-k", type=int, default=5000, help="importance samples per image for log p(x)")
    measure.add_argument("--refine-steps", type=_steps, default=[0, 1, 5, 20, 100],
                         help="e.g. 0,1,5,20,100; step 0 (the encoder's q) is always measured")
    measure.add_argument("--meanfield-steps", type=int, default=500, help="steps of mean-field VI from the prior")
    measure.add_argument("--refine-learning-rate", type=float, default=1e-2)
    measure.add_argument("--elbo-samples", type=int, default=100, help="draws per image for each ELBO")
    measure.add_argument("--refine-samples", type=int, default=10, help="draws per image per refinement step")
    measure.add_argument("--chunk-size", type=int, default=250, help="importance samples vectorized at once")
    run = parser.add_argument_group("run")
    add_device(run, what="where the images and the model go")
    add_seed(run)
    add_output(run, "runs/gap", overwrite="replace the outputs of another command in OUT")
    add_no_progress(run)


# What trains the VAE here; a --checkpoint fixes all of them.
_TRAINING_DEFAULTS = {"epochs": 20, "z_dim": 10, "hidden_dims": (256,), "batch_size": 128, "learning_rate": 1e-3, "kl_weight": 1.0}


def _validate(args) -> None:
    import math

    from pyro_vi.errors import ConfigError

    given = [name for name in _TRAINING_DEFAULTS if getattr(args, name) is not None]
    if args.checkpoint is not None and given:
        option = "--" + given[0].replace("_", "-")
        raise ConfigError(
            f"{option} applies only when training here; the --checkpoint fixes the model and its training, so drop {option}"
        )
    for name, default in _TRAINING_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    for name in ("num_points", "iwae_k", "chunk_size", "elbo_samples", "refine_samples", "epochs", "batch_size"):
        value = getattr(args, name)
        if value <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if args.meanfield_steps < 0:
        raise ConfigError(f"--meanfield-steps must be >= 0, got {args.meanfield_steps}")
    for name in ("refine_learning_rate", "learning_rate", "kl_weight"):
        if not 0 < getattr(args, name) < math.inf:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive and finite, got {getattr(args, name)}")


def _check_memory(args, vae, device) -> None:
    """Each measurement decodes (draws x images of a batch of 100) at once, keeping about three
    numbers per unit of the decoder for the backward pass (refinement)."""
    from pyro_vi import preflight

    per_draw = 3.0 * min(100, args.num_points) * (2.0 * vae.x_dim + 4.0 * vae.z_dim + 2.0 * sum(vae.hidden_dims))
    for option, draws in (("--chunk-size", min(args.chunk_size, args.iwae_k)), ("--elbo-samples", args.elbo_samples),
                          ("--refine-samples", args.refine_samples)):
        preflight.check_allocation(per_draw * draws, f"{option} {draws}", device)


def load_vae(path: str | Path, device: torch.device):
    """The VAE saved in a ``pyro-vi vae`` checkpoint, its params in the param store; and its config."""
    from pyro_vi.vae.model import load_checkpoint

    return load_checkpoint(path, device)


def run(args: argparse.Namespace) -> int:
    """Run ``pyro-vi gap``: check every input once (options, checkpoint, data, memory), then hold
    OUT, train or load the VAE, measure and write; returns the exit status."""
    import pyro

    from pyro_vi import io
    from pyro_vi.vae.data import load_dataset, validate_images
    from pyro_vi.device import resolve_device
    from pyro_vi.errors import ConfigError
    from pyro_vi.vae.model import VAE

    # 1. Check everything before writing anything; then hold OUT for the run.
    _validate(args)
    device = resolve_device(args.device)
    pyro.set_rng_seed(args.seed)
    if args.checkpoint is not None:
        vae, model_config = load_vae(args.checkpoint, device)
        dataset_name = args.dataset or model_config.get("dataset", "digits")
        if model_config.get("dataset") not in (None, dataset_name):
            raise ConfigError(
                f"the checkpoint was trained on {model_config['dataset']}, not {dataset_name}; drop --dataset or pass another checkpoint"
            )
    else:
        dataset_name = args.dataset or "digits"
    dataset = load_dataset(dataset_name, args.data_dir, device=device)
    if args.checkpoint is not None and dataset.pixels != vae.x_dim:
        raise ConfigError(f"the checkpoint's VAE takes {vae.x_dim} pixels but {dataset_name} has {dataset.pixels}")
    if args.num_points > dataset.test_images.shape[0]:
        raise ConfigError(f"--num-points {args.num_points} exceeds the {dataset.test_images.shape[0]} test images of {dataset_name}; lower it")
    validate_images(dataset.test_images, "bernoulli", name=f"{dataset_name} test images")
    if args.checkpoint is None:
        vae = VAE(dataset.pixels, args.z_dim, args.hidden_dims).to(device)  # sizes checked against memory
    _check_memory(args, vae, device)
    with io.run_output(args.out, "gap", args.overwrite) as out:
        return _train_and_measure(args, vae, dataset, dataset_name, device, out)


def _train_and_measure(args, vae, dataset, dataset_name, device, out) -> int:
    from pyro_vi import io
    from pyro_vi.vae import evaluate
    from pyro_vi.plots import gap as plots_gap
    from pyro_vi.vae.data import binarize
    from pyro_vi.errors import TrainingInterrupted
    from pyro_vi.vae.train import TrainConfig, fit

    # 2. The model: loaded, or trained here.
    start = time.perf_counter()
    if args.checkpoint is None:
        config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                             binarization=args.binarization, seed=args.seed)
        kl_weight = args.kl_weight

        def model(x, indices, num_data, _):
            return vae.model(x, indices, num_data, kl_weight)

        def guide(x, indices, num_data, _):
            return vae.guide(x, indices, num_data, kl_weight)

        result = fit(model, guide, dataset.train_images, config, progress=not args.no_progress)
        if getattr(result, "interrupted", False):  # measuring a half-trained VAE would be a wrong result
            raise TrainingInterrupted(f"interrupted during training (epoch {result.epochs + 1} of {args.epochs}); nothing written")
    train_seconds = time.perf_counter() - start

    # 3. Measure on a fixed binarization of the first num_points test images.
    images = binarize(dataset.test_images[: args.num_points], args.binarization, torch.Generator(device=device).manual_seed(0))
    vae.eval()
    terms = evaluate.elbo_terms(vae, images, num_samples=args.elbo_samples)
    units = evaluate.active_units(vae, images)
    result = evaluate.gaps(
        vae, images, iwae_k=args.iwae_k, refine_steps=args.refine_steps, meanfield_steps=args.meanfield_steps,
        learning_rate=args.refine_learning_rate, elbo_samples=args.elbo_samples,
        refine_samples=args.refine_samples, chunk_size=args.chunk_size,
    )
    log_px = result.log_px_per_point
    metrics = {
        "dataset": dataset_name,
        "checkpoint": args.checkpoint,
        "num_points": result.num_points,
        "iwae_k": result.iwae_k,
        "log_px": result.log_px,
        "log_px_standard_error_over_points": float(log_px.std() / log_px.numel() ** 0.5) if log_px.numel() > 1 else 0.0,
        "test_nll_iwae": -result.log_px,
        "elbo_amortized": result.elbo_amortized,
        "elbo_refined": result.elbo_refined[-1],
        "elbo_refined_by_step": dict(zip(map(str, result.refine_steps), result.elbo_refined)),
        "elbo_meanfield": result.elbo_meanfield,
        "elbo_optimal": result.elbo_optimal,
        "optimal_local": result.optimal_local,
        "approximation_gap": result.approximation_gap,
        "amortization_gap": result.amortization_gap,
        "recon": terms.recon,
        "kl": terms.kl,
        "active_units": units.count,
        "active_unit_variances": units.variances,
        "refine_steps": result.refine_steps,
        "meanfield_steps": result.meanfield_steps,
        "refine_learning_rate": args.refine_learning_rate,
        "elbo_samples": args.elbo_samples,
        "refine_samples": args.refine_samples,
        "train_seconds": train_seconds,
        "seconds": time.perf_counter() - start,
        "device": str(device),
        "seed": args.seed,
    }
    plots_gap.refinement_curve(result, out / "refinement.png")
    io.write_json(out / "metrics.json", metrics)
    print(
        f"{dataset_name}, {result.num_points} test images: log p(x) {result.log_px:.2f} (IWAE k={result.iwae_k}); "
        f"ELBO amortized {result.elbo_amortized:.2f}, refined {result.elbo_refined[-1]:.2f} "
        f"({result.refine_steps[-1]} steps), mean-field {result.elbo_meanfield:.2f}; "
        f"approximation gap {result.approximation_gap:.2f}, amortization gap {result.amortization_gap:.2f} nats; "
        f"{units.count} active units; wrote {out}/metrics.json"
    )
    return 0
