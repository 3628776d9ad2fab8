"""Track calibration during training with CalibrationMeter.

Trains ConvNetD3 for a few epochs on a per-class sample of real FashionMNIST
training images (SGD with the evaluation protocol's momentum and weight decay)
and, after every epoch, streams the test split through a ``CalibrationMeter``
batch by batch. The meter keeps only per-bin counts and sums (``O(n_bins)``
state), so the test logits are never stored, and ``compute()`` gives exactly
the ECE, MCE, accuracy and NLL of the whole split.

At the end, two meters that each saw half of the test split (as two processes
or two GPUs would) are merged with ``merge``: the result equals one meter over
the whole split.

    python examples/meter_training_loop.py [--per-class 100] [--epochs 10]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
from torch import nn

from ddcal import CalibrationMeter, PerClassSampler, build_convnet
from ddcal.data import load_fashion_mnist


def main(argv: Sequence[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=100, help="training images per class")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--width", type=int, default=128, help="ConvNet channels")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--n-bins", type=int, default=15, help="ECE bins (the paper used 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default=None, help="folder with the FashionMNIST IDX files")
    args = parser.parse_args(argv)
    data = load_fashion_mnist(args.data_root)
    chosen = PerClassSampler(data.train_labels, per_class=args.per_class, seed=args.seed).indices()
    images, labels = data.train_images[chosen], data.train_labels[chosen]

    torch.manual_seed(args.seed)
    net = build_convnet(
        "ConvNetD3", data.in_channels, data.num_classes, data.im_size, width=args.width
    )
    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(args.seed)

    def evaluate(test_images: torch.Tensor, test_labels: torch.Tensor) -> CalibrationMeter:
        meter = CalibrationMeter(n_bins=args.n_bins, from_logits=True)
        net.eval()
        with torch.inference_mode():
            for x, y in zip(
                test_images.split(args.batch_size), test_labels.split(args.batch_size), strict=True
            ):
                meter.update(net(x), y)
        return meter

    print(
        f"ConvNetD3 on {labels.numel()} FashionMNIST training images ({args.per_class} per "
        f"class); test split {data.test_labels.numel()} images, {args.n_bins} bins\n"
    )
    print(f"{'epoch':>5} {'train loss':>10} {'acc %':>7} {'ECE %':>7} {'MCE %':>7} {'NLL':>7}")
    history = []
    for epoch in range(1, args.epochs + 1):
        net.train()
        losses = []
        for batch in torch.randperm(labels.numel(), generator=generator).split(args.batch_size):
            loss = nn.functional.cross_entropy(net(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        metrics = evaluate(data.test_images, data.test_labels).compute()
        history.append(metrics)
        print(
            f"{epoch:>5} {sum(losses) / len(losses):>10.4f} {100 * metrics['accuracy']:>7.2f} "
            f"{100 * metrics['ece']:>7.2f} {100 * metrics['mce']:>7.2f} {metrics['nll']:>7.3f}"
        )

    half = data.test_labels.numel() // 2
    first = evaluate(data.test_images[:half], data.test_labels[:half])
    second = evaluate(data.test_images[half:], data.test_labels[half:])
    first_ece = first.compute()["ece"]
    merged = first.merge(second).compute()
    print(
        f"\nmerge: ECE of the first half alone {100 * first_ece:.2f}%, of the two halves merged "
        f"{100 * merged['ece']:.2f}% over {merged['count']:.0f} images; one meter over the "
        f"whole split: {100 * history[-1]['ece']:.2f}%"
    )
    return history


if __name__ == "__main__":
    main()
