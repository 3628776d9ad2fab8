"""Differentiable siamese augmentation (DSA), with the semantics of the reference code.

The distillation references (VICO-UoE/DatasetCondensation, ``DiffAugment``) augment
image batches with six groups of differentiable operations:

* ``color``: brightness ``x + b`` with ``b ~ U(-0.5, 0.5) * brightness``, then
  saturation ``(x - m_c) * s + m_c`` with ``s ~ U(0, 1) * saturation`` and ``m_c`` the
  mean over channels (a no-op on one-channel images), then contrast
  ``(x - m) * c + m`` with ``c ~ U(0, 1) + contrast`` and ``m`` the per-image mean;
* ``crop``: an integer translation with zero fill, output pixel ``(i, j)`` = input
  pixel ``(i + dh, j + dw)``, ``dh, dw`` uniform integers in ``[-s, s]`` with
  ``s = int(size * ratio_crop_pad + 0.5)`` per axis;
* ``cutout``: an ``int(H * ratio_cutout + 0.5) x int(W * ratio_cutout + 0.5)`` rectangle set to
  zero, centred on a uniform pixel (clipped at the border);
* ``flip``: horizontal flip (last axis) with probability ``prob_flip``;
* ``scale``: ``F.affine_grid`` with ``theta = [[sx, 0, 0], [0, sy, 0]]``, ``sx, sy``
  independent ``U(1 / ratio_scale, ratio_scale)`` (``sx > 1`` shrinks the content);
* ``rotate``: ``theta = [[cos a, -sin a, 0], [sin a, cos a, 0]]``, ``a`` uniform in
  ``[-ratio_rotate, ratio_rotate]`` degrees (positive = anticlockwise, as
  ``torch.rot90``).

Scale and rotate use ``F.affine_grid``/``F.grid_sample`` with ``align_corners=False``,
bilinear interpolation and zero padding, the defaults the reference runs with. In mode
``"S"`` one group is chosen per call (for the whole batch); in mode ``"M"`` every group
runs in strategy order.

Deviations from the reference, none of which changes the distribution of the
transforms: parameters are drawn once into a :class:`DSAParams` object and applied to
any number of batches (the reference re-seeds the global RNG before each draw and copies
sample 0's draw to the batch); the crop and cutout positions are stored as unit draws
``u ~ U[0, 1)`` and turned into the same uniform integers (``floor(u * n)``) once the
image size is known, so one draw serves batches of any size; all draws come from an
explicit CPU ``torch.Generator``; a strategy names each group at most once (the
reference lets a repeated group weight the choice in mode ``"S"``, and treats ``""`` or
``"none"`` as no augmentation, which is "no DSA module" here). kornia's augmentation
module is not used: its affine transforms work in pixel coordinates with their own
scale/angle parametrisation and its replayable parameters carry the batch dimension, so
neither the reference's normalised-coordinate ``theta`` nor a draw shared by batches of
different sizes maps onto it exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar, Literal, TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddcal.errors import InvalidTypeError, InvalidValueError

GROUPS: tuple[str, ...] = ("color", "crop", "cutout", "flip", "scale", "rotate")
DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"

_RANGES: dict[str, tuple[float, float]] = {
    "prob_flip": (0.0, 1.0),
    "ratio_scale": (1.0, math.inf),
    "ratio_rotate": (0.0, 180.0),
    "ratio_crop_pad": (0.0, 1.0),
    "ratio_cutout": (0.0, 1.0),
    "brightness": (0.0, math.inf),
    "saturation": (0.0, math.inf),
    "contrast": (0.0, math.inf),
}


@dataclass(frozen=True)
class DSAConfig:
    """DSA hyper-parameters; the defaults are the reference ``ParamDiffAug``.

    ``mode`` is ``"S"`` (one group per call, the reference default) or ``"M"`` (every
    group of the strategy in order).
    """

    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    mode: Literal["S", "M"] = "S"

    def __post_init__(self) -> None:
        for name, (low, high) in _RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidTypeError(
                    f"{name} must be a float, got {type(value).__name__} {value!r}"
                )
            if not low <= value <= high:
                raise InvalidValueError(f"{name} must be in [{low}, {high}], got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.mode not in ("S", "M"):
            raise InvalidValueError(f"mode must be 'S' or 'M', got {self.mode!r}")


def _column(values: Tensor, x: Tensor) -> Tensor:
    """``(B,)`` parameters as ``(B, 1, 1, 1)`` on ``x``'s device and dtype."""
    return values.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def _warp(x: Tensor, theta: Tensor) -> Tensor:
    """Sample ``x`` ``(N, C, H, W)`` on the grid of normalised ``theta`` ``(B, 2, 3)``."""
    theta = theta.to(device=x.device, dtype=x.dtype)
    n, c, h, w = x.shape
    grid = F.affine_grid(theta, [theta.shape[0], c, h, w], align_corners=False)
    return F.grid_sample(
        x, grid.expand(n, -1, -1, -1), mode="bilinear", padding_mode="zeros", align_corners=False
    )


def _uniform_int(unit: Tensor, count: int) -> Tensor:
    """Map unit draws ``U[0, 1)`` to uniform integers in ``[0, count)``."""
    return (unit * count).floor().long().clamp_(max=count - 1)


@dataclass(frozen=True)
class ColorParams:
    """Brightness offsets, saturation and contrast factors, each ``(B,)``."""

    name: ClassVar[str] = "color"
    brightness: Tensor
    saturation: Tensor
    contrast: Tensor

    def apply(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` -> ``(N, C, H, W)``: brightness, saturation, contrast."""
        x = x + _column(self.brightness, x)
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * _column(self.saturation, x) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * _column(self.contrast, x) + mean


@dataclass(frozen=True)
class CropParams:
    """Unit draws ``(B,)`` of the vertical and horizontal shift; see :meth:`shifts`."""

    name: ClassVar[str] = "crop"
    ratio: float
    unit_h: Tensor
    unit_w: Tensor

    def shifts(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """Integer shifts ``(dh, dw)``, each ``(B,)``, uniform in ``[-s, s]``.

        ``s = int(side * ratio + 0.5)`` for the height and the width separately.
        """
        s_h, s_w = int(height * self.ratio + 0.5), int(width * self.ratio + 0.5)
        return (
            _uniform_int(self.unit_h, 2 * s_h + 1) - s_h,
            _uniform_int(self.unit_w, 2 * s_w + 1) - s_w,
        )

    def apply(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` -> ``(N, C, H, W)``: ``out[i, j] = x[i + dh, j + dw]``, 0 outside."""
        n, c, h, w = x.shape
        d_h, d_w = (d.to(x.device) for d in self.shifts(h, w))
        # Indices into x padded by one zero pixel; every out-of-range index lands on it.
        rows = (torch.arange(h, device=x.device) + d_h[:, None] + 1).clamp(0, h + 1)
        cols = (torch.arange(w, device=x.device) + d_w[:, None] + 1).clamp(0, w + 1)
        padded = F.pad(x, (1, 1, 1, 1))
        out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2))
        return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))


@dataclass(frozen=True)
class CutoutParams:
    """Unit draws ``(B,)`` of the cut-out rectangle's centre; see :meth:`box`."""

    name: ClassVar[str] = "cutout"
    ratio: float
    unit_h: Tensor
    unit_w: Tensor

    def box(self, height: int, width: int) -> tuple[Tensor, Tensor, int, int]:
        """``(top, left, size_h, size_w)``: ``top``/``left`` ``(B,)``, may be negative.

        ``size = int(side * ratio + 0.5)``; the centre is uniform in ``[0, side]`` for an
        even size and ``[0, side - 1]`` for an odd one, ``top = centre - size // 2``; the
        rows ``[top, top + size)`` inside the image are cut (likewise the columns).
        """
        size_h, size_w = int(height * self.ratio + 0.5), int(width * self.ratio + 0.5)
        top = _uniform_int(self.unit_h, height + 1 - size_h % 2) - size_h // 2
        left = _uniform_int(self.unit_w, width + 1 - size_w % 2) - size_w // 2
        return top, left, size_h, size_w

    def apply(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` -> ``(N, C, H, W)`` with the rectangle set to zero."""
        h, w = x.shape[-2:]
        top, left, size_h, size_w = self.box(h, w)
        rows = torch.arange(h, device=x.device) - top.to(x.device)[:, None]  # (B, H)
        cols = torch.arange(w, device=x.device) - left.to(x.device)[:, None]  # (B, W)
        cut = ((rows >= 0) & (rows < size_h))[:, :, None] & ((cols >= 0) & (cols < size_w))[
            :, None, :
        ]
        return x * (~cut).to(x.dtype)[:, None]


@dataclass(frozen=True)
class FlipParams:
    """Whether each image is flipped horizontally, ``(B,)`` bool."""

    name: ClassVar[str] = "flip"
    flip: Tensor

    def apply(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` -> ``(N, C, H, W)``, flipped along ``W`` where ``flip``."""
        return torch.where(self.flip.to(x.device).view(-1, 1, 1, 1), x.flip(3), x)


@dataclass(frozen=True)
class ScaleParams:
    """Horizontal and vertical sampling scales ``(B,)`` (``> 1`` shrinks the content)."""

    name: ClassVar[str] = "scale"
    sx: Tensor
    sy: Tensor

    def apply(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` -> ``(N, C, H, W)``, resampled bilinearly, zero padded."""
        zero = torch.zeros_like(self.sx)
        theta = torch.stack(
            [torch.stack([self.sx, zero, zero], -1), torch.stack([zero, self.sy, zero], -1)], 1
        )
        return _warp(x, theta)


@dataclass(frozen=True)
class RotateParams:
    """Rotation angles ``(B,)`` in radians, positive = anticlockwise."""

    name: ClassVar[str] = "rotate"
    angle: Tensor

    def apply(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` -> ``(N, C, H, W)``, rotated about the centre in normalised
        coordinates (a true rotation for square images), bilinear, zero padded."""
        cos, sin, zero = self.angle.cos(), self.angle.sin(), torch.zeros_like(self.angle)
        theta = torch.stack(
            [torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1
        )
        return _warp(x, theta)


GroupParams: TypeAlias = (
    ColorParams | CropParams | CutoutParams | FlipParams | ScaleParams | RotateParams
)


def _to_device(group: GroupParams, device: torch.device) -> GroupParams:
    moved = {
        f.name: getattr(group, f.name).to(device)
        for f in fields(group)
        if isinstance(getattr(group, f.name), Tensor)
    }
    return replace(group, **moved)


@dataclass(frozen=True)
class DSAParams:
    """One draw of DSA parameters: the chosen group(s) in the order they are applied.

    ``batch_size`` is ``None`` for a shared draw (tensors of length 1, broadcast to any
    batch: the siamese case) and the batch size for per-sample draws (tensors of that
    length, applicable only to a batch of that size).
    """

    groups: tuple[GroupParams, ...]
    batch_size: int | None

    @property
    def names(self) -> tuple[str, ...]:
        """The names of the chosen groups, e.g. ``("crop",)``."""
        return tuple(group.name for group in self.groups)

    def to(self, device: torch.device | str) -> DSAParams:
        """The same parameters with their tensors on ``device``."""
        target = torch.device(device)
        return replace(self, groups=tuple(_to_device(group, target) for group in self.groups))

    def apply(self, x: Tensor) -> Tensor:
        """Apply the groups in order: ``(N, C, H, W)`` -> ``(N, C, H, W)``."""
        if self.batch_size is not None and x.shape[0] != self.batch_size:
            raise InvalidValueError(
                f"x has batch size {x.shape[0]} but the params were drawn per sample for "
                f"batch_size={self.batch_size}; draw them with shared=True to reuse them"
            )
        for group in self.groups:
            x = group.apply(x)
        return x


def _parse_strategy(strategy: str) -> tuple[str, ...]:
    if not isinstance(strategy, str):
        raise InvalidTypeError(
            f"strategy must be a str, got {type(strategy).__name__} {strategy!r}"
        )
    names = tuple(strategy.split("_"))
    unknown = [name for name in names if name not in GROUPS]
    if unknown:
        raise InvalidValueError(
            f"strategy {strategy!r} has unknown group(s) {unknown}; groups are {list(GROUPS)} "
            "joined by '_'"
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InvalidValueError(f"strategy {strategy!r} repeats group(s) {repeated}")
    return names


def _check_generator(generator: torch.Generator | None) -> None:
    if generator is not None and generator.device.type != "cpu":
        raise InvalidValueError(
            f"generator must be a CPU torch.Generator (draws are made on the CPU so they do "
            f"not depend on the device), got one on {generator.device}"
        )


class DSA(nn.Module):
    """Differentiable siamese augmentation, ``(N, C, H, W)`` -> ``(N, C, H, W)``.

    Args:
        strategy: groups joined by ``"_"``, from ``color``, ``crop``, ``cutout``,
            ``flip``, ``scale``, ``rotate``. Drop ``flip`` for digits (a flipped digit
            is another glyph): ``"color_crop_cutout_scale_rotate"``.
        **param_overrides: fields of :class:`DSAConfig`, e.g. ``ratio_rotate=10.0``
            or ``mode="M"``.

    Siamese use (DSA, DM, MTT distillers): one shared draw applied to both batches,
    whose sizes may differ::

        p = dsa.sample_params(1, generator=g)      # shared=True
        loss = match(net(dsa(real, p)), net(dsa(syn, p)))

    Training use: ``dsa(x, generator=g)`` draws per-sample parameters (the reference's
    non-siamese mode; one group per call in mode ``"S"``). Active in train and eval mode;
    gradients flow to ``x``.
    """

    def __init__(self, strategy: str = DEFAULT_STRATEGY, **param_overrides: Any) -> None:
        super().__init__()
        self.groups = _parse_strategy(strategy)
        known = [f.name for f in fields(DSAConfig)]
        unknown = sorted(set(param_overrides) - set(known))
        if unknown:
            raise InvalidValueError(f"unknown DSA parameter(s) {unknown}; expected some of {known}")
        self.config = DSAConfig(**param_overrides)
        self._draws: dict[str, Callable[[int, torch.Generator | None], GroupParams]] = {
            "color": self._draw_color,
            "crop": self._draw_crop,
            "cutout": self._draw_cutout,
            "flip": self._draw_flip,
            "scale": self._draw_scale,
            "rotate": self._draw_rotate,
        }

    @property
    def strategy(self) -> str:
        """The strategy string, groups joined by ``"_"``."""
        return "_".join(self.groups)

    def sample_params(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        shared: bool = True,
        device: torch.device | str | None = None,
    ) -> DSAParams:
        """Draw parameters: one draw for any batch (``shared=True``, siamese) or one per
        sample of a batch of ``batch_size`` (``shared=False``).

        Draws come from ``generator`` (a CPU generator; ``None`` = torch's global RNG) on
        the CPU; ``device`` places the returned tensors (default CPU).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        _check_generator(generator)
        size = 1 if shared else batch_size
        chosen: tuple[str, ...]
        if self.config.mode == "S":
            chosen = (self.groups[int(torch.randint(len(self.groups), (1,), generator=generator))],)
        else:
            chosen = self.groups
        params = DSAParams(
            groups=tuple(self._draws[name](size, generator) for name in chosen),
            batch_size=None if shared else batch_size,
        )
        return params if device is None else params.to(device)

    def forward(
        self,
        x: Tensor,
        params: DSAParams | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Augment ``x`` ``(N, C, H, W)`` with ``params``, or with fresh per-sample
        parameters drawn from ``generator`` when ``params`` is ``None``."""
        if not isinstance(x, Tensor):
            raise InvalidTypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 4 or x.shape[0] == 0:
            raise InvalidValueError(
                f"x must have shape (N, C, H, W) with N >= 1, got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise InvalidTypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        if params is None:
            params = self.sample_params(x.shape[0], generator=generator, shared=False)
        elif generator is not None:
            raise InvalidValueError(
                "pass either params or generator, not both: params are not redrawn"
            )
        return params.apply(x)

    def extra_repr(self) -> str:
        return f"strategy={self.strategy!r}, config={self.config}"

    def _draw_color(self, size: int, generator: torch.Generator | None) -> ColorParams:
        cfg = self.config
        return ColorParams(
            brightness=(torch.rand(size, generator=generator) - 0.5) * cfg.brightness,
            saturation=torch.rand(size, generator=generator) * cfg.saturation,
            contrast=torch.rand(size, generator=generator) + cfg.contrast,
        )

    def _draw_crop(self, size: int, generator: torch.Generator | None) -> CropParams:
        return CropParams(
            ratio=self.config.ratio_crop_pad,
            unit_h=torch.rand(size, generator=generator, dtype=torch.float64),
            unit_w=torch.rand(size, generator=generator, dtype=torch.float64),
        )

    def _draw_cutout(self, size: int, generator: torch.Generator | None) -> CutoutParams:
        return CutoutParams(
            ratio=self.config.ratio_cutout,
            unit_h=torch.rand(size, generator=generator, dtype=torch.float64),
            unit_w=torch.rand(size, generator=generator, dtype=torch.float64),
        )

    def _draw_flip(self, size: int, generator: torch.Generator | None) -> FlipParams:
        return FlipParams(flip=torch.rand(size, generator=generator) < self.config.prob_flip)

    def _draw_scale(self, size: int, generator: torch.Generator | None) -> ScaleParams:
        high = self.config.ratio_scale
        low = 1.0 / high
        return ScaleParams(
            sx=torch.rand(size, generator=generator) * (high - low) + low,
            sy=torch.rand(size, generator=generator) * (high - low) + low,
        )

    def _draw_rotate(self, size: int, generator: torch.Generator | None) -> RotateParams:
        limit = math.radians(self.config.ratio_rotate)
        return RotateParams(angle=(torch.rand(size, generator=generator) * 2.0 - 1.0) * limit)


def dsa_from_strategy(strategy: str) -> DSA | None:
    """``DSA(strategy)``, or ``None`` for ``"none"`` (no augmentation)."""
    return None if strategy == "none" else DSA(strategy)
