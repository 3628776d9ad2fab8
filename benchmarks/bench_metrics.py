"""Benchmark: top-label ECE on 1,000,000 x 100 random probabilities on the CPU.

Compares ddcal.calibration_error with a straightforward reference that loops
over the bins in Python with boolean masks (same binning convention: [a, b),
last bin closed, float64 edges), and with torchmetrics'
multiclass_calibration_error when torchmetrics is installed. Prints the median
time of a few runs, the ratios (baseline / ddcal) and checks that the values
agree.

    .venv/bin/python benchmarks/bench_metrics.py [--n 1000000] [--classes 100]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from ddcal._validation import check_labels, check_scores
from ddcal.metrics import calibration_error


def reference_ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int) -> float:
    """Per-bin Python loop with boolean masks: the straightforward implementation."""
    confidence, prediction = probs.max(dim=1)
    confidence = confidence.double()
    correct = (prediction == labels).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    n = probs.shape[0]
    ece = 0.0
    for b in range(n_bins):
        low, high = edges[b], edges[b + 1]
        if b == n_bins - 1:
            in_bin = (confidence >= low) & (confidence <= high)
        else:
            in_bin = (confidence >= low) & (confidence < high)
        count = int(in_bin.sum())
        if count > 0:
            gap = correct[in_bin].mean() - confidence[in_bin].mean()
            ece += count / n * abs(float(gap))
    return ece


def validation_only(probs: torch.Tensor, labels: torch.Tensor) -> float:
    scores = check_scores(probs, "probs", from_logits=False)
    check_labels(labels, "labels", num_samples=scores.shape[0], num_classes=scores.shape[1])
    return 0.0


def median_time(fn: Callable[[], float], repeats: int) -> tuple[float, float]:
    value = fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--bins", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    logits = 3.0 * torch.randn(args.n, args.classes, generator=generator)
    probs = torch.softmax(logits, dim=1)  # float32
    del logits
    labels = torch.randint(0, args.classes, (args.n,), generator=generator)

    print(
        f"ECE, {args.n:,} x {args.classes} float32 probabilities, {args.bins} bins, CPU, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats} runs"
    )
    ddcal_time, ddcal_value = median_time(
        lambda: calibration_error(probs, labels, n_bins=args.bins), args.repeats
    )
    rows = [("ddcal.calibration_error", ddcal_time, ddcal_value)]
    validation_time, _ = median_time(lambda: validation_only(probs, labels), args.repeats)

    loop_time, loop_value = median_time(
        lambda: reference_ece(probs, labels, args.bins), args.repeats
    )
    rows.append(("reference (Python loop over bins)", loop_time, loop_value))

    try:
        from torchmetrics.functional.classification import multiclass_calibration_error
    except ImportError:
        print("torchmetrics not installed: skipping it")
    else:
        tm_time, tm_value = median_time(
            lambda: float(
                multiclass_calibration_error(
                    probs, labels, num_classes=args.classes, n_bins=args.bins, norm="l1"
                )
            ),
            args.repeats,
        )
        rows.append(("torchmetrics multiclass_calibration_error", tm_time, tm_value))

    print(f"{'implementation':44s} {'time (ms)':>10s} {'ratio':>8s} {'ECE':>12s}")
    for name, seconds, value in rows:
        print(f"{name:44s} {seconds * 1e3:10.1f} {seconds / ddcal_time:7.2f}x {value:12.8f}")
    print(
        f"  of which ddcal's input validation (finite, in [0, 1], rows sum to 1, labels): "
        f"{validation_time * 1e3:.1f} ms; the reference and torchmetrics check less"
    )
    for name, _, value in rows[1:]:
        difference = abs(value - ddcal_value)
        verdict = "agree" if difference < 1e-6 else "DISAGREE"
        print(f"ddcal vs {name}: |difference| = {difference:.2e} ({verdict})")


if __name__ == "__main__":
    main()
