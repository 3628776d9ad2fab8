"""ZCA whitening of image datasets, as MTT uses it (kornia's ``ZCAWhitening``).

Each image ``(C, H, W)`` is flattened to a vector of ``D = C * H * W``
features. ``fit`` estimates the mean ``mu`` and the (unbiased) covariance
``Sigma = U diag(S) U^T`` of the training images; the transform is
``(x - mu) @ W`` with ``W = U diag((S + eps)^-1/2) U^T``, so the whitened
training data has covariance ``U diag(S / (S + eps)) U^T``: near identity
along directions with variance much larger than ``eps``, damped along the
rest. ``eps = 0.1`` as in the MTT reference. The same ``mu`` and ``W`` are
applied to every split (train, test, distilled images).
"""

from __future__ import annotations

import math
from typing import Any

import kornia
import torch

from ddcal._validation import check_positive_int
from ddcal.errors import InvalidTypeError, InvalidValueError
from ddcal.inference import check_images

__all__ = ["ZCA"]

_STATE_KEYS = ("eps", "image_shape", "mean", "transform")


class ZCA:
    """ZCA whitening fitted on training images, applied identically to any split.

    Wraps ``kornia.enhance.ZCAWhitening(eps=eps, compute_inv=True)`` with
    images ``(N, C, H, W)`` flattened per sample (the MTT reference's usage).
    Fit and transform run in the dtype of the fitting images (float32 as the
    reference; pass float64 for more precision); inputs of another dtype are
    converted for the product and the result returned in the input's dtype.

    Example:
        >>> zca = ZCA().fit(train_images)                   # (N, C, H, W)
        >>> train_w, test_w = zca(train_images), zca(test_images)
        >>> pixels = zca.inverse(distilled_images)           # back to image space
    """

    def __init__(self, eps: float = 0.1) -> None:
        self._eps = _check_eps(eps, "eps")
        self._image_shape: tuple[int, int, int] | None = None
        self._whitening: Any = None  # kornia.enhance.ZCAWhitening once fitted

    @property
    def eps(self) -> float:
        """The regulariser added to the covariance eigenvalues."""
        return self._eps

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` (or :meth:`load_state_dict`) has run."""
        return self._whitening is not None

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """Per-image shape ``(C, H, W)`` the transform was fitted on; ``None`` before."""
        return self._image_shape

    def fit(self, images: Any) -> ZCA:
        """Estimate mean and whitening matrix from training images ``(N, C, H, W)``, N >= 2."""
        batch = _check_image_batch(images, "images")
        if batch.shape[0] < 2:
            raise InvalidValueError(
                f"images must hold at least 2 images to fit ZCA, got {batch.shape[0]}"
            )
        if not bool(torch.isfinite(batch).all()):
            raise InvalidValueError("images must be finite, got NaN or inf")
        whitening = kornia.enhance.ZCAWhitening(eps=self._eps, compute_inv=True)
        whitening.fit(batch.detach())
        self._whitening = whitening
        self._image_shape = (int(batch.shape[1]), int(batch.shape[2]), int(batch.shape[3]))
        return self

    def transform(self, images: Any) -> torch.Tensor:
        """Whitened images ``(N, C, H, W)``: ``(x - mean) @ W`` per flattened image."""
        batch, whitening = self._check_input(images, "images")
        out: torch.Tensor = whitening(batch.to(whitening.transform_matrix.dtype))
        return out.to(batch.dtype)

    __call__ = transform

    def inverse(self, images: Any) -> torch.Tensor:
        """Undo :meth:`transform` (to look at whitened or distilled images), ``(N, C, H, W)``."""
        batch, whitening = self._check_input(images, "images")
        if whitening.transform_inv.numel() == 0:
            # Restored from a state dict, which omits the inverse: invert once, on demand.
            whitening.transform_inv = torch.linalg.inv(whitening.transform_matrix)
        out: torch.Tensor = whitening.inverse_transform(batch.to(whitening.transform_matrix.dtype))
        return out.to(batch.dtype)

    def to(self, device: torch.device | str) -> ZCA:
        """Move the fitted mean and matrices to ``device``; returns ``self``."""
        whitening, _ = self._fit()
        target = torch.device(device)
        for name in ("mean_vector", "transform_matrix", "transform_inv"):
            setattr(whitening, name, getattr(whitening, name).to(target))
        return self

    def state_dict(self) -> dict[str, Any]:
        """The fit as plain values and CPU tensors, loadable with ``torch.load(weights_only=True)``.

        Keys: ``eps`` (float), ``image_shape`` (``[C, H, W]``), ``mean`` ``(1, D)``
        and ``transform`` ``(D, D)``. The inverse is not stored (it would double
        the size, ``4 * D**2`` bytes in float32: 38 MB for 3x32x32 images); it is
        recomputed when :meth:`inverse` is first called after loading.
        """
        whitening, image_shape = self._fit()
        return {
            "eps": self._eps,
            "image_shape": list(image_shape),
            "mean": whitening.mean_vector.detach().cpu().clone(),
            "transform": whitening.transform_matrix.detach().cpu().clone(),
        }

    def load_state_dict(self, state: Any) -> ZCA:
        """Restore a fit saved by :meth:`state_dict`; returns ``self``."""
        if not isinstance(state, dict) or set(state) != set(_STATE_KEYS):
            got = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
            raise InvalidValueError(
                f"state must be a dict with keys {list(_STATE_KEYS)}, got {got}"
            )
        eps = _check_eps(state["eps"], "state['eps']")
        shape = state["image_shape"]
        if not isinstance(shape, (list, tuple)) or len(shape) != 3:
            raise InvalidValueError(f"state['image_shape'] must be [C, H, W], got {shape!r}")
        image_shape = (
            check_positive_int(shape[0], "state['image_shape'][0]"),
            check_positive_int(shape[1], "state['image_shape'][1]"),
            check_positive_int(shape[2], "state['image_shape'][2]"),
        )
        features = math.prod(image_shape)
        mean, transform = state["mean"], state["transform"]
        for key, tensor, expected in (
            ("mean", mean, (1, features)),
            ("transform", transform, (features, features)),
        ):
            if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
                kind = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise InvalidTypeError(
                    f"state['{key}'] must be a floating-point tensor, got {kind}"
                )
            if tuple(tensor.shape) != expected:
                raise InvalidValueError(
                    f"state['{key}'] must have shape {expected} for images {image_shape}, "
                    f"got {tuple(tensor.shape)}"
                )
            if not bool(torch.isfinite(tensor).all()):
                raise InvalidValueError(f"state['{key}'] must be finite, got NaN or inf")
        if mean.dtype != transform.dtype or mean.device != transform.device:
            raise InvalidValueError(
                "state['mean'] and state['transform'] must share dtype and device, got "
                f"{mean.dtype}/{mean.device} and {transform.dtype}/{transform.device}"
            )
        whitening = kornia.enhance.ZCAWhitening(eps=eps, compute_inv=True)
        whitening.mean_vector = mean.detach().clone()
        whitening.transform_matrix = transform.detach().clone()
        whitening.transform_inv = transform.new_empty(0)
        whitening.fitted = True
        self._eps, self._image_shape, self._whitening = eps, image_shape, whitening
        return self

    def _fit(self) -> tuple[Any, tuple[int, int, int]]:
        """The kornia module and the image shape; raises if not fitted."""
        if self._whitening is None or self._image_shape is None:
            raise RuntimeError(
                "this ZCA is not fitted yet: call fit(train_images) or load_state_dict(state) first"
            )
        return self._whitening, self._image_shape

    def _check_input(self, images: Any, name: str) -> tuple[torch.Tensor, Any]:
        """``images`` validated against the fit, and the kornia module to apply."""
        whitening, image_shape = self._fit()
        batch = _check_image_batch(images, name)
        if tuple(batch.shape[1:]) != image_shape:
            raise InvalidValueError(
                f"{name} must have per-image shape {image_shape} (C, H, W) as fitted, "
                f"got {tuple(batch.shape[1:])}"
            )
        device = whitening.transform_matrix.device
        if batch.device != device:
            raise InvalidValueError(
                f"{name} are on {batch.device} but the ZCA is on {device}; "
                f"call zca.to({str(batch.device)!r}) first"
            )
        return batch, whitening

    def __repr__(self) -> str:
        shape = self._image_shape if self.fitted else "not fitted"
        return f"{type(self).__name__}(eps={self._eps!r}, image_shape={shape})"


def _check_eps(eps: Any, name: str) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise InvalidTypeError(f"{name} must be a float, got {type(eps).__name__} {eps!r}")
    if not (math.isfinite(eps) and eps > 0):
        raise InvalidValueError(f"{name} must be a positive finite float, got {eps!r}")
    return float(eps)


def _check_image_batch(images: Any, name: str) -> torch.Tensor:
    batch = check_images(images, name)
    if batch.ndim != 4:
        raise InvalidValueError(
            f"{name} must have shape (N, C, H, W), got shape {tuple(batch.shape)}"
        )
    return batch
