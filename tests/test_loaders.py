"""Data loaders in: a Dataset or DataLoader of (image, label) pairs gives what the tensors give."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ddcal import (
    CalibrationMeter,
    MaskedTemperatureScaler,
    TemperatureScaler,
    calibrate,
    calibration_error,
    predict_logits,
    select_mask_ratio,
    stack_dataset,
)
from ddcal.errors import InvalidTypeError, InvalidValueError

NUM_CLASSES = 3


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    """Tiny models: one thread (see conftest)."""


def _data(n: int = 30, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % NUM_CLASSES
    images = torch.randn(n, 1, 6, 6, generator=generator) + labels.view(-1, 1, 1, 1).float()
    return images, labels


def _model() -> nn.Module:
    """A tiny network, a little trained on :func:`_data` (better than chance, not perfect)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, NUM_CLASSES))
    images, labels = _data()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(20):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return model


class Pairs(Dataset[tuple[torch.Tensor, int]]):
    """A map-style Dataset as torchvision's: items ``(image, int label)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


class Items(Dataset[Any]):
    """A Dataset whose items are whatever it is given."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]


def _sources(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> dict[str, Dataset[Any] | DataLoader[Any]]:
    return {
        "dataset": Pairs(images, labels),
        "tensor-dataset": TensorDataset(images, labels),
        "dataloader": DataLoader(TensorDataset(images, labels), batch_size=batch_size),
    }


# --------------------------------------------------------------------------- #
# The shared reader and the streamed forward pass.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("source", ["dataset", "tensor-dataset", "dataloader"])
def test_stack_dataset_gives_the_tensors(source: str) -> None:
    images, labels = _data()
    stacked_images, stacked_labels = stack_dataset(_sources(images, labels, 7)[source])
    assert torch.equal(stacked_images, images)
    assert torch.equal(stacked_labels, labels)
    assert stacked_labels.dtype == torch.int64


@pytest.mark.parametrize("source", ["dataset", "tensor-dataset", "dataloader"])
def test_predict_logits_streams_a_loader_to_the_logits_of_the_tensors(source: str) -> None:
    images, labels = _data()
    model = _model()
    expected = predict_logits(model, images, batch_size=7)
    data = _sources(images, labels, 7)[source]
    logits, got_labels = predict_logits(model, data, batch_size=7, return_labels=True)
    assert torch.equal(logits, expected)  # bit for bit: the same batches
    assert torch.equal(got_labels, labels)
    assert torch.equal(predict_logits(model, data, batch_size=7), expected)


def test_a_dataloader_keeps_its_own_batches_and_images_alone_are_accepted() -> None:
    images, _ = _data()
    model = _model()
    loader = DataLoader(TensorDataset(images), batch_size=4)  # batches of images alone
    logits = predict_logits(model, loader, batch_size=1000)
    assert torch.equal(logits, predict_logits(model, images, batch_size=4))
    assert torch.equal(predict_logits(model, Items(list(images)), batch_size=4), logits)
    with pytest.raises(InvalidTypeError, match=r"images must yield batches of \(image, label\)"):
        predict_logits(model, loader, return_labels=True)
    with pytest.raises(InvalidValueError, match="return_labels=True needs images to be a Dataset"):
        predict_logits(model, images, return_labels=True)


def test_predict_logits_restores_the_mode_and_names_a_bad_batch() -> None:
    images, labels = _data()
    model = _model().train()
    bad = images.clone()
    bad[9, 0, 0, 0] = float("nan")
    with pytest.raises(InvalidValueError, match="the images of batch 2 of images must be finite"):
        predict_logits(model, DataLoader(TensorDataset(bad, labels), batch_size=4))
    assert model.training
    with pytest.raises(InvalidValueError, match="images is empty"):
        predict_logits(model, Items([]))


# --------------------------------------------------------------------------- #
# The scalers, select_mask_ratio, calibrate: the temperature of the tensors.
# --------------------------------------------------------------------------- #


def _over_confident(model: nn.Module) -> nn.Module:
    """``model`` with its logits ten times larger: over-confident, as networks of distilled
    sets are (the label-free rule's temperature is then above 1, not floored at 1)."""
    with torch.no_grad():
        model[-1].weight.mul_(10.0)
        model[-1].bias.mul_(10.0)
    return model


@pytest.mark.parametrize("mask_ratio", ["auto", 0.4])
@pytest.mark.parametrize("source", ["dataset", "dataloader"])
def test_fit_on_a_loader_equals_fit_on_the_tensors(mask_ratio: float | str, source: str) -> None:
    images, labels = _data()
    model = _over_confident(_model())
    settings: dict[str, Any] = {"num_masks": 3, "batch_size": 8, "per_class": 6}
    expected = MaskedTemperatureScaler(mask_ratio, **settings).fit(model, images, labels)
    data = _sources(images, labels, 5)[source]
    fitted = MaskedTemperatureScaler(mask_ratio, **settings).fit(model, data)
    assert fitted.state_dict() == expected.state_dict()
    assert fitted.temperature_ > 1.0
    assert fitted.num_fit_samples_ == expected.num_fit_samples_
    plain = TemperatureScaler(batch_size=8).fit(model, data)
    assert (
        plain.temperature_
        == TemperatureScaler(batch_size=8).fit(model, images, labels).temperature_
    )
    test_images, test_labels = _data(12, seed=1)
    test = DataLoader(TensorDataset(test_images, test_labels), batch_size=8)
    assert torch.equal(
        fitted.predict_proba(model, test), expected.predict_proba(model, test_images)
    )


def test_select_mask_ratio_and_calibrate_take_loaders() -> None:
    images, labels = _data()
    real_images, real_labels = _data(24, seed=2)
    model = _over_confident(_model())
    settings: dict[str, Any] = {"candidates": (0.0, 0.3, 0.6), "num_masks": 2, "batch_size": 8}
    expected = select_mask_ratio(model, images, labels, (real_images, real_labels), **settings)
    got = select_mask_ratio(
        model, Pairs(images, labels), real_calibration=Pairs(real_images, real_labels), **settings
    )
    assert got == expected
    label_free = select_mask_ratio(model, DataLoader(TensorDataset(images, labels), batch_size=9))
    assert label_free == select_mask_ratio(model, images, labels)
    real = DataLoader(TensorDataset(real_images, real_labels), batch_size=5)
    by_loader = calibrate(model, images, labels, labelled=real, batch_size=8)
    by_tensors = calibrate(model, images, labels, labelled=(real_images, real_labels), batch_size=8)
    assert by_loader.temperature == by_tensors.temperature
    assert (
        calibrate(model, Pairs(images, labels)).temperature
        == calibrate(model, images, labels).temperature
    )


# --------------------------------------------------------------------------- #
# The meter.
# --------------------------------------------------------------------------- #


def test_the_meter_updates_from_a_loader_of_logits_as_from_the_tensors() -> None:
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(203, 5, generator=generator, dtype=torch.float64) * 3
    labels = torch.randint(5, (203,), generator=generator)
    whole = CalibrationMeter(n_bins=10, from_logits=True)
    whole.update(logits, labels)
    for data in (
        DataLoader(TensorDataset(logits, labels), batch_size=16),
        TensorDataset(logits, labels),
    ):
        meter = CalibrationMeter(n_bins=10, from_logits=True)
        assert meter.update_from(data, batch_size=50) is meter
        assert meter.compute() == pytest.approx(whole.compute(), rel=1e-12, abs=1e-12)
    probs = torch.softmax(logits, dim=1)
    meter = CalibrationMeter(n_bins=10).update_from(TensorDataset(probs, labels))
    assert meter.compute()["ece"] == pytest.approx(calibration_error(probs, labels, n_bins=10))


def test_the_meter_adds_nothing_from_a_loader_with_a_bad_batch() -> None:
    logits = torch.randn(10, 3, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 3])  # 3 is not a class
    meter = CalibrationMeter(from_logits=True)
    with pytest.raises(InvalidValueError, match=r"batch 2 of data: labels must be in \[0, 3\)"):
        meter.update_from(DataLoader(TensorDataset(logits, labels), batch_size=4))
    assert meter.count == 0
    with pytest.raises(InvalidTypeError, match=r"data must be a torch.utils.data.Dataset"):
        meter.update_from([(logits, labels)])
    meter.update(torch.randn(2, 4), torch.tensor([0, 1]))
    with pytest.raises(InvalidValueError, match="data must have 4 classes"):
        meter.update_from(TensorDataset(logits[:9], labels[:9]))


# --------------------------------------------------------------------------- #
# Errors name the argument, the item or the batch.
# --------------------------------------------------------------------------- #


def test_a_dataset_without_labels_is_refused_by_name() -> None:
    images, labels = _data(6)
    model = _model()
    with pytest.raises(
        InvalidTypeError,
        match=r"images must be a Dataset of \(image, label\) pairs, got a Tensor of shape "
        r"\(1, 6, 6\) as item 0",
    ):
        MaskedTemperatureScaler().fit(model, Items(list(images)))
    with pytest.raises(InvalidTypeError, match=r"distilled_images must be a Dataset of .* item 0"):
        select_mask_ratio(model, Items(list(images)))
    with pytest.raises(InvalidTypeError, match=r"got a tuple of 3 as item 0"):
        stack_dataset(TensorDataset(images, labels, labels))
    with pytest.raises(InvalidTypeError, match=r"images must yield batches of .* got a Tensor"):
        MaskedTemperatureScaler().fit(model, DataLoader(images, batch_size=2))


def test_items_of_different_shapes_are_refused_by_name() -> None:
    items = [(torch.zeros(1, 6, 6), 0), (torch.zeros(1, 6, 6), 1), (torch.zeros(1, 5, 6), 2)]
    with pytest.raises(
        InvalidValueError, match=r"images: items 0 to 2 do not stack into one batch"
    ):
        MaskedTemperatureScaler().fit(_model(), Items(items))
    batches = [
        (torch.zeros(2, 1, 6, 6), torch.tensor([0, 1])),
        (torch.zeros(2, 1, 5, 6), torch.tensor([0, 1])),
    ]
    with pytest.raises(InvalidValueError, match=r"data must yield images of one shape: batch 1"):
        stack_dataset(DataLoader(Items(batches), batch_size=None))


def test_the_labels_of_a_loader_are_checked_as_tensors_are() -> None:
    images, labels = _data(6)
    model = _model()
    with pytest.raises(
        InvalidTypeError,
        match="the labels of batch 0 of images must hold integer class indices",
    ):
        MaskedTemperatureScaler().fit(model, TensorDataset(images, labels.float()))
    with pytest.raises(InvalidValueError, match=r"the labels of batch 0 of images must have shape"):
        MaskedTemperatureScaler().fit(model, TensorDataset(images, labels[:, None]))
    with pytest.raises(InvalidValueError, match=r"labels must be in \[0, 3\)"):
        MaskedTemperatureScaler(0.3).fit(model, TensorDataset(images, labels + 1))
    with pytest.raises(
        InvalidTypeError,
        match="the labels of batch 0 of real_calibration must hold integer class indices",
    ):
        select_mask_ratio(model, images, labels, TensorDataset(images, labels.float()))
    with pytest.raises(InvalidValueError, match=r"real_calibration labels must be in \[0, 3\)"):
        select_mask_ratio(
            model, images, labels, TensorDataset(images, labels + 1), candidates=(0.0,)
        )


def test_labels_are_given_with_tensors_and_only_with_tensors() -> None:
    images, labels = _data(6)
    model = _model()
    with pytest.raises(InvalidValueError, match="labels must be None when images is a TensorData"):
        MaskedTemperatureScaler().fit(model, TensorDataset(images, labels), labels)
    with pytest.raises(InvalidTypeError, match="labels is missing: give the labels of images"):
        MaskedTemperatureScaler().fit(model, images)
    with pytest.raises(InvalidTypeError, match="distilled_labels is missing"):
        select_mask_ratio(model, images)
    with pytest.raises(
        InvalidTypeError, match=r"images must be a torch\.Tensor, a numpy\.ndarray, or a torch"
    ):
        MaskedTemperatureScaler().fit(model, list(images), labels)
    with pytest.raises(InvalidTypeError, match="labelled must be a pair"):
        calibrate(model, images, labels, labelled=images)
