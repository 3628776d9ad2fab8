import math

import pytest
import torch

from ddcal.losses import (
    FocalLoss,
    LabelSmoothingLoss,
    MixupLoss,
    cross_entropy,
    focal_loss,
    get_loss,
    label_smoothing_loss,
    mixup,
    mixup_weight,
)

# One sample, three classes, true class 0: log p = z - log(e^2 + e^0 + e^-1).
LOGITS = torch.tensor([[2.0, 0.0, -1.0]], dtype=torch.float64)
TARGET = torch.tensor([0])
LOG_Z = math.log(math.exp(2.0) + 1.0 + math.exp(-1.0))
LOG_P = [2.0 - LOG_Z, 0.0 - LOG_Z, -1.0 - LOG_Z]


def test_cross_entropy_hand_computed_hard_and_soft() -> None:
    assert float(cross_entropy(LOGITS, TARGET)) == pytest.approx(-LOG_P[0], abs=1e-12)
    soft = torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64)
    expected = -(0.5 * LOG_P[0] + 0.25 * LOG_P[1] + 0.25 * LOG_P[2])
    assert float(cross_entropy(LOGITS, soft)) == pytest.approx(expected, abs=1e-12)


def test_label_smoothing_hand_computed() -> None:
    # targets (1 - 0.1) * onehot + 0.1 / 3 = [0.9333.., 0.0333.., 0.0333..]
    expected = -((0.9 + 0.1 / 3) * LOG_P[0] + (0.1 / 3) * (LOG_P[1] + LOG_P[2]))
    assert float(label_smoothing_loss(LOGITS, TARGET, 0.1)) == pytest.approx(expected, abs=1e-12)
    assert float(LabelSmoothingLoss(0.1)(LOGITS, TARGET)) == pytest.approx(expected, abs=1e-12)


def test_label_smoothing_acts_on_the_log_softmax_as_torch_does() -> None:
    logits = torch.randn(32, 10, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(1))
    reference = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.2)
    assert torch.allclose(label_smoothing_loss(logits, labels, 0.2), reference, atol=1e-6)
    assert torch.allclose(label_smoothing_loss(logits, labels, 0.0), cross_entropy(logits, labels))


def test_focal_loss_hand_computed() -> None:
    p = math.exp(LOG_P[0])
    for gamma in (0.0, 1.0, 3.0):
        expected = -((1 - p) ** gamma) * LOG_P[0]
        assert float(focal_loss(LOGITS, TARGET, gamma)) == pytest.approx(expected, abs=1e-12)
    assert float(FocalLoss()(LOGITS, TARGET)) == pytest.approx(-((1 - p) ** 3) * LOG_P[0])


def test_focal_loss_with_soft_targets_sums_over_classes() -> None:
    soft = torch.tensor([[0.6, 0.4, 0.0]], dtype=torch.float64)
    p = [math.exp(v) for v in LOG_P]
    expected = -(0.6 * (1 - p[0]) ** 3 * LOG_P[0] + 0.4 * (1 - p[1]) ** 3 * LOG_P[1])
    assert float(focal_loss(LOGITS, soft, 3.0)) == pytest.approx(expected, abs=1e-12)


def test_mixup_mixes_inputs_and_targets_with_one_weight() -> None:
    generator = torch.Generator().manual_seed(3)
    inputs = torch.arange(8, dtype=torch.float64).reshape(4, 2)
    labels = torch.tensor([0, 1, 2, 0])
    mixed_x, mixed_y = mixup(inputs, labels, num_classes=3, generator=generator)
    replay = torch.Generator().manual_seed(3)
    lam = mixup_weight(1.0, generator=replay)
    perm = torch.randperm(4, generator=replay)
    onehot = torch.nn.functional.one_hot(labels, 3).double()
    assert torch.allclose(mixed_x, lam * inputs + (1 - lam) * inputs[perm])
    assert torch.allclose(mixed_y, lam * onehot + (1 - lam) * onehot[perm])
    assert torch.allclose(mixed_y.sum(1), torch.ones(4, dtype=torch.float64))


@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_mixup_weight_follows_beta_alpha_alpha(alpha: float) -> None:
    generator = torch.Generator().manual_seed(0)
    values = torch.tensor([mixup_weight(alpha, generator=generator) for _ in range(4000)])
    assert float(values.min()) >= 0.0
    assert float(values.max()) <= 1.0
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)).
    assert float(values.mean()) == pytest.approx(0.5, abs=0.02)
    assert float(values.var()) == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.1)


def test_mixup_loss_is_the_weighted_cross_entropy_of_both_labels() -> None:
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a, b, lam = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 1, 0, 2]), 0.3
    soft = lam * torch.nn.functional.one_hot(a, 3) + (1 - lam) * torch.nn.functional.one_hot(b, 3)
    expected = lam * cross_entropy(logits, a) + (1 - lam) * cross_entropy(logits, b)
    assert torch.allclose(MixupLoss()(logits, soft.double()), expected)


def test_get_loss_names_and_errors() -> None:
    assert isinstance(get_loss("focal"), FocalLoss)
    assert isinstance(get_loss("mixup"), MixupLoss)
    assert get_loss("label_smoothing").epsilon == 0.1
    with pytest.raises(ValueError, match=r"loss must be one of 'ce', 'mixup'.*got 'hinge'"):
        get_loss("hinge")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: LabelSmoothingLoss(1.0), r"epsilon must be in \[0, 1\), got 1.0"),
        (lambda: FocalLoss(-1.0), "gamma must be >= 0, got -1.0"),
        (lambda: MixupLoss(0.0), "alpha must be > 0, got 0.0"),
        (
            lambda: focal_loss(LOGITS, torch.tensor([0, 1])),
            r"one entry per row of logits \(1\), got 2",
        ),
        (
            lambda: cross_entropy(LOGITS, torch.ones(1, 4)),
            r"targets must have shape \(N,\) or \(N, 3\)",
        ),
        (lambda: cross_entropy(LOGITS[0], TARGET), r"logits must have shape \(N, K\)"),
    ],
)
def test_bad_arguments_raise(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
