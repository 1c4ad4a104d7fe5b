"""Amortized vs semi-amortized vs mean-field inference on one VAE, measured in nats.

Train a VAE on digits (amortized q from the encoder), then on test images: log p(x) by importance
sampling, the ELBO of the encoder's q, of q refined by K gradient steps from the encoder's
prediction (semi-amortized), and of a per-image mean-field q optimized from the prior; the
approximation and amortization gaps of Cremer et al. (2018). Last, a decoder trained with
per-image mean-field q's only (Hoffman-style SVI: K local steps per minibatch, then a decoder step).

    python examples/gap.py
    python examples/gap.py --epochs 2 --num-points 20 --iwae-k 50 --local-epochs 1   # seconds
"""

import argparse

import pyro
import torch

import pyro_vi


def main(args):
    """Train the VAE on digits, then print log p(x), the ELBOs and the two gaps (nats per image) on test images."""
    pyro.set_rng_seed(args.seed)
    device = pyro_vi.resolve_device(args.device)
    dataset = pyro_vi.load_dataset("digits", device=device)
    test_images = pyro_vi.binarize(dataset.test_images[: args.num_points], "dynamic",
                                   torch.Generator(device=device).manual_seed(0))

    # 1. Amortized: an encoder predicts every q(z | x).
    vae = pyro_vi.VAE(dataset.pixels, z_dim=args.z_dim, hidden_dims=(args.hidden_dim,)).to(device)
    config = pyro_vi.TrainConfig(epochs=args.epochs, batch_size=100, learning_rate=3e-3, seed=args.seed)
    pyro_vi.fit_images(vae.model, vae.guide, dataset.train_images, config, progress=False)

    # 2. The gaps on test images (refinement starts from the encoder; mean-field from the prior).
    gaps = pyro_vi.vae.evaluate.gaps(vae, test_images, iwae_k=args.iwae_k, refine_steps=(0, 1, 5, 20, 100),
                                 meanfield_steps=args.meanfield_steps)
    units = pyro_vi.vae.evaluate.active_units(vae, test_images)
    print(f"log p(x)                 {gaps.log_px:8.2f}  (IWAE, k={gaps.iwae_k})")
    for steps, elbo in zip(gaps.refine_steps, gaps.elbo_refined):
        print(f"ELBO refined {steps:>3} steps  {elbo:8.2f}" + ("  (amortized)" if steps == 0 else ""))
    print(f"ELBO mean-field          {gaps.elbo_meanfield:8.2f}  ({gaps.meanfield_steps} steps from the prior)")
    print(f"approximation gap {gaps.approximation_gap:.2f}, amortization gap {gaps.amortization_gap:.2f} nats; "
          f"{units.count}/{args.z_dim} active units")

    # 3. Non-amortized training: one q_n per training image, Hoffman-style SVI, same architecture.
    pyro.clear_param_store()
    local_vae = pyro_vi.VAE(dataset.pixels, z_dim=args.z_dim, hidden_dims=(args.hidden_dim,)).to(device)
    guide = pyro_vi.LocalGuide(num_data=dataset.train_images.shape[0], z_dim=args.z_dim)
    local_config = pyro_vi.LocalTrainConfig(epochs=args.local_epochs, batch_size=100, learning_rate=3e-3,
                                            local_learning_rate=3e-2, local_steps=args.local_steps, seed=args.seed)
    result = pyro_vi.fit_local(local_vae, guide, dataset.train_images, local_config)
    print(f"mean-field decoder (Hoffman, K={args.local_steps}): train ELBO {result.history[-1]['train_elbo']:.2f} "
          f"after {result.steps} decoder steps, {result.local_steps} local steps")
    return gaps, result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Amortization and approximation gaps of a VAE")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--z-dim", type=int, default=8)
    parser.add_argument("--hidden-dim", type=int, default=64)
    parser.add_argument("--num-points", type=int, default=100)
    parser.add_argument("--iwae-k", type=int, default=1000)
    parser.add_argument("--meanfield-steps", type=int, default=300)
    parser.add_argument("--local-epochs", type=int, default=10)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
