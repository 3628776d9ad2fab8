"""The ``ddcal`` command line.

    ddcal distill --method dm --dataset fashion-mnist --ipc 10 --iterations 1000 \\
        --mdt-ratio 0.5 --out dm_ipc10.pt [--set batch_real=128 ...] [--quiet]

Interrupted with Ctrl-C, ``distill`` saves a checkpoint beside the output
(``<out>.checkpoint/``); running the same command again resumes from it.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ddcal.data import load_dataset
from ddcal.distill import DISTILLERS, get_distiller


def parse_option(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as a Python literal where it is one."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set takes key=value, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddcal", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    distill = commands.add_parser("distill", help="distil a dataset into a DistilledSet file")
    distill.add_argument("--method", choices=sorted(DISTILLERS), required=True)
    distill.add_argument("--dataset", default="fashion-mnist")
    distill.add_argument("--data-root", default=None, help="folder holding the dataset")
    distill.add_argument("--ipc", type=int, required=True, help="synthetic images per class")
    distill.add_argument("--iterations", type=int, default=None, help="default: the method's")
    distill.add_argument("--mdt-ratio", type=float, default=0.0, help="MDT mask ratio (0: off)")
    distill.add_argument("--net", default="ConvNetD3")
    distill.add_argument("--init", default="real", choices=["real", "noise"])
    distill.add_argument("--seed", type=int, default=0)
    distill.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    distill.add_argument("--out", type=Path, default=None, help="output file (.pt)")
    distill.add_argument("--checkpoint-every", type=int, default=100)
    distill.add_argument(
        "--set",
        type=parse_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a method option, e.g. --set batch_real=128 (repeatable)",
    )
    distill.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _distill(args: argparse.Namespace) -> int:
    data = load_dataset(args.dataset, args.data_root, split="train")
    out = args.out or Path(f"{args.method}_{args.dataset}_ipc{args.ipc}_seed{args.seed}.pt")
    distiller = get_distiller(
        args.method,
        ipc=args.ipc,
        iterations=args.iterations,
        net=args.net,
        init=args.init,
        mdt_ratio=args.mdt_ratio,
        seed=args.seed,
        device=args.device,
        progress=not args.quiet and sys.stderr.isatty(),
        **dict(args.set),
    )
    checkpoint_dir = out.with_name(out.name + ".checkpoint")
    result = distiller.distill(
        data.train_images,
        data.train_labels,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=args.checkpoint_every,
    )
    result.meta["dataset"] = data.name
    result.save(out)
    losses = result.meta["loss_history"]
    print(
        f"{args.method} on {data.name}: {result.images.shape[0]} images ({args.ipc} per class), "
        f"{distiller.iterations} iterations, matching loss {float(losses[0]):.4g} -> "
        f"{float(losses[-1]):.4g}; saved {out}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ddcal`` command."""
    args = _parser().parse_args(argv)
    try:
        return _distill(args)
    except KeyboardInterrupt as interrupt:
        print(f"ddcal: {interrupt or 'interrupted'}", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"ddcal: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
