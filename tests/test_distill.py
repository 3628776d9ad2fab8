"""The distillation foundation: MDT, the checkpointed loop, DM."""

from __future__ import annotations

import math
import os
import signal

import pytest
import torch

from ddcal import MaskedDistillationTraining
from ddcal._random import MDT_STREAM
from ddcal.distill import Distiller, DMDistiller, derived_generator, dm_loss, get_distiller
from ddcal.distill.dm import DMStep
from ddcal.errors import InvalidValueError
from ddcal.models import build_convnet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _identity_loss(synthetic: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    return scale * synthetic.sum()


def test_mdt_with_ratio_zero_is_the_plain_loss() -> None:
    synthetic = torch.randn(4, 1, 5, 5)
    wrapped = MaskedDistillationTraining(_identity_loss, 0.0, seed=0)
    assert torch.equal(wrapped((0, 0), synthetic, scale=2.0), _identity_loss(synthetic, 2.0))


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_mdt_lets_about_one_minus_r_of_the_synthetic_elements_through(ratio: float) -> None:
    seen = []
    wrapped = MaskedDistillationTraining(lambda s: seen.append(s) or s.sum(), ratio, seed=1)
    wrapped((3, 1), torch.ones(200, 1, 28, 28))
    kept = float((seen[0] != 0).float().mean())
    sigma = math.sqrt(ratio * (1 - ratio) / seen[0].numel())
    assert abs(kept - (1 - ratio)) < 5 * sigma


def test_mdt_gradients_are_zero_on_masked_elements_and_masks_differ_by_key() -> None:
    synthetic = (torch.rand(6, 1, 8, 8) + 0.5).requires_grad_(True)
    seen = []
    wrapped = MaskedDistillationTraining(lambda s: seen.append(s.detach()) or (s**2).sum(), 0.5)
    wrapped((0, 0), synthetic).backward()
    assert synthetic.grad is not None
    masked = seen[0] == 0
    assert bool(masked.any())
    assert torch.all(synthetic.grad[masked] == 0)
    assert torch.allclose(synthetic.grad[~masked], 2 * synthetic.detach()[~masked])
    wrapped((0, 1), synthetic)
    wrapped((1, 0), synthetic)
    assert not torch.equal(seen[0] == 0, seen[1] == 0)
    assert not torch.equal(seen[0] == 0, seen[2] == 0)
    with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\)"):
        MaskedDistillationTraining(_identity_loss, 1.0)


def test_mdt_mask_is_a_function_of_seed_and_keys_not_of_call_order() -> None:
    # The mask of (iteration, class) is the same whichever other classes ran before it,
    # so per-class work can be split across processes.
    x = torch.ones(40)
    seen = []
    wrapped = MaskedDistillationTraining(lambda s: seen.append(s) or s.sum(), 0.5, seed=9)
    for c in range(4):
        wrapped((7, c), x)
    alone = MaskedDistillationTraining(lambda s: seen.append(s) or s.sum(), 0.5, seed=9)
    alone((7, 2), x)
    assert torch.equal(seen[2], seen[4])
    expected = torch.rand(40, generator=derived_generator(9, MDT_STREAM, 7, 2)) >= 0.5
    assert torch.equal(seen[4] != 0, expected)
    other_seed = MaskedDistillationTraining(lambda s: seen.append(s) or s.sum(), 0.5, seed=10)
    other_seed((7, 2), x)
    assert not torch.equal(seen[4], seen[5])


def test_dm_loss_equals_a_direct_computation() -> None:
    torch.manual_seed(0)
    net = build_convnet("ConvNetD3", 1, 10, 28, width=8)
    real, synthetic = torch.randn(7, 1, 28, 28), torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        real_features = net.features(real).flatten(1).double().numpy()
        synthetic_features = net.features(synthetic).flatten(1).double().numpy()
    gap = real_features.mean(axis=0) - synthetic_features.mean(axis=0)
    direct = torch.tensor(float((gap**2).sum()), dtype=torch.float32)
    assert torch.allclose(dm_loss(synthetic, real, net), direct, rtol=1e-5)


@pytest.fixture(scope="module")
def small_fashion_mnist(fashion_mnist):
    data = fashion_mnist
    keep = torch.cat([torch.nonzero(data.train_labels == c)[:40, 0] for c in range(10)])
    return data.train_images[keep], data.train_labels[keep]


def _dm(**overrides) -> DMDistiller:
    settings = {"ipc": 2, "iterations": 6, "progress": False, "width": 16, "batch_real": 32}
    distiller = get_distiller("dm", **{**settings, **overrides})
    assert isinstance(distiller, DMDistiller)
    return distiller


def test_dm_distils_fashion_mnist_and_lowers_the_matching_loss(small_fashion_mnist) -> None:
    images, labels = small_fashion_mnist
    distiller = _dm(iterations=30, batch_real=40)
    assert isinstance(distiller, Distiller)
    result = distiller.distill(images, labels)
    assert result.images.shape == (20, 1, 28, 28)
    assert result.labels.tolist() == [c for c in range(10) for _ in range(2)]
    assert result.meta["method"] == "dm"
    assert result.meta["mdt_ratio"] == 0.0
    assert result.meta["config"]["batch_real"] == 40
    history = result.meta["loss_history"]
    assert history.shape == (30,)
    assert float(history[-5:].mean()) < 0.7 * float(history[:5].mean())
    again = _dm(iterations=30, batch_real=40).distill(images, labels)
    assert torch.equal(result.images, again.images)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile's own imports
def test_compiled_dm_distils_the_same_images_as_eager(small_fashion_mnist) -> None:
    images, labels = small_fashion_mnist
    eager = _dm(iterations=3).distill(images, labels)
    compiled = _dm(iterations=3, compile=True).distill(images, labels)
    torch.testing.assert_close(compiled.images, eager.images, atol=1e-5, rtol=1e-5)
    assert compiled.meta["config"] == eager.meta["config"]  # a runtime setting, like device
    # Masked inputs leave larger (still small) differences: 3e-4 after one step of lr 1.
    eager = _dm(iterations=1, mdt_ratio=0.25).distill(images, labels)
    compiled = _dm(iterations=1, mdt_ratio=0.25, compile=True).distill(images, labels)
    torch.testing.assert_close(compiled.images, eager.images, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("method", ["dc", "dsa", "mtt"])
def test_compile_is_refused_where_the_objective_needs_double_backward(method: str) -> None:
    with pytest.raises(InvalidValueError, match=f"compile=True is not available for {method}"):
        get_distiller(method, ipc=1, compile=True)


def test_mdt_changes_the_distilled_images(small_fashion_mnist) -> None:
    images, labels = small_fashion_mnist
    plain = _dm().distill(images, labels)
    masked = _dm(mdt_ratio=0.5).distill(images, labels)
    assert masked.meta["mdt_ratio"] == 0.5
    assert not torch.equal(plain.images, masked.images)


@pytest.mark.parametrize("mdt_ratio", [0.0, 0.5])
def test_resume_after_ctrl_c_equals_an_uninterrupted_run(
    small_fashion_mnist, tmp_path, monkeypatch, mdt_ratio: float
) -> None:
    images, labels = small_fashion_mnist
    uninterrupted = _dm(mdt_ratio=mdt_ratio).distill(images, labels)

    original = DMStep.step

    def interrupted_at_two(self, iteration, synthetic, optimizer):
        if iteration == 2:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-iteration
        return original(self, iteration, synthetic, optimizer)

    with monkeypatch.context() as patch:
        patch.setattr(DMStep, "step", interrupted_at_two)
        with pytest.raises(KeyboardInterrupt, match="after iteration 3; checkpoint saved"):
            _dm(mdt_ratio=mdt_ratio).distill(
                images, labels, checkpoint_dir=tmp_path, checkpoint_every=100
            )
    resumed = _dm(mdt_ratio=mdt_ratio).distill(images, labels, checkpoint_dir=tmp_path)
    assert torch.equal(resumed.images, uninterrupted.images)
    assert torch.equal(resumed.meta["loss_history"], uninterrupted.meta["loss_history"])


def test_periodic_checkpoints_and_a_mismatched_resume(small_fashion_mnist, tmp_path) -> None:
    images, labels = small_fashion_mnist
    _dm(iterations=4).distill(images, labels, checkpoint_dir=tmp_path, checkpoint_every=2)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 4
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt"]
    with pytest.raises(ValueError, match=r"another configuration \(seed: checkpoint 0, now 1\)"):
        _dm(iterations=4, seed=1).distill(images, labels, checkpoint_dir=tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"colour": 1}, ValueError, r"unknown option\(s\) \['colour'\] for 'dm'"),
        ({"ipc": 0}, ValueError, "ipc must be >= 1, got 0"),
        ({"mdt_ratio": 1.0}, ValueError, r"mdt_ratio must be in \[0, 1\)"),
        ({"init": "zeros"}, ValueError, "init must be one of 'real', 'noise'"),
        ({"seed": -1}, ValueError, "seed must be >= 0, got -1"),
        ({"lr_img": -1}, ValueError, "lr_img must be a finite number > 0, got -1"),
        ({"momentum": 1.0}, ValueError, r"momentum must be in \[0, 1\), got 1.0"),
        ({"batch_real": 0}, ValueError, "batch_real must be an int >= 1, got 0"),
        ({"width": 2.5}, TypeError, "width must be an int, got float 2.5"),
        ({"dsa_strategy": "zoom"}, ValueError, "dsa_strategy: strategy 'zoom' has unknown"),
        ({"net": "ResNet"}, ValueError, "net must be one of"),
    ],
)
def test_bad_configuration_raises(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        _dm(**kwargs)


def test_unknown_method_and_too_few_images() -> None:
    with pytest.raises(ValueError, match=r"name must be one of \['dc', 'dm', 'dsa', 'mtt'\]"):
        get_distiller("kip", ipc=1)
    images, labels = torch.randn(3, 1, 28, 28), torch.tensor([0, 1, 1])
    with pytest.raises(ValueError, match="class 0 has 1 images, fewer than ipc=2"):
        _dm().distill(images, labels)
