"""Label-free temperatures: pooled masked copies, and the two-network agreement rule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ddcal.errors import InvalidValueError
from ddcal.label_free import (
    MIN_AUTO_COPIES,
    MULTI_RATIOS,
    UninformativeMaskingWarning,
    agreement_temperature,
    multi_ratio_logits,
    target_accuracy_ratio,
    target_masked_accuracy,
)
from ddcal.scaling import masked_logits


def _confidence(logits: torch.Tensor, temperature: float) -> float:
    return float(torch.softmax(logits.double() / temperature, dim=1).max(dim=1).values.mean())


def test_agreement_temperature_matches_mean_confidence_to_the_agreement() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(2000, 10, generator=generator)
    partner = logits + 3 * torch.randn(2000, 10, generator=generator)
    temperature, agreement, bound = agreement_temperature(logits, partner)
    assert bound is None
    assert agreement == pytest.approx(
        float((logits.argmax(1) == partner.argmax(1)).double().mean())
    )
    assert _confidence(logits, temperature) == pytest.approx(agreement, abs=1e-8)


def test_agreement_recovers_a_planted_temperature() -> None:
    """Two networks whose agreement is their accuracy: the planted T is the one found."""
    generator = torch.Generator().manual_seed(1)
    true_logits = 3 * torch.randn(20000, 5, generator=generator)
    planted = 2.5
    # Predictions that are right with the probabilities softmax(true / planted): a network
    # whose logits are over-confident by the factor 2.5.
    probs = torch.softmax(true_logits / planted, dim=1)
    labels = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    # A partner that agrees exactly when the first one is right: agreement = accuracy.
    partner = true_logits.clone()
    wrong = true_logits.argmax(1) != labels
    partner[wrong] = -true_logits[wrong]
    accuracy = float((true_logits.argmax(1) == labels).double().mean())
    temperature, agreement, _ = agreement_temperature(true_logits, partner)
    assert agreement == pytest.approx(accuracy)
    assert temperature == pytest.approx(planted, rel=0.05)


def test_agreement_reads_no_labels_and_is_deterministic() -> None:
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(500, 4, generator=generator)
    partner = torch.randn(500, 4, generator=generator)
    assert agreement_temperature(logits, partner) == agreement_temperature(logits, partner)


def test_agreement_on_the_bounds() -> None:
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    assert agreement_temperature(logits, logits)[2] == "lower"  # agree always: conf -> 1
    assert agreement_temperature(logits, -logits)[2] == "upper"  # never agree: conf 1/2 > 0


def test_agreement_needs_matching_shapes() -> None:
    with pytest.raises(ValueError, match=r"partner_logits must have the shape of logits"):
        agreement_temperature(torch.zeros(3, 2), torch.zeros(4, 2))


class _Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.flatten(1))


def test_multi_ratio_logits_pool_each_ratios_masked_copies() -> None:
    torch.manual_seed(0)
    model = _Linear()
    images = torch.rand(9, 1, 3, 4) + 1
    labels = torch.arange(3).repeat(3)
    logits, targets = multi_ratio_logits(model, images, labels, ratios=(0.2, 0.7), num_masks=2)
    first = masked_logits(model, images, labels, mask_ratio=0.2, num_masks=2, seed=0)
    second = masked_logits(model, images, labels, mask_ratio=0.7, num_masks=2, seed=1)
    torch.testing.assert_close(logits, torch.cat([first[0], second[0]]))
    assert torch.equal(targets, torch.cat([first[1], second[1]]))
    assert len(MULTI_RATIOS) == 9
    assert math.isclose(MULTI_RATIOS[0], 0.1)


class _Thresholds(nn.Module):
    """Class ``c``'s images are ones on block ``c`` of ``D`` elements, zeros elsewhere. The
    network is right on an image when the kept fraction of its block exceeds ``c / 10``,
    else it predicts the next class: at mask ratio ``r`` it is right on the classes with
    ``c / 10 < 1 - r``, so its accuracy crosses 35% at ``r = 0.7``."""

    def __init__(self, block: int) -> None:
        super().__init__()
        self.block = block
        self.register_buffer("thresholds", torch.arange(10.0) / 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept = x.flatten(1).reshape(x.shape[0], 10, self.block).mean(dim=2)
        owner = kept.argmax(dim=1)  # the only block that is not all zeros
        margin = kept.gather(1, owner[:, None]).squeeze(1) - self.thresholds[owner]
        logits = torch.full((x.shape[0], 10), -20.0)
        logits[torch.arange(x.shape[0]), owner] = 20 * margin
        logits[torch.arange(x.shape[0]), (owner + 1) % 10] = 0.0
        return logits


def _blocks(per_class: int, block: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.arange(10).repeat_interleave(per_class)
    images = torch.zeros(labels.numel(), 10, block)
    images[torch.arange(labels.numel()), labels] = 1.0
    return images.reshape(labels.numel(), 1, 10, block), labels


def test_target_accuracy_ratio_recovers_a_planted_ratio() -> None:
    images, labels = _blocks(per_class=2)
    choice = target_accuracy_ratio(_Thresholds(400), images, labels, target=0.35, num_masks=4)
    assert choice.reason == "target"
    assert choice.mask_ratio == pytest.approx(0.7, abs=0.03)
    assert choice.masked_accuracy <= 0.35
    again = target_accuracy_ratio(_Thresholds(400), images, labels, target=0.35, num_masks=4)
    assert choice == again


def test_the_default_target_grows_with_the_images_per_class() -> None:
    assert target_masked_accuracy(1, 10) == pytest.approx(0.304, abs=0.002)
    assert target_masked_accuracy(10, 10) == pytest.approx(0.493, abs=0.002)
    assert target_masked_accuracy(50, 10) == pytest.approx(0.513, abs=0.002)
    assert target_masked_accuracy(2, 3) > 1 / 3
    assert target_masked_accuracy(1e9, 10) == target_masked_accuracy(50, 10)  # held
    assert target_masked_accuracy(0.5, 10) == target_masked_accuracy(1, 10)
    ipcs = [1, 2, 5, 10, 20, 50, 100]
    targets = [target_masked_accuracy(ipc, 10) for ipc in ipcs]
    assert targets == sorted(targets)
    between = target_masked_accuracy(math.sqrt(10), 10)  # half way in log IPC
    assert between == pytest.approx(0.5 * (targets[0] + targets[3]))


def test_by_default_the_target_comes_from_the_set() -> None:
    """Two images per class of ten classes: the target is 36%, crossed at r = 0.7
    (where the accuracy steps from 40% to 30%)."""
    images, labels = _blocks(per_class=2)
    choice = target_accuracy_ratio(_Thresholds(400), images, labels, num_masks=4)
    assert target_masked_accuracy(2, 10) == pytest.approx(0.361, abs=0.002)
    assert choice.mask_ratio == pytest.approx(0.7, abs=0.03)


def test_a_small_set_gets_enough_masks_for_min_copies() -> None:
    images, labels = _blocks(per_class=2)  # 20 images
    model = _Thresholds(400)
    default = target_accuracy_ratio(model, images, labels, target=0.35, num_masks=4)
    assert default.num_samples == MIN_AUTO_COPIES  # 50 masks per image, not 4
    few = target_accuracy_ratio(model, images, labels, target=0.35, num_masks=4, min_copies=1)
    assert few.num_samples == 80
    with pytest.raises(InvalidValueError, match="min_copies"):
        target_accuracy_ratio(model, images, labels, min_copies=0)


def test_copies_that_never_err_fall_back_to_no_sharper_than_raw() -> None:
    images, labels = _blocks(per_class=2)
    model = _Thresholds(400)
    model.thresholds.fill_(-1.0)  # right whatever is kept
    with pytest.warns(UninformativeMaskingWarning, match=r"cannot tell the temperature"):
        choice = target_accuracy_ratio(model, images, labels, num_masks=2)
    assert choice.reason == "fallback"
    assert choice.temperature >= 1.0


class _Scaled(nn.Module):
    def __init__(self, inner: nn.Module, factor: float) -> None:
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.factor * self.inner(x)


def test_copies_that_ask_for_a_sharper_network_get_t_one() -> None:
    """The same crossing as the planted case, from a network a hundred times less sure:
    its copies ask for T < 1, and the rule uses 1 and says so."""
    images, labels = _blocks(per_class=2)
    unsure = _Scaled(_Thresholds(400), 0.01)
    with pytest.warns(UninformativeMaskingWarning, match=r"sharper than the raw network"):
        choice = target_accuracy_ratio(unsure, images, labels, target=0.35, num_masks=4)
    assert choice.reason == "floor"
    assert choice.temperature == 1.0
    assert choice.bound is None
    assert choice.mask_ratio == pytest.approx(0.7, abs=0.03)
    sure = target_accuracy_ratio(_Thresholds(400), images, labels, target=0.35, num_masks=4)
    assert sure.reason == "target"
    assert sure.temperature > 1.0


def test_a_network_that_errs_on_its_clean_set_gets_plain_ts() -> None:
    images, labels = _blocks(per_class=2)
    model = _Thresholds(400)
    model.thresholds.fill_(2.0)  # never right
    choice = target_accuracy_ratio(model, images, labels, num_masks=2)
    assert (choice.reason, choice.mask_ratio) == ("clean", 0.0)
