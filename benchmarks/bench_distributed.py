"""Wall time of DM distillation and of evaluation networks with 1 and 2 processes.

    python benchmarks/bench_distributed.py [--iterations 10] [--networks 6] [--epochs 20]

Each configuration runs in fresh processes (``torchrun --standalone`` for 2);
the time is that of the work itself, measured on process 0 between two
barriers, so start-up and data loading are left out. The rows:

* DM distillation at the demo's settings (IPC 10, ``batch_real`` 64, DSA) for
  ``--iterations`` iterations;
* ``--networks`` evaluation networks of the demo's recipe (ConvNetD3 on 10 real
  images per class, DSA) for ``--epochs`` epochs each, dealt out over the
  processes as ``ddcal run`` deals them.

Configurations: one process with all the cores' threads, one with one thread,
and one process per core with one thread each. The ratios are against the
first (what a user gets without torchrun).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from ddcal import distributed, train_network
from ddcal.augment import DEFAULT_STRATEGY, dsa_from_strategy
from ddcal.data import load_fashion_mnist
from ddcal.distill import get_distiller
from ddcal.models import build_convnet


def _work(kind: str, iterations: int, networks: int, epochs: int) -> float:
    data = load_fashion_mnist()
    distributed.barrier()
    start = time.perf_counter()
    if kind == "dm":
        distiller = get_distiller(
            "dm", ipc=10, iterations=iterations, batch_real=64, progress=False, seed=0
        )
        distiller.distill(data.train_images, data.train_labels)
    else:
        labels = data.train_labels
        chosen = torch.cat([torch.nonzero(labels == c)[:10, 0] for c in range(10)])
        images, targets = data.train_images[chosen], labels[chosen]
        for seed in distributed.deal(list(range(networks))):
            torch.manual_seed(seed)
            net = build_convnet("ConvNetD3", 1, 10, (28, 28))
            train_network(
                net,
                images,
                targets,
                epochs=epochs,
                lr=0.01,
                augment=dsa_from_strategy(DEFAULT_STRATEGY),
                seed=seed,
            )
    distributed.barrier()
    return time.perf_counter() - start


def _launch(kind: str, processes: int, threads: int, args: argparse.Namespace) -> float:
    command = [sys.executable]
    if processes > 1:
        command += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command += [
        __file__,
        "--worker",
        kind,
        "--iterations",
        str(args.iterations),
        "--networks",
        str(args.networks),
        "--epochs",
        str(args.epochs),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    line = next(text for text in done.stdout.splitlines() if text.startswith("{"))
    return float(json.loads(line)["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--networks", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--worker", choices=["dm", "networks"], default=None)
    args = parser.parse_args()
    if args.worker is not None:
        distributed.init_from_environment()
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        seconds = _work(args.worker, args.iterations, args.networks, args.epochs)
        if distributed.is_main():
            print(json.dumps({"seconds": seconds}))
        if distributed.is_distributed():
            torch.distributed.destroy_process_group()
        return
    cores = os.cpu_count() or 1
    layouts = [(1, cores), (1, 1), (cores, 1)]
    print(f"{cores} cores; torch {torch.__version__}")
    for kind, what in (
        ("dm", f"DM distillation, IPC 10, {args.iterations} iterations"),
        ("networks", f"{args.networks} networks x {args.epochs} epochs (DSA, IPC 10)"),
    ):
        times = {layout: _launch(kind, *layout, args) for layout in layouts}
        base = times[layouts[0]]
        for (processes, threads), seconds in times.items():
            print(
                f"{what}: {processes} process(es) x {threads} thread(s): {seconds:.1f} s "
                f"({base / seconds:.2f}x of 1 x {cores})"
            )


if __name__ == "__main__":
    main()
