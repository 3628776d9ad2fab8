"""DM and MTT on a GPU: seconds per iteration over a few hundred iterations, and quality.

FashionMNIST IPC 10, ConvNetD3. Trains MTT's expert trajectories once (timed),
then distils with DM and MTT, each with MDT off and at ``--mdt-ratio``, timing
the iterations with the device synchronised, and trains ConvNetD3 on every
result and on a random real sample of the same size with the protocol (DSA),
reporting test accuracy and raw / TS-on-set / MTS ECE. The short device check
of the distillation issue; run it where ``torch.cuda.is_available()``.

    python benchmarks/cuda_distill.py [--iterations 300] [--experts 2] [--expert-epochs 22]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from distill_quality import evaluate_set

from ddcal import PerClassSampler
from ddcal.data import load_fashion_mnist
from ddcal.distill import get_distiller, train_experts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--experts", type=int, default=2)
    parser.add_argument("--expert-epochs", type=int, default=22)
    parser.add_argument("--mdt-ratio", type=float, default=0.5)
    parser.add_argument("--eval-epochs", type=int, default=300)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    data = load_fashion_mnist()
    images, labels = data.train_images.to(device), data.train_labels.to(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"FashionMNIST IPC 10, ConvNetD3, {name}, torch {torch.__version__}", flush=True)

    start = time.perf_counter()
    experts = train_experts(
        images,
        labels,
        num_experts=args.experts,
        epochs=args.expert_epochs,
        device=device,
        progress=False,
    )
    sync()
    expert_seconds = time.perf_counter() - start
    print(
        f"experts: {args.experts} x {args.expert_epochs} epochs in {expert_seconds:.1f} s "
        f"({expert_seconds / (args.experts * args.expert_epochs):.2f} s/epoch)",
        flush=True,
    )

    chosen = PerClassSampler(data.train_labels, per_class=10, seed=0).indices()
    rows: list[tuple[str, float | None, dict[str, Any]]] = [
        (
            "random real",
            None,
            evaluate_set(
                "random real",
                data.train_images[chosen],
                data.train_labels[chosen],
                data.test_images,
                data.test_labels,
                epochs=args.eval_epochs,
                lr=0.01,
                seed=0,
                device=device,
            ),
        )
    ]
    for method in ("dm", "mtt"):
        for ratio in (0.0, args.mdt_ratio):
            options: dict[str, Any] = {}
            if method == "mtt":  # start epochs up to the experts' length (20 for 22 epochs)
                options = {"experts": experts, "max_start_epoch": args.expert_epochs - 2}
            distiller = get_distiller(
                method,
                ipc=10,
                iterations=args.iterations,
                mdt_ratio=ratio,
                device=device,
                progress=False,
                **options,
            )
            sync()
            start = time.perf_counter()
            result = distiller.distill(images, labels)
            sync()
            per_iteration = (time.perf_counter() - start) / args.iterations
            label = method + (f" + MDT {ratio:g}" if ratio else "")
            row = evaluate_set(
                label,
                result.images.cpu(),
                result.labels.cpu(),
                data.test_images,
                data.test_labels,
                epochs=args.eval_epochs,
                lr=result.lr or 0.01,
                seed=0,
                device=device,
            )
            rows.append((label, per_iteration, row))
            final_loss = float(result.meta["loss_history"][-1])
            print(f"{label}: {per_iteration:.3f} s/it, final loss {final_loss:.4f}", flush=True)

    print(
        f"\n{args.iterations} iterations each; evaluation ConvNetD3 {args.eval_epochs} epochs "
        "with DSA; ECE % on the 10000 test images (15 bins)\n"
    )
    print("| set | s/iteration | acc % | raw ECE | TS-on-set ECE (T) | MTS 0.5 ECE (T) |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, per_iteration, row in rows:
        seconds = "" if per_iteration is None else f"{per_iteration:.3f}"
        print(
            f"| {label} | {seconds} | {row['acc']:.2f} | {row['raw']:.2f} | "
            f"{row['ts']:.2f} ({row['T_ts']:.2f}) | {row['mts']:.2f} ({row['T_mts']:.2f}) |"
        )


if __name__ == "__main__":
    main()
