import pytest
import torch
from torch import nn

from ddcal import PerClassSampler, accuracy, build_convnet
from ddcal.augment import DSA
from ddcal.errors import InvalidValueError
from ddcal.losses import FocalLoss
from ddcal.train import predict_logits, train_network, train_networks


def _linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))


def _toy_data(n: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 2, 2, generator=generator), torch.arange(n) % 3


@pytest.mark.parametrize("epochs", [1, 4])
def test_protocol_equals_a_hand_written_sgd_loop(epochs: int) -> None:
    """Shuffled batches, momentum 0.9, weight decay 5e-4, lr x0.1 after half the epochs.

    A single epoch keeps the initial lr (it has no second half).
    """
    images, labels = _toy_data()
    trained = train_network(_linear(), images, labels, epochs=epochs, lr=0.1, batch_size=4, seed=7)

    reference = _linear()
    params = list(reference.parameters())
    velocity = [torch.zeros_like(p) for p in params]
    generator = torch.Generator().manual_seed(7)
    for epoch in range(epochs):
        lr = 0.1 if epoch < max(1, epochs // 2) else 0.01
        for batch in torch.randperm(10, generator=generator).split(4):
            loss = nn.functional.cross_entropy(reference(images[batch]), labels[batch])
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, g, v in zip(params, grads, velocity, strict=True):
                    v.mul_(0.9).add_(g + 5e-4 * p)
                    p.sub_(lr * v)
    for mine, theirs in zip(trained.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(mine, theirs, atol=1e-6)
    assert not trained.training


def test_same_seed_same_network_other_seed_other_network() -> None:
    images, labels = _toy_data()
    first = train_network(_linear(), images, labels, epochs=3, batch_size=3, seed=1)
    again = train_network(_linear(), images, labels, epochs=3, batch_size=3, seed=1)
    other = train_network(_linear(), images, labels, epochs=3, batch_size=3, seed=2)
    assert torch.equal(first[1].weight, again[1].weight)
    assert not torch.equal(first[1].weight, other[1].weight)


def test_augment_is_applied_to_every_batch_with_the_generator() -> None:
    images, labels = _toy_data()
    calls = []

    def augment(x: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        calls.append(x.shape[0])
        return x + 0.01 * torch.randn(x.shape, generator=generator)

    train_network(_linear(), images, labels, epochs=2, batch_size=4, augment=augment)
    assert calls == [4, 4, 2, 4, 4, 2]


@pytest.mark.parametrize("loss", ["ce", "mixup", "label_smoothing", "focal", FocalLoss(gamma=1.0)])
def test_every_loss_trains_and_lowers_the_training_loss(loss) -> None:
    images, labels = _toy_data(30)
    net = _linear()
    before = nn.functional.cross_entropy(net(images), labels).item()
    train_network(net, images, labels, epochs=30, lr=0.1, batch_size=10, loss=loss)
    with torch.no_grad():
        assert nn.functional.cross_entropy(net(images), labels).item() < before


def test_soft_labels_are_accepted() -> None:
    images, labels = _toy_data(30)
    soft = 0.8 * nn.functional.one_hot(labels, 3).float() + 0.2 / 3
    net = train_network(_linear(), images, soft, epochs=30, lr=0.1, batch_size=10)
    assert accuracy(predict_logits(net, images), labels) > 0.5


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile's own imports
@pytest.mark.parametrize("setting", ["channels_last", "compile"])
def test_channels_last_and_compiled_training_train_the_same_network(setting: str) -> None:
    images = torch.randn(12, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(12) % 3
    trained = []
    for on in (False, True):
        torch.manual_seed(0)
        net = build_convnet("ConvNetD3", 1, 3, 28, width=8)
        trained.append(train_network(net, images, labels, epochs=3, batch_size=5, **{setting: on}))
    for a, b in zip(trained[0].parameters(), trained[1].parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert not any(isinstance(m, torch._dynamo.eval_frame.OptimizedModule) for m in trained)


def _convnets(count: int, classes: int = 3) -> list[nn.Module]:
    nets = []
    for seed in range(count):
        torch.manual_seed(seed)
        nets.append(build_convnet("ConvNetD3", 1, classes, 28, width=8))
    return nets


@pytest.mark.parametrize("loss", ["ce", "mixup"])
def test_vectorised_training_gives_each_network_of_sequential_training(loss: str) -> None:
    """Three networks on different sets, seeds and DSA draws, stacked into one vmap pass."""
    generator = torch.Generator().manual_seed(0)
    images = [torch.randn(12, 1, 28, 28, generator=generator) for _ in range(3)]
    labels = [torch.randperm(12, generator=generator) % 3 for _ in range(3)]
    settings = {"epochs": 3, "batch_size": 5, "augment": DSA("color_crop_cutout"), "loss": loss}
    one_by_one = [
        train_network(net, x, y, seed=10 + k, **settings)
        for k, (net, x, y) in enumerate(zip(_convnets(3), images, labels, strict=True))
    ]
    together = train_networks(
        _convnets(3), images, labels, seeds=[10, 11, 12], vectorize=True, **settings
    )
    for alone, stacked in zip(one_by_one, together, strict=True):
        for a, b in zip(alone.parameters(), stacked.parameters(), strict=True):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
        assert not stacked.training
    assert not torch.equal(next(together[0].parameters()), next(together[1].parameters()))


def test_networks_train_one_at_a_time_on_a_cpu_and_where_they_cannot_be_stacked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ddcal.train

    stacked = []
    monkeypatch.setattr(ddcal.train, "_train_stacked", lambda group, _: stacked.append(group))
    images = [torch.randn(6, 1, 28, 28), torch.randn(6, 1, 28, 28)]
    labels = [torch.arange(6) % 3] * 2
    train_networks(_convnets(2), images, labels, seeds=[0, 1], epochs=1)  # CPU: not stacked
    different_sizes = [images[0], torch.randn(5, 1, 28, 28)]
    train_networks(
        _convnets(2), different_sizes, [labels[0], labels[0][:5]], seeds=[0, 1], epochs=1,
        vectorize=True,
    )  # fmt: skip
    assert stacked == []
    train_networks(_convnets(2), images, labels, seeds=[0, 1], epochs=1, vectorize=True)
    assert len(stacked) == 1


def test_train_networks_needs_one_entry_per_network() -> None:
    images, labels = _toy_data()
    with pytest.raises(InvalidValueError, match=r"one entry per network, got lengths 2, 1, 1"):
        train_networks([_linear(), _linear(1)], [images], [labels], seeds=[0], epochs=1)
    with pytest.raises(InvalidValueError, match="nets is empty"):
        train_networks([], [], [], seeds=[], epochs=1)


def test_convnet_on_ten_fashion_mnist_images_per_class_beats_chance(fashion_mnist) -> None:
    data = fashion_mnist
    chosen = PerClassSampler(data.train_labels, per_class=10, seed=0).indices()
    torch.manual_seed(0)
    net = build_convnet("ConvNetD3", 1, 10, 28, width=32)
    train_network(net, data.train_images[chosen], data.train_labels[chosen], epochs=60, seed=0)
    test = PerClassSampler(data.test_labels, per_class=100, seed=0).indices()
    logits = predict_logits(net, data.test_images[test])
    assert accuracy(logits, data.test_labels[test]) > 0.55  # chance is 0.10


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"labels": torch.tensor([0, 1])}, ValueError, r"one entry per image \(10\), got 2"),
        ({"labels": torch.full((10,), 3)}, ValueError, r"labels must be in \[0, 3\), got max 3"),
        ({"labels": torch.full((10,), -1)}, ValueError, "non-negative class indices, got min -1"),
        ({"labels": torch.zeros(10)}, TypeError, "must be class indices, got dtype torch.float32"),
        ({"epochs": 0}, ValueError, "epochs must be >= 1, got 0"),
        ({"lr": 0.0}, ValueError, "lr must be > 0, got 0.0"),
        ({"loss": "hinge"}, ValueError, "loss must be one of"),
        ({"loss": 3}, TypeError, "loss must be a name or a callable"),
        (
            {"images": torch.zeros(10, 4, dtype=torch.long)},
            TypeError,
            "images must be floating point",
        ),
    ],
)
def test_bad_arguments_raise(kwargs: dict, error: type, match: str) -> None:
    images, labels = _toy_data()
    arguments = {"images": images, "labels": labels, "epochs": 1, **kwargs}
    with pytest.raises(error, match=match):
        train_network(_linear(), **arguments)


def test_predict_logits_runs_on_the_requested_device_and_returns_on_the_inputs_device() -> None:
    images, _ = _toy_data()
    net = _linear()
    logits = predict_logits(net, images, batch_size=3, device="cpu")
    with torch.no_grad():
        assert torch.allclose(logits, net(images))
    assert logits.device == images.device
    assert not torch.is_inference_mode_enabled()
