"""A Lightning callback: ddcal's default calibrator, fitted when ``fit`` ends, and its metrics.

Needs the optional extra: ``pip install 'ddcal[lightning]'`` (the ``lightning``
package; the callback is a ``lightning.pytorch.Callback``).

:class:`MaskedTemperatureScaling` fits a :class:`~ddcal.MaskedTemperatureScaler`
(by default ``MaskedTemperatureScaler()``: the label-free mask ratio) on the
training (distilled) data when training ends, and then, in
``trainer.validate`` and ``trainer.test``, logs the calibrated metrics of the
network beside the uncalibrated ones. Nothing is fitted on validation or
test data.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ddcal._validation import describe, is_data
from ddcal.errors import InvalidTypeError
from ddcal.inference import checked_batch, predict_logits
from ddcal.metrics import CalibrationMeter, _check_n_bins
from ddcal.scaling import MaskedTemperatureScaler

try:
    import lightning.pytorch as pl
    from lightning.pytorch.trainer.states import TrainerFn
    from lightning.pytorch.utilities import rank_zero_warn
except ImportError as exc:
    raise ImportError(
        "ddcal.integrations.lightning needs Lightning: pip install 'ddcal[lightning]'"
    ) from exc

__all__ = ["MaskedTemperatureScaling"]

#: The prefix of the logged names in each evaluating function of the trainer.
_STAGES = {TrainerFn.VALIDATING: "val", TrainerFn.TESTING: "test"}


class MaskedTemperatureScaling(pl.Callback):
    """Fit ddcal's calibrator at the end of ``fit``; log calibrated metrics on validation and test.

    When training ends (``on_train_end``, the network still on its device),
    ``scaler.fit(pl_module, data)`` runs on the training data: the trainer's
    training ``DataLoader`` (the distilled set), read once in its own order,
    unless ``data`` is given. The LightningModule's ``forward`` must return
    the logits ``(B, C)``.

    Afterwards ``trainer.validate`` logs, at the end of its epoch, with prefix
    ``val/`` (``trainer.test``: ``test/``), over all its batches and
    dataloaders together (and all processes: the meters are all-reduced):

    * ``calibrated_ece``, ``calibrated_nll``, ``calibrated_accuracy``: the
      metrics of the logits divided by the temperature (ECE with ``n_bins``
      equal-width bins, as :func:`ddcal.calibration_error`);
    * ``uncalibrated_ece``, ``uncalibrated_nll``: the same of the raw logits;
    * ``calibrated_temperature``: the fitted temperature.

    Each batch ``(images, labels)`` goes through the network once more for
    this (eval mode, no autograd). Validation inside ``fit``, before the
    temperature exists, logs nothing. Under several processes, pass ``data``
    (the whole set) so that every process fits the same temperature.

    Args:
        scaler: the calibrator to fit, a :class:`~ddcal.MaskedTemperatureScaler`
            (or :class:`~ddcal.TemperatureScaler`); default
            ``MaskedTemperatureScaler()``.
        data: what to fit on instead of the trainer's training dataloader: a
            Dataset or DataLoader of ``(image, label)`` pairs, or a pair
            ``(images, labels)`` of tensors.
        n_bins: bins of the logged ECE, 1 to ``ddcal.metrics.MAX_BINS``
            (default 15; the paper used 10).

    Attributes:
        scaler: the calibrator, fitted once ``fit`` has ended:
            ``callback.scaler.temperature_``, ``callback.scaler.calibrate(model)``.

    Example:
        >>> from ddcal.integrations.lightning import MaskedTemperatureScaling
        >>> calibration = MaskedTemperatureScaling()
        >>> trainer = lightning.pytorch.Trainer(callbacks=[calibration])  # doctest: +SKIP
        >>> trainer.fit(module, distilled_loader)  # doctest: +SKIP
        >>> trainer.test(module, test_loader)  # doctest: +SKIP
        [{'test/calibrated_ece': ..., 'test/uncalibrated_ece': ..., ...}]
    """

    def __init__(
        self,
        scaler: MaskedTemperatureScaler | None = None,
        *,
        data: Any = None,
        n_bins: int = 15,
    ) -> None:
        if scaler is not None and not isinstance(scaler, MaskedTemperatureScaler):
            raise InvalidTypeError(
                f"scaler must be a MaskedTemperatureScaler or None, got {type(scaler).__name__}"
            )
        if not (data is None or is_data(data) or _is_array_pair(data)):
            raise InvalidTypeError(
                "data must be a Dataset or DataLoader of (image, label) pairs, a pair "
                f"(images, labels) of tensors, or None, got {describe(data)}"
            )
        self.scaler = MaskedTemperatureScaler() if scaler is None else scaler
        self.data = data
        self.n_bins = _check_n_bins(n_bins)
        self._stage: str | None = None  # "val" or "test" while evaluating a fitted scaler
        self._raw = CalibrationMeter(self.n_bins, from_logits=True)
        self._calibrated = CalibrationMeter(self.n_bins, from_logits=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Fit the scaler on the training data (or ``data``)."""
        data: Any = self.data if self.data is not None else trainer.train_dataloader
        if _is_array_pair(data):
            self.scaler.fit(pl_module, data[0], data[1])
            return
        if not isinstance(data, torch.utils.data.DataLoader):
            raise InvalidTypeError(
                f"the trainer's train_dataloader is {describe(data)}, not one DataLoader: pass "
                "MaskedTemperatureScaling(data=...), the set to fit the temperature on"
            )
        self.scaler.fit(pl_module, data)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer)

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._update(pl_module, batch, batch_idx, "the validation dataloader")

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._update(pl_module, batch, batch_idx, "the test dataloader")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(pl_module)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(pl_module)

    def state_dict(self) -> dict[str, Any]:
        """What checkpoints save: the scaler's
        :meth:`~ddcal.scaling.MaskedTemperatureScaler.state_dict`."""
        return self.scaler.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the scaler from a checkpoint."""
        self.scaler.load_state_dict(state_dict)

    def _start(self, trainer: pl.Trainer) -> None:
        """Reset the meters when the trainer evaluates a fitted scaler (not inside ``fit``)."""
        function = trainer.state.fn
        self._stage = None if function is None else _STAGES.get(function)
        if self._stage is None:
            return
        if self.scaler.temperature_ is None:
            self._stage = None
            rank_zero_warn(
                "MaskedTemperatureScaling logs nothing: its scaler is not fitted (call "
                "trainer.fit first, or pass a fitted scaler)"
            )
            return
        self._raw.reset()
        self._calibrated.reset()

    def _update(self, pl_module: pl.LightningModule, batch: Any, index: int, name: str) -> None:
        if self._stage is None:
            return
        images, labels = checked_batch(batch, name, index)
        logits = predict_logits(pl_module, images, batch_size=images.shape[0])
        self._raw.update(logits, labels)
        self._calibrated.update(self.scaler.transform(logits), labels)

    def _log(self, pl_module: pl.LightningModule) -> None:
        stage, self._stage = self._stage, None
        if stage is None:
            return
        raw, calibrated = self._raw.all_reduce(), self._calibrated.all_reduce()
        if raw.count == 0:
            return
        before, after = raw.compute(), calibrated.compute()
        pl_module.log_dict(
            {
                f"{stage}/calibrated_ece": after["ece"],
                f"{stage}/calibrated_nll": after["nll"],
                f"{stage}/calibrated_accuracy": after["accuracy"],
                f"{stage}/calibrated_temperature": self.scaler._fitted_temperature(),
                f"{stage}/uncalibrated_ece": before["ece"],
                f"{stage}/uncalibrated_nll": before["nll"],
            }
        )


def _is_array_pair(data: Any) -> bool:
    """Whether ``data`` is ``(images, labels)``: two tensors or arrays."""
    arrays = (torch.Tensor, np.ndarray)
    return isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], arrays)
