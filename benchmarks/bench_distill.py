"""Seconds per distillation iteration of each backbone on FashionMNIST IPC 10, CPU.

Full-width ConvNetD3, the reference options of each method, a few iterations
each (the first is a warm-up and not counted).

    python benchmarks/bench_distill.py [--iterations 3] [--methods dm dc dsa mtt]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from ddcal.data import load_fashion_mnist
from ddcal.distill import DISTILLERS, get_distiller


def _seconds_per_iteration(
    method: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    iterations: int,
    options: dict[str, Any],
) -> float:
    warm = get_distiller(method, ipc=10, iterations=1, progress=False, **options)
    warm.distill(images, labels)
    timed = get_distiller(method, ipc=10, iterations=iterations, progress=False, **options)
    start = time.perf_counter()
    timed.distill(images, labels)
    return (time.perf_counter() - start) / iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=sorted(DISTILLERS))
    args = parser.parse_args()
    data = load_fashion_mnist()
    print(
        f"FashionMNIST IPC 10, ConvNetD3, CPU, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {args.iterations} iterations after one warm-up"
    )
    print(f"{'method':<8} {'s/iteration':>12}")
    for method in args.methods:
        seconds = _seconds_per_iteration(
            method, data.train_images, data.train_labels, args.iterations, {}
        )
        print(f"{method:<8} {seconds:>12.2f}", flush=True)


if __name__ == "__main__":
    main()
