"""Use Masked Distillation Training (MDT) in your own distillation loop.

A hand-written distribution-matching (DM) loop on FashionMNIST: each iteration
draws a fresh random ConvNet (frozen; only its embedding is used) and, class by
class, matches the mean embedding of a real batch with that of the class's
synthetic images. Two synthetic sets start from the same real images and see
the same networks and real batches: one is matched with the plain DM loss
(``ddcal.distill.dm_loss``), the other with the same loss wrapped in
``MaskedDistillationTraining``, which zeroes each synthetic pixel with
probability ``r`` before the network sees it (the mask of each call drawn from
the seed and the keys it is given, here ``(iteration, class)``), so gradients
reach only the kept pixels. Wrapping the loss is the only change MDT needs.

The MDT loss is measured on masked images and stays higher; what MDT buys shows
in the distilled set itself: its variance is spread over more directions
(``explained_variance_ratio``), and networks trained on it are easier to
calibrate. ``ddcal.distill.get_distiller(..., mdt_ratio=r)`` does the same with
DSA augmentation, checkpoints and resume.

    python examples/mdt_own_loop.py [--ipc 10] [--iterations 50] [--mask-ratio 0.5]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from ddcal import MaskedDistillationTraining, build_convnet, explained_variance_ratio
from ddcal.data import load_fashion_mnist
from ddcal.distill import dm_loss


def main(argv: Sequence[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ipc", type=int, default=10, help="synthetic images per class")
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--mask-ratio", type=float, default=0.5, help="MDT mask ratio")
    parser.add_argument("--batch-real", type=int, default=128, help="real images per class")
    parser.add_argument("--width", type=int, default=128, help="ConvNet channels")
    parser.add_argument("--lr", type=float, default=1.0, help="learning rate of the images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default=None, help="folder with the FashionMNIST IDX files")
    args = parser.parse_args(argv)
    data = load_fashion_mnist(args.data_root)
    generator = torch.Generator().manual_seed(args.seed)
    by_class = [torch.nonzero(data.train_labels == c).flatten() for c in range(data.num_classes)]

    def sample(indices: torch.Tensor, count: int) -> torch.Tensor:
        chosen = indices[torch.randperm(indices.numel(), generator=generator)[:count]]
        return data.train_images[chosen]

    start = torch.cat([sample(indices, args.ipc) for indices in by_class])
    # Ratio 0 is the plain loss: the two runs differ only in the ratio.
    runs = {
        "plain DM": MaskedDistillationTraining(dm_loss, 0.0),
        f"DM + MDT r={args.mask_ratio:g}": MaskedDistillationTraining(
            dm_loss, args.mask_ratio, seed=args.seed
        ),
    }
    synthetic = {name: start.clone().requires_grad_(True) for name in runs}
    optimizers = {
        name: torch.optim.SGD([images], lr=args.lr, momentum=0.5)
        for name, images in synthetic.items()
    }
    history: dict[str, list[float]] = {name: [] for name in runs}

    print(f"{'iteration':>9} " + " ".join(f"{name:>16}" for name in runs))
    for iteration in range(args.iterations):
        torch.manual_seed(args.seed + iteration)
        network = build_convnet(
            "ConvNetD3", data.in_channels, data.num_classes, data.im_size, width=args.width
        ).requires_grad_(False)
        real = [sample(indices, args.batch_real) for indices in by_class]
        for name, objective in runs.items():
            images = synthetic[name]
            # objective(keys, synthetic, real, network): MDT masks the synthetic batch
            # only, with the mask of (iteration, class), whatever ran before.
            loss = sum(
                objective(
                    (iteration, c), images[c * args.ipc : (c + 1) * args.ipc], real[c], network
                )
                for c in range(data.num_classes)
            )
            optimizers[name].zero_grad()
            loss.backward()
            optimizers[name].step()
            history[name].append(loss.item())
        print(f"{iteration:>9} " + " ".join(f"{history[name][-1]:>16.3f}" for name in runs))

    print("\nShare of the k largest singular values in their sum, cumsum(s) / sum(s):")
    print(f"{'k':>9} " + " ".join(f"{name:>16}" for name in runs))
    curves = {name: explained_variance_ratio(images.detach()) for name, images in synthetic.items()}
    for k in (1, 2, 5, 10, 20):
        if k <= start.shape[0] - 1:
            print(f"{k:>9} " + " ".join(f"{float(curves[name][k - 1]):>16.3f}" for name in runs))
    return history


if __name__ == "__main__":
    main()
