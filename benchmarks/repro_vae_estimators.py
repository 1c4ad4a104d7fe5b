"""Reproduction 5: a VAE trained with each gradient estimator; encoder-gradient variance and test ELBO.

For each training estimator in ``--estimators`` (reparam, score, score-baseline, stl) a fresh VAE
(same initial weights) is fitted with ``pyro_vi.fit``; after every epoch the test ELBO (per image,
analytic KL, threshold-binarized test images) is recorded, and at initialization, the middle and the
end of training the total variance of the encoder's gradient (sum over encoder weights of the
per-element variance over ``--replicates`` draws, one particle, on a fixed minibatch of training
images) is measured for every estimator with ``pyro_vi.gradient_variance``.

score-baseline is measured with a decaying-average baseline warmed up over 50 draws at the current
weights (Pyro keeps one running average per datapoint of the minibatch, so measuring and training
use the same batch size). ``--quick`` uses 400 of the 8x8 digits, 2 epochs, 20 replicates and trains with reparam and
score only; ``--dataset mnist --data-dir DIR`` the
full MNIST. Writes JSON, a figure (variance per estimator at the three points; test ELBO vs epoch)
and a row in RESULTS.md.
"""

import argparse
import sys
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

from pyro_vi import VAE, TrainConfig, binarize, get_estimator, gradient_variance, load_dataset  # noqa: E402
from pyro_vi.vae import evaluate  # noqa: E402
from pyro_vi.vae.train import fit  # noqa: E402

COMPARED = ("reparam", "score", "score-baseline", "stl")  # the estimators this reproduction compares by default
BASELINE_WARMUP_DRAWS = 50


def encoder_variance(vae, batch, estimator_names, num_replicates, seed) -> dict:
    """Total variance and mean SNR of the encoder's gradient, per estimator, at the current weights."""
    measured = {}
    for name in estimator_names:
        estimator = get_estimator(name)
        if name == "score-baseline":
            with torch.no_grad():
                for _ in range(BASELINE_WARMUP_DRAWS):  # moves Pyro's running average, not the weights
                    estimator.differentiable_loss(vae.model, vae.guide, batch)
        result = gradient_variance(vae.model, vae.guide, batch, estimator=estimator, num_replicates=num_replicates, seed=seed)
        encoder = [p for p in result.variance if p.startswith("encoder$$$")]
        measured[name] = {
            "encoder_total_variance": float(sum(result.variance[p].double().sum() for p in encoder)),
            "encoder_snr": sum(result.snr_per_param[p] * result.mean[p].numel() for p in encoder) / sum(result.mean[p].numel() for p in encoder),
            "decoder_total_variance": float(sum(result.variance[p].double().sum() for p in result.variance if p.startswith("decoder$$$"))),
        }
    return measured


def main(args):
    _common.setup_threads(torch.get_num_threads())  # torch honours OMP_NUM_THREADS
    quick = args.quick
    dataset = load_dataset("digits" if quick else args.dataset, data_dir=args.data_dir)
    epochs = 2 if quick else args.epochs
    num_replicates = 20 if quick else args.replicates
    batch_size = 50 if quick else args.batch_size
    trained = ["reparam", "score"] if quick else args.estimators
    train_images = dataset.train_images[:400] if quick else dataset.train_images
    z_dim, hidden_dims = (4, (32,)) if quick else (args.z_dim, tuple(args.hidden_dims))
    measure_at = sorted({0, epochs // 2, epochs})
    test_images = binarize(dataset.test_images, "threshold")
    generator = torch.Generator().manual_seed(args.seed)
    batch = binarize(train_images[torch.randperm(len(train_images), generator=generator)[:batch_size]], "threshold")
    runs = {}
    for train_name in trained:
        pyro.clear_param_store()
        torch.manual_seed(args.seed)  # same initial weights for every run
        vae = VAE(dataset.train_images.shape[1], z_dim=z_dim, hidden_dims=hidden_dims)
        variance = {0: encoder_variance(vae, batch, args.estimators, num_replicates, args.seed)}
        test_elbo = {0: evaluate.elbo_terms(vae, test_images).elbo}

        def after_epoch(epoch, vae=vae, variance=variance, test_elbo=test_elbo):
            test_elbo[epoch] = evaluate.elbo_terms(vae, test_images).elbo
            if epoch in measure_at:
                variance[epoch] = encoder_variance(vae, batch, args.estimators, num_replicates, args.seed + epoch)
            return {"test_elbo": test_elbo[epoch]}

        config = TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=args.learning_rate, seed=args.seed)
        result = fit(vae.model, vae.guide, train_images, config, loss=get_estimator(train_name),
                     evaluate=after_epoch, progress=False)
        runs[train_name] = {"test_elbo": {str(e): v for e, v in test_elbo.items()},
                            "encoder_variance": {str(e): v for e, v in variance.items()}, "seconds": result.seconds}
        print(f"trained with {train_name:15s} test ELBO {test_elbo[0]:.1f} -> {test_elbo[epochs]:.1f} nats  ({result.seconds:.1f} s)")
        for e in measure_at:
            print(f"    epoch {e:3d} encoder-gradient total variance: "
                  + "  ".join(f"{name} {variance[e][name]['encoder_total_variance']:.3g}" for name in args.estimators))
    stem = "repro_vae_estimators" + ("_quick" if quick else "")
    out = Path(args.out_dir) if args.out_dir else _common.RESULTS_DIR
    payload = {"dataset": dataset.name, "epochs": epochs, "measure_at": measure_at, "replicates": num_replicates,
               "batch_size": batch_size, "num_train": len(train_images), "estimators_measured": args.estimators, "z_dim": z_dim, "hidden_dims": list(hidden_dims), "runs": runs,
               "machine": _common.machine(), "commit": _common.commit()}
    _common.write_json(stem, payload, out)
    figure(payload, out / f"{stem}.png")
    if not args.no_table:
        numbers = ", ".join(f"{name}: test ELBO {run['test_elbo'][str(epochs)]:.1f}" for name, run in runs.items())
        first = runs[args.estimators[0]]["encoder_variance"]["0"]
        ratios = "at init, encoder variance / reparam: " + ", ".join(
            f"{name} {first[name]['encoder_total_variance'] / first['reparam']['encoder_total_variance']:.3g}" for name in args.estimators if name != "reparam")
        _common.append_results_row(f"VAE on {dataset.name} trained with each estimator, {epochs} epochs, R={num_replicates}", numbers, ratios, args.results_table)
    return payload


def figure(payload, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = payload["runs"]
    names = payload["estimators_measured"]
    fig, axes = plt.subplots(1, len(payload["measure_at"]) + 1, figsize=(4 * (len(payload["measure_at"]) + 1), 4))
    for axis, epoch in zip(axes, payload["measure_at"]):
        width = 0.8 / len(runs)
        for j, train_name in enumerate(runs):
            values = [runs[train_name]["encoder_variance"][str(epoch)][name]["encoder_total_variance"] for name in names]
            axis.bar([i + j * width for i in range(len(names))], values, width, label=f"trained with {train_name}")
        axis.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=20)
        axis.set_yscale("log")
        axis.set_title(f"encoder-gradient variance, epoch {epoch}")
    axes[0].legend(fontsize=7)
    for train_name in runs:
        points = sorted((int(e), v) for e, v in runs[train_name]["test_elbo"].items())
        axes[-1].plot([e for e, _ in points], [v for _, v in points], marker="o", label=train_name)
    axes[-1].set_xlabel("epoch")
    axes[-1].set_ylabel("test ELBO (nats per image)")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv=None):
    """The command line (``argv``: a list, for tests)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist", help="digits or mnist (--quick: digits)")
    parser.add_argument("--data-dir", default=None, help="where the MNIST IDX files are (e.g. /work/shared/data/mnist)")
    parser.add_argument("--estimators", nargs="+", default=list(COMPARED), choices=COMPARED)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--replicates", type=int, default=200)
    parser.add_argument("--z-dim", type=int, default=20)
    parser.add_argument("--hidden-dims", type=int, nargs="+", default=[400])
    _common.add_common_arguments(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
