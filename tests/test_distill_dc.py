"""DC and DSA: the reference gradient distance, the loops table, distillation on FashionMNIST."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from ddcal.data import ImageClassificationData
from ddcal.data.distilled import DistilledSet
from ddcal.distill.dc import (
    DC_LOOPS,
    DCDistiller,
    DCStep,
    DSADistiller,
    dc_distance,
    dc_loops,
    gradient_match,
)
from ddcal.distill.real import class_indices
from ddcal.models import build_convnet

# Small but real: 50 FashionMNIST images of each class, a width-16 ConvNetD3, real
# batches of 32.
PER_CLASS = 50
SMALL = {"width": 16, "batch_real": 32, "progress": False}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def subset(fashion_mnist: ImageClassificationData) -> tuple[torch.Tensor, torch.Tensor]:
    indices = class_indices(fashion_mnist.train_labels, len(fashion_mnist.classes))
    chosen = torch.cat([idx[:PER_CLASS] for idx in indices])
    return fashion_mnist.train_images[chosen], fashion_mnist.train_labels[chosen]


def test_dc_distance_against_a_hand_computed_value() -> None:
    f64 = torch.float64
    # conv (out=2, in=1, 1, 2): rows [1, 0] vs [0, 1] (cos 0) and [1, 1] vs [1, 1]
    conv_syn = torch.tensor([[[[1.0, 0.0]]], [[[1.0, 1.0]]]], dtype=f64)
    conv_real = torch.tensor([[[[0.0, 1.0]]], [[[1.0, 1.0]]]], dtype=f64)
    # linear (2, 2): rows [3, 4] vs [3, 4] and [1, 0] vs [-1, 0] (cos -1)
    lin_syn = torch.tensor([[3.0, 4.0], [1.0, 0.0]], dtype=f64)
    lin_real = torch.tensor([[3.0, 4.0], [-1.0, 0.0]], dtype=f64)
    # a bias: ignored
    bias_syn = torch.tensor([1.0, 2.0], dtype=f64)
    bias_real = torch.tensor([-1.0, 5.0], dtype=f64)
    # 1 - 0/(1*1 + 1e-6) = 1        1 - 2/(sqrt2*sqrt2 + 1e-6) = 1 - 2/2.000001
    # 1 - 25/(5*5 + 1e-6)           1 - (-1)/(1*1 + 1e-6) = 1 + 1/1.000001
    expected = 1.0 + (1 - 2 / 2.000001) + (1 - 25 / 25.000001) + (1 + 1 / 1.000001)
    assert expected == pytest.approx(2.99999954, abs=1e-8)
    value = dc_distance([conv_syn, lin_syn, bias_syn], [conv_real, lin_real, bias_real])
    assert float(value) == pytest.approx(expected, rel=1e-12)


def test_dc_distance_ignores_one_dimensional_tensors_and_is_zero_for_equal_gradients() -> None:
    bias = dc_distance([torch.tensor([1.0, 2.0])], [torch.tensor([-3.0, 0.5])])
    assert float(bias) == 0.0
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    assert float(dc_distance([weight], [weight * 2])) == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="same length"):
        dc_distance([weight], [])
    with pytest.raises(ValueError, match="shapes differ"):
        dc_distance([weight], [weight[:2]])


def test_dc_distance_gradient_flows_to_the_synthetic_side() -> None:
    syn = torch.randn(3, 5, requires_grad=True)
    torch.autograd.backward(dc_distance([syn], [torch.randn(3, 5)]))
    assert syn.grad is not None
    assert torch.isfinite(syn.grad).all()
    assert syn.grad.abs().sum() > 0


def test_loops_table_and_options() -> None:
    assert dc_loops(10) == (10, 50)
    assert DC_LOOPS[50] == (50, 10)
    assert DCDistiller(ipc=20).config["outer_loop"] == 20
    assert DCDistiller(ipc=20).config["inner_loop"] == 25
    assert DCDistiller(ipc=10, inner_loop=5).config["inner_loop"] == 5
    with pytest.raises(ValueError, match="ipc"):
        DCDistiller(ipc=3)
    with pytest.raises(ValueError, match="both"):
        DSADistiller(ipc=3, outer_loop=2)
    assert DSADistiller(ipc=3, outer_loop=2, inner_loop=0).config["inner_loop"] == 0
    with pytest.raises(ValueError, match="unknown option"):
        DCDistiller(ipc=1, lr_teacher=0.01)
    with pytest.raises(ValueError, match=r"lr_img must be a finite number > 0, got -1\.0"):
        DCDistiller(ipc=1, lr_img=-1.0)
    with pytest.raises(ValueError, match="inner_loop must be an int >= 0, got -1"):
        DCDistiller(ipc=1, inner_loop=-1)
    with pytest.raises(ValueError, match="lr_net must be a finite number > 0, got nan"):
        DSADistiller(ipc=1, lr_net=float("nan"))
    dc, dsa = DCDistiller(ipc=1), DSADistiller(ipc=1)
    assert dc.config["dsa_strategy"] == "none"
    assert dsa.config["dsa_strategy"] == "color_crop_cutout_flip_scale_rotate"
    assert DSADistiller(ipc=1, dsa_strategy="color").options.dsa_strategy == "color"
    assert dsa.options.outer_loop == 1
    assert dsa.method == "dsa"
    assert dsa.DEFAULT_ITERATIONS == 1000
    assert dsa.config["lr_img"] == 0.1
    assert dsa.config["lr_net"] == 0.01


@pytest.mark.parametrize("cls", [DCDistiller, DSADistiller])
def test_matching_loss_decreases_from_noise(
    cls: type[DCDistiller], subset: tuple[torch.Tensor, torch.Tensor]
) -> None:
    # From noise the synthetic gradients start far from the real ones; a fresh network
    # every iteration makes single losses noisy, so compare averages of three. (lr_img
    # 0.5 to move faster than the reference 0.1: seen ratios 0.6-0.7 over seeds.)
    result = cls(ipc=1, iterations=10, init="noise", seed=3, lr_img=0.5, **SMALL).distill(*subset)
    history = result.meta["loss_history"]
    assert history.shape == (10,)
    assert torch.isfinite(history).all()
    assert float(history[-3:].mean()) < 0.85 * float(history[:3].mean())


def _check_result(result: DistilledSet, method: str, ipc: int, seed: int) -> None:
    assert result.images.shape == (10 * ipc, 1, 28, 28)
    assert torch.equal(result.labels, torch.arange(10).repeat_interleave(ipc))
    assert result.meta["method"] == method
    assert result.meta["ipc"] == ipc
    assert result.meta["seed"] == seed
    assert result.meta["config"]["method"] == method


@pytest.mark.parametrize("cls", [DCDistiller, DSADistiller])
def test_same_seed_same_images_with_inner_training(
    cls: type[DCDistiller], subset: tuple[torch.Tensor, torch.Tensor]
) -> None:
    # ipc 2 with two outer steps, so the inner network training runs too.
    options = {"ipc": 2, "iterations": 1, "outer_loop": 2, "inner_loop": 2, "seed": 5, **SMALL}
    first = cls(**options).distill(*subset)
    second = cls(**options).distill(*subset)
    _check_result(first, cls.method, 2, 5)
    assert first.meta["config"]["outer_loop"] == 2
    assert torch.equal(first.images, second.images)
    assert torch.equal(first.meta["loss_history"], second.meta["loss_history"])
    other = cls(**{**options, "seed": 6}).distill(*subset)
    assert not torch.equal(first.images, other.images)


@pytest.mark.parametrize("cls", [DCDistiller, DSADistiller])
def test_mdt_runs_and_changes_the_result(
    cls: type[DCDistiller], subset: tuple[torch.Tensor, torch.Tensor]
) -> None:
    plain = cls(ipc=1, iterations=1, seed=1, **SMALL).distill(*subset)
    masked = cls(ipc=1, iterations=1, seed=1, mdt_ratio=0.5, **SMALL).distill(*subset)
    _check_result(masked, cls.method, 1, 1)
    assert masked.meta["mdt_ratio"] == 0.5
    assert torch.isfinite(masked.images).all()
    assert not torch.equal(plain.images, masked.images)


def _reference_distance(gws: torch.Tensor, gwr: torch.Tensor) -> torch.Tensor:
    # The reference ``distance_wb``, rewritten: conv/linear rows, 1-D tensors give 0.
    if gwr.ndim == 1:
        return torch.zeros(())
    gwr, gws = gwr.reshape(gwr.shape[0], -1), gws.reshape(gws.shape[0], -1)
    return torch.sum(
        1 - torch.sum(gwr * gws, dim=-1) / (gwr.norm(dim=-1) * gws.norm(dim=-1) + 0.000001)
    )


def test_gradient_match_equals_the_reference_computation_over_all_parameters() -> None:
    # ``gradient_match`` differentiates the weight tensors only; the value and the gradient
    # on the synthetic images must equal the reference's, which uses every parameter.
    torch.manual_seed(0)
    network = build_convnet("ConvNetD3", 1, 2, 28, width=8)
    real = torch.randn(5, 1, 28, 28)
    syn = torch.randn(2, 1, 28, 28, requires_grad=True)
    ours = gradient_match(syn, real, network, 1)
    (grad_ours,) = torch.autograd.grad(ours, syn)

    params = list(network.parameters())
    criterion = torch.nn.CrossEntropyLoss()
    gw_real = torch.autograd.grad(criterion(network(real), torch.ones(5, dtype=torch.long)), params)
    gw_real = tuple(g.detach().clone() for g in gw_real)
    loss_syn = criterion(network(syn), torch.ones(2, dtype=torch.long))
    gw_syn = torch.autograd.grad(loss_syn, params, create_graph=True)
    theirs = sum(
        (_reference_distance(s, r) for s, r in zip(gw_syn, gw_real, strict=True)), torch.zeros(())
    )
    (grad_theirs,) = torch.autograd.grad(theirs, syn)
    assert float(ours.detach()) == pytest.approx(float(theirs.detach()), rel=1e-5)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-4, atol=1e-7)


def test_dsa_with_mdt_resumes_after_ctrl_c_like_an_uninterrupted_run(
    subset: tuple[torch.Tensor, torch.Tensor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = {"ipc": 1, "iterations": 3, "mdt_ratio": 0.5, "seed": 2, **SMALL}
    uninterrupted = DSADistiller(**options).distill(*subset)

    original = DCStep.step

    def interrupted_at_one(
        self: DCStep, iteration: int, synthetic: torch.Tensor, optimizer: Any
    ) -> float:
        if iteration == 1:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-iteration
        return original(self, iteration, synthetic, optimizer)

    with monkeypatch.context() as patch:
        patch.setattr(DCStep, "step", interrupted_at_one)
        with pytest.raises(KeyboardInterrupt, match="checkpoint saved"):
            DSADistiller(**options).distill(*subset, checkpoint_dir=tmp_path)
    resumed = DSADistiller(**options).distill(*subset, checkpoint_dir=tmp_path)
    assert torch.equal(resumed.images, uninterrupted.images)
    assert torch.equal(resumed.meta["loss_history"], uninterrupted.meta["loss_history"])
