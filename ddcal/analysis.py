"""Analyses of distilled data and the networks trained on it (torch only).

* :func:`explained_variance_ratio`: how evenly a set of images spreads over
  directions, by the cumulative share of its singular values (the paper's
  Figure 1) or PCA's explained variance; Masked Distillation Training flattens
  this curve.
* :func:`max_logit_statistics`: the distribution of a network's largest logit
  on clean or masked inputs.
* :func:`feature_projections`: 2-D views (PCA, or t-SNE with scikit-learn) of
  a network's features, layer by layer.

Plots of all three are in :mod:`ddcal.plot`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ddcal._validation import as_tensor, check_choice, check_positive_int
from ddcal.errors import InvalidTypeError, InvalidValueError
from ddcal.inference import check_images, predict_logits
from ddcal.masking import check_mask_ratio, mask_inputs
from ddcal.models import ConvNet

__all__ = [
    "EXPLAINED_RATIO_KINDS",
    "PROJECTION_METHODS",
    "MaxLogitStatistics",
    "explained_variance_ratio",
    "feature_projections",
    "max_logit_statistics",
]

#: Kinds :func:`explained_variance_ratio` accepts; the first (the paper's) is the default.
EXPLAINED_RATIO_KINDS: tuple[str, ...] = ("singular", "pca")

#: Methods :func:`feature_projections` accepts.
PROJECTION_METHODS: tuple[str, ...] = ("pca", "tsne")

_TSNE_PERPLEXITY = 30.0


def _float64_device(tensor: Tensor) -> torch.device:
    """Where float64 work on ``tensor`` runs: its own device, or the CPU for MPS (no float64)."""
    return torch.device("cpu") if tensor.device.type == "mps" else tensor.device


def _check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _check_samples(images: Any, name: str) -> Tensor:
    """Validate real, finite ``(N, C, H, W)`` or ``(N, D)`` data, ``N >= 2``; return ``(N, D)``."""
    tensor = as_tensor(images, name)
    if tensor.ndim not in (2, 4):
        raise InvalidValueError(
            f"{name} must have shape (N, C, H, W) or (N, D), got shape {tuple(tensor.shape)}"
        )
    if tensor.is_complex() or tensor.dtype == torch.bool:
        raise InvalidTypeError(f"{name} must hold real numbers, got dtype {tensor.dtype}")
    if tensor.shape[0] < 2 or tensor[0].numel() == 0:
        raise InvalidValueError(
            f"{name} needs at least 2 samples of at least 1 value each, "
            f"got shape {tuple(tensor.shape)}"
        )
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise InvalidValueError(f"{name} must be finite, got NaN or inf")
    return torch.flatten(tensor, 1)


def _gram_eigenvalues(data: Tensor) -> Tensor:
    """Squared singular values ``(min(N, D),)`` of non-zero ``data (N, D)``, descending, scaled.

    They are the eigenvalues of the smaller Gram matrix of ``data / max|data|``
    (the ratios do not depend on the scale, and it keeps the Gram matrix from
    overflowing). Values within rounding error of 0 (below ``min(N, D) * eps *
    largest``) are set to 0: the square root of the singular kind would lift
    that noise from ~1e-16 to ~1e-8 of the largest value.
    """
    data = data / data.abs().max()
    # ~100x faster than svdvals on a wide (N << D) float64 matrix with torch's CPU LAPACK.
    gram = data @ data.T if data.shape[0] <= data.shape[1] else data.T @ data
    eigenvalues = torch.linalg.eigvalsh(gram).flip(0)
    rounding = eigenvalues[0] * gram.shape[0] * torch.finfo(torch.float64).eps
    return torch.where(eigenvalues > rounding, eigenvalues, 0.0)


def _singular_values(data: Tensor) -> Tensor:
    """Singular values ``(min(N, D),)`` of the uncentred ``data (N, D)``, descending."""
    if not bool(data.any()):
        raise InvalidValueError(
            f"images is all zeros (shape {tuple(data.shape)}): it has no non-zero singular "
            "value, so the explained ratio is undefined"
        )
    return _gram_eigenvalues(data).sqrt()


def _principal_variances(data: Tensor) -> Tensor:
    """Variances ``(min(N, D),)`` along the principal directions of ``data (N, D)``, descending."""
    # Checked before centring: the centred residue of equal rows is rounding noise, not 0.
    if bool((data == data[0]).all()):
        raise InvalidValueError(
            f"images has no variance: all {data.shape[0]} samples are equal, "
            "so the PCA explained-variance ratio is undefined"
        )
    return _gram_eigenvalues(data - data.mean(dim=0))


def explained_variance_ratio(images: Any, *, kind: str = "singular") -> Tensor:
    """Cumulative explained ratio of a set of images: the paper's Figure 1 by default.

    The samples are flattened to ``X (N, D)``. With ``v_1 >= v_2 >= ...`` the
    values below, entry ``k`` is ``sum_{i <= k} v_i / sum_i v_i``:

    * ``kind="singular"`` (the paper's): ``v_i = s_i``, the singular values of
      ``X`` itself, neither centred nor squared.
    * ``kind="pca"``: ``v_i = s_i^2`` of the centred ``X - mean``, the variance
      explained by the first ``k + 1`` principal directions.

    A flatter curve (slower to reach 1) means the information is spread over
    more directions. Compute it per class by indexing ``images[labels == c]``.

    Args:
        images: ``(N, C, H, W)`` or ``(N, D)`` tensor or numpy array, real and
            finite, ``N >= 2``. Computed in float64.
        kind: ``"singular"`` or ``"pca"`` (:data:`EXPLAINED_RATIO_KINDS`).

    Returns:
        ``(min(N, D),)`` float64 CPU tensor, non-decreasing, in ``[0, 1]``,
        last entry exactly 1. Data of rank ``r`` reaches 1 at entry ``r - 1``
        (for ``"pca"`` the rank after centring, at most ``N - 1``).

    Raises:
        ValueError: wrong shape, fewer than 2 samples, NaN or inf, an unknown
            ``kind``; all-zero data for ``"singular"``, or all samples equal
            (no variance) for ``"pca"``: the ratio is 0/0.
        TypeError: not a tensor or array, or complex or bool.
    """
    kind = check_choice(kind, "kind", EXPLAINED_RATIO_KINDS)
    data = _check_samples(images, "images")
    data = data.to(device=_float64_device(data), dtype=torch.float64)
    values = _singular_values(data) if kind == "singular" else _principal_variances(data)
    cumulative = torch.cumsum(values, dim=0)
    # Dividing by the last partial sum (not a separate sum) makes the last entry exactly 1.
    return (cumulative / cumulative[-1]).cpu()


@dataclass(frozen=True, eq=False)
class MaxLogitStatistics:
    """The largest logit of a network on each of ``N`` inputs.

    Attributes:
        values: ``(N,)`` float32 CPU tensor, ``max_c logits[n, c]``.

    ``mean``, ``std`` (population, ``ddof = 0``) and ``median`` (the mean of
    the two middle values for even ``N``, as numpy's) are computed in float64.
    """

    values: Tensor

    @property
    def mean(self) -> float:
        """Mean of :attr:`values`."""
        return float(self.values.double().mean())

    @property
    def std(self) -> float:
        """Population standard deviation of :attr:`values` (0 for one value)."""
        return float(self.values.double().std(correction=0))

    @property
    def median(self) -> float:
        """Median of :attr:`values`."""
        return float(torch.quantile(self.values.double(), 0.5))


def max_logit_statistics(
    model: nn.Module,
    images: Any,
    mask_ratio: float = 0.0,
    *,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> MaxLogitStatistics:
    """Distribution of the largest logit of ``model`` on (masked) ``images``.

    With ``mask_ratio > 0`` the whole of ``images`` is first masked once with
    :func:`ddcal.masking.mask_inputs` (the mask of MTS and MDT) and a CPU
    ``torch.Generator`` seeded with ``seed``, so the result does not depend on
    ``batch_size``. Logits come from :func:`ddcal.inference.predict_logits`
    (eval mode, no autograd, batched; the model's mode is restored).

    Args:
        model: network ``(B, ...) -> (B, K)``.
        images: inputs ``(N, ...)``, floating point and finite.
        mask_ratio: probability of zeroing each input element, ``0 <= r < 1``.
        seed: seed of the mask, ``>= 0``.
        batch_size: inputs per forward pass.
        device: where to run; the model is moved there. Default: the model's device.

    Returns:
        :class:`MaxLogitStatistics` with ``values (N,)``.

    Raises:
        ValueError: bad ``mask_ratio``, ``seed``, ``batch_size`` or ``images``,
            or a model that returns NaN or inf.
    """
    model = _check_model(model)
    ratio = check_mask_ratio(mask_ratio, "mask_ratio")
    seed = check_positive_int(seed, "seed", minimum=0)
    inputs = check_images(images)
    if ratio > 0.0:
        inputs = mask_inputs(inputs, ratio, generator=torch.Generator().manual_seed(seed))
    logits = predict_logits(model, inputs, batch_size=batch_size, device=device)
    if not bool(torch.isfinite(logits).all()):
        raise InvalidValueError("model returned NaN or inf logits")
    return MaxLogitStatistics(logits.amax(dim=1).to(device="cpu", dtype=torch.float32))


def _default_layers(model: nn.Module) -> list[str]:
    """Each block's output of a ddcal ConvNet (its pooling layer); the last is the embedding."""
    if not isinstance(model, ConvNet):
        raise InvalidValueError(
            "layers is required for a model that is not a ddcal ConvNet, "
            f"got {type(model).__name__}"
        )
    return [
        f"features.{index}"
        for index, module in enumerate(model.features)
        if isinstance(module, nn.AvgPool2d)
    ]


def _check_layers(model: nn.Module, layers: Sequence[str] | None) -> list[str]:
    if layers is None:
        return _default_layers(model)
    if isinstance(layers, str) or not isinstance(layers, Sequence):
        raise InvalidTypeError(f"layers must be a sequence of module names, got {layers!r}")
    names = list(layers)
    if not names:
        raise InvalidValueError("layers is empty: name at least one module")
    if len(set(names)) != len(names):
        raise InvalidValueError(f"layers must not repeat a name, got {names!r}")
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules:
            available = ", ".join(repr(key) for key in list(modules)[1:11])
            raise InvalidValueError(
                f"layers: model has no module named {name!r}; modules include {available}"
            )
    return names


def _tsne_class() -> Any:
    try:
        manifold = importlib.import_module("sklearn.manifold")
    except ImportError as exc:
        raise ImportError(
            "feature_projections(method='tsne') needs scikit-learn: pip install scikit-learn"
        ) from exc
    return manifold.TSNE


def _pca_2d(features: Tensor) -> Tensor:
    """Scores ``(N, 2)`` on the two leading principal directions of ``features (N, D)``.

    Each direction's largest-magnitude loading is made positive.
    """
    x = features.to(device=_float64_device(features), dtype=torch.float64)
    x = x - x.mean(dim=0)
    if x.shape[0] <= x.shape[1]:
        # Early conv layers have D >> N: the (N, N) Gram matrix is far cheaper
        # than an SVD, and its top eigenvectors scaled by sqrt(eigenvalue) are the scores.
        eigenvalues, vectors = torch.linalg.eigh(x @ x.T)
        top = vectors[:, -2:].flip(1)
        scores: Tensor = top * eigenvalues[-2:].flip(0).clamp_min(0.0).sqrt()
        loadings = x.T @ top
    else:
        _, vectors = torch.linalg.eigh(x.T @ x)
        loadings = vectors[:, -2:].flip(1)
        scores = x @ loadings
    peak = loadings.abs().argmax(dim=0, keepdim=True)
    signs = torch.where(loadings.gather(0, peak) < 0, -1.0, 1.0).to(scores.dtype)
    return (scores * signs).to(device="cpu", dtype=torch.float32)


def _tsne_2d(tsne: Any, features: Tensor, seed: int) -> Tensor:
    samples = features.shape[0]
    embedding = tsne(
        n_components=2,
        perplexity=min(_TSNE_PERPLEXITY, (samples - 1) / 3),
        init="pca",
        learning_rate="auto",
        random_state=seed,
    ).fit_transform(features.to(device="cpu", dtype=torch.float64).numpy())
    return torch.as_tensor(embedding, dtype=torch.float32)


def _capture(
    captured: list[Tensor], name: str, device: torch.device
) -> Callable[[nn.Module, Any, Any], None]:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if not isinstance(output, Tensor) or output.ndim < 2:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise InvalidValueError(f"layer {name!r} must output a tensor (B, ...), got {shape}")
        # A copy: a later in-place layer (ReLU(inplace=True)) would overwrite a view.
        captured.append(torch.flatten(output, 1).to(device=device, copy=True))

    return hook


def _layer_features(
    model: nn.Module,
    inputs: Tensor,
    names: list[str],
    batch_size: int,
    device: str | torch.device | None,
) -> dict[str, Tensor]:
    """Outputs ``(N, D_layer)`` of the named modules, on the device of ``inputs``."""
    modules = dict(model.named_modules())
    captured: dict[str, list[Tensor]] = {name: [] for name in names}
    handles = [
        modules[name].register_forward_hook(_capture(captured[name], name, inputs.device))
        for name in names
    ]
    try:
        predict_logits(model, inputs, batch_size=batch_size, device=device)
    finally:
        for handle in handles:
            handle.remove()
    features = {}
    for name, chunks in captured.items():
        if not chunks:
            raise InvalidValueError(f"layer {name!r} never ran in the forward pass of the model")
        stacked = torch.cat(chunks)
        if stacked.shape[0] != inputs.shape[0]:
            raise InvalidValueError(
                f"layer {name!r} gave {stacked.shape[0]} rows for {inputs.shape[0]} images: "
                "it must run once per forward pass and keep the batch dimension first"
            )
        if stacked.shape[1] < 2:
            raise InvalidValueError(
                f"layer {name!r} has {stacked.shape[1]} feature; a 2-D view needs 2"
            )
        if not bool(torch.isfinite(stacked).all()):
            raise InvalidValueError(f"layer {name!r} output NaN or inf")
        features[name] = stacked
    return features


def feature_projections(
    model: nn.Module,
    images: Any,
    method: str = "pca",
    *,
    layers: Sequence[str] | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> dict[str, Tensor]:
    """2-D projections of the features of ``model`` on ``images``, layer by layer.

    Features are captured with forward hooks during one batched eval-mode pass
    (:func:`ddcal.inference.predict_logits`; the model's mode is restored),
    flattened to ``(N, D)`` and projected:

    * ``"pca"``: exact PCA in float64 onto the two leading principal
      directions, each signed so that its largest-magnitude loading is
      positive (deterministic; ``seed`` is unused).
    * ``"tsne"``: ``sklearn.manifold.TSNE(random_state=seed)`` with PCA
      initialisation and perplexity ``min(30, (N - 1) / 3)``; needs scikit-learn.

    Args:
        model: network ``(B, ...) -> (B, K)``.
        images: inputs ``(N, ...)``, floating point and finite, ``N >= 2``.
        method: ``"pca"`` or ``"tsne"``.
        layers: names of modules (as in ``model.named_modules()``) whose output
            to project. ``None`` for a :class:`ddcal.models.ConvNet`: the output
            of each conv block (its ``AvgPool2d``, e.g. ``"features.3"``,
            ``"features.7"``, ``"features.11"`` for D3 with a norm layer); the
            last one, flattened, is the embedding the classifier sees. Required
            for any other model.
        seed: ``random_state`` of t-SNE, ``>= 0``.
        batch_size: inputs per forward pass.
        device: where to run; the model is moved there. Default: the model's device.

    Returns:
        ``{layer name: (N, 2) float32 CPU tensor}`` in the order of ``layers``.

    Raises:
        ValueError: unknown ``method``, unknown or repeated layer names, bad
            ``images``, a layer that does not output one ``(B, ...)`` tensor per
            batch or has fewer than 2 features.
        ImportError: ``method="tsne"`` without scikit-learn.
    """
    model = _check_model(model)
    method = check_choice(method, "method", PROJECTION_METHODS)
    seed = check_positive_int(seed, "seed", minimum=0)
    batch_size = check_positive_int(batch_size, "batch_size")
    tsne = _tsne_class() if method == "tsne" else None
    inputs = check_images(images)
    if inputs.shape[0] < 2:
        raise InvalidValueError(f"images needs at least 2 samples, got shape {tuple(inputs.shape)}")
    names = _check_layers(model, layers)
    features = _layer_features(model, inputs, names, batch_size, device)
    if tsne is None:
        return {name: _pca_2d(values) for name, values in features.items()}
    return {name: _tsne_2d(tsne, values, seed) for name, values in features.items()}
