"""The ``ddcal`` command line.

    ddcal run [--preset demo|smoke|paper] [--config FILE.toml] [--set key=value ...] \\
        [--out DIR] [--quiet]
    ddcal study [--preset smoke|dev|cpu|gpu|mdt-dev|mdt] [--set key=value ...] \\
        [--cells GLOB] [--out DIR] [--cache DIR] [--quiet]
    ddcal distill --method dm --dataset fashion-mnist --ipc 10 --iterations 1000 \\
        --mdt-ratio 0.1 [--mdt-synthetic-only] --out dm_ipc10.pt [--set batch_real=128 ...] \\
        [--quiet]
    ddcal calibrate --model net.pt --distilled dm_ipc10.pt [--eval-data fashion-mnist] \\
        [--mask-ratio auto|0.7] [--out temperature.json] [--plot reliability.png]
    ddcal metrics predictions.pt [--inputs logits|probs] [--n-bins 15] [--json]

Interrupted with Ctrl-C, ``distill`` saves a checkpoint beside the output
(``<out>.checkpoint/``); running the same command again resumes from it. Every
command checks its arguments, its device and that its output can be written
before it starts any work.

``--set key=value`` reads the value as ``config.toml`` writes it (``true``,
``"text"``, ``[0, 1]``, ``{a = 1}``), else as a Python literal, else as the text.

Each subcommand is one ``_add_<name>`` function that adds its parser and sets
its handler. :func:`main` runs the handler and tells the user's mistakes (a
:class:`ddcal.errors.InvalidInputError`, or an ``OSError`` on a named file:
one line, exit code 2) from bugs in ddcal (any other exception: the traceback
and a request to report it, exit code 1). ``--debug`` shows the traceback of
user errors too; Ctrl-C exits with code 130.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import platform
import sys
import tempfile
import traceback
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any, TypeAlias

import torch
from torch import nn

from ddcal import __version__, distributed, plot
from ddcal._io import atomic_write, load_weights_only
from ddcal._validation import check_labels, check_positive_int
from ddcal.config import (
    PRESETS,
    command_line_value,
    device_unavailable,
    load_config,
    parse_device,
)
from ddcal.data import DistilledSet, load_dataset, load_distilled
from ddcal.distill import DISTILLERS, get_distiller
from ddcal.errors import InputFileNotFoundError, InvalidInputError, InvalidValueError
from ddcal.inference import check_images, load_predictions, predict_logits
from ddcal.label_free import UninformativeMaskingWarning
from ddcal.metrics import calibration_summary
from ddcal.models import CHECKPOINT_FORMAT, load_checkpoint
from ddcal.pipeline import run_experiment
from ddcal.pipeline.figures import matplotlib_missing
from ddcal.scaling import (
    AUTO,
    MaskedTemperatureScaler,
    TemperatureBoundWarning,
    TemperatureScaler,
    calibrate,
)
from ddcal.study import STUDY_PRESETS, load_study_config, run_study

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# What add_subparsers returns (argparse's class is private).
_Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

_DEBUG_HELP = "show the traceback of every error, also of a bad argument or file"

#: Exit codes of :func:`main`.
EXIT_OK, EXIT_BUG, EXIT_USER_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130

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
    """``key=value``, the value read as a TOML value, else a Python literal, else the text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set takes key=value, got {text!r}")
    return key, _option_value(value)


def _option_value(text: str) -> Any:
    try:
        document = tomllib.loads(f"value = {text}")
    except tomllib.TOMLDecodeError:
        pass
    else:
        value = document["value"]
        # A second key means the text held a newline; a date ("2024-01-01") is a name here.
        if len(document) == 1 and not isinstance(value, (datetime.date, datetime.time)):
            return value
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError):  # TypeError: e.g. "{[]: 1}", unhashable
        return text


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _mask_ratio(text: str) -> float | str:
    """``--mask-ratio``: ``auto`` or a number (checked by the scaler)."""
    if text == AUTO:
        return AUTO
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected "auto" or a number, got {text!r}') from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddcal", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (_add_run, _add_study, _add_distill, _add_calibrate, _add_metrics):
        add(commands)
    for command in commands.choices.values():
        # SUPPRESS: without --debug after it, a subcommand leaves the top-level value alone.
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP
        )
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
        help="a config key, e.g. --set epochs=50, --set plots=false or "
        "--set distill_options.batch_real=64 (values as config.toml writes them)",
    )
    run.add_argument(
        "--out", type=Path, default=None, help="output folder (default: results/<preset>)"
    )
    run.add_argument("--quiet", action="store_true", help="no progress bars or stage lines")
    run.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    overrides = [(key, command_line_value(key, value)) for key, value in args.set]
    config = load_config(args.preset, args.config, overrides)
    out = args.out or Path("results") / config.preset
    _check_writable_folder(out)
    result = run_experiment(config, out, progress=_shows_progress(args))
    print(f"Regime: {result.regime}.\n")
    print(result.table)
    minutes = result.timings["total"] / 60
    print(f"{len(result.files)} files in {out} ({minutes:.1f} min)")
    return EXIT_OK


def _add_study(commands: _Commands) -> None:
    study = commands.add_parser(
        "study", help="a grid of experiments (backbone x IPC x regime x seed) and its summary"
    )
    study.add_argument("--preset", choices=sorted(STUDY_PRESETS), default="smoke")
    study.add_argument(
        "--set",
        type=parse_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a study key, e.g. --set seeds=[0,1] or --set ipcs=[10]",
    )
    study.add_argument(
        "--cells",
        default="*",
        metavar="GLOB",
        help="run only the cells matching, e.g. 'dm-ipc10-*'",
    )
    study.add_argument("--out", type=Path, default=None, help="default: results/study-<preset>")
    study.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="the artifact cache (default <out>/cache); studies sharing one compute "
        "what they have in common once (e.g. --preset mdt --cache <the cpu study>/cache)",
    )
    study.add_argument("--quiet", action="store_true", help="no progress bars or cell lines")
    study.set_defaults(handler=_study)


def _study(args: argparse.Namespace) -> int:
    config = load_study_config(args.preset, args.set)
    out = args.out or Path("results") / f"study-{config.preset}"
    _check_writable_folder(out)
    if args.cache is not None:
        _check_writable_folder(args.cache)
    result = run_study(
        config,
        out,
        cells=args.cells,
        progress=_shows_progress(args),
        cache_dir=args.cache,
    )
    print((out / "study.md").read_text())
    print(f"{len(result.cells)} finished cells ({len(result.computed)} computed now) in {out}")
    return 0


def _add_distill(commands: _Commands) -> None:
    distill = commands.add_parser("distill", help="distil a dataset into a DistilledSet file")
    distill.add_argument("--method", choices=sorted(DISTILLERS), required=True)
    distill.add_argument("--dataset", default="fashion-mnist")
    distill.add_argument("--data-root", default=None, help="folder holding the dataset")
    distill.add_argument("--ipc", type=int, required=True, help="synthetic images per class")
    distill.add_argument("--iterations", type=int, default=None, help="default: the method's")
    distill.add_argument("--mdt-ratio", type=float, default=0.0, help="MDT mask ratio (0: off)")
    distill.add_argument(
        "--mdt-synthetic-only",
        action="store_true",
        help="MDT masks the synthetic batch alone (by default DC, DSA and DM mask the real "
        "batch of the objective too; MTT has none)",
    )
    distill.add_argument("--net", default="ConvNetD3")
    distill.add_argument("--init", default="real", choices=["real", "noise"])
    distill.add_argument("--seed", type=int, default=0, help="in [0, 2**32)")
    distill.add_argument("--device", default=_default_device())
    distill.add_argument(
        "--compile",
        action="store_true",
        help="run the networks through torch.compile (DM only: faster after a one-off "
        "compilation, the same math)",
    )
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
    device = _check_device(args.device)
    distiller = get_distiller(
        args.method,
        ipc=args.ipc,
        iterations=args.iterations,
        net=args.net,
        init=args.init,
        mdt_ratio=args.mdt_ratio,
        mdt_mask_real=False if args.mdt_synthetic_only else None,
        seed=args.seed,
        device=device,
        compile=args.compile,
        progress=_shows_progress(args),
        **dict(args.set),
    )
    checkpoint_every = check_positive_int(args.checkpoint_every, "--checkpoint-every")
    out = args.out or Path(f"{args.method}_{args.dataset}_ipc{args.ipc}_seed{args.seed}.pt")
    _check_writable_file(out)
    data = load_dataset(args.dataset, args.data_root, split="train")
    checkpoint_dir = out.with_name(out.name + ".checkpoint")
    try:
        result = distiller.distill(
            data.train_images,
            data.train_labels,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
        )
    except KeyboardInterrupt as interrupt:
        if not str(interrupt):  # before the first iteration: nothing saved to resume from
            raise
        raise KeyboardInterrupt(f"{interrupt}; run the same command again to resume") from None
    result.meta["dataset"] = data.name
    if distributed.is_main():
        with _naming_in_os_errors(out):
            result.save(out)
    losses = result.meta["loss_history"]
    print(
        f"{args.method} on {data.name}: {result.images.shape[0]} images ({args.ipc} per class), "
        f"{distiller.iterations} iterations, matching loss {float(losses[0]):.4g} -> "
        f"{float(losses[-1]):.4g}; saved {out}"
    )
    return EXIT_OK


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
    calibrate.add_argument(
        "--labelled",
        type=Path,
        default=None,
        metavar="FILE",
        help="a .pt file {'images', 'labels'} of real held-out images (never the test split): "
        "plain TS on them instead of the label-free rule",
    )
    calibrate.add_argument(
        "--unlabelled",
        type=Path,
        default=None,
        metavar="FILE",
        help="a .pt file {'images'} of unlabelled real images (recorded; see docs/label-free.md)",
    )
    calibrate.add_argument("--data-root", default=None, help="folder holding the dataset")
    calibrate.add_argument(
        "--mask-ratio",
        type=_mask_ratio,
        default=AUTO,
        help='"auto" (the label-free default) or a ratio in [0, 1); 0: plain TS',
    )
    calibrate.add_argument("--num-masks", type=int, default=10, help="masked copies per image")
    calibrate.add_argument("--seed", type=int, default=0, help="seed of the masks, in [0, 2**32)")
    calibrate.add_argument("--batch-size", type=int, default=256)
    calibrate.add_argument("--n-bins", type=int, default=15, help="bins of the ECE metrics")
    calibrate.add_argument("--device", default=_default_device())
    calibrate.add_argument("--out", type=Path, default=None, help="write the result as JSON")
    calibrate.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="PATH.png",
        help="write reliability diagrams of the eval data before and after calibration "
        "(needs --eval-data and matplotlib)",
    )
    calibrate.set_defaults(handler=_calibrate)


def _add_metrics(commands: _Commands) -> None:
    metrics = commands.add_parser("metrics", help="calibration metrics of saved predictions")
    metrics.add_argument("path", type=Path, help="predictions: .pt (save_predictions) or .npz")
    metrics.add_argument(
        "--inputs",
        choices=("logits", "probs"),
        default=None,
        help="what the file's 'logits' hold: logits (softmaxed here) or probabilities (used "
        "as they are). Default: logits; a file whose rows are all non-negative and sum to 1 "
        "is refused until you choose, since softmaxing probabilities again is wrong",
    )
    metrics.add_argument("--n-bins", type=int, default=15, help="bins of the ECE metrics")
    metrics.add_argument("--json", action="store_true", help="print one JSON object")
    metrics.set_defaults(handler=_metrics)


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip holding ``<name>/constants.pkl`` (torch.save's has none)."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/constants.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, NotImplementedError, ValueError, EOFError) as exc:
        raise InvalidValueError(f"model file {path} is a damaged zip archive: {exc}") from exc


def _load_model(path: Path, device: str) -> tuple[nn.Module, str]:
    """The network in ``path`` on ``device`` and its kind: a ddcal checkpoint or TorchScript."""
    if not path.is_file():
        raise InputFileNotFoundError(f"model file {path} does not exist or is not a file")
    if not _is_torchscript(path):
        return load_checkpoint(path, map_location=device), CHECKPOINT_FORMAT
    try:
        module: nn.Module = torch.jit.load(  # type: ignore[no-untyped-call]  # untyped in torch
            str(path), map_location=device
        )
    except RuntimeError as exc:
        first_line = str(exc).strip().split("\n", 1)[0]
        raise InvalidValueError(f"{path} is not a loadable TorchScript file: {first_line}") from exc
    return module, "torchscript"


def _check_model_takes(model: nn.Module, path: Path, images: torch.Tensor) -> None:
    """An error naming ``path`` if ``model`` cannot run on one of ``images (N, ...)``."""
    # On input of the wrong shape a TorchScript model fails deep inside torch, with a
    # RuntimeError that would read as a bug in ddcal, and a ConvNet names only its argument
    # "x": the mistake is the pairing of files, so name the model's.
    try:
        predict_logits(model, images[:1])
    except (RuntimeError, InvalidInputError) as exc:
        first_line = str(exc).strip().split("\n", 1)[0]
        raise InvalidValueError(
            f"model {path} cannot take the distilled images of shape "
            f"(N, {', '.join(map(str, images.shape[1:]))}): {first_line}"
        ) from exc


def _eval_data(
    spec: str, root: str | None, distilled: DistilledSet
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Images, labels and a description of ``--eval-data`` (ZCA'd like the distilled set)."""
    path = Path(spec).expanduser()
    if path.is_file():
        content = load_weights_only(path)
        if not isinstance(content, dict) or not {"images", "labels"} <= set(content):
            raise InvalidValueError(
                f"{path} must hold a dict with tensors 'images' (N, C, H, W) and 'labels' (N,)"
            )
        images, labels, description = content["images"], content["labels"], str(path)
    elif path.suffix in (".pt", ".pth", ".npz") or len(path.parts) > 1:
        raise InputFileNotFoundError(f"eval data file {path} does not exist")
    else:
        data = load_dataset(spec, root, split="test")
        images, labels = data.test_images, data.test_labels
        description = f"{data.name} test split"
    images = check_images(images, "eval images")
    labels = check_labels(labels, "eval labels", num_samples=images.shape[0])
    if images.shape[1:] != distilled.images.shape[1:]:
        raise InvalidValueError(
            f"eval images must have the shape of the distilled images "
            f"(N, {', '.join(map(str, distilled.images.shape[1:]))}), got {tuple(images.shape)}"
        )
    zca = distilled.zca
    if zca is not None:
        images = zca.transform(images)
    return images, labels, description


def _real_images(path: Path, labelled: bool = False) -> Any:
    """``images`` (or ``(images, labels)``) from a ``.pt`` file of real images."""
    content = load_weights_only(path)
    keys = {"images", "labels"} if labelled else {"images"}
    if not isinstance(content, dict) or not keys <= set(content):
        raise InvalidValueError(f"{path} must hold a dict with tensors {sorted(keys)}")
    images = check_images(content["images"], f"{path} images")
    return (images, content["labels"]) if labelled else images


def _check_writable_file(out: Path) -> None:
    """Refuse the output file ``out`` before any work if it could not be written at the end."""
    target = out.expanduser()
    if not target.parent.is_dir():
        raise InputFileNotFoundError(f"cannot write {out}: folder {out.parent} does not exist")
    if target.is_dir():
        raise InvalidValueError(f"cannot write {out}: it is a folder; give a file name")
    _probe_write(target.parent, out)


def _check_writable_folder(out: Path) -> None:
    """Refuse the output folder ``out`` before any work if it could not be made and written.

    Nothing is made here: a refused or failed run leaves no empty folder behind.
    """
    target = out.expanduser()
    nearest = next(folder for folder in (target, *target.parents) if folder.exists())
    if not nearest.is_dir():
        raise InvalidValueError(f"cannot write to {out}: {nearest} is a file, not a folder")
    _probe_write(nearest, out)


def _probe_write(folder: Path, out: Path) -> None:
    # os.access misses read-only mounts, quotas and ACLs: only making a file tells.
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        raise InvalidValueError(
            f"cannot write {out}: folder {folder} takes no new file ({exc.strerror}); "
            "choose another --out"
        ) from exc


@contextmanager
def _naming_in_os_errors(path: Path) -> Iterator[None]:
    """Give ``path`` to an ``OSError`` raised without a file name (a write to a full disk)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc


def _write_json(out: Path, content: dict[str, Any]) -> None:
    with _naming_in_os_errors(out), atomic_write(out.expanduser()) as handle:
        handle.write((json.dumps(content, indent=2) + "\n").encode())


def _check_device(name: str) -> str:
    """``--device``: a device type ddcal runs on, present on this machine."""
    missing = device_unavailable(parse_device(name, "--device"))
    if missing is not None:
        raise InvalidValueError(f"--device {name}: {missing}; use --device cpu")
    return name


def _check_plot(args: argparse.Namespace) -> None:
    """``--plot``: refused before any work unless it can be drawn and written."""
    if args.eval_data is None:
        raise InvalidValueError(
            f"--plot {args.plot} needs --eval-data: the diagrams show the eval images"
        )
    if args.plot.suffix.lower() != ".png":
        raise InvalidValueError(f"--plot must end in .png, got {str(args.plot)!r}")
    if matplotlib_missing():
        raise InvalidValueError("--plot needs matplotlib: pip install 'ddcal[plot]'")
    _check_writable_file(args.plot)


def _calibrate(args: argparse.Namespace) -> int:
    if args.out is not None:
        _check_writable_file(args.out)
    if args.plot is not None:
        _check_plot(args)
    device = _check_device(args.device)
    check_positive_int(args.n_bins, "n_bins")
    scaler = MaskedTemperatureScaler(
        args.mask_ratio, num_masks=args.num_masks, batch_size=args.batch_size, seed=args.seed
    )
    model, model_format = _load_model(args.model, device)
    distilled = load_distilled(args.distilled)
    _check_model_takes(model, args.model, distilled.images)
    evaluation = None
    if args.eval_data is not None:
        evaluation = _eval_data(args.eval_data, args.data_root, distilled)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TemperatureBoundWarning)
        warnings.simplefilter("always", UninformativeMaskingWarning)
        if args.labelled is not None or args.unlabelled is not None:
            result = calibrate(
                model,
                distilled.images,
                distilled.class_labels,
                labelled=None if args.labelled is None else _real_images(args.labelled, True),
                unlabelled=None if args.unlabelled is None else _real_images(args.unlabelled),
                num_masks=args.num_masks,
                seed=args.seed,
                batch_size=args.batch_size,
            )
            print(f"method: {result.method}: {result.reason}")
            scaler = TemperatureScaler(seed=args.seed).load_state_dict(
                {**TemperatureScaler().state_dict(), "temperature": result.temperature}
            )
            scaler.fitted_mask_ratio_ = result.mask_ratio
        else:
            scaler.fit(model, distilled.images, distilled.class_labels)
    for warning in caught:
        print(f"ddcal: warning: {warning.message}", file=sys.stderr)
    temperature = scaler.temperature_
    ratio = scaler.fitted_mask_ratio_
    masks = f"{scaler.num_masks} masks" if ratio else "no masks: plain TS"
    how = f"auto: {ratio:.3g}" if scaler.mask_ratio == AUTO else f"{ratio}"
    print(
        f"MTS on {len(distilled)} distilled images (mask ratio {how}, {masks}, "
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
        if args.plot is not None:
            figure = plot.reliability_panel(
                {
                    "raw": (logits, labels),
                    f"calibrated (T = {temperature:.3f})": (scaler.transform(logits), labels),
                },
                n_bins=args.n_bins,
            )
            with _naming_in_os_errors(args.plot):
                plot.save_figure(figure, args.plot.expanduser())
            print(f"saved {args.plot}")
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
    return EXIT_OK


def _summary(
    scores: torch.Tensor, labels: Any, n_bins: int, *, from_logits: bool = True
) -> dict[str, float]:
    """The :data:`METRIC_NAMES` values of ``scores`` (logits, or probabilities) and ``labels``."""
    return calibration_summary(
        scores, labels, n_bins=n_bins, from_logits=from_logits, classwise=True
    )


def _looks_like_probabilities(scores: torch.Tensor) -> bool:
    """Every row non-negative and summing to 1: what a softmax gives, and logits hardly ever."""
    sums = scores.double().sum(dim=1)
    return bool((scores >= 0).all()) and torch.allclose(sums, torch.ones_like(sums), atol=1e-3)


def _metrics(args: argparse.Namespace) -> int:
    scores, labels = load_predictions(args.path)
    if args.inputs is None and _looks_like_probabilities(scores):
        raise InvalidValueError(
            f"{args.path}: every row is non-negative and sums to 1, like probabilities, but "
            "would be read as logits: pass --inputs probs if they are probabilities (or "
            "--inputs logits if they really are logits)"
        )
    from_logits = args.inputs != "probs"
    values = _summary(scores, labels, args.n_bins, from_logits=from_logits)
    if args.json:
        header = {
            "path": str(args.path),
            "num_samples": int(scores.shape[0]),
            "num_classes": int(scores.shape[1]),
            "n_bins": args.n_bins,
        }
        print(json.dumps({**header, **values}))
        return EXIT_OK
    print(
        f"{args.path}: {scores.shape[0]} samples, {scores.shape[1]} classes, {args.n_bins} bins, "
        f"from {'logits' if from_logits else 'probabilities'}"
    )
    for key, label in METRIC_NAMES:
        print(f"{label:<15}{values[key]:.4f}")
    return EXIT_OK


def _shows_progress(args: argparse.Namespace) -> bool:
    """Progress bars on a terminal, unless ``--quiet``; under ``torchrun`` process 0's alone."""
    return not args.quiet and sys.stderr.isatty() and distributed.is_main()


def _is_user_error(error: Exception) -> bool:
    """A ddcal input error, or an OS error on a named file (permission denied, a folder...)."""
    return isinstance(error, InvalidInputError) or (
        isinstance(error, OSError) and error.filename is not None
    )


def _one_line(error: Exception) -> str:
    return " ".join(line.strip() for line in str(error).strip().splitlines())


def _report_bug() -> None:
    traceback.print_exc()
    print(
        f"ddcal: this is a bug in ddcal, not in your input: please report it with the traceback "
        f"above (ddcal {__version__}, torch {torch.__version__}, Python "
        f"{platform.python_version()})",
        file=sys.stderr,
    )


@contextmanager
def _one_process_reports() -> Iterator[None]:
    """Under ``torchrun``: join the group; only process 0 prints results (errors go to
    stderr on every process); leave the group at the end."""
    if not distributed.init_from_environment():
        yield
        return
    try:
        if distributed.is_main():
            yield
        else:
            with open(os.devnull, "w") as quiet, redirect_stdout(quiet):
                yield
    finally:
        distributed.leave()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ddcal`` command; returns the exit code (``EXIT_*``)."""
    args = _parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        with _one_process_reports():
            return handler(args)
    except KeyboardInterrupt as interrupt:
        print(f"ddcal: {str(interrupt) or 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except distributed.RankFailedError as error:
        print(f"ddcal: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_BUG
    except Exception as error:
        if not _is_user_error(error):
            _report_bug()
            return EXIT_BUG
        if args.debug:
            traceback.print_exc()
        print(f"ddcal: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
