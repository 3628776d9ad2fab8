"""The ``ddcal`` command line.

    ddcal run [--preset demo|smoke|paper] [--config FILE.toml] [--set key=value ...] \\
        [--out DIR] [--quiet]
    ddcal distill --method dm --dataset fashion-mnist --ipc 10 --iterations 1000 \\
        --mdt-ratio 0.5 --out dm_ipc10.pt [--set batch_real=128 ...] [--quiet]
    ddcal calibrate --model net.pt --distilled dm_ipc10.pt [--eval-data fashion-mnist] \\
        [--mask-ratio 0.5] [--out temperature.json]
    ddcal metrics predictions.pt [--n-bins 15] [--json]

Interrupted with Ctrl-C, ``distill`` saves a checkpoint beside the output
(``<out>.checkpoint/``); running the same command again resumes from it.

Each subcommand is one ``_add_<name>`` function that adds its parser and sets
its handler; :func:`main` runs the handler and turns errors into exit code 2.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import torch
from torch import nn

from ddcal._io import atomic_write
from ddcal._validation import check_labels
from ddcal.config import PRESETS, load_config
from ddcal.data import DistilledSet, load_dataset, load_distilled
from ddcal.distill import DISTILLERS, get_distiller
from ddcal.inference import check_images, load_predictions, load_weights_only, predict_logits
from ddcal.metrics import calibration_summary
from ddcal.models import CHECKPOINT_FORMAT, load_checkpoint
from ddcal.pipeline import run_experiment
from ddcal.scaling import DEFAULT_MASK_RATIO, MaskedTemperatureScaler, TemperatureBoundWarning

# What add_subparsers returns (argparse's class is private).
_Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

#: The metrics the ``calibrate`` and ``metrics`` commands report, in order: (key, label).
METRIC_NAMES: tuple[tuple[str, str], ...] = (
    ("accuracy", "accuracy"),
    ("ece", "ECE"),
    ("mce", "MCE"),
    ("classwise_ece", "classwise ECE"),
    ("nll", "NLL"),
    ("brier", "Brier"),
)


def parse_option(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as a Python literal where it is one."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set takes key=value, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddcal", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (_add_run, _add_distill, _add_calibrate, _add_metrics):
        add(commands)
    return parser


def _add_run(commands: _Commands) -> None:
    run = commands.add_parser(
        "run", help="a whole experiment: distil, train, calibrate, print the table, plot"
    )
    run.add_argument(
        "--preset", choices=sorted(PRESETS), default=None, help="default: demo (or the file's)"
    )
    run.add_argument("--config", type=Path, default=None, help="a TOML file of config keys")
    run.add_argument(
        "--set",
        type=parse_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config key, e.g. --set epochs=50 or --set distill_options.batch_real=64",
    )
    run.add_argument(
        "--out", type=Path, default=None, help="output folder (default: results/<preset>)"
    )
    run.add_argument("--quiet", action="store_true", help="no progress bars or stage lines")
    run.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.preset, args.config, args.set)
    out = args.out or Path("results") / config.preset
    result = run_experiment(config, out, progress=not args.quiet)
    print(result.table)
    minutes = result.timings["total"] / 60
    print(f"{len(result.files)} files in {out} ({minutes:.1f} min)")
    return 0


def _add_distill(commands: _Commands) -> None:
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
    distill.add_argument("--device", default=_default_device())
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
    distill.set_defaults(handler=_distill)


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


def _add_calibrate(commands: _Commands) -> None:
    calibrate = commands.add_parser(
        "calibrate", help="fit Masked Temperature Scaling on a distilled set"
    )
    calibrate.add_argument(
        "--model", type=Path, required=True, help="ddcal ConvNet checkpoint or TorchScript file"
    )
    calibrate.add_argument(
        "--distilled", type=Path, required=True, help="the distilled set the model trained on"
    )
    calibrate.add_argument(
        "--eval-data",
        default=None,
        metavar="NAME_OR_PATH",
        help="a dataset name (its test split) or a .pt file {'images', 'labels'}",
    )
    calibrate.add_argument("--data-root", default=None, help="folder holding the dataset")
    calibrate.add_argument(
        "--mask-ratio", type=float, default=DEFAULT_MASK_RATIO, help="in [0, 1); 0: plain TS"
    )
    calibrate.add_argument("--num-masks", type=int, default=10, help="masked copies per image")
    calibrate.add_argument("--seed", type=int, default=0, help="seed of the masks")
    calibrate.add_argument("--batch-size", type=int, default=256)
    calibrate.add_argument("--n-bins", type=int, default=15, help="bins of the ECE metrics")
    calibrate.add_argument("--device", default=_default_device())
    calibrate.add_argument("--out", type=Path, default=None, help="write the result as JSON")
    calibrate.set_defaults(handler=_calibrate)


def _add_metrics(commands: _Commands) -> None:
    metrics = commands.add_parser("metrics", help="calibration metrics of saved predictions")
    metrics.add_argument("path", type=Path, help="predictions: .pt (save_predictions) or .npz")
    metrics.add_argument("--n-bins", type=int, default=15, help="bins of the ECE metrics")
    metrics.add_argument("--json", action="store_true", help="print one JSON object")
    metrics.set_defaults(handler=_metrics)


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip holding ``<name>/constants.pkl`` (torch.save's has none)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _load_model(path: Path, device: str) -> tuple[nn.Module, str]:
    """The network in ``path`` on ``device`` and its kind: a ddcal checkpoint or TorchScript."""
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist or is not a file")
    if not _is_torchscript(path):
        return load_checkpoint(path, map_location=device), CHECKPOINT_FORMAT
    try:
        module: nn.Module = torch.jit.load(  # type: ignore[no-untyped-call]  # untyped in torch
            str(path), map_location=device
        )
    except RuntimeError as exc:
        first_line = str(exc).strip().split("\n", 1)[0]
        raise ValueError(f"{path} is not a loadable TorchScript file: {first_line}") from exc
    return module, "torchscript"


def _eval_data(
    spec: str, root: str | None, distilled: DistilledSet
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Images, labels and a description of ``--eval-data`` (ZCA'd like the distilled set)."""
    path = Path(spec).expanduser()
    if path.is_file():
        content = load_weights_only(path)
        if not isinstance(content, dict) or not {"images", "labels"} <= set(content):
            raise ValueError(
                f"{path} must hold a dict with tensors 'images' (N, C, H, W) and 'labels' (N,)"
            )
        images, labels, description = content["images"], content["labels"], str(path)
    elif path.suffix in (".pt", ".pth", ".npz") or len(path.parts) > 1:
        raise FileNotFoundError(f"eval data file {path} does not exist")
    else:
        data = load_dataset(spec, root, split="test")
        images, labels = data.test_images, data.test_labels
        description = f"{data.name} test split"
    images = check_images(images, "eval images")
    labels = check_labels(labels, "eval labels", num_samples=images.shape[0])
    zca = distilled.zca
    if zca is not None:
        images = zca.transform(images)
    return images, labels, description


def _check_out_folder(out: Path | None) -> None:
    if out is not None and not out.expanduser().parent.is_dir():
        raise FileNotFoundError(f"cannot write {out}: folder {out.parent} does not exist")


def _write_json(out: Path, content: dict[str, Any]) -> None:
    with atomic_write(out.expanduser()) as handle:
        handle.write((json.dumps(content, indent=2) + "\n").encode())


def _check_device(name: str) -> str:
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"--device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available here; use --device cpu")
    return name


def _calibrate(args: argparse.Namespace) -> int:
    _check_out_folder(args.out)
    device = _check_device(args.device)
    scaler = MaskedTemperatureScaler(
        args.mask_ratio, num_masks=args.num_masks, batch_size=args.batch_size, seed=args.seed
    )
    model, model_format = _load_model(args.model, device)
    distilled = load_distilled(args.distilled)
    evaluation = None
    if args.eval_data is not None:
        evaluation = _eval_data(args.eval_data, args.data_root, distilled)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TemperatureBoundWarning)
        scaler.fit(model, distilled.images, distilled.class_labels)
    for warning in caught:
        print(f"ddcal: warning: {warning.message}", file=sys.stderr)
    temperature = scaler.temperature_
    masks = f"{scaler.num_masks} masks" if scaler.mask_ratio > 0 else "no masks: plain TS"
    print(
        f"MTS on {len(distilled)} distilled images (mask ratio {scaler.mask_ratio}, {masks}, "
        f"seed {scaler.seed}): temperature {temperature:.4f}"
    )
    metrics: dict[str, dict[str, float]] | None = None
    if evaluation is not None:
        images, labels, description = evaluation
        logits = predict_logits(model, images, batch_size=args.batch_size)
        metrics = {
            "raw": _summary(logits, labels, args.n_bins),
            "calibrated": _summary(scaler.transform(logits), labels, args.n_bins),
        }
        print(f"{description}: {logits.shape[0]} images, {args.n_bins} bins")
        print(f"{'':<12}" + "".join(f"{label:>14}" for _, label in METRIC_NAMES))
        for row, values in metrics.items():
            print(f"{row:<12}" + "".join(f"{values[key]:>14.4f}" for key, _ in METRIC_NAMES))
    if args.out is not None:
        _write_json(
            args.out,
            {
                "temperature": temperature,
                "bound_hit": scaler.bound_hit_,
                "scaler": scaler.state_dict(),
                "model": str(args.model),
                "model_format": model_format,
                "distilled": str(args.distilled),
                "num_distilled_images": len(distilled),
                "eval_data": args.eval_data,
                "n_bins": args.n_bins,
                "metrics": metrics,
            },
        )
        print(f"saved {args.out}")
    return 0


def _summary(logits: torch.Tensor, labels: Any, n_bins: int) -> dict[str, float]:
    """The :data:`METRIC_NAMES` values of ``logits`` against ``labels``."""
    return calibration_summary(logits, labels, n_bins=n_bins, from_logits=True, classwise=True)


def _metrics(args: argparse.Namespace) -> int:
    logits, labels = load_predictions(args.path)
    values = _summary(logits, labels, args.n_bins)
    if args.json:
        header = {
            "path": str(args.path),
            "num_samples": int(logits.shape[0]),
            "num_classes": int(logits.shape[1]),
            "n_bins": args.n_bins,
        }
        print(json.dumps({**header, **values}))
        return 0
    print(f"{args.path}: {logits.shape[0]} samples, {logits.shape[1]} classes, {args.n_bins} bins")
    for key, label in METRIC_NAMES:
        print(f"{label:<15}{values[key]:.4f}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ddcal`` command."""
    args = _parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt as interrupt:
        print(f"ddcal: {interrupt or 'interrupted'}", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError) as error:
        print(f"ddcal: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
