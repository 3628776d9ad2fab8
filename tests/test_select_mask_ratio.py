"""select_mask_ratio: the mask ratio chosen by NLL on a real calibration set, never on test data."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from torch import nn

from ddcal.inference import predict_logits
from ddcal.label_free import UninformativeMaskingWarning, target_accuracy_ratio
from ddcal.scaling import (
    AUTO,
    MASK_RATIO_CANDIDATES,
    MaskedTemperatureScaler,
    MaskRatioSelection,
    TemperatureBoundWarning,
    calibrate,
    fit_temperature,
    select_mask_ratio,
)


def _linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3, bias=False))


def _distilled(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Images labelled with the model's own predictions, as a network fits its distilled set.

    Unmasked, the fit hits the lower bound; masked, the temperature grows with the ratio.
    """
    images = 3.0 * torch.randn(60, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return images, model(images).argmax(1)


def _calibration(
    model: nn.Module, temperature: float, n: int = 20_000, seed: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Real-looking held-out data whose labels follow softmax(model(x) / temperature)."""
    generator = torch.Generator().manual_seed(seed)
    images = 3.0 * torch.randn(n, 1, 4, 4, generator=generator)
    with torch.no_grad():
        probs = torch.softmax(model(images).double() / temperature, dim=1)
    return images, torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _temperature(model: nn.Module, images, labels, ratio: float) -> float:
    scaler = MaskedTemperatureScaler(ratio, num_masks=10, seed=0)
    if ratio == 0.0:  # the fit on the model's own predictions hits the lower bound
        with pytest.warns(TemperatureBoundWarning):
            scaler.fit(model, images, labels)
    else:
        scaler.fit(model, images, labels)
    assert scaler.temperature_ is not None
    return scaler.temperature_


@pytest.mark.parametrize("planted_ratio", [0.2, 0.5, 0.8])
def test_selects_the_ratio_whose_temperature_generated_the_calibration_labels(
    planted_ratio: float,
) -> None:
    model = _linear_model()
    images, labels = _distilled(model)
    planted = _temperature(model, images, labels, planted_ratio)
    calibration = _calibration(model, planted)

    selection = select_mask_ratio(model, images, labels, calibration)

    # Brute force, independently: every candidate's MTS temperature, then the calibration NLL.
    with torch.no_grad():
        logits = model(calibration[0]).double()
    temperatures = [_temperature(model, images, labels, r) for r in MASK_RATIO_CANDIDATES]
    nll = [float(nn.functional.cross_entropy(logits / t, calibration[1])) for t in temperatures]
    best = min(range(len(nll)), key=nll.__getitem__)
    assert MASK_RATIO_CANDIDATES[best] == planted_ratio  # the case has the answer it was built for
    assert selection == MaskRatioSelection(
        mask_ratio=planted_ratio,
        temperature=planted,
        candidates=MASK_RATIO_CANDIDATES,
        temperatures=tuple(temperatures),
        nll=selection.nll,
        selected_by="calibration-nll",
    )
    assert selection.nll == pytest.approx(nll, rel=1e-6)


def test_equal_nll_goes_to_the_smaller_ratio_and_candidates_come_back_sorted() -> None:
    class Constant(nn.Module):
        """Ignores its input: every mask ratio gives the same logits and temperature."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tensor([2.0, 0.0, 0.0]).expand(x.shape[0], 3)

    images = torch.randn(10, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2, 2])
    selection = select_mask_ratio(
        Constant(), images, labels, (images, labels), candidates=(0.6, 0.2, 0.4)
    )
    assert selection.candidates == (0.2, 0.4, 0.6)
    assert selection.nll is not None
    assert len(set(selection.nll)) == 1
    assert len(set(selection.temperatures)) == 1
    assert selection.mask_ratio == 0.2


def test_without_calibration_data_the_label_free_rule_chooses() -> None:
    """The scaler's default and select_mask_ratio without real data are the same rule."""
    default = inspect.signature(MaskedTemperatureScaler).parameters["mask_ratio"].default
    assert default == AUTO
    model = _linear_model()
    with torch.no_grad():
        model[1].weight.mul_(10.0)  # over-confident, as networks of distilled sets are
    images, labels = _distilled(model)
    selection = select_mask_ratio(model, images, labels, num_masks=4, seed=3)
    expected = MaskedTemperatureScaler(num_masks=4, seed=3).fit(model, images, labels)
    choice = target_accuracy_ratio(model, images, labels, num_masks=4, seed=3)
    assert choice.reason == "target"
    assert choice.temperature > 1.0
    assert selection == MaskRatioSelection(
        mask_ratio=choice.mask_ratio,
        temperature=expected.temperature_,
        candidates=(choice.mask_ratio,),
        temperatures=(choice.temperature,),
        nll=None,
        selected_by="label-free",
        bound_hit=choice.bound,
    )
    assert expected.fitted_mask_ratio_ == choice.mask_ratio


def test_the_signature_takes_no_test_data() -> None:
    names = list(inspect.signature(select_mask_ratio).parameters)
    assert not [name for name in names if "test" in name.lower()]
    assert "never pass test data" in (select_mask_ratio.__doc__ or "").lower()


def test_the_model_sees_the_calibration_images_exactly_once() -> None:
    class Recording(nn.Module):
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model
            self.calibration_batches: list[int] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            marked = int((x[:, 0, 0, 0] == 7.0).sum())  # only calibration images carry it
            if marked:
                self.calibration_batches.append(marked)
            return self.model(x)

    model = Recording(_linear_model())
    images, labels = _distilled(model.model)
    calibration_images, calibration_labels = _calibration(model.model, 0.6, n=50)
    calibration_images[:, 0, 0, 0] = 7.0
    select_mask_ratio(
        model,
        images,
        labels,
        (calibration_images, calibration_labels),
        candidates=(0.3, 0.5, 0.7),
        batch_size=64,
    )
    assert model.calibration_batches == [50]


def test_a_selected_temperature_on_a_bound_warns_and_unselected_ones_do_not() -> None:
    model = _linear_model()
    images, labels = _distilled(model)
    calibration = _calibration(model, 1.0, n=500)
    with pytest.warns(TemperatureBoundWarning, match=r"selected mask ratio 0\.0 .* lower bound"):
        only_zero = select_mask_ratio(model, images, labels, calibration, candidates=(0.0,))
    assert only_zero.temperature == pytest.approx(0.01)
    # 0.0 is on the lower bound here too, but not selected: no warning (an error under pytest).
    assert select_mask_ratio(model, images, labels, calibration, candidates=(0.0, 0.9)).mask_ratio
    assert select_mask_ratio(model, images, labels, calibration, device="cpu").mask_ratio > 0


@pytest.mark.parametrize(
    ("candidates", "error", "match"),
    [
        ((), ValueError, "candidates is empty"),
        ((0.1, 1.0), ValueError, r"candidates\[1\] must be in \[0, 1\)"),
        ((-0.1,), ValueError, r"candidates\[0\] must be in \[0, 1\)"),
        ((0.2, 0.5, 0.2), ValueError, r"candidates must not repeat a ratio, got \[0\.2\]"),
        ((0, 0.0), ValueError, "candidates must not repeat"),
        (("0.5",), TypeError, r"candidates\[0\] must be a float"),
        ((True,), TypeError, r"candidates\[0\] must be a float"),
        (0.5, TypeError, "candidates must be a sequence"),
        ("0.5", TypeError, "candidates must be a sequence"),
    ],
)
def test_bad_candidates_are_errors_naming_the_argument(candidates, error, match) -> None:
    model = _linear_model()
    images, labels = _distilled(model)
    with pytest.raises(error, match=match):
        select_mask_ratio(model, images, labels, candidates=candidates)


def test_bad_calibration_data_is_an_error_naming_the_argument() -> None:
    model = _linear_model()
    images, labels = _distilled(model)
    with pytest.raises(TypeError, match="real_calibration must be a pair"):
        select_mask_ratio(model, images, labels, (images,))
    with pytest.raises(ValueError, match="real_calibration labels must have one entry per sample"):
        select_mask_ratio(model, images, labels, (images, labels[:-1]))
    with pytest.raises(ValueError, match=r"real_calibration labels must be in \[0, 3\)"):
        select_mask_ratio(model, images, labels, (images, labels + 3))
    with pytest.raises(ValueError, match="real_calibration images is empty"):
        select_mask_ratio(model, images, labels, (images[:0], labels[:0]))


def test_calibrate_uses_the_strongest_data_it_is_given() -> None:
    model = _linear_model()
    images, labels = _distilled(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UninformativeMaskingWarning)
        alone = calibrate(model, images, labels, num_masks=4)
        with_unlabelled = calibrate(model, images, labels, unlabelled=images, num_masks=4)
        default = MaskedTemperatureScaler(num_masks=4).fit(model, images, labels)
    assert alone.method == "mts-label-free"
    assert alone.temperature == default.temperature_
    assert alone.mask_ratio == default.fitted_mask_ratio_
    assert with_unlabelled.temperature == alone.temperature
    assert "no rule that uses them beat" in with_unlabelled.reason
    generator = torch.Generator().manual_seed(5)
    real = (images + torch.randn(images.shape, generator=generator), labels)
    labelled = calibrate(model, images, labels, labelled=real)
    logits = predict_logits(model, real[0])
    assert labelled.method == "ts-labelled"
    assert labelled.temperature == fit_temperature(logits, labels)[0]
    assert float(labelled.model.temperature) == pytest.approx(labelled.temperature, rel=1e-6)
