"""Benchmark: fitting one temperature to 100,000 x 100 logits with a planted T = 2.5, CPU.

Compares ddcal.fit_temperature (safeguarded Newton on log(1/T), float32 passes)
with the fit of the temperature-scaling paper's code (Guo et al. 2017,
gpleiss/temperature_scaling): ``torch.optim.LBFGS`` on T with lr 0.01, 50
iterations, starting at 1.5, written out here from its description. Both get
the same float32 logits; the NLL of each fitted T is computed in float64 on the
same logits. Prints the median time of a few runs and the ratio (reference /
ddcal).

    .venv/bin/python benchmarks/bench_temperature.py [--n 100000] [--classes 100]
"""

from __future__ import annotations

import argparse

import torch
from _timing import median_time
from torch import nn

from ddcal import fit_temperature


def lbfgs_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The paper code's fit: LBFGS on T (not log T), lr 0.01, max_iter 50, T0 = 1.5."""
    temperature = nn.Parameter(torch.full((1,), 1.5))
    optimizer = torch.optim.LBFGS([temperature], lr=0.01, max_iter=50)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(logits / temperature, labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(temperature.detach())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=2.5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    logits = 4.0 * torch.randn(args.n, args.classes, generator=generator)
    probs = torch.softmax(logits / args.temperature, dim=1)
    labels = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    del probs
    exact = logits.double()

    def nll(temperature: float) -> float:
        return float(nn.functional.cross_entropy(exact / temperature, labels))

    print(
        f"temperature fit, {args.n:,} x {args.classes} float32 logits, planted "
        f"T = {args.temperature}, CPU, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats} runs"
    )
    ddcal_time, ddcal_t = median_time(lambda: fit_temperature(logits, labels)[0], args.repeats)
    lbfgs_time, lbfgs_t = median_time(lambda: lbfgs_temperature(logits, labels), args.repeats)
    print(f"{'implementation':40s} {'time (ms)':>10s} {'ratio':>8s} {'T':>10s} {'NLL':>12s}")
    for name, seconds, temperature in (
        ("ddcal.fit_temperature", ddcal_time, ddcal_t),
        ("LBFGS as in the paper's code", lbfgs_time, lbfgs_t),
    ):
        print(
            f"{name:40s} {seconds * 1e3:10.1f} {seconds / ddcal_time:7.2f}x "
            f"{temperature:10.5f} {nll(temperature):12.8f}"
        )
    verdict = "at least as low as" if nll(ddcal_t) <= nll(lbfgs_t) else "HIGHER than"
    print(f"ddcal's NLL is {verdict} the reference's")


if __name__ == "__main__":
    main()
