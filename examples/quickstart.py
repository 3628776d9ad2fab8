"""Quick-start: calibrate a network trained on 10 images per class with MTS.

Trains ConvNetD3 with the distillation papers' evaluation protocol
(``ddcal.train.train_network``) on a seeded per-class sample of real
FashionMNIST training images (standing in for a distilled set until the
distillers land), then compares on the test set: the raw network, temperature
scaling (TS) fitted on its own training images, TS fitted on a per-class 10%
hold-out, Masked Temperature Scaling at a few ratios, networks trained with
mixup, label smoothing and focal loss, and -- labelled as an oracle, since a
distilled-data user does not have it -- TS fitted on real held-out images.

Nothing is chosen on the test set: every row is fitted on training data only.

    python examples/quickstart.py [--ipc 10] [--epochs 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch
from torch import nn

from ddcal import (
    MaskedTemperatureScaler,
    PerClassSampler,
    TemperatureScaler,
    accuracy,
    build_convnet,
    calibration_error,
    negative_log_likelihood,
    per_class_split,
    predict_logits,
)
from ddcal.data import load_fashion_mnist
from ddcal.train import train_network


def main(argv: Sequence[str] | None = None) -> list[dict[str, float | str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ipc", type=int, default=10, help="training images per class")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=128, help="ConvNet channels")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--oracle-per-class", type=int, default=500, help="real held-out images")
    parser.add_argument("--data-root", default=None, help="folder with the FashionMNIST IDX files")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    data = load_fashion_mnist(args.data_root)
    pool = PerClassSampler(
        data.train_labels, per_class=args.ipc + args.oracle_per_class, seed=args.seed
    ).indices()
    is_train = torch.zeros(pool.numel(), dtype=torch.bool)
    is_train[
        PerClassSampler(data.train_labels[pool], per_class=args.ipc, seed=args.seed).indices()
    ] = True
    images, labels = data.train_images[pool[is_train]], data.train_labels[pool[is_train]]
    oracle_images, oracle_labels = (
        data.train_images[pool[~is_train]],
        data.train_labels[pool[~is_train]],
    )

    def train(loss: str, fit_images: torch.Tensor, fit_labels: torch.Tensor) -> nn.Module:
        torch.manual_seed(args.seed)
        net = build_convnet(
            "ConvNetD3", in_channels=1, num_classes=10, im_size=28, width=args.width
        )
        return train_network(
            net, fit_images, fit_labels, epochs=args.epochs, loss=loss, seed=args.seed
        )

    net = train("ce", images, labels)
    test_logits = predict_logits(net, data.test_images)

    temperatures = {
        "Raw": 1.0,
        "TS on the training images": TemperatureScaler().fit(net, images, labels).temperature_,
    }
    for ratio in args.ratios:
        mts = MaskedTemperatureScaler(ratio, seed=args.seed).fit(net, images, labels)
        temperatures[f"MTS r={ratio:g}"] = mts.temperature_
    oracle = TemperatureScaler().fit(net, oracle_images, oracle_labels)
    temperatures["Oracle: TS on real held-out"] = oracle.temperature_
    rows = [_row(name, t, test_logits, data.test_labels) for name, t in temperatures.items()]

    if args.ipc >= 2:
        fit_idx, holdout_idx = per_class_split(labels, 0.1, seed=args.seed)
        holdout_net = train("ce", images[fit_idx], labels[fit_idx])
        holdout = TemperatureScaler().fit(holdout_net, images[holdout_idx], labels[holdout_idx])
        rows.insert(
            2,
            _row(
                "TS on a 10% hold-out (net on 90%)",
                holdout.temperature_,
                predict_logits(holdout_net, data.test_images),
                data.test_labels,
            ),
        )
    for loss, name in (
        ("mixup", "Mixup"),
        ("label_smoothing", "Label smoothing"),
        ("focal", "Focal loss"),
    ):
        baseline = train(loss, images, labels)
        rows.insert(
            -1, _row(name, 1.0, predict_logits(baseline, data.test_images), data.test_labels)
        )
    _print_table(rows, args, time.perf_counter() - start, images.shape[0], oracle_images.shape[0])
    return rows


def _row(
    name: str, temperature: float | None, logits: torch.Tensor, labels: torch.Tensor
) -> dict[str, float | str]:
    assert temperature is not None
    scaled = logits / temperature
    return {
        "method": name,
        "T": temperature,
        "accuracy": 100 * accuracy(scaled, labels),
        "ece": 100 * calibration_error(scaled, labels, from_logits=True),
        "nll": negative_log_likelihood(scaled, labels, from_logits=True),
    }


def _print_table(
    rows: list[dict[str, float | str]],
    args: argparse.Namespace,
    seconds: float,
    n_train: int,
    n_oracle: int,
) -> None:
    print(
        f"\nFashionMNIST, ConvNetD3 trained on {n_train} real images ({args.ipc} per class), "
        f"{args.epochs} epochs, seed {args.seed}; test set 10000 images; ECE: 15 equal-width bins."
    )
    print(f"Oracle: TS fitted on {n_oracle} real training images the network never saw.\n")
    print(f"| {'method':<36} | {'T':>6} | {'acc %':>6} | {'ECE %':>6} | {'NLL':>6} |")
    print(f"|{'-' * 38}|{'-' * 7}:|{'-' * 7}:|{'-' * 7}:|{'-' * 7}:|")
    for row in rows:
        print(
            f"| {row['method']:<36} | {row['T']:>6.3f} | {row['accuracy']:>6.2f} | "
            f"{row['ece']:>6.2f} | {row['nll']:>6.3f} |"
        )
    print(f"\n({seconds:.0f} s)")


if __name__ == "__main__":
    main()
