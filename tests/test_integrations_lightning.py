"""Lightning out: MaskedTemperatureScaling with a tiny LightningModule on the CPU.

A few epochs on 10 random images per class (the "distilled" set), then
``trainer.validate`` and ``trainer.test``: what the callback logs equals ddcal's
functional metrics of the fitted scaler on those loaders.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ddcal import (
    MaskedTemperatureScaler,
    accuracy,
    calibration_error,
    negative_log_likelihood,
    predict_logits,
)
from ddcal.errors import InvalidTypeError

L = pytest.importorskip("lightning.pytorch")

from ddcal.integrations.lightning import MaskedTemperatureScaling  # noqa: E402

# Lightning 2.6's own use of a torch API that torch 2.13 deprecates (pyproject.toml
# makes every FutureWarning an error).
pytestmark = pytest.mark.filterwarnings(
    r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning"
)

NUM_CLASSES = 3
KEYS = (
    "calibrated_ece",
    "calibrated_nll",
    "calibrated_accuracy",
    "calibrated_temperature",
    "uncalibrated_ece",
    "uncalibrated_nll",
)


def _data(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(per_class * NUM_CLASSES) % NUM_CLASSES
    centres = torch.randn(NUM_CLASSES, 1, 6, 6, generator=torch.Generator().manual_seed(99))
    noise = torch.randn(len(labels), 1, 6, 6, generator=generator)
    return centres[labels] + 3.0 * noise, labels


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(36, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        return nn.functional.cross_entropy(self(images), labels)

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        self.log("val_loss", nn.functional.cross_entropy(self(images), labels))

    def test_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        self.log("test_loss", nn.functional.cross_entropy(self(images), labels))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.01)


def _trainer(callback: MaskedTemperatureScaling, **options: object) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **options,
    )


@dataclass
class Run:
    module: Tiny
    trainer: L.Trainer
    callback: MaskedTemperatureScaling
    train: tuple[torch.Tensor, torch.Tensor]
    loaders: dict[str, DataLoader[tuple[torch.Tensor, ...]]]
    after_fit: set[str]
    logged: dict[str, dict[str, float]]


@pytest.fixture(scope="module")
def run(one_torch_thread: None) -> Run:
    torch.manual_seed(0)
    train = _data(per_class=10, seed=0)
    loaders = {
        stage: DataLoader(TensorDataset(*_data(per_class=60, seed=seed)), batch_size=64)
        for stage, seed in (("val", 1), ("test", 2))
    }
    module, callback = Tiny(), MaskedTemperatureScaling()
    trainer = _trainer(callback, max_epochs=40, log_every_n_steps=1, num_sanity_val_steps=0)
    trainer.fit(module, DataLoader(TensorDataset(*train), batch_size=10), loaders["val"])
    after_fit = set(trainer.callback_metrics)
    (validated,) = trainer.validate(module, loaders["val"], verbose=False)
    (tested,) = trainer.test(module, loaders["test"], verbose=False)
    return Run(
        module, trainer, callback, train, loaders, after_fit, {"val": validated, "test": tested}
    )


def test_the_callback_fits_the_default_scaler_on_the_training_data(run: Run) -> None:
    scaler = run.callback.scaler
    assert isinstance(scaler, MaskedTemperatureScaler)
    assert scaler.mask_ratio == "auto"
    expected = MaskedTemperatureScaler().fit(run.module, *run.train)
    assert scaler.state_dict() == expected.state_dict()
    assert not any(key.startswith("val/") for key in run.after_fit)  # nothing logged inside fit


@pytest.mark.parametrize("stage", ["val", "test"])
def test_the_logged_metrics_are_those_of_the_fitted_scaler(run: Run, stage: str) -> None:
    logged = run.logged[stage]
    print(stage, {key: round(value, 4) for key, value in logged.items()})  # the report's numbers
    assert {f"{stage}/{key}" for key in KEYS} <= set(logged)
    logits, labels = predict_logits(run.module, run.loaders[stage], return_labels=True)
    scaled = run.callback.scaler.transform(logits)
    expected = {
        "calibrated_ece": calibration_error(scaled, labels, from_logits=True),
        "calibrated_nll": negative_log_likelihood(scaled, labels, from_logits=True),
        "calibrated_accuracy": accuracy(scaled, labels),
        "calibrated_temperature": run.callback.scaler.temperature_,
        "uncalibrated_ece": calibration_error(logits, labels, from_logits=True),
        "uncalibrated_nll": negative_log_likelihood(logits, labels, from_logits=True),
    }
    for key, value in expected.items():  # logged as float32
        assert logged[f"{stage}/{key}"] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def test_the_scaler_is_saved_in_checkpoints(run: Run, tmp_path: Path) -> None:
    run.trainer.save_checkpoint(tmp_path / "tiny.ckpt")
    checkpoint = torch.load(tmp_path / "tiny.ckpt", weights_only=False)
    (state,) = checkpoint["callbacks"].values()
    assert state == run.callback.scaler.state_dict()
    restored = MaskedTemperatureScaling()
    restored.load_state_dict(state)
    assert restored.scaler.temperature_ == run.callback.scaler.temperature_


def test_given_data_and_scaler_are_used_instead(run: Run) -> None:
    images, labels = run.train
    scaler = MaskedTemperatureScaler(0.5, num_masks=4)
    callback = MaskedTemperatureScaling(scaler, data=(images[:15], labels[:15]))
    callback.on_train_end(run.trainer, run.module)
    assert callback.scaler is scaler
    expected = MaskedTemperatureScaler(0.5, num_masks=4).fit(run.module, images[:15], labels[:15])
    assert callback.scaler.temperature_ == expected.temperature_


def test_evaluating_before_fit_logs_nothing_and_says_so(run: Run) -> None:
    trainer = _trainer(MaskedTemperatureScaling())
    with pytest.warns(UserWarning, match="logs nothing: its scaler is not fitted"):
        (logged,) = trainer.validate(Tiny(), run.loaders["val"], verbose=False)
    assert set(logged) == {"val_loss"}


def test_bad_arguments_are_refused_by_name() -> None:
    with pytest.raises(InvalidTypeError, match="scaler must be a MaskedTemperatureScaler"):
        MaskedTemperatureScaling(object())  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError, match=r"data must be a Dataset or DataLoader .* a list"):
        MaskedTemperatureScaling(data=[1, 2, 3])


def test_without_lightning_the_import_error_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)  # `import lightning.pytorch` fails
    monkeypatch.delitem(sys.modules, "ddcal.integrations.lightning")
    with pytest.raises(ImportError, match=r"pip install 'ddcal\[lightning\]'"):
        importlib.import_module("ddcal.integrations.lightning")
