"""Benchmark: top-label ECE and the whole calibration summary on 1,000,000 x 100 probabilities, CPU.

ECE: ddcal.calibration_error against a straightforward reference that loops
over the bins in Python with boolean masks (same binning convention: [a, b),
last bin closed, float64 edges), torchmetrics' multiclass_calibration_error
and netcal's ECE, each where installed (``make bench`` installs them into its
own environment, ``.venv-bench``). Summary: ddcal.calibration_summary
(accuracy, ECE, MCE, NLL, Brier) against the same five ddcal functions called
one by one, and against what each peer offers of it (torchmetrics: accuracy,
ECE, MCE; netcal: ECE, MCE), so the peers' times are for less work. Prints the
median time of a few runs, the ratios (other / ddcal) and checks that the
values agree.

    .venv-bench/bin/python benchmarks/bench_metrics.py [--n 1000000] [--classes 100]
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import Any

import torch
from _timing import median_time

from ddcal.metrics import (
    accuracy,
    brier_score,
    calibration_error,
    calibration_summary,
    negative_log_likelihood,
)


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
        f"{args.n:,} x {args.classes} float32 probabilities, {args.bins} bins, CPU, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats} runs"
    )
    probs_np, labels_np = probs.numpy(), labels.numpy()
    tm = _optional("torchmetrics.functional.classification")
    netcal = _optional("netcal.metrics")

    def ddcal_ece() -> float:
        return calibration_error(probs, labels, n_bins=args.bins)

    ece_rows: list[tuple[str, Callable[[], float]]] = [
        ("ddcal.calibration_error", ddcal_ece),
        ("reference (Python loop over bins)", lambda: reference_ece(probs, labels, args.bins)),
    ]
    if tm is not None:
        ece_rows.append(
            (
                "torchmetrics multiclass_calibration_error",
                lambda: float(
                    tm.multiclass_calibration_error(
                        probs, labels, num_classes=args.classes, n_bins=args.bins, norm="l1"
                    )
                ),
            )
        )
    if netcal is not None:
        ece_rows.append(
            ("netcal ECE", lambda: float(netcal.ECE(bins=args.bins).measure(probs_np, labels_np)))
        )
    _table("ECE", ece_rows, args.repeats)

    def ddcal_summary() -> float:
        return calibration_summary(probs, labels, n_bins=args.bins)["ece"]

    def one_by_one() -> float:
        accuracy(probs, labels)
        calibration_error(probs, labels, n_bins=args.bins, norm="max")
        negative_log_likelihood(probs, labels)
        brier_score(probs, labels)
        return calibration_error(probs, labels, n_bins=args.bins)

    summary_rows: list[tuple[str, Callable[[], float]]] = [
        ("ddcal.calibration_summary (5 metrics)", ddcal_summary),
        ("ddcal's 5 functions one by one", one_by_one),
    ]
    if tm is not None:

        def torchmetrics_summary() -> float:
            tm.multiclass_accuracy(probs, labels, num_classes=args.classes, average="micro")
            tm.multiclass_calibration_error(
                probs, labels, num_classes=args.classes, n_bins=args.bins, norm="max"
            )
            return float(
                tm.multiclass_calibration_error(
                    probs, labels, num_classes=args.classes, n_bins=args.bins, norm="l1"
                )
            )

        summary_rows.append(("torchmetrics accuracy, ECE, MCE", torchmetrics_summary))
    if netcal is not None:

        def netcal_summary() -> float:
            netcal.MCE(bins=args.bins).measure(probs_np, labels_np)
            return float(netcal.ECE(bins=args.bins).measure(probs_np, labels_np))

        summary_rows.append(("netcal ECE, MCE", netcal_summary))
    _table("calibration summary (the ECE is compared)", summary_rows, args.repeats)


def _optional(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        print(f"{module.split('.')[0]} not installed: skipping it (make bench installs it)")
        return None


def _table(title: str, rows: list[tuple[str, Callable[[], float]]], repeats: int) -> None:
    timed = [(name, *median_time(work, repeats)) for name, work in rows]
    _, ddcal_time, ddcal_value = timed[0]
    print(f"\n{title}")
    print(f"{'implementation':44s} {'time (ms)':>10s} {'ratio':>8s} {'ECE':>12s}")
    for name, seconds, value in timed:
        print(f"{name:44s} {seconds * 1e3:10.1f} {seconds / ddcal_time:7.2f}x {value:12.8f}")
    for name, _, value in timed[1:]:
        difference = abs(value - ddcal_value)
        verdict = "agree" if difference < 1e-6 else "DISAGREE"
        print(f"  ddcal vs {name}: |difference| = {difference:.2e} ({verdict})")


if __name__ == "__main__":
    main()
