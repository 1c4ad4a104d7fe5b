"""Amortized VAE on scikit-learn's digits (or MNIST) with SVI and Trace_ELBO.

The encoder is the inference network q(z | x), the decoder the generative network p(x | z); both
are trained by maximizing the ELBO with pyro_vi's SVI loop. The test ELBO is reported split into
reconstruction and KL (a KL near 0 means the posterior has collapsed).

    python examples/vae.py
    python examples/vae.py --dataset mnist --data-dir ../shared/data/mnist --z-dim 50 --hidden-dims 400

Options left unset take ``pyro-vi vae``'s defaults for the dataset (``DATASET_DEFAULTS``: for the
8x8 digits, thresholded images, batch 256, learning rate 5e-3 and 25 epochs of KL warm-up).
"""

import argparse

import pyro
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

import pyro_vi
from pyro_vi.commands.vae import DATASET_DEFAULTS


def main(args):
    """Train the VAE with ``pyro_vi.fit_images`` on the chosen dataset and print its test ELBO (nats per image)."""
    for name, value in DATASET_DEFAULTS[args.dataset].items():
        if getattr(args, name, None) is None:  # options this script has no flag for take the default too
            setattr(args, name, value)
    pyro.set_rng_seed(args.seed)
    device = pyro_vi.resolve_device(args.device)
    dataset = pyro_vi.load_dataset(args.dataset, args.data_dir, device=device)
    hidden_dims = tuple(int(h) for h in args.hidden_dims.split(","))
    vae = pyro_vi.VAE(dataset.pixels, z_dim=args.z_dim, hidden_dims=hidden_dims).to(device)
    test_images = pyro_vi.binarize(dataset.test_images, args.binarization, torch.Generator(device=device).manual_seed(0))

    def evaluate(epoch):
        terms = pyro_vi.vae.evaluate.elbo_terms(vae, test_images)
        return {"test_elbo": terms.elbo, "test_recon": terms.recon, "test_kl": terms.kl}

    config = pyro_vi.TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        kl_warmup_epochs=args.kl_warmup_epochs,
        binarization=args.binarization,
        seed=args.seed,
        lr_schedule=args.lr_schedule,
        final_learning_rate=args.final_learning_rate,
    )
    loss = TraceMeanField_ELBO() if args.analytic_kl else Trace_ELBO()
    result = pyro_vi.fit_images(vae.model, vae.guide, dataset.train_images, config, loss=loss, evaluate=evaluate, progress=False)

    print(f"{'epoch':>5} {'train ELBO':>11} {'test ELBO':>10} {'recon':>9} {'KL':>7}")
    for record in result.history:
        print(
            f"{record['epoch']:>5} {record['train_elbo']:>11.2f} {record['test_elbo']:>10.2f} "
            f"{record['test_recon']:>9.2f} {record['test_kl']:>7.2f}"
        )
    print(f"{result.images_per_second:.0f} images/s on {device}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Amortized VAE trained with SVI")
    parser.add_argument("--dataset", default="digits", choices=pyro_vi.vae.data.DATASETS)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--binarization", default=None, choices=pyro_vi.vae.data.BINARIZATIONS)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--z-dim", type=int, default=10)
    parser.add_argument("--hidden-dims", default="256")
    parser.add_argument("--kl-warmup-epochs", type=float, default=None)
    parser.add_argument("--analytic-kl", action="store_true", help="TraceMeanField_ELBO instead of Trace_ELBO")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
