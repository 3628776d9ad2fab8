"""The ConvNet of the dataset-distillation literature and its D3/D4/D5 builders.

The network matches the reference ConvNet of VICO-UoE/DatasetCondensation layer
for layer (same layer order, same parameter names in ``state_dict``), so that
distilled sets made with DC, DSA, DM or MTT evaluate the same here as there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ddcal._validation import check_choice, check_positive_int

__all__ = ["CONVNET_NAMES", "NORMS", "ConvNet", "build_convnet"]

#: Normalisation layers a :class:`ConvNet` can use, by name.
NORMS: tuple[str, ...] = ("instancenorm", "batchnorm", "layernorm", "none")

_NAME_DEPTHS: dict[str, int] = {"ConvNet": 3, "ConvNetD3": 3, "ConvNetD4": 4, "ConvNetD5": 5}

#: Names :func:`build_convnet` accepts.
CONVNET_NAMES: tuple[str, ...] = tuple(_NAME_DEPTHS)


def _check_im_size(im_size: Any) -> tuple[int, int]:
    """Return ``im_size`` (an int or an ``(H, W)`` pair) as ``(H, W)``."""
    if isinstance(im_size, Sequence) and not isinstance(im_size, str):
        if len(im_size) != 2:
            raise ValueError(f"im_size must be an int or an (H, W) pair, got {im_size!r}")
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

        layers: list[nn.Module] = []
        channels = self.in_channels
        height, width_px = self.im_size
        for block in range(self.depth):
            padding = first_padding if block == 0 else 1
            # A 3x3 convolution with padding p maps size s to s + 2p - 2.
            height, width_px = height + 2 * padding - 2, width_px + 2 * padding - 2
            if height < 2 or width_px < 2:
                raise ValueError(
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
            raise ValueError(
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
            raise ValueError(
                f"depth must be {name_depth} for name {name!r} (or None), got {depth}; "
                "use name='ConvNet' to choose the depth freely"
            )
    return ConvNet(in_channels, num_classes, im_size, width=width, depth=depth, norm=norm)
