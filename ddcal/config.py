"""Experiment configuration: one flat record, presets, TOML files and ``key=value`` overrides.

``load_config("demo", file="my.toml", overrides=["epochs=50"])`` starts from the
preset, applies the file's keys, then the overrides; every key is checked by
name and type, and an error names the key. :func:`config_to_toml` writes the
configuration actually used, which :func:`load_config` reads back unchanged.

Every field has a plain value (no ``None``), so a written configuration is
complete: ``""`` and ``0`` mean "the default" where the docs say so.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ddcal._validation import SEED_LIMIT
from ddcal.distill.options import MAX_STEP_SIZE
from ddcal.errors import InvalidTypeError, InvalidValueError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "DEVICE_TYPES",
    "PRESETS",
    "ConfigError",
    "ExperimentConfig",
    "command_line_value",
    "config_to_toml",
    "device_unavailable",
    "load_config",
    "parse_device",
]

BASELINES = ("mixup", "label_smoothing", "focal")
#: Calibrators beyond the fixed-ratio MTS rows (see docs/label-free.md).
CALIBRATORS = ("multi-ratio", "unlabelled", "agreement", "distiller-real")


class ConfigError(InvalidValueError):
    """A configuration key is unknown or its value is invalid; the message names the key."""


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one ``ddcal run`` does.

    preset: the preset the run started from (what :func:`load_config` applied).

    Data and distillation:
        dataset: a name for :func:`ddcal.data.load_dataset` (``"fashion-mnist"``, ...).
        data_root: the folder holding it (``""``: the usual search path).
        distilled: a distilled-set file or MTT folder to evaluate instead of
            distilling (``""``: distil with ``method``); then no MDT rows.
        method: the distiller, ``"dc"``, ``"dsa"``, ``"dm"`` or ``"mtt"``.
        ipc: images per class.
        iterations: distillation iterations (0: the method's default).
        distill_options: the method's options (learning rates, batch sizes, ...).
        distill_seed: seeds the distillation, in ``[0, 2**32)``.
        mdt_ratio: the MDT arm's mask ratio during distillation (0: no MDT rows).
        mdt_mask_real: MDT masks the real batch of the matching objective too,
            where the method's objective has one (DC, DSA, DM; MTT's has none, so
            it masks the student's synthetic batch alone either way); see
            :class:`~ddcal.losses.MaskedDistillationTraining`.

    Evaluation networks (the reference protocol, :func:`ddcal.train_network`):
        net, width: the ConvNet and its width.
        epochs: training epochs; lr: learning rate, at most 10 (0: 0.01, or the set's
            learned lr).
        dsa: DSA augmentation during training (``dsa_strategy``).
        compile: run the evaluation networks' training and DM's networks through
            ``torch.compile``: faster after a one-off compilation, the same math.
            Like ``device`` it changes float rounding only, so it is not part of
            any cache key.
        seeds: one network per seed and arm, each in ``[0, 2**32)`` and none twice;
            the table gives mean ± std over them.
        baselines: training-time calibration baselines among
            ``"mixup"``, ``"label_smoothing"``, ``"focal"``.

    Calibration:
        mask_ratios: the MTS ratios in the table.
        calibrators: further rows among ``"multi-ratio"`` (one temperature over
            masked copies at ratios 0.1-0.9), ``"unlabelled"`` (MTS at the ratio
            where masked copies are as confident as the oracle slice's images,
            their labels never read), ``"agreement"`` (the same images and a
            second network of another seed: their agreement) and
            ``"distiller-real"`` (TS on labelled real images the distiller saw);
            all but the first need ``oracle_per_class > 0``.
        num_masks: masked copies per MTS fit.
        holdout_fraction: the per-class hold-out of the "TS on a hold-out" row.
        oracle_per_class: real training images per class held out for the oracle
            rows (TS on real data, and MTS with the ratio chosen on them); 0: none.
        full_data_epochs: epochs of a network on the full training set (minus the
            oracle slice); 0: no full-data row. full_data_limit: use at most this
            many training images for it (0: all).

    Run:
        analysis_images: test images used for the max-logit and feature plots.
        plots: write the figures (needs matplotlib).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` (checked when the run
            starts, where it must be present); batch_size: for inference.
    """

    preset: str = "demo"
    dataset: str = "fashion-mnist"
    data_root: str = ""
    distilled: str = ""
    method: str = "dm"
    ipc: int = 10
    iterations: int = 0
    distill_options: dict[str, Any] = field(default_factory=dict)
    distill_seed: int = 0
    mdt_ratio: float = 0.1
    mdt_mask_real: bool = True
    net: str = "ConvNetD3"
    width: int = 128
    epochs: int = 300
    lr: float = 0.0
    dsa: bool = True
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    compile: bool = False
    seeds: list[int] = field(default_factory=lambda: [0])
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    mask_ratios: list[float] = field(default_factory=lambda: [0.5])
    calibrators: list[str] = field(default_factory=list)
    num_masks: int = 10
    holdout_fraction: float = 0.1
    oracle_per_class: int = 100
    full_data_epochs: int = 0
    full_data_limit: int = 0
    analysis_images: int = 1000
    plots: bool = True
    device: str = "cpu"
    batch_size: int = 256

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), _FIELD_TYPES[f.name])
        _check(self.ipc >= 1, "ipc", self.ipc, "an int >= 1")
        for name in ("iterations", "full_data_epochs", "full_data_limit"):
            _check(getattr(self, name) >= 0, name, getattr(self, name), "an int >= 0")
        _check(0 <= self.distill_seed < SEED_LIMIT, "distill_seed", self.distill_seed, _SEED_RANGE)
        for name in ("width", "epochs", "num_masks", "batch_size"):
            _check(getattr(self, name) >= 1, name, getattr(self, name), "an int >= 1")
        _check(self.oracle_per_class >= 0, "oracle_per_class", self.oracle_per_class, ">= 0")
        _check(self.analysis_images >= 0, "analysis_images", self.analysis_images, ">= 0")
        _check(0.0 <= self.mdt_ratio < 1.0, "mdt_ratio", self.mdt_ratio, "in [0, 1)")
        _check(
            0.0 <= self.lr <= MAX_STEP_SIZE, "lr", self.lr, f"a number in [0, {MAX_STEP_SIZE:g}]"
        )
        _check(
            0.0 < self.holdout_fraction < 1.0,
            "holdout_fraction",
            self.holdout_fraction,
            "in (0, 1)",
        )
        _check(len(self.seeds) >= 1, "seeds", self.seeds, "a non-empty list of ints")
        _check(len(set(self.seeds)) == len(self.seeds), "seeds", self.seeds, "without repeats")
        _check(all(0 <= s < SEED_LIMIT for s in self.seeds), "seeds", self.seeds, _SEED_RANGE)
        _check(len(self.mask_ratios) >= 1, "mask_ratios", self.mask_ratios, "a non-empty list")
        _check(
            all(0.0 <= r < 1.0 for r in self.mask_ratios),
            "mask_ratios",
            self.mask_ratios,
            "ratios in [0, 1)",
        )
        unknown = sorted(set(self.baselines) - set(BASELINES))
        _check(not unknown, "baselines", self.baselines, f"names among {list(BASELINES)}")
        unknown = sorted(set(self.calibrators) - set(CALIBRATORS))
        _check(not unknown, "calibrators", self.calibrators, f"names among {list(CALIBRATORS)}")
        _check(
            len(set(self.mask_ratios)) == len(self.mask_ratios),
            "mask_ratios",
            self.mask_ratios,
            "ratios without repeats",
        )
        from ddcal.distill import DISTILLERS

        _check(self.method in DISTILLERS, "method", self.method, f"one of {sorted(DISTILLERS)}")

    def replace(self, **changes: Any) -> ExperimentConfig:
        """A copy with ``changes`` applied (validated like any configuration)."""
        return _from_mapping({**self.to_dict(), **changes}, base=None)

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain values (lists and dicts copied)."""
        return {f.name: _copy(getattr(self, f.name)) for f in fields(self)}


_FIELD_TYPES: dict[str, type] = {
    "preset": str,
    "dataset": str,
    "data_root": str,
    "distilled": str,
    "method": str,
    "ipc": int,
    "iterations": int,
    "distill_options": dict,
    "distill_seed": int,
    "mdt_ratio": float,
    "mdt_mask_real": bool,
    "net": str,
    "width": int,
    "epochs": int,
    "lr": float,
    "dsa": bool,
    "dsa_strategy": str,
    "compile": bool,
    "seeds": list,
    "baselines": list,
    "mask_ratios": list,
    "calibrators": list,
    "num_masks": int,
    "holdout_fraction": float,
    "oracle_per_class": int,
    "full_data_epochs": int,
    "full_data_limit": int,
    "analysis_images": int,
    "plots": bool,
    "device": str,
    "batch_size": int,
}
_LIST_ITEM_TYPES: dict[str, type] = {
    "seeds": int,
    "baselines": str,
    "mask_ratios": float,
    "calibrators": str,
}

PRESETS: dict[str, dict[str, Any]] = {
    # FashionMNIST, DM at IPC 10, sized for at most 10 minutes on 2 CPU cores.
    "demo": {
        "iterations": 80,
        "epochs": 100,
        "mask_ratios": [0.3, 0.5, 0.7],
        "full_data_epochs": 1,
        "full_data_limit": 10000,
    },
    # Every stage and row on tiny budgets: under a minute, for tests.
    "smoke": {
        "iterations": 2,
        "width": 8,
        "epochs": 2,
        "seeds": [0, 1],
        "mask_ratios": [0.5],
        "num_masks": 2,
        "oracle_per_class": 5,
        "full_data_epochs": 1,
        "full_data_limit": 500,
        "analysis_images": 100,
    },
    # The reference protocol: the method's full iterations, 1000 epochs, 5 seeds; a GPU.
    "paper": {
        "epochs": 1000,
        "seeds": [0, 1, 2, 3, 4],
        "mask_ratios": [0.1, 0.3, 0.5, 0.7, 0.9],
        "full_data_epochs": 50,
        "device": "cuda",
    },
}

# Each preset's options for each method, applied for the method the run ends up using
# (so ``--set method=mtt`` on the demo does not inherit DM's options).
PRESET_DISTILL_OPTIONS: dict[str, dict[str, dict[str, Any]]] = {
    "demo": {"dm": {"batch_real": 64}},
    "smoke": {
        "dm": {"batch_real": 8, "width": 8},
        "dc": {"batch_real": 8, "width": 8, "outer_loop": 2, "inner_loop": 1},
        "dsa": {"batch_real": 8, "width": 8, "outer_loop": 2, "inner_loop": 1},
        "mtt": {
            "width": 8,
            "num_experts": 1,
            "train_epochs": 3,
            "max_start_epoch": 1,
            "syn_steps": 2,
        },
    },
    "paper": {},
}


_SEED_RANGE = "in [0, 2**32) (torch keeps a seed modulo 2**32)"


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"config key {key!r} must be {expected}, got {value!r}")


def _type_name(kind: type) -> str:
    return {
        int: "an int",
        float: "a number",
        str: "a string",
        bool: "true or false",
        list: "a list in brackets, e.g. [0, 1]",
        dict: "a table of option = value",
    }[kind]


def _check_type(key: str, value: Any, kind: type) -> None:
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    _check(ok, key, value, _type_name(kind))
    if kind is list:
        item = _LIST_ITEM_TYPES[key]
        for entry in value:
            _check_type(f"{key}[]", entry, item)
    if kind is dict:
        for name, entry in value.items():
            _check(isinstance(name, str), key, value, "a table with string keys")
            _check(
                isinstance(entry, (int, float, str, bool)),
                f"{key}.{name}",
                entry,
                "a number, string or boolean",
            )


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return dict(value)
    return list(value) if isinstance(value, list) else value


def _coerce(key: str, value: Any) -> Any:
    """Ints where a float is expected become floats, so the record holds one type per key."""
    kind = _FIELD_TYPES[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if key == "mask_ratios" and isinstance(value, list):
        return [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
    return value


def _from_mapping(values: Mapping[str, Any], base: ExperimentConfig | None) -> ExperimentConfig:
    merged = {} if base is None else base.to_dict()
    for key, value in values.items():
        if key not in _FIELD_TYPES:
            known = ", ".join(sorted(_FIELD_TYPES))
            raise ConfigError(f"unknown config key {key!r}; the keys are: {known}")
        merged[key] = _coerce(key, value)
    return ExperimentConfig(**merged)


def _apply_override(values: dict[str, Any], option_layers: list[Any], key: str, value: Any) -> None:
    """``key=value``, or ``distill_options.name=value`` for one option of the method."""
    if "." in key:
        table, _, name = key.partition(".")
        if table != "distill_options" or not name:
            raise ConfigError(
                f"unknown config key {key!r}: only distill_options.<name> takes a dotted key"
            )
        option_layers.append({name: value})
    elif key == "distill_options":
        option_layers.append(value)
    else:
        values[key] = value


def load_config(
    preset: str | None = None,
    file: str | Path | None = None,
    overrides: Sequence[tuple[str, Any]] = (),
) -> ExperimentConfig:
    """The preset, then the TOML ``file``'s keys, then ``(key, value)`` overrides.

    ``preset`` ``None``: the TOML file's own ``preset = "..."`` if it names one,
    else ``"demo"``. ``distill_options`` merges key by key across the layers, starting
    from the preset's options for the method the run uses (``--set
    distill_options.batch_real=64`` sets one).

    Raises:
        ConfigError: an unknown preset or key, or a value of the wrong type or range.
    """
    values: dict[str, Any] = {}
    from_file: dict[str, Any] = {}
    if file is not None:
        path = Path(file)
        try:
            with path.open("rb") as handle:
                from_file = tomllib.load(handle)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path} is not valid TOML: {error}") from error
        file_preset = from_file.pop("preset", None)
        if preset is None:
            preset = file_preset
    if any(key == "preset" for key, _ in overrides):
        raise ConfigError("config key 'preset' is chosen with --preset, not --set")
    preset = "demo" if preset is None else preset
    if preset not in PRESETS:
        raise ConfigError(f"config key 'preset' must be one of {sorted(PRESETS)}, got {preset!r}")
    option_layers: list[Any] = []
    for layer in (PRESETS[preset], from_file):
        for key, value in layer.items():
            if key == "distill_options":
                option_layers.append(value)
            else:
                values[key] = _copy(value)
    for key, value in overrides:
        _apply_override(values, option_layers, key, value)
    method = values.get("method", ExperimentConfig.method)
    options: dict[str, Any] = dict(PRESET_DISTILL_OPTIONS[preset].get(method, {}))
    for layer in option_layers:
        _check_type("distill_options", layer, dict)
        options.update(layer)
    values["distill_options"] = options
    values["preset"] = preset
    return _from_mapping(values, ExperimentConfig())


_BOOLEAN_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def command_line_value(key: str, value: Any) -> Any:
    """A ``--set key=value`` value as ``key`` expects it, read the way a shell user writes it.

    A boolean key also takes ``true``/``false``, ``yes``/``no`` and ``1``/``0`` in
    any case, and a list key a tuple (``--set seeds=0,1``); a TOML file and the
    Python API take only booleans and lists.
    """
    kind = _FIELD_TYPES.get(key)
    if kind is bool and not isinstance(value, bool):
        return _BOOLEAN_WORDS.get(str(value).lower(), value)
    if kind is list and isinstance(value, tuple):
        return list(value)
    return value


#: The torch device types ddcal runs on.
DEVICE_TYPES = ("cpu", "cuda", "mps")


def parse_device(name: str, option: str) -> torch.device:
    """``name`` as a torch device of one of :data:`DEVICE_TYPES`; ``option`` names it in errors.

    Raises:
        InvalidValueError: torch cannot parse ``name``, or it is another type (``"meta"``).
    """
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise InvalidValueError(f"{option}: {exc}") from None
    if device.type not in DEVICE_TYPES:
        raise InvalidValueError(f"{option} must be cpu, cuda, cuda:N or mps, got {name!r}")
    return device


def device_unavailable(device: torch.device) -> str | None:
    """Why ``device`` cannot run on this machine (``"CUDA is not available here"``), or ``None``."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available here"
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            return f"there are {count} CUDA device(s) here, cuda:0 to cuda:{count - 1}"
    if device.type == "mps" and not torch.backends.mps.is_available():
        return "MPS is not available here"
    return None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # JSON's string escapes are TOML's too; TOML also forbids a raw DEL.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise InvalidTypeError(f"cannot write {value!r} to TOML")


def config_to_toml(config: ExperimentConfig) -> str:
    """The configuration as TOML text that :func:`load_config` reads back unchanged."""
    lines = ["# ddcal run configuration (every key; see ExperimentConfig)"]
    tables: list[str] = []
    for key, value in config.to_dict().items():
        if isinstance(value, dict):
            tables.append(f"\n[{key}]")
            tables.extend(f"{name} = {_toml_value(v)}" for name, v in sorted(value.items()))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines + tables) + "\n"
