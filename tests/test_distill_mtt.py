"""MTT: expert trajectories (training, shards, resume, lazy loading, reference import)
and the trajectory-matching distiller."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import ddcal.distill.experts as experts_module
from ddcal.data import ImageClassificationData
from ddcal.distill.experts import (
    ExpertTrajectories,
    flatten_parameters,
    import_reference_buffers,
    train_experts,
)
from ddcal.distill.mtt import (
    MTTDistiller,
    MTTStep,
    parameter_layout,
    student_loss,
    student_step,
    trajectory_loss,
)
from ddcal.models import ConvNet

WIDTH = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _random_data(n: int = 24, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 28, 28, generator=g), torch.arange(n) % classes


def _subset(data: ImageClassificationData, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    keep = torch.cat(
        [torch.nonzero(data.train_labels == c)[:per_class, 0] for c in range(len(data.classes))]
    )
    return data.train_images[keep], data.train_labels[keep]


# --- the student update ------------------------------------------------------------------


def test_student_step_equals_explicit_sgd_step() -> None:
    torch.manual_seed(0)
    net = ConvNet(1, 3, 28, width=4)
    x, y = _random_data(6)
    flat = flatten_parameters(net).requires_grad_(True)
    lr = torch.tensor(0.05, requires_grad=True)
    loss = student_loss(x, flat, y, net, parameter_layout(net))
    new = student_step(loss, flat, lr)

    F.cross_entropy(net(x), y).backward()
    manual = torch.cat([(p - 0.05 * p.grad).detach().reshape(-1) for p in net.parameters()])
    torch.testing.assert_close(new.detach(), manual, rtol=1e-5, atol=1e-6)
    # Differentiable in the step size: d new / d lr = -grad.
    (dlr,) = torch.autograd.grad(new.sum(), lr)
    grad = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
    torch.testing.assert_close(dlr, -grad.sum(), rtol=1e-4, atol=1e-5)


def test_trajectory_loss_is_normalised_distance() -> None:
    start, target = torch.zeros(4), torch.full((4,), 2.0)
    assert float(trajectory_loss(start, start, target)) == pytest.approx(1.0)
    assert float(trajectory_loss(target, start, target)) == 0.0
    assert float(trajectory_loss(torch.ones(4), start, target)) == pytest.approx(0.25)


# --- experts -----------------------------------------------------------------------------


def _train(out: Path | None, num: int) -> ExpertTrajectories:
    x, y = _random_data()
    return train_experts(
        x, y, num_experts=num, epochs=2, batch_size=8, width=4, out_dir=out, progress=False
    )


def test_experts_shapes_snapshots_and_shards(tmp_path: Path) -> None:
    trajectories = _train(tmp_path, 2)
    params = sum(p.numel() for p in ConvNet(1, 3, 28, width=4).parameters())
    assert len(trajectories) == 2
    assert (trajectories.num_snapshots, trajectories.num_params) == (3, params)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["expert_00000.pt", "expert_00001.pt"]
    for i in range(2):
        t = trajectories[i]
        assert t.shape == (3, params)
        assert t.dtype == torch.float32
        assert not torch.equal(t[0], t[1])
        assert not torch.equal(t[1], t[2])
    assert not torch.equal(trajectories[0][0], trajectories[1][0])  # own initialisation
    in_memory = _train(None, 2)  # same seeds, same trajectories
    for i in range(2):
        torch.testing.assert_close(in_memory[i], trajectories[i], rtol=0, atol=0)


def test_experts_resume_skips_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _train(tmp_path, 1)
    first = (tmp_path / "expert_00000.pt").stat().st_mtime_ns
    trained: list[int] = []
    original = experts_module._train_one

    def counting(*args: object) -> torch.Tensor:
        trained.append(args[3])  # type: ignore[arg-type]
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(experts_module, "_train_one", counting)
    resumed = _train(tmp_path, 2)
    assert trained == [1]
    assert (tmp_path / "expert_00000.pt").stat().st_mtime_ns == first
    torch.testing.assert_close(resumed[1], _train(None, 2)[1], rtol=0, atol=0)
    x, y = _random_data()
    with pytest.raises(ValueError, match="another configuration"):
        train_experts(x, y, num_experts=1, epochs=2, lr=0.1, width=4, out_dir=tmp_path)


def test_experts_load_lazily(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _train(tmp_path, 3)
    reads: list[str] = []
    original = experts_module._read_shard

    def counting(path: Path) -> dict[str, object]:
        reads.append(path.name)
        return original(path)

    monkeypatch.setattr(experts_module, "_read_shard", counting)
    loaded = ExpertTrajectories.from_dir(tmp_path)
    assert len(loaded) == 3
    assert reads == ["expert_00000.pt"]
    loaded[2]
    loaded[2]
    assert reads == ["expert_00000.pt", "expert_00002.pt"]


def test_import_reference_buffer_layout(tmp_path: Path) -> None:
    torch.manual_seed(0)

    def trajectory() -> list[list[torch.Tensor]]:
        net = ConvNet(1, 3, 28, width=4)
        return [[torch.randn_like(p) for p in net.parameters()] for _ in range(3)]

    buffers = [[trajectory(), trajectory()], [trajectory()]]
    source = tmp_path / "buffers"
    source.mkdir()
    for n, buffer in enumerate(buffers):
        torch.save(buffer, source / f"replay_buffer_{n}.pt")
    imported = import_reference_buffers(source, tmp_path / "shards")
    flat = [t for buffer in buffers for t in buffer]
    assert len(imported) == 3
    assert imported.num_snapshots == 3
    for i, t in enumerate(flat):
        expected = torch.stack([torch.cat([p.reshape(-1) for p in s]) for s in t])
        torch.testing.assert_close(imported[i], expected, rtol=0, atol=0)
    # the snapshot order is ConvNet.parameters(): it loads into the network.
    net = ConvNet(1, 3, 28, width=4)
    torch.nn.utils.vector_to_parameters(imported[0][1], net.parameters())
    torch.testing.assert_close(net.features[0].weight, flat[0][1][0], rtol=0, atol=0)


# --- the distiller on FashionMNIST ------------------------------------------------------------


@pytest.fixture(scope="module")
def fmnist_small(fashion_mnist: ImageClassificationData) -> tuple[torch.Tensor, torch.Tensor]:
    return _subset(fashion_mnist, 8)


@pytest.fixture(scope="module")
def fmnist_experts(fmnist_small: tuple[torch.Tensor, torch.Tensor]) -> ExpertTrajectories:
    x, y = fmnist_small
    return train_experts(
        x, y, num_experts=2, epochs=2, batch_size=32, width=WIDTH, seed=3, progress=False
    )


def _distiller(experts: object, **kwargs: object) -> MTTDistiller:
    options: dict[str, object] = {
        "ipc": 1,
        "iterations": 3,
        "width": WIDTH,
        "syn_steps": 4,
        "max_start_epoch": 1,
        "lr_img": 100.0,
        "progress": False,
        **kwargs,
    }
    return MTTDistiller(experts=experts, **options)  # type: ignore[arg-type]


def test_mtt_output_and_determinism(
    fmnist_small: tuple[torch.Tensor, torch.Tensor], fmnist_experts: ExpertTrajectories
) -> None:
    x, y = fmnist_small
    out = _distiller(fmnist_experts).distill(x, y)
    assert out.images.shape == (10, 1, 28, 28)
    assert torch.equal(out.labels, torch.arange(10))
    assert out.lr is not None
    assert out.lr > 0
    assert out.lr != 0.01  # learned
    assert out.meta["method"] == "mtt"
    assert out.meta["ipc"] == 1
    config = out.meta["config"]
    assert (config["syn_steps"], config["expert_epochs"], config["lr_lr"]) == (4, 2, 1e-7)
    assert len(out.meta["loss_history"]) == 3
    again = _distiller(fmnist_experts).distill(x, y)
    assert torch.equal(out.images, again.images)
    assert out.lr == again.lr
    masked = _distiller(fmnist_experts, mdt_ratio=0.5).distill(x, y)
    assert torch.isfinite(masked.images).all()
    assert masked.meta["mdt_ratio"] == 0.5
    assert not torch.equal(masked.images, out.images)


def test_mtt_resume_equals_uninterrupted_and_trains_experts(
    tmp_path: Path,
    fmnist_small: tuple[torch.Tensor, torch.Tensor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x, y = fmnist_small
    kwargs = {"num_experts": 1, "train_epochs": 2, "mdt_ratio": 0.3, "syn_steps": 2}
    full = _distiller(None, **kwargs).distill(x, y, checkpoint_dir=tmp_path / "a")
    assert (tmp_path / "a" / "experts" / "expert_00000.pt").exists()

    interrupted = _distiller(None, **kwargs)
    original = MTTStep.step

    def stop_at_two(self: MTTStep, iteration: int, *args: object) -> float:
        if iteration == 2:
            raise KeyboardInterrupt
        return original(self, iteration, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(MTTStep, "step", stop_at_two)
    with pytest.raises(KeyboardInterrupt):
        interrupted.distill(x, y, checkpoint_dir=tmp_path / "b")
    monkeypatch.undo()
    resumed = _distiller(None, **kwargs).distill(x, y, checkpoint_dir=tmp_path / "b")
    assert torch.equal(resumed.images, full.images)
    assert resumed.lr == full.lr


def test_mtt_checks_experts(fmnist_small: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = fmnist_small
    short = ExpertTrajectories.from_tensors([torch.zeros(3, 10)])
    with pytest.raises(ValueError, match="parameters"):
        _distiller(short).distill(x, y)
    params = sum(p.numel() for p in ConvNet(1, 10, 28, width=WIDTH).parameters())
    with pytest.raises(ValueError, match="max_start_epoch"):
        _distiller(
            ExpertTrajectories.from_tensors([torch.zeros(3, params)]), max_start_epoch=2
        ).distill(x, y)
    with pytest.raises(ValueError, match="unknown option"):
        _distiller(short, lr_student=1.0)
