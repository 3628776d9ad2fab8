"""The ConvNet of the dataset-distillation literature and its D3/D4/D5 builders.

The network matches the reference ConvNet of VICO-UoE/DatasetCondensation layer
for layer (same layer order, same parameter names in ``state_dict``), so that
distilled sets made with DC, DSA, DM or MTT evaluate the same here as there.

:func:`save_checkpoint` writes a trained ConvNet with its configuration to one
file; :func:`load_checkpoint` rebuilds it, reading the file with
``torch.load(weights_only=True)`` (tensors and plain values only, nothing run).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddcal._io import atomic_write, check_format_version, load_weights_only
from ddcal._validation import check_choice, check_positive_int
from ddcal.errors import InputFileNotFoundError, InvalidTypeError, InvalidValueError
from ddcal.inference import check_plain_extra

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "CONVNET_NAMES",
    "NORMS",
    "ConvNet",
    "ConvNetCheckpoint",
    "build_convnet",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
]

#: Format tag and version written by :func:`save_checkpoint`.
CHECKPOINT_FORMAT = "ddcal-convnet"
CHECKPOINT_FORMAT_VERSION = 1

_CHECKPOINT_KEYS = ("format", "version", "arch", "config", "state_dict", "extra")
_CONFIG_KEYS = ("in_channels", "num_classes", "im_size", "width", "depth", "norm", "first_padding")

#: Normalisation layers a :class:`ConvNet` can use, by name.
NORMS: tuple[str, ...] = ("instancenorm", "batchnorm", "layernorm", "none")

_NAME_DEPTHS: dict[str, int] = {"ConvNet": 3, "ConvNetD3": 3, "ConvNetD4": 4, "ConvNetD5": 5}

#: Names :func:`build_convnet` accepts.
CONVNET_NAMES: tuple[str, ...] = tuple(_NAME_DEPTHS)


def _check_im_size(im_size: Any) -> tuple[int, int]:
    """Return ``im_size`` (an int or an ``(H, W)`` pair) as ``(H, W)``."""
    if isinstance(im_size, Sequence) and not isinstance(im_size, str):
        if len(im_size) != 2:
            raise InvalidValueError(f"im_size must be an int or an (H, W) pair, got {im_size!r}")
        height = check_positive_int(im_size[0], "im_size[0]")
        width = check_positive_int(im_size[1], "im_size[1]")
        return height, width
    side = check_positive_int(im_size, "im_size")
    return side, side


def _make_norm(norm: str, channels: int, height: int, width: int) -> nn.Module:
    if norm == "instancenorm":
        # Instance norm with a per-channel affine, as the reference writes it.
        return nn.GroupNorm(channels, channels, affine=True)
    if norm == "batchnorm":
        return nn.BatchNorm2d(channels, affine=True)
    # "layernorm": normalise over (C, H, W), element-wise affine of that shape.
    return nn.LayerNorm([channels, height, width], elementwise_affine=True)


class ConvNet(nn.Module):
    """The ConvNet of dataset distillation (DC, DSA, DM, MTT).

    ``depth`` blocks of ``Conv2d(3x3, padding 1) -> norm -> ReLU ->
    AvgPool2d(2, 2)``, then one ``Linear`` on the flattened features. The
    layers live in ``self.features`` (an ``nn.Sequential``) and
    ``self.classifier``, with the reference's layout, so reference weights
    load with ``load_state_dict``.

    On 28x28 input the first convolution uses padding 3 (28 -> 32), so that
    MNIST-sized images give the same feature map as 32x32 ones. The reference
    keys this on one input channel instead (it only ever sees 1-channel input
    at 28x28); the two agree on every input the reference supports except
    1-channel images of another size, where it pads by 3 and we pad by 1.
    Pass ``first_padding=3`` to reproduce the reference there.

    Args:
        in_channels: image channels ``C``.
        num_classes: number of outputs ``K``.
        im_size: input size, an int or ``(H, W)``.
        width: channels of every convolution (128 in the literature).
        depth: number of conv blocks (3 for 32px, 4 for 64px, 5 for 128px).
        norm: ``"instancenorm"`` (``GroupNorm(C, C)``), ``"batchnorm"``,
            ``"layernorm"`` (over ``(C, H, W)``, element-wise affine) or
            ``"none"``.
        first_padding: padding of the first convolution; ``None`` means 3 on
            28x28 input and 1 otherwise.

    Shapes:
        input ``(N, C, H, W)``; :meth:`forward` gives logits ``(N, K)``;
        :meth:`embed` gives features ``(N, feature_dim)`` with
        ``feature_dim = width * h * w``, ``(h, w)`` the size after ``depth``
        poolings (2048 for D3 on 28x28 or 32x32 input).
    """

    in_channels: int
    num_classes: int
    im_size: tuple[int, int]
    width: int
    depth: int
    norm: str
    first_padding: int
    feature_shape: tuple[int, int, int]
    feature_dim: int

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        im_size: int | tuple[int, int],
        *,
        width: int = 128,
        depth: int = 3,
        norm: str = "instancenorm",
        first_padding: int | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.num_classes = check_positive_int(num_classes, "num_classes")
        self.im_size = _check_im_size(im_size)
        self.width = check_positive_int(width, "width")
        self.depth = check_positive_int(depth, "depth")
        self.norm = check_choice(norm, "norm", NORMS)
        if first_padding is None:
            first_padding = 3 if self.im_size == (28, 28) else 1
        else:
            first_padding = check_positive_int(first_padding, "first_padding", minimum=0)
        self.first_padding = first_padding

        layers: list[nn.Module] = []
        channels = self.in_channels
        height, width_px = self.im_size
        for block in range(self.depth):
            padding = first_padding if block == 0 else 1
            # A 3x3 convolution with padding p maps size s to s + 2p - 2.
            height, width_px = height + 2 * padding - 2, width_px + 2 * padding - 2
            if height < 2 or width_px < 2:
                raise InvalidValueError(
                    f"im_size {self.im_size} is too small for depth {self.depth}: block "
                    f"{block + 1} would pool a {max(height, 0)}x{max(width_px, 0)} map to "
                    f"nothing; need at least 2**depth = {2**self.depth} pixels on each side"
                )
            layers.append(nn.Conv2d(channels, self.width, kernel_size=3, padding=padding))
            if self.norm != "none":
                layers.append(_make_norm(self.norm, self.width, height, width_px))
            layers.append(nn.ReLU(inplace=True))
            layers.append(nn.AvgPool2d(kernel_size=2, stride=2))
            channels = self.width
            height, width_px = height // 2, width_px // 2

        self.features = nn.Sequential(*layers)
        self.feature_shape = (self.width, height, width_px)
        self.feature_dim = self.width * height * width_px
        self.classifier = nn.Linear(self.feature_dim, self.num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened features ``(N, feature_dim)`` of images ``(N, C, H, W)`` (what DM matches)."""
        expected = (self.in_channels, *self.im_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise InvalidValueError(
                f"x must have shape (N, {', '.join(map(str, expected))}), got {tuple(x.shape)}"
            )
        # flatten (not view): works on channels_last input, in NCHW feature order.
        return torch.flatten(self.features(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` of images ``(N, C, H, W)``."""
        logits: torch.Tensor = self.classifier(self.embed(x))
        return logits


def build_convnet(
    name: str,
    in_channels: int,
    num_classes: int,
    im_size: int | tuple[int, int],
    *,
    width: int = 128,
    depth: int | None = None,
    norm: str = "instancenorm",
) -> ConvNet:
    """Build a :class:`ConvNet` by its name in the literature.

    Args:
        name: ``"ConvNet"`` or ``"ConvNetD3"`` (depth 3, for 28/32px),
            ``"ConvNetD4"`` (64px), ``"ConvNetD5"`` (128px).
        in_channels, num_classes, im_size, width, norm: as in :class:`ConvNet`.
        depth: ``None`` takes the name's depth; ``"ConvNet"`` accepts any
            depth, a ``"ConvNetD<k>"`` name only ``k``.

    Raises:
        ValueError: unknown name, non-positive sizes, a depth that contradicts
            the name, or ``im_size`` too small for the depth.
    """
    name = check_choice(name, "name", CONVNET_NAMES)
    name_depth = _NAME_DEPTHS[name]
    if depth is None:
        depth = name_depth
    else:
        depth = check_positive_int(depth, "depth")
        if name != "ConvNet" and depth != name_depth:
            raise InvalidValueError(
                f"depth must be {name_depth} for name {name!r} (or None), got {depth}; "
                "use name='ConvNet' to choose the depth freely"
            )
    return ConvNet(in_channels, num_classes, im_size, width=width, depth=depth, norm=norm)


@dataclass(frozen=True, eq=False)
class ConvNetCheckpoint:
    """What :func:`read_checkpoint` returns.

    Attributes:
        model: the rebuilt :class:`ConvNet`, weights loaded, in eval mode.
        arch: its name in the literature (``"ConvNetD3"``, ...; ``"ConvNet"``
            for other depths), as written.
        config: the constructor arguments of :class:`ConvNet` (``in_channels``,
            ``num_classes``, ``im_size`` as ``[H, W]``, ``width``, ``depth``,
            ``norm``, ``first_padding``).
        extra: the metadata passed to :func:`save_checkpoint` (``{}`` if none).
    """

    model: ConvNet
    arch: str
    config: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


def _arch_name(depth: int) -> str:
    name = f"ConvNetD{depth}"
    return name if name in _NAME_DEPTHS else "ConvNet"


def save_checkpoint(
    model: ConvNet, path: str | os.PathLike[str], *, extra: Mapping[str, Any] | None = None
) -> Path:
    """Write ``model`` with its configuration to ``path`` atomically; returns the path.

    The file is a ``torch.save`` dict: ``format`` (``"ddcal-convnet"``),
    ``version`` (1), ``arch`` (e.g. ``"ConvNetD3"``), ``config`` (every
    :class:`ConvNet` constructor argument), ``state_dict`` (CPU tensors) and
    ``extra``; it loads with ``torch.load(path, weights_only=True)``.

    Args:
        model: the :class:`ConvNet` to save (any device).
        path: the file to write; its folder must exist.
        extra: metadata kept with the weights (dataset, seed, accuracy, ...):
            ``str`` keys, plain values and tensors, in lists, tuples and dicts.

    Raises:
        TypeError: ``model`` is not a :class:`ConvNet`, or ``extra`` holds
            values a ``weights_only`` load would refuse.
        FileNotFoundError: the folder of ``path`` does not exist.
    """
    if not isinstance(model, ConvNet):
        raise InvalidTypeError(f"model must be a ddcal ConvNet, got {type(model).__name__}")
    metadata = check_plain_extra(extra, "extra")
    target = Path(path).expanduser()
    if not target.parent.is_dir():
        raise InputFileNotFoundError(
            f"cannot save to {target}: folder {target.parent} does not exist"
        )
    config = {
        "in_channels": model.in_channels,
        "num_classes": model.num_classes,
        "im_size": list(model.im_size),
        "width": model.width,
        "depth": model.depth,
        "norm": model.norm,
        "first_padding": model.first_padding,
    }
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_FORMAT_VERSION,
        "arch": _arch_name(model.depth),
        "config": config,
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
        "extra": metadata,
    }
    with atomic_write(target) as handle:
        torch.save(payload, handle)
    return target


def read_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> ConvNetCheckpoint:
    """Rebuild the ConvNet saved by :func:`save_checkpoint`, with its metadata.

    Args:
        path: a file written by :func:`save_checkpoint`.
        map_location: the device the model is placed on.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a ddcal ConvNet checkpoint (unreadable,
            another format, a newer version, a bad configuration or weights
            that do not fit it); the message names the path.
    """
    source = Path(path).expanduser()
    content = load_weights_only(source)
    if not isinstance(content, dict) or content.get("format") != CHECKPOINT_FORMAT:
        if not isinstance(content, dict):
            found = f"a {type(content).__name__}"
        elif "format" in content:
            found = f"format tag {content['format']!r}"
        else:
            found = f"a dict without a format tag, keys {sorted(map(str, content))[:10]}"
        raise InvalidValueError(
            f"{source} is not a ddcal ConvNet checkpoint (expected a dict with format "
            f"{CHECKPOINT_FORMAT!r}, got {found}); write one with ddcal.models.save_checkpoint"
        )
    check_format_version(content, source, what="checkpoint", current=CHECKPOINT_FORMAT_VERSION)
    missing = [key for key in _CHECKPOINT_KEYS if key not in content]
    if missing:
        raise InvalidValueError(f"{source} is a ddcal ConvNet checkpoint but lacks keys {missing}")
    config, extra, arch = content["config"], content["extra"], content["arch"]
    if not isinstance(config, dict) or sorted(config) != sorted(_CONFIG_KEYS):
        got = sorted(config) if isinstance(config, dict) else type(config).__name__
        raise InvalidValueError(
            f"{source}: config must be a dict with keys {sorted(_CONFIG_KEYS)}, got {got}"
        )
    if not isinstance(extra, dict) or not isinstance(arch, str):
        raise InvalidValueError(f"{source}: extra must be a dict and arch a str")
    try:
        model = ConvNet(
            config["in_channels"],
            config["num_classes"],
            tuple(config["im_size"]),
            width=config["width"],
            depth=config["depth"],
            norm=config["norm"],
            first_padding=config["first_padding"],
        )
        model.load_state_dict(content["state_dict"])
    except (TypeError, ValueError, RuntimeError) as exc:
        # load_state_dict lists one problem a line under a heading: keep the first.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        problem = lines[0] if len(lines) == 1 else lines[1]
        more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
        raise InvalidValueError(
            f"{source}: the checkpoint does not build a ConvNet: {problem}{more}"
        ) from exc
    model.to(map_location).eval()
    return ConvNetCheckpoint(model=model, arch=arch, config=config, extra=extra)


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> ConvNet:
    """The :class:`ConvNet` saved by :func:`save_checkpoint`, in eval mode on ``map_location``.

    Same as ``read_checkpoint(path, map_location).model``; see :func:`read_checkpoint`
    for the errors, and for the saved metadata.
    """
    return read_checkpoint(path, map_location).model
