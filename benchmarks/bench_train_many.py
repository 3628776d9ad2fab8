"""Several evaluation networks at once: sequential training against one vmap-ed pass.

Trains ``--networks`` ConvNetD3 networks (different seeds) on 100 real
FashionMNIST images (IPC 10) with DSA for ``--epochs`` epochs, once one after
the other (``train_network`` per network) and once stacked
(``train_networks(..., vectorize=True)``), on ``--device``, and prints the
networks trained per second of each and the ratio. ``train_networks`` with the
default ``vectorize=None`` stacks on CUDA only: on a CPU it is the sequential
row.

    python benchmarks/bench_train_many.py [--device cuda] [--networks 5] [--epochs 20]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from ddcal import PerClassSampler, build_convnet, train_network, train_networks
from ddcal.augment import DSA
from ddcal.data import load_fashion_mnist

STRATEGY = "color_crop_cutout_scale_rotate"


def _networks(count: int, device: torch.device) -> list[torch.nn.Module]:
    nets = []
    for seed in range(count):
        torch.manual_seed(seed)
        nets.append(build_convnet("ConvNetD3", 1, 10, 28).to(device))
    return nets


def _seconds(work: Callable[[], None], device: torch.device) -> float:
    work()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--networks", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)

    data = load_fashion_mnist()
    chosen = PerClassSampler(data.train_labels, per_class=10, seed=0).indices()
    images = data.train_images[chosen].to(device)
    labels = data.train_labels[chosen].to(device)
    seeds = list(range(args.networks))
    settings = {"epochs": args.epochs, "augment": DSA(STRATEGY), "device": device}

    def sequential() -> None:
        for net, seed in zip(_networks(args.networks, device), seeds, strict=True):
            train_network(net, images, labels, seed=seed, **settings)

    def stacked() -> None:
        nets = _networks(args.networks, device)
        count = len(nets)
        train_networks(
            nets, [images] * count, [labels] * count, seeds=seeds, vectorize=True, **settings
        )

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"{args.networks} x ConvNetD3, FashionMNIST IPC 10 with DSA, {args.epochs} epochs, "
        f"{where}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    one_by_one = _seconds(sequential, device)
    together = _seconds(stacked, device)
    print(f"{'training':<28} {'networks/s':>11} {'ratio':>7}")
    print(f"{'one network at a time':<28} {args.networks / one_by_one:>11.3f} {'1.00x':>7}")
    print(
        f"{'stacked (vmap)':<28} {args.networks / together:>11.3f} {one_by_one / together:>6.2f}x"
    )
    print("ratio: sequential time / stacked time (above 1: stacking is faster)")


if __name__ == "__main__":
    main()
