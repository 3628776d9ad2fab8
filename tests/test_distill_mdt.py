"""Where MDT masks, in every backbone: the synthetic batch after augmentation, with the mask of
its keys (seed, iteration, class or student step); the real batch of DC, DSA and DM with the next
draws of the same keys (or not at all, synthetic-only); never an inner-training batch.

A spy on every network the distillers build records each batch entering the network's
features. The real images are shifted by +10, so no input element is exactly 0 unless a
mask zeroed it. The augmentation is the ``color`` group only: it maps 0 to a non-zero
value (brightness shift, contrast around the image mean) and creates no zeros itself
(unlike crop, cutout, scale and rotate), so zeros at the ratio in the synthetic batch
show the augmented batch is what gets masked.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import ddcal.distill.base as base_module
import ddcal.distill.experts as experts_module
from ddcal._random import MDT_STREAM, derived_generator
from ddcal.distill import (
    DCDistiller,
    DMDistiller,
    DSADistiller,
    MatchingDistiller,
    MTTDistiller,
)
from ddcal.models import build_convnet

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES, PER_CLASS, IPC = 3, 6, 2
BATCH_REAL, BATCH_TRAIN = 4, 6  # sizes differ from IPC: every batch is recognisable
RATIO = 0.5


def _shifted_data(classes: int = CLASSES) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(PER_CLASS * CLASSES, 1, 28, 28, generator=g) + 10
    labels = torch.arange(PER_CLASS * CLASSES) % CLASSES
    keep = labels < classes
    return images[keep], labels[keep]


class Batch:
    """One input batch a network saw: a copy, and whether it carries the images' gradient."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x.detach().clone()
        self.synthetic = x.requires_grad  # real and inner-training batches never do


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[Batch]:
    batches: list[Batch] = []

    def spying_build(*args: Any, **kwargs: Any) -> torch.nn.Module:
        network = build_convnet(*args, **kwargs)
        network.features.register_forward_pre_hook(
            lambda module, inputs: batches.append(Batch(inputs[0]))
        )
        return network

    monkeypatch.setattr(base_module, "build_convnet", spying_build)
    monkeypatch.setattr(experts_module, "build_convnet", spying_build)
    return batches


def _distiller(method: str, mdt_ratio: float, **extra: Any) -> MatchingDistiller:
    common: dict[str, Any] = {
        **extra,
        "ipc": IPC,
        "iterations": 2,
        "width": 8,
        "mdt_ratio": mdt_ratio,
        "seed": 4,
        "progress": False,
    }
    dc = {"outer_loop": 2, "inner_loop": 1, "batch_real": BATCH_REAL, "batch_train": BATCH_TRAIN}
    if method == "dm":
        return DMDistiller(batch_real=BATCH_REAL, dsa_strategy="color", **common)
    if method == "dc":
        return DCDistiller(**dc, **common)
    if method == "dsa":
        return DSADistiller(dsa_strategy="color", **dc, **common)
    return MTTDistiller(  # trains its expert here: the real batches MTT's networks see
        num_experts=1,
        train_epochs=2,
        syn_steps=3,
        max_start_epoch=1,
        batch_syn=4,
        lr_img=100.0,
        dsa_strategy="color",
        **common,
    )


def _mask_keys(method: str) -> list[tuple[int, ...]]:
    """The keys of the synthetic batches in the order the networks see them."""
    if method == "dm":
        return [(t, c) for t in range(2) for c in range(CLASSES)]
    if method in ("dc", "dsa"):
        return [(t, o, c) for t in range(2) for o in range(2) for c in range(CLASSES)]
    return [(t, n) for t in range(2) for n in range(3)]


@pytest.mark.parametrize("method", ["dm", "dc", "dsa", "mtt"])
def test_synthetic_only_mdt_masks_only_the_augmented_synthetic_batch_with_the_mask_of_its_keys(
    method: str, seen: list[Batch]
) -> None:
    placement = {} if method == "mtt" else {"mdt_mask_real": False}  # MTT: its only placement
    _distiller(method, RATIO, **placement).distill(*_shifted_data())
    synthetic = [b for b in seen if b.synthetic]
    others = [b for b in seen if not b.synthetic]
    keys = _mask_keys(method)
    assert len(synthetic) == len(keys)
    zeros = torch.cat([(b.x == 0).flatten() for b in synthetic]).float().mean()
    assert abs(float(zeros) - RATIO) < 0.05
    for batch, key in zip(synthetic, keys, strict=True):
        drawn = torch.rand(batch.x.shape, generator=derived_generator(4, MDT_STREAM, *key))
        assert torch.equal(batch.x == 0, drawn < RATIO), key
    assert others  # real batches (MTT: of its expert's training), DC/DSA's inner training
    assert all(not bool((b.x == 0).any()) for b in others)
    if method in ("dc", "dsa"):
        assert any(b.x.shape[0] == BATCH_TRAIN for b in others)  # inner training seen


@pytest.mark.parametrize("method", ["dm", "dc", "dsa"])
def test_mdt_masks_the_real_batch_by_default_with_the_next_draws_of_its_key(
    method: str, seen: list[Batch]
) -> None:
    _distiller(method, RATIO).distill(*_shifted_data())
    synthetic = [b for b in seen if b.synthetic]
    real = [b for b in seen if not b.synthetic and b.x.shape[0] == BATCH_REAL]
    keys = _mask_keys(method)
    assert len(synthetic) == len(real) == len(keys)
    for syn, batch, key in zip(synthetic, real, keys, strict=True):
        generator = derived_generator(4, MDT_STREAM, *key)
        assert torch.equal(syn.x == 0, torch.rand(syn.x.shape, generator=generator) < RATIO)
        assert torch.equal(batch.x == 0, torch.rand(batch.x.shape, generator=generator) < RATIO)
    inner = [b for b in seen if not b.synthetic and b.x.shape[0] == BATCH_TRAIN]
    assert all(not bool((b.x == 0).any()) for b in inner)  # DC's inner training: unmasked


def test_mdt_mask_real_is_named_in_the_config_only_when_it_masks() -> None:
    assert _distiller("dm", RATIO).config["mdt_mask_real"] is True
    assert "mdt_mask_real" not in _distiller("dm", RATIO, mdt_mask_real=False).config
    assert "mdt_mask_real" not in _distiller("dm", 0.0).config  # no MDT: as runs made before


def test_mtt_masks_its_synthetic_batch_alone_and_refuses_mdt_mask_real() -> None:
    assert _distiller("mtt", RATIO).mdt_mask_real is False
    with pytest.raises(ValueError, match="mdt_mask_real is for DC, DSA and DM"):
        _distiller("mtt", RATIO, mdt_mask_real=True)


def test_mdt_mask_real_must_be_a_bool_or_none() -> None:
    with pytest.raises(TypeError, match="mdt_mask_real must be True, False or None"):
        _distiller("dm", RATIO, mdt_mask_real="yes")


@pytest.mark.parametrize("method", ["dm", "dc", "dsa", "mtt"])
def test_without_mdt_no_batch_has_zeros(method: str, seen: list[Batch]) -> None:
    _distiller(method, 0.0).distill(*_shifted_data())
    assert any(b.synthetic for b in seen)
    assert all(not bool((b.x == 0).any()) for b in seen)


def test_dm_masks_of_a_class_do_not_depend_on_the_other_classes(seen: list[Batch]) -> None:
    def masks(classes: int) -> dict[tuple[int, int], torch.Tensor]:
        seen.clear()
        DMDistiller(
            ipc=IPC,
            iterations=2,
            width=8,
            batch_real=BATCH_REAL,
            dsa_strategy="color",
            mdt_ratio=RATIO,
            progress=False,
        ).distill(*_shifted_data(classes))
        synthetic = [b.x == 0 for b in seen if b.synthetic]
        order = [(t, c) for t in range(2) for c in range(classes)]
        return dict(zip(order, synthetic, strict=True))

    three, two = masks(3), masks(2)
    for key, mask in two.items():
        assert torch.equal(mask, three[key]), key
