"""Quality of a distilled set on real data, with and without MDT, against a random real sample.

Distils FashionMNIST at IPC 10 with one backbone (default DM) on a CPU budget,
with MDT off and at ``--mdt-ratio``, trains ConvNetD3 on each result and on a
random real per-class sample of the same size (the protocol, with DSA), and
prints test accuracy and the calibration columns: raw ECE, TS fitted on the
training (distilled) images, MTS at r = 0.5. Nothing is chosen on the test set.

    python benchmarks/distill_quality.py --method dm --iterations 200 --set batch_real=64
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from ddcal import (
    MaskedTemperatureScaler,
    PerClassSampler,
    TemperatureBoundWarning,
    TemperatureScaler,
    accuracy,
    build_convnet,
    calibration_error,
    predict_logits,
    train_network,
)
from ddcal.augment import DSA
from ddcal.cli import parse_option
from ddcal.data import load_fashion_mnist
from ddcal.distill import get_distiller

STRATEGY = "color_crop_cutout_flip_scale_rotate"


def evaluate_set(
    name: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    seed: int,
    device: torch.device,
) -> dict[str, float | str]:
    torch.manual_seed(seed)
    net = build_convnet("ConvNetD3", 1, 10, 28)
    train_network(
        net, images, labels, epochs=epochs, lr=lr, augment=DSA(STRATEGY), seed=seed, device=device
    )
    logits = predict_logits(net, test_images, device=device).cpu()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TemperatureBoundWarning)
        ts = TemperatureScaler().fit(net, images, labels).temperature_
    mts = MaskedTemperatureScaler(0.5, seed=seed).fit(net, images, labels).temperature_
    assert ts is not None
    assert mts is not None

    def ece(temperature: float) -> float:
        return 100 * calibration_error(logits / temperature, test_labels, from_logits=True)

    return {
        "set": name,
        "acc": 100 * accuracy(logits, test_labels),
        "raw": ece(1.0),
        "ts": ece(ts),
        "mts": ece(mts),
        "T_ts": ts,
        "T_mts": mts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="dm")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--mdt-ratio", type=float, default=0.5)
    parser.add_argument("--eval-epochs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--set", type=parse_option, action="append", default=[], metavar="KEY=VALUE"
    )
    args = parser.parse_args()

    data = load_fashion_mnist()
    sets = {}
    chosen = PerClassSampler(data.train_labels, per_class=args.ipc, seed=args.seed).indices()
    sets["random real"] = (data.train_images[chosen], data.train_labels[chosen], 0.0, 0.01)
    for ratio in (0.0, args.mdt_ratio):
        distiller = get_distiller(
            args.method,
            ipc=args.ipc,
            iterations=args.iterations,
            mdt_ratio=ratio,
            seed=args.seed,
            device=args.device,
            progress=False,
            **dict(args.set),
        )
        start = time.perf_counter()
        result = distiller.distill(data.train_images, data.train_labels)
        seconds = time.perf_counter() - start
        name = f"{args.method}" + (f" + MDT {ratio:g}" if ratio else "")
        # MTT learns the step size its set is meant to be trained with.
        sets[name] = (result.images.cpu(), result.labels.cpu(), seconds, result.lr or 0.01)

    print(
        f"FashionMNIST IPC {args.ipc}, {args.method} {args.iterations} iterations "
        f"{dict(args.set)}, seed {args.seed}; evaluation: ConvNetD3, {args.eval_epochs} epochs "
        "with DSA (an MTT set at its learned lr); ECE % on the 10000 test images (15 bins); "
        f"device {args.device}\n"
    )
    print("| set | distil s | acc % | raw ECE | TS-on-set ECE (T) | MTS 0.5 ECE (T) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (images, labels, seconds, lr) in sets.items():
        row = evaluate_set(
            name,
            images,
            labels,
            data.test_images,
            data.test_labels,
            epochs=args.eval_epochs,
            lr=lr,
            seed=args.seed,
            device=torch.device(args.device),
        )
        print(
            f"| {name} | {seconds:.0f} | {row['acc']:.2f} | {row['raw']:.2f} | "
            f"{row['ts']:.2f} ({row['T_ts']:.2f}) | {row['mts']:.2f} ({row['T_mts']:.2f}) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
