"""Distilled datasets: the in-memory type, ddcal's file format, and importers.

``DistilledSet.save`` writes one ``torch.save`` file holding a dict with a
format tag and version; ``load_distilled`` reads it back and also imports the
files other codebases write:

* MTT (GeorgeCazenavette/mtt-distillation and its forks): ``images_best.pt``
  (a bare ``(N, C, H, W)`` tensor) and ``labels_best.pt`` (``(N,)`` class
  indices, or ``(N, K)`` soft labels in forks); forks add the learned
  learning rate as ``lr_best.pt`` or ``syn_lr_best.pt`` (a 0-d tensor or a
  float). The original repository saves no learning rate.
* DC/DSA/DM (VICO-UoE/DatasetCondensation): ``res_*.pt``, a dict
  ``{'data': [[images, labels], ...], 'accs_all_exps': {model: [acc, ...]}}``
  with one pair per experiment.

Every file is read with ``torch.load(path, map_location="cpu",
weights_only=True)``: only tensors and plain Python values are rebuilt, and a
file holding any other pickled object is refused without running it. The one
addition to PyTorch's allow-list is numpy's scalar and dtype constructors
(data, not code), because the DC scripts store their accuracies as numpy
floats.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddcal._io import atomic_write, check_format_version, load_weights_only
from ddcal._validation import as_tensor, check_positive_int, check_soft_labels
from ddcal.data.zca import ZCA
from ddcal.errors import InputFileNotFoundError, InvalidTypeError, InvalidValueError

__all__ = [
    "DISTILLED_FORMAT",
    "DISTILLED_FORMAT_VERSION",
    "DistilledSet",
    "load_distilled",
]

PathLike = str | os.PathLike[str]

#: Format tag and version written by ``DistilledSet.save``.
DISTILLED_FORMAT = "ddcal.distilled"
DISTILLED_FORMAT_VERSION = 1

_FILE_KEYS = ("format", "version", "images", "labels", "lr", "meta")
_MTT_IMAGES = "images_best.pt"
_MTT_LABELS = "labels_best.pt"
_MTT_LR = ("lr_best.pt", "syn_lr_best.pt")
_SUPPORTED = (
    "supported: a file written by DistilledSet.save; an MTT run folder holding "
    f"{_MTT_IMAGES} and {_MTT_LABELS} (plus {' or '.join(_MTT_LR)} where present), or an "
    "MTT images file with labels_path= (and lr_path=); a DC/DSA/DM res_*.pt file "
    "{'data': [[images, labels], ...], 'accs_all_exps': ...}"
)
_PLAIN_TYPES = (type(None), bool, int, float, str)
_MAX_META_DEPTH = 32

# What a reader extracts from a file: images, labels, lr, meta.
_Fields = tuple[Any, Any, Any, dict[str, Any]]


@dataclass(frozen=True, eq=False, repr=False)
class DistilledSet:
    """A distilled (synthetic) training set, validated at construction.

    Attributes:
        images: floating ``(N, C, H, W)``, finite (stored detached).
        labels: int64 class indices ``(N,)`` (any integer dtype is converted),
            or non-negative floating soft labels ``(N, K)``.
        lr: the learned learning rate for training on the set (MTT), or ``None``.
        meta: provenance and settings (method, dataset, ipc, seed, ``zca``
            state, config, ...): ``str`` keys, values ``None``/bool/int/float/
            str, tensors, and lists, tuples and dicts of them. ``meta["zca"]``,
            when present, is a :meth:`ZCA.state_dict`.
    """

    images: torch.Tensor
    labels: torch.Tensor
    lr: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        images = as_tensor(self.images, "images")
        if not images.is_floating_point():
            raise InvalidTypeError(f"images must be floating point, got dtype {images.dtype}")
        if images.ndim != 4 or images.shape[0] == 0:
            raise InvalidValueError(
                f"images must have shape (N, C, H, W) with N >= 1, got {tuple(images.shape)}"
            )
        if not bool(torch.isfinite(images).all()):
            raise InvalidValueError("images must be finite, got NaN or inf")
        num = images.shape[0]
        labels = as_tensor(self.labels, "labels")
        if labels.ndim not in (1, 2) or labels.shape[0] != num:
            raise InvalidValueError(
                f"labels must have shape ({num},) (class indices) or ({num}, K) (soft labels) "
                f"for {num} images, got {tuple(labels.shape)}"
            )
        if labels.ndim == 1:
            if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
                raise InvalidTypeError(
                    f"labels of shape (N,) must be integer class indices, got dtype {labels.dtype}"
                )
            labels = labels.long()
            if int(labels.min()) < 0:
                raise InvalidValueError(
                    f"labels must be non-negative class indices, got min {int(labels.min())}"
                )
        else:
            if not labels.is_floating_point():
                raise InvalidTypeError(
                    f"labels of shape (N, K) must be floating soft labels, got dtype {labels.dtype}"
                )
            check_soft_labels(labels, "labels")
        lr = self.lr
        if lr is not None:
            if isinstance(lr, bool) or not isinstance(lr, (int, float)):
                raise InvalidTypeError(
                    f"lr must be a float or None, got {type(lr).__name__} {lr!r}"
                )
            if not (math.isfinite(lr) and lr > 0):
                raise InvalidValueError(f"lr must be a positive finite float, got {lr!r}")
            lr = float(lr)
        if not isinstance(self.meta, Mapping):
            raise InvalidTypeError(f"meta must be a dict, got {type(self.meta).__name__}")
        meta = dict(self.meta)
        _check_plain(meta, "meta")
        if "zca" in meta:
            ZCA().load_state_dict(meta["zca"])  # raises if it is not a valid ZCA state
        object.__setattr__(self, "images", images.detach())
        object.__setattr__(self, "labels", labels.detach())
        object.__setattr__(self, "lr", lr)
        object.__setattr__(self, "meta", meta)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def is_soft(self) -> bool:
        """Whether the labels are soft ``(N, K)``."""
        return self.labels.ndim == 2

    @property
    def num_classes(self) -> int:
        """``K`` for soft labels; ``max(label) + 1`` for class indices."""
        if self.is_soft:
            return int(self.labels.shape[1])
        return int(self.labels.max()) + 1

    @property
    def class_labels(self) -> torch.Tensor:
        """int64 ``(N,)``: the class indices, or the argmax of soft labels."""
        return self.labels.argmax(dim=1) if self.is_soft else self.labels

    @property
    def ipc(self) -> int | None:
        """Images per class when every class has the same count, else ``None``."""
        counts = torch.bincount(self.class_labels.cpu(), minlength=self.num_classes)
        first = int(counts[0])
        return first if first > 0 and bool((counts == first).all()) else None

    @property
    def zca(self) -> ZCA | None:
        """The ZCA stored in ``meta["zca"]`` (apply it to real test images), or ``None``."""
        return ZCA().load_state_dict(self.meta["zca"]) if "zca" in self.meta else None

    def save(self, path: PathLike) -> Path:
        """Write the set to ``path`` atomically (temporary file, then rename); returns the path.

        The file is a ``torch.save`` dict: ``format`` (``"ddcal.distilled"``),
        ``version``, ``images``, ``labels``, ``lr``, ``meta``; it loads with
        ``torch.load(path, weights_only=True)``.
        """
        target = Path(path).expanduser()
        if not target.parent.is_dir():
            raise InputFileNotFoundError(
                f"cannot save to {target}: folder {target.parent} does not exist"
            )
        payload = {
            "format": DISTILLED_FORMAT,
            "version": DISTILLED_FORMAT_VERSION,
            "images": self.images.cpu(),
            "labels": self.labels.cpu(),
            "lr": self.lr,
            "meta": self.meta,
        }
        with atomic_write(target) as handle:
            torch.save(payload, handle)
        return target

    def __repr__(self) -> str:
        kind = "soft" if self.is_soft else "hard"
        return (
            f"{type(self).__name__}(images={tuple(self.images.shape)} {self.images.dtype}, "
            f"labels={kind} {tuple(self.labels.shape)}, num_classes={self.num_classes}, "
            f"ipc={self.ipc}, lr={self.lr}, meta keys={sorted(self.meta)})"
        )


def load_distilled(
    path: PathLike,
    *,
    experiment: int = 0,
    labels_path: PathLike | None = None,
    lr_path: PathLike | None = None,
    meta: Mapping[str, Any] | None = None,
) -> DistilledSet:
    """Read a distilled set: ddcal's own file, MTT's files, or a DC/DSA/DM ``res_*.pt``.

    Args:
        path: a file written by :meth:`DistilledSet.save`; an MTT run folder
            holding ``images_best.pt`` and ``labels_best.pt`` (and
            ``lr_best.pt`` or ``syn_lr_best.pt`` where present); an MTT images
            file such as ``images_5000.pt`` together with ``labels_path``; or a
            DC/DSA/DM ``res_*.pt`` file.
        experiment: which experiment of a ``res_*.pt`` file (one
            ``[images, labels]`` pair per experiment), from 0.
        labels_path: the labels file matching an MTT images file ``path``.
        lr_path: the learning-rate file matching an MTT images file (optional).
        meta: entries added to (and overriding) the metadata read or derived
            from the files, e.g. ``{"dataset": "cifar10", "zca": zca.state_dict()}``.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: unknown layout, unreadable file, a file holding pickled
            objects other than tensors and plain values (refused, not run), or
            contents that fail :class:`DistilledSet`'s checks.
    """
    source = Path(path).expanduser()
    experiment = check_positive_int(experiment, "experiment", minimum=0)
    if meta is not None and not isinstance(meta, Mapping):
        raise InvalidTypeError(f"meta must be a dict or None, got {type(meta).__name__}")
    if not source.exists():
        raise InputFileNotFoundError(f"distilled set {source} does not exist; {_SUPPORTED}")
    if lr_path is not None and labels_path is None:
        raise InvalidValueError(
            "lr_path is only used with labels_path (an MTT images file and its labels)"
        )
    is_res = False
    if source.is_dir():
        if labels_path is not None:
            raise InvalidValueError(
                f"labels_path is for an MTT images file, but path {source} is a folder; "
                "pass the images file as path"
            )
        images_file, labels_file = source / _MTT_IMAGES, source / _MTT_LABELS
        if not (images_file.is_file() and labels_file.is_file()):
            found = sorted(child.name for child in source.glob("*.pt"))
            raise InvalidValueError(
                f"folder {source} holds no {_MTT_IMAGES} and {_MTT_LABELS} "
                f"(its .pt files: {found}); {_SUPPORTED}"
            )
        lr_file = next((source / n for n in _MTT_LR if (source / n).is_file()), None)
        fields = _read_mtt(images_file, labels_file, lr_file)
    elif labels_path is not None:
        lr_file = None if lr_path is None else Path(lr_path).expanduser()
        fields = _read_mtt(source, Path(labels_path).expanduser(), lr_file)
    else:
        content = _load_plain(source)
        if isinstance(content, dict) and "format" in content:
            fields = _read_ddcal(content, source)
        elif isinstance(content, dict) and "data" in content:
            fields, is_res = _read_res(content, source, experiment), True
        elif isinstance(content, torch.Tensor) and content.ndim == 4:
            raise InvalidValueError(
                f"{source} holds a bare images tensor {tuple(content.shape)} (MTT's images_*.pt); "
                "pass the matching labels file as labels_path= (and lr_path= if there is one)"
            )
        else:
            raise InvalidValueError(
                f"{source} has an unknown layout ({_describe(content)}); {_SUPPORTED}"
            )
    if experiment != 0 and not is_res:
        raise InvalidValueError(
            f"experiment applies only to DC/DSA/DM res_*.pt files, got {experiment} for {source}"
        )
    images, labels, lr, file_meta = fields
    if meta is not None:
        file_meta = {**file_meta, **meta}
    try:
        return DistilledSet(images, labels, lr, file_meta)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{source}: {exc}") from exc


def _read_ddcal(content: dict[Any, Any], path: Path) -> _Fields:
    if content["format"] != DISTILLED_FORMAT:
        raise InvalidValueError(
            f"{path} has an unknown format tag {content['format']!r}; {_SUPPORTED}"
        )
    check_format_version(content, path, what="format", current=DISTILLED_FORMAT_VERSION)
    missing = [key for key in _FILE_KEYS if key not in content]
    if missing:
        raise InvalidValueError(f"{path} is a ddcal distilled-set file but lacks keys {missing}")
    meta = content["meta"]
    if not isinstance(meta, dict):
        raise InvalidValueError(f"{path}: meta must be a dict, got {type(meta).__name__}")
    return content["images"], content["labels"], content["lr"], meta


def _read_mtt(images_file: Path, labels_file: Path, lr_file: Path | None) -> _Fields:
    for file in (labels_file, lr_file):
        if file is not None and not file.is_file():
            raise InputFileNotFoundError(f"{file} does not exist (needed with {images_file})")
    images, labels = _load_plain(images_file), _load_plain(labels_file)
    lr = None if lr_file is None else _lr_value(_load_plain(lr_file), lr_file)
    meta: dict[str, Any] = {
        "source": "mtt",
        "images_file": str(images_file),
        "labels_file": str(labels_file),
        "lr_file": None if lr_file is None else str(lr_file),
    }
    return images, labels, lr, meta


def _read_res(content: dict[Any, Any], path: Path, experiment: int) -> _Fields:
    data = content["data"]
    if not isinstance(data, (list, tuple)) or not data:
        raise InvalidValueError(
            f"{path}: 'data' must be a non-empty list of [images, labels] pairs, "
            f"got {_describe(data)}"
        )
    if experiment >= len(data):
        raise InvalidValueError(
            f"experiment must be in [0, {len(data)}) for {path}, which holds {len(data)} "
            f"experiment(s), got {experiment}"
        )
    pair = data[experiment]
    if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
        raise InvalidValueError(
            f"{path}: data[{experiment}] must be an [images, labels] pair, got {_describe(pair)}"
        )
    meta: dict[str, Any] = {
        "source": "dc-res",
        "file": str(path),
        "experiment": experiment,
        "num_experiments": len(data),
        **_res_name_fields(path.name),
    }
    accuracies = _plain_accuracies(content.get("accs_all_exps"))
    if accuracies is not None:
        meta["accs_all_exps"] = accuracies
    return pair[0], pair[1], None, meta


def _res_name_fields(name: str) -> dict[str, Any]:
    """method/dataset/model/ipc from ``res_[method_]dataset_model_<n>ipc.pt`` (DC's names)."""
    match = re.fullmatch(r"res_(.+)_(\d+)ipc\.pt", name)
    if match is None:
        return {}
    parts = match.group(1).split("_")
    keys = {2: ("dataset", "model"), 3: ("method", "dataset", "model")}.get(len(parts))
    if keys is None:
        return {}
    return {**dict(zip(keys, parts, strict=True)), "ipc": int(match.group(2))}


def _plain_accuracies(value: Any) -> dict[str, list[float]] | None:
    """DC's ``accs_all_exps`` ({model: [acc, ...]}, numpy floats) as plain floats, if it is one."""
    if not isinstance(value, dict):
        return None
    plain: dict[str, list[float]] = {}
    for key, accs in value.items():
        if not isinstance(key, str) or not isinstance(accs, (list, tuple)):
            return None
        if not all(isinstance(acc, (int, float, np.number)) for acc in accs):
            return None
        plain[key] = [float(acc) for acc in accs]
    return plain


def _lr_value(content: Any, path: Path) -> float:
    if isinstance(content, (int, float, np.number)) and not isinstance(content, (bool, np.bool_)):
        return float(content)
    if isinstance(content, torch.Tensor) and content.numel() == 1 and content.is_floating_point():
        return float(content.item())
    raise InvalidValueError(
        f"{path} must hold one learning rate (a number or a one-element float tensor), "
        f"got {_describe(content)}"
    )


def _numpy_scalar_globals() -> list[Any]:
    """numpy's scalar and dtype constructors (data, not code): DC scripts store accuracies
    as numpy floats."""
    scalar = np.float64(0.0).__reduce__()[0]  # numpy's scalar constructor, whatever its module
    dtype_classes = {type(np.dtype(code)) for code in "?bhilqBHILQefdgFDG"}  # BUILD needs them
    return [
        np.dtype,
        *sorted(dtype_classes, key=str),
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
    ]


def _load_plain(path: Path) -> Any:
    return load_weights_only(path, allowed_globals=_numpy_scalar_globals())


def _check_plain(value: Any, where: str, depth: int = 0) -> None:
    """Raise TypeError unless ``value`` is plain values and tensors in lists, tuples, dicts.

    Nesting is limited to :data:`_MAX_META_DEPTH` levels (a file can nest far deeper
    than Python's recursion limit).
    """
    if depth > _MAX_META_DEPTH:
        raise InvalidValueError(f"{where} nests deeper than {_MAX_META_DEPTH} levels")
    if isinstance(value, (*_PLAIN_TYPES, torch.Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidTypeError(
                    f"{where} keys must be str, got {type(key).__name__} {key!r}"
                )
            _check_plain(item, f"{where}[{key!r}]", depth + 1)
        return
    raise InvalidTypeError(
        f"{where} must be None, bool, int, float, str, a tensor, or a list, tuple or dict "
        f"of those, got {type(value).__name__}"
    )


def _describe(content: Any) -> str:
    if isinstance(content, torch.Tensor):
        return f"a tensor of shape {tuple(content.shape)}, dtype {content.dtype}"
    if isinstance(content, dict):
        return f"a dict with keys {sorted(map(str, content))[:10]}"
    if isinstance(content, (list, tuple)):
        return f"a {type(content).__name__} of length {len(content)}"
    return f"a {type(content).__name__}"
