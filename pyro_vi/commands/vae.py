"""``pyro-vi vae``: train the amortized VAE with SVI and write metrics, figures and a checkpoint.

Everything the user passed is checked (data, options, device, checkpoint) before the output
directory is touched; metrics and figures are written atomically at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

if TYPE_CHECKING:
    from pyro_vi.vae.data import Dataset
    from pyro_vi.vae.model import VAE
    from pyro_vi.vae.train import TrainConfig

__all__ = ["HELP", "ELBOS", "DATASET_DEFAULTS", "fill_dataset_defaults", "add_arguments", "build_loss", "run"]

HELP = "train an amortized VAE with SVI (default: scikit-learn digits, offline)"



ELBOS = ("trace", "analytic-kl", "iwae")
_RENAMED_ELBOS = {"meanfield": "analytic-kl"}  # the old spelling, still accepted

# Options whose default depends on --dataset (argparse leaves them None; ``run`` fills them in).
# digits: the 8x8 grey digits binarized dynamically are mostly coin flips (13.7 nats of pixel noise
# per image, 45% of inked pixels mid-grey), so the VAE learned to encode almost nothing (test KL
# 3.2 nats after 100 epochs, grey-blob reconstructions). Thresholded at 0.5 they are a fixed binary
# data set the Bernoulli likelihood scores exactly; with larger batches, a higher learning rate and
# a KL warm-up over the first quarter, 500 steps give test KL about 6 nats, 10 active units and
# reconstructions a digit classifier reads as the input's digit 87% of the time.
# MNIST-style data keep the usual recipe (dynamic binarization, Adam 1e-3, no warm-up).
DATASET_DEFAULTS = {
    "digits": {"binarization": "threshold", "epochs": 100, "batch_size": 256, "learning_rate": 5e-3, "kl_warmup_epochs": 25.0,
               "lr_schedule": "constant", "final_learning_rate": 0.0},
    "mnist": {"binarization": "dynamic", "epochs": 100, "batch_size": 128, "learning_rate": 1e-3, "kl_warmup_epochs": 0.0,
              "lr_schedule": "constant", "final_learning_rate": 0.0},
}
DATASET_DEFAULTS["fashion-mnist"] = DATASET_DEFAULTS["mnist"]


def fill_dataset_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Give every option left unset (None) its ``--dataset``'s default."""
    for name, value in DATASET_DEFAULTS.get(args.dataset, DATASET_DEFAULTS["mnist"]).items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    return args


def _default_help(name: str) -> str:
    return "default: " + ", ".join(f"{DATASET_DEFAULTS[d][name]:g} for {d}" if not isinstance(DATASET_DEFAULTS[d][name], str)
                                   else f"{DATASET_DEFAULTS[d][name]} for {d}" for d in ("digits", "mnist")) + " and fashion-mnist"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``pyro-vi vae``'s options to ``parser``."""
    from pyro_vi.commands._args import add_compile, add_deprecated_alias, add_device, add_no_progress, add_output, add_seed, hidden_dims, x_scale
    from pyro_vi.vae.data import BINARIZATIONS, DATASETS
    from pyro_vi.vae.model import LIKELIHOODS
    from pyro_vi.vae.train import LR_SCHEDULES

    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="digits", choices=DATASETS)
    data.add_argument("--data-dir", default=None, help="folder with the MNIST-style IDX files (gzipped or not)")
    data.add_argument("--binarization", default=None, choices=BINARIZATIONS, help=_default_help("binarization"))
    model = parser.add_argument_group("model")
    model.add_argument("--z-dim", type=int, default=10)
    model.add_argument("--hidden-dims", type=hidden_dims, default=(256,), help="comma-separated, e.g. 400 or 500,500")
    model.add_argument("--likelihood", default="bernoulli", choices=LIKELIHOODS)
    model.add_argument("--x-scale", type=x_scale, default=0.1, help="gaussian likelihood scale, or 'learned'")
    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=None, help=_default_help("epochs"))
    train.add_argument("--batch-size", type=int, default=None, help=_default_help("batch_size"))
    train.add_argument("--learning-rate", type=float, default=None, help=_default_help("learning_rate"))
    train.add_argument("--lr-schedule", default=None, choices=LR_SCHEDULES,
                       help="learning rate over the run's steps, from --learning-rate down to --final-learning-rate ("
                       + _default_help("lr_schedule") + ")")
    train.add_argument("--final-learning-rate", type=float, default=None,
                       help="the schedule's learning rate at the end of the run (" + _default_help("final_learning_rate") + ")")
    train.add_argument(
        "--elbo", "--objective", dest="elbo", default="trace", choices=ELBOS, type=lambda text: _RENAMED_ELBOS.get(text, text),
        help="trace: Trace_ELBO; analytic-kl: TraceMeanField_ELBO, the KL in closed form; iwae: the k-sample IWAE bound, k = --particles",
    )
    train.add_argument("--particles", type=int, default=1, help="samples of z per image per step (vectorized)")
    train.add_argument(
        "--estimator",
        default=None,
        choices=_estimator_names(),
        help="gradient estimator from pyro_vi.estimators (overrides --elbo; e.g. score-baseline trains, slowly)",
    )
    train.add_argument("--kl-warmup-epochs", type=float, default=None,
                       help="linear KL annealing from 0 to 1 (" + _default_help("kl_warmup_epochs") + ")")
    train.add_argument("--checkpoint-every", dest="checkpoint_every_steps", type=int, default=0, metavar="CHECKPOINT_EVERY",
                       help="also checkpoint every this many steps (default 0: at the end of each epoch)")
    add_deprecated_alias(train, "--checkpoint-every-steps", "--checkpoint-every", "checkpoint_every_steps", int)
    train.add_argument("--on-nan", default="raise", choices=("raise", "skip"))
    add_compile(train)
    train.add_argument("--iwae-k", type=int, default=0, help="after training, test NLL by IWAE with k samples (0: off)")
    train.add_argument("--iwae-points", type=int, default=None, help="test images for --iwae-k (default: all)")
    run = parser.add_argument_group("run")
    add_device(run, what="where the images and the model go")
    add_seed(run)
    add_output(run, "runs/vae")
    start = run.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    start.add_argument("--overwrite", action="store_true", help="start over, replacing OUT/checkpoint.pt")
    add_no_progress(run)
    run.add_argument(
        "--distributed",
        action="store_true",
        help="data-parallel over the processes of a torchrun launch (automatic when WORLD_SIZE > 1)",
    )


def _estimator_names() -> tuple[str, ...]:
    from pyro_vi.estimators import ESTIMATORS

    return ESTIMATORS


def build_loss(args):
    """The Pyro ELBO object named by the options."""
    from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

    if getattr(args, "estimator", None) is not None:
        from pyro_vi.estimators import get_estimator

        return get_estimator(args.estimator, num_particles=getattr(args, "particles", 1))
    particles = getattr(args, "particles", 1)
    if args.elbo == "iwae":
        # pyro_vi's iwae: each image's bound (N/|B|) log mean_i w_i; Pyro's RenyiELBO raises the
        # weights to the minibatch factor N/|B| before the logsumexp instead (issue 12, item 1).
        from pyro_vi.estimators import get_estimator

        return get_estimator("iwae", num_particles=particles, vectorize_particles=particles > 1)
    return {"trace": Trace_ELBO, "analytic-kl": TraceMeanField_ELBO}[args.elbo](
        num_particles=particles, vectorize_particles=particles > 1
    )


def run(args: argparse.Namespace) -> int:
    """Run ``pyro-vi vae``: one preflight (options, data, device, checkpoint: each read and checked
    once), then train, evaluate and write OUT; returns the exit status."""
    from pyro_vi.engine import distributed

    fill_dataset_defaults(args)
    data_parallel = distributed.init(args.device) if args.distributed or distributed.launched() else None
    try:
        return _train(args, data_parallel)
    finally:
        if data_parallel is not None:
            data_parallel.close()


class _Setup(NamedTuple):
    """What the checks produced, for training."""

    device: torch.device
    config: TrainConfig
    dataset: Dataset
    loss: Any  # a Pyro ELBO
    vae: VAE
    model_config: dict
    out: Path
    checkpoint_path: Path
    saved_checkpoint: dict | None  # --resume: the checkpoint, read and checked once (rank 0)


def _check(args: argparse.Namespace, data_parallel) -> _Setup:
    """Check everything the user passed, writing nothing."""
    import pyro

    from pyro_vi.commands import user_model
    from pyro_vi.commands._args import check_compile, compile_mode
    from pyro_vi.engine import checkpoint
    from pyro_vi.engine.checkpoint_format import DATA_FINGERPRINT
    from pyro_vi.vae.data import load_dataset
    from pyro_vi.device import resolve_device
    from pyro_vi.errors import OutputError
    from pyro_vi.vae.model import VAE
    from pyro_vi.vae.train import TrainConfig

    from pyro_vi import io, preflight

    io.check_output_path(args.out)  # empty, too long: before any work
    device = resolve_device(args.device) if data_parallel is None else data_parallel.device
    is_main = data_parallel is None or data_parallel.is_main
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        kl_warmup_epochs=args.kl_warmup_epochs,
        binarization=args.binarization,
        seed=args.seed,
        checkpoint_every_steps=args.checkpoint_every_steps,
        on_nan=args.on_nan,
        compile=compile_mode(args),
        lr_schedule=args.lr_schedule,
        final_learning_rate=args.final_learning_rate,
    )
    pyro.set_rng_seed(args.seed)
    VAE(1, args.z_dim, args.hidden_dims, args.likelihood, args.x_scale)  # validates the options before loading data
    dataset = load_dataset(args.dataset, args.data_dir, device=device)
    preflight.check_vae(dataset.pixels, args.z_dim, args.hidden_dims, args.batch_size, getattr(args, "particles", 1), device)
    config.validate(dataset.train_images.shape[0])
    _validate_iwae_options(args, dataset.test_images.shape[0])
    if data_parallel is not None:
        data_parallel.validate(config.batch_size)
    loss = build_loss(args)
    check_compile(config.compile, loss)
    vae = VAE(dataset.pixels, args.z_dim, args.hidden_dims, args.likelihood, args.x_scale).to(device)
    vae.validate(dataset.train_images, name=f"{args.dataset} training images")
    # The training images' content fingerprint: a --resume on other images (another --data-dir) is refused.
    fingerprint = user_model.tensors_fingerprint({"train_images": dataset.train_images})
    model_config = {**vae.config, "dataset": args.dataset, "loss": _loss_name(args), DATA_FINGERPRINT: fingerprint}
    out = Path(args.out)
    checkpoint_path = out / "checkpoint.pt"
    saved_checkpoint = None
    if is_main:  # rank 0 alone writes checkpoints: its OUT is the one that matters
        if args.resume:
            saved_checkpoint = checkpoint.load(checkpoint_path, broadcast=False)
            _rename_old_loss(saved_checkpoint["config"])  # a run saved as --elbo meanfield resumes as analytic-kl
            checkpoint.check_config(saved_checkpoint, {"model": model_config, "train": config.checkpoint_config()}, checkpoint_path,
                                    data=f"the {args.dataset} training images" + (f" in {args.data_dir!r}" if args.data_dir else ""))
        elif checkpoint_path.exists() and not args.overwrite:
            raise OutputError(
                f"{str(checkpoint_path)!r} already holds a checkpoint; pass --resume to continue it "
                "or --overwrite to start over"
            )
    if hasattr(loss, "check"):  # an estimator that does not apply to this guide fails here, before any output
        loss.check(vae.model, vae.guide, dataset.train_images[:2], None, dataset.train_images.shape[0])
        pyro.clear_param_store()
    return _Setup(device, config, dataset, loss, vae, model_config, out, checkpoint_path, saved_checkpoint)


def _train(args: argparse.Namespace, data_parallel) -> int:
    from pyro_vi import io
    from pyro_vi.engine import distributed

    # 1. Check everything before writing anything; then rank 0, which alone writes, creates OUT.
    is_main = data_parallel is None or data_parallel.is_main
    setup, failed = distributed.agreed(lambda: _check(args, data_parallel), data_parallel)
    if failed:
        return 2
    device, config, dataset, loss, vae, model_config, out, checkpoint_path, _ = setup
    # Rank 0 holds OUT for the whole run: created, locked (a second run into it is refused), claimed.
    with contextlib.ExitStack() as holding:
        out, failed = distributed.agreed(
            lambda: holding.enter_context(io.run_output(out, "vae", args.overwrite, resume=args.resume)) if is_main else out,
            data_parallel,
        )
        if failed:
            return 2
        return _train_in(args, data_parallel, setup, out, is_main)


def _train_in(args, data_parallel, setup, out, is_main) -> int:
    from pyro_vi import io
    from pyro_vi.vae import evaluate
    from pyro_vi.plots import vae as plots
    from pyro_vi.vae.data import binarize
    from pyro_vi.errors import PyroVIError, TrainingInterrupted
    from pyro_vi.vae.train import Preflight, fit

    device, config, dataset, loss, vae, model_config, _, checkpoint_path, saved_checkpoint = setup

    # 2. Train. The test set is binarized once, with its own generator, the same on every run.
    test_images = binarize(dataset.test_images, args.binarization, torch.Generator(device=device).manual_seed(0))

    def evaluate_epoch(epoch: int) -> dict:
        terms = evaluate.elbo_terms(vae, test_images)
        return {"test_elbo": terms.elbo, "test_recon": terms.recon, "test_kl": terms.kl}

    start = time.perf_counter()
    try:
        result = fit(
            vae.model,
            vae.guide,
            dataset.train_images,
            config,
            loss=loss,
            evaluate=evaluate_epoch,
            checkpoint_path=checkpoint_path,
            resume=args.resume,
            overwrite=args.overwrite,
            checkpoint_config=model_config,
            progress=not args.no_progress and is_main,
            data_parallel=data_parallel,
            preflight=Preflight(data_checked=True, checkpoint=saved_checkpoint),  # both done once, in _check
        )
    except TrainingInterrupted as interrupted:
        if is_main:
            print(f"interrupted at step {interrupted.step}; checkpoint saved to {checkpoint_path}; rerun with --resume")
        return 130
    except PyroVIError:
        if is_main:
            raise
        return 2  # a user error inside fit reaches rank 0 too (losses all-reduced, checkpoints broadcast): it reports
    if not is_main:
        return 0

    # 3. Report.
    last = result.history[-1]
    metrics = {
        "dataset": args.dataset,
        "epochs": result.epochs,
        "z_dim": args.z_dim,
        "hidden_dims": list(args.hidden_dims),
        "likelihood": args.likelihood,
        "loss": _loss_name(args),
        "binarization": args.binarization,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "lr_schedule": args.lr_schedule,
        "final_learning_rate": args.final_learning_rate,
        "test_elbo": last["test_elbo"],
        "test_recon": last["test_recon"],
        "test_kl": last["test_kl"],
        "train_elbo": last["train_elbo"],
        "images_per_second": result.images_per_second,
        "device": str(device),
        "processes": 1 if data_parallel is None else data_parallel.world_size,
        "seconds": time.perf_counter() - start,
        "skipped_steps": result.skipped_steps,
        "compiled_steps": result.compiled_steps,  # this call's steps replayed by the recorded program
        "seed": args.seed,
        "history": result.history,
    }
    vae.eval()
    # Burda et al.'s active units on the test set: the README's "10 of 10 units active" is this count.
    active = evaluate.active_units(vae, test_images)
    metrics.update(active_units=active.count, active_unit_threshold=active.threshold,
                   active_unit_variances=[float(v) for v in active.variances])
    if args.iwae_k > 0:
        iwae_images = test_images[: args.iwae_points]
        log_px = evaluate.iwae_log_likelihood(vae, iwae_images, num_samples=args.iwae_k)
        metrics.update(test_nll_iwae=-float(log_px.mean()), iwae_k=args.iwae_k, iwae_points=iwae_images.shape[0],
                       test_nll_iwae_standard_error=float(log_px.std() / iwae_images.shape[0] ** 0.5))
    plots.elbo_curves(result.history, out / "elbo.png")
    plots.reconstructions(vae, test_images, dataset.image_shape, out / "reconstructions.png")
    plots.prior_samples(vae, dataset.image_shape, out / "samples.png", device)
    plots.latent_space(vae, test_images, dataset.test_labels, out / "latent.png")
    if args.z_dim == 2:
        plots.manifold(vae, dataset.image_shape, out / "manifold.png", device)
    io.write_json(out / "metrics.json", metrics)
    print(
        f"{args.dataset}: test ELBO {metrics['test_elbo']:.2f} nats/image "
        f"(recon {metrics['test_recon']:.2f}, KL {metrics['test_kl']:.2f}), "
        f"{active.count} of {args.z_dim} units active after {result.epochs} epochs, "
        f"{metrics['images_per_second']:.0f} images/s on {device}"
        + (f"; test NLL {metrics['test_nll_iwae']:.2f} (IWAE, k={args.iwae_k})" if args.iwae_k > 0 else "")
        + f"; wrote {out}/metrics.json"
    )
    return 0


def _rename_old_loss(config: dict) -> None:
    """A checkpoint's loss named by an old spelling (``meanfield``, ``meanfield-k5``) in today's words."""
    model = config.get("model") if isinstance(config, dict) else None
    if isinstance(model, dict) and isinstance(model.get("loss"), str):
        name, separator, particles = model["loss"].partition("-k")
        model["loss"] = _RENAMED_ELBOS.get(name, name) + separator + particles


def _loss_name(args) -> str:
    name = args.estimator if getattr(args, "estimator", None) is not None else args.elbo
    particles = getattr(args, "particles", 1)
    return name if particles == 1 else f"{name}-k{particles}"


def _validate_iwae_options(args, num_test: int) -> None:
    from pyro_vi.errors import ConfigError

    if getattr(args, "particles", 1) < 1:
        raise ConfigError(f"--particles must be a positive integer, got {args.particles}")
    if args.iwae_k < 0:
        raise ConfigError(f"--iwae-k must be >= 0 (0 turns it off), got {args.iwae_k}")
    if args.iwae_points is not None and not 0 < args.iwae_points <= num_test:
        raise ConfigError(f"--iwae-points must be between 1 and the {num_test} test images, got {args.iwae_points}")
    from pyro_vi import preflight

    points = num_test if args.iwae_points is None else args.iwae_points
    # The IWAE evaluation keeps a log weight per sample and image (chunked draws, summed at the end).
    preflight.check_allocation(float(args.iwae_k) * points, f"--iwae-k {args.iwae_k} on {points} test images")
