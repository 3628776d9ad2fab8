"""The one distillation loop and its checkpoints: continuing with more iterations, refusing
another configuration or other data, corrupt files; the options dataclasses; MTT's
expert settings."""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from ddcal.distill import (
    DCOptions,
    DMDistiller,
    DMOptions,
    MatchingDistiller,
    MTTDistiller,
    MTTOptions,
    get_distiller,
    train_experts,
)
from ddcal.distill.dm import DMStep
from ddcal.errors import InvalidTypeError, InvalidValueError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL: dict[str, Any] = {"width": 8, "progress": False, "seed": 3}
METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "dm": {"batch_real": 4},
    "dc": {"batch_real": 4, "outer_loop": 2, "inner_loop": 1, "batch_train": 4},
    "mtt": {
        "num_experts": 1,
        "train_epochs": 2,
        "syn_steps": 2,
        "max_start_epoch": 1,
        "lr_img": 100.0,
    },
}


def _data(shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(15, 1, 28, 28, generator=g) + shift, torch.arange(15) % 3


def _make(method: str, **overrides: Any) -> MatchingDistiller:
    settings = {"ipc": 2, "iterations": 3, **SMALL, **METHOD_OPTIONS[method], **overrides}
    return get_distiller(method, **settings)


@pytest.mark.parametrize("method", ["dm", "dc", "mtt"])
def test_more_iterations_on_a_finished_checkpoint_equal_one_uninterrupted_run(
    method: str, tmp_path: Path
) -> None:
    images, labels = _data()
    uninterrupted = _make(method, iterations=6, mdt_ratio=0.5).distill(images, labels)
    first = _make(method, iterations=3, mdt_ratio=0.5).distill(
        images, labels, checkpoint_dir=tmp_path
    )
    assert first.meta["loss_history"].shape == (3,)
    continued = _make(method, iterations=6, mdt_ratio=0.5).distill(
        images, labels, checkpoint_dir=tmp_path
    )
    assert torch.equal(continued.images, uninterrupted.images)
    assert torch.equal(continued.meta["loss_history"], uninterrupted.meta["loss_history"])
    assert continued.lr == uninterrupted.lr
    assert continued.meta["config"]["iterations"] == 6
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 6
    assert state["extra"] == ({"syn_lr": torch.tensor(continued.lr)} if method == "mtt" else {})


def test_fewer_iterations_than_the_checkpoint_holds_are_refused(tmp_path: Path) -> None:
    images, labels = _data()
    _make("dm", iterations=4).distill(images, labels, checkpoint_dir=tmp_path)
    with pytest.raises(InvalidValueError, match="holds 4 iterations, more than iterations=2"):
        _make("dm", iterations=2).distill(images, labels, checkpoint_dir=tmp_path)
    same = _make("dm", iterations=4).distill(images, labels, checkpoint_dir=tmp_path)
    assert same.meta["loss_history"].shape == (4,)


def test_a_checkpoint_of_other_data_is_refused_naming_the_data(tmp_path: Path) -> None:
    images, labels = _data()
    first = _make("dm", iterations=1).distill(images, labels, checkpoint_dir=tmp_path)
    assert first.meta["data"].startswith("sha256:")
    with pytest.raises(InvalidValueError, match=r"another configuration \(data: checkpoint 'sha"):
        _make("dm", iterations=2).distill(*_data(shift=0.5), checkpoint_dir=tmp_path)
    with pytest.raises(InvalidValueError, match="data: checkpoint"):
        _make("dm", iterations=2).distill(images, labels.flip(0), checkpoint_dir=tmp_path)


def test_another_configuration_is_refused_naming_each_key_with_both_values(
    tmp_path: Path,
) -> None:
    images, labels = _data()
    _make("dm", iterations=1).distill(images, labels, checkpoint_dir=tmp_path)
    with pytest.raises(InvalidValueError) as caught:
        _make("dm", iterations=2, seed=4, lr_img=0.5).distill(
            images, labels, checkpoint_dir=tmp_path
        )
    message = str(caught.value)
    assert "lr_img: checkpoint 1.0, now 0.5; seed: checkpoint 3, now 4" in message
    assert str(tmp_path / "checkpoint.pt") in message
    assert "iterations" not in message


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "is not a readable PyTorch file"),
        (b"not a checkpoint at all", "is not a readable PyTorch file"),
    ],
)
def test_a_corrupt_checkpoint_is_an_error_naming_the_file(
    tmp_path: Path, content: bytes, match: str
) -> None:
    (tmp_path / "checkpoint.pt").write_bytes(content)
    with pytest.raises(InvalidValueError, match=match) as caught:
        _make("dm").distill(*_data(), checkpoint_dir=tmp_path)
    assert str(tmp_path / "checkpoint.pt") in str(caught.value)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda state: [1, 2], "not a 'ddcal-distillation-checkpoint' file"),
        (lambda state: {**state, "version": 99}, "version 99"),
        (lambda state: {**state, "synthetic": torch.zeros(5, 1, 28, 28)}, "synthetic images"),
        (lambda state: {**state, "history": torch.zeros(7)}, "loss history"),
        (lambda state: {**state, "extra": {"generator": torch.zeros(3)}}, "extra state"),
        (
            lambda state: {**state, "optimizer": {**state["optimizer"], "param_groups": []}},
            "optimizer state does not fit",
        ),
    ],
)
def test_a_wrong_checkpoint_is_an_error_naming_the_file(
    tmp_path: Path, change: Any, match: str
) -> None:
    images, labels = _data()
    _make("dm", iterations=1).distill(images, labels, checkpoint_dir=tmp_path)
    path = tmp_path / "checkpoint.pt"
    torch.save(change(torch.load(path, weights_only=True)), path)
    with pytest.raises(InvalidValueError, match=match) as caught:
        _make("dm").distill(images, labels, checkpoint_dir=tmp_path)
    assert str(path) in str(caught.value)


def test_a_non_finite_loss_stops_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DMStep, "step", lambda self, *args: math.nan)
    with pytest.raises(FloatingPointError, match="matching loss became nan at iteration 0"):
        _make("dm").distill(*_data())


@pytest.mark.parametrize(
    ("options_type", "values", "error", "match"),
    [
        (DMOptions, {"lr_img": -1}, InvalidValueError, "lr_img must be a finite number > 0"),
        (DMOptions, {"momentum": -0.1}, InvalidValueError, r"momentum must be in \[0, 1\)"),
        (DMOptions, {"lr_img": "1"}, InvalidTypeError, "lr_img must be a number, got str"),
        (
            DCOptions,
            {"outer_loop": 0, "inner_loop": 1},
            InvalidValueError,
            "outer_loop must be an int >= 1, got 0",
        ),
        (
            MTTOptions,
            {"syn_steps": 2, "expert_epochs": 2, "max_start_epoch": 1, "lr_lr": math.inf},
            InvalidValueError,
            "lr_lr must be a finite number > 0, got inf",
        ),
        (
            MTTOptions,
            {
                "syn_steps": 2,
                "expert_epochs": 2,
                "max_start_epoch": 1,
                "lr_lr": 1e-5,
                "batch_syn": 0,
            },
            InvalidValueError,
            "batch_syn must be an int >= 1, got 0",
        ),
    ],
)
def test_options_dataclasses_validate_naming_the_option_and_value(
    options_type: type, values: dict[str, Any], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        options_type(**values)


def test_options_are_frozen_and_unknown_ones_are_named() -> None:
    distiller = DMDistiller(ipc=1, **SMALL)
    assert distiller.options == DMOptions(width=8)
    with pytest.raises(AttributeError):
        distiller.options.lr_img = 2.0  # type: ignore[misc]
    with pytest.raises(
        InvalidValueError, match=r"unknown option\(s\) \['lr_net', 'zoom'\] for 'mtt'"
    ):
        MTTDistiller(ipc=1, zoom=2, lr_net=0.1)
    assert MTTDistiller(ipc=10).options.syn_steps == 30
    assert MTTDistiller(ipc=10, syn_steps=5).config["syn_steps"] == 5


def test_expert_settings_are_the_train_experts_arguments_and_what_mtt_trains_with(
    tmp_path: Path,
) -> None:
    distiller = _make("mtt", iterations=1)
    settings = distiller.expert_settings()
    accepted = set(inspect.signature(train_experts).parameters)
    assert set(settings) == accepted - {"images", "labels", "out_dir", "device", "progress"}
    assert settings["num_experts"] == 1
    assert settings["epochs"] == 2
    assert (settings["net"], settings["width"], settings["seed"]) == ("ConvNetD3", 8, 3)
    assert _make("mtt", iterations=1, mdt_ratio=0.5).expert_settings() == settings
    assert _make("mtt", iterations=1, seed=4).expert_settings()["seed"] == 4
    assert distiller.config["experts"] == "trained"

    images, labels = _data()
    distiller.distill(images, labels, checkpoint_dir=tmp_path)
    own = torch.load(tmp_path / "experts" / "expert_00000.pt", weights_only=True)["trajectory"]
    expected = train_experts(images, labels, **settings, progress=False)
    assert torch.equal(own, expected[0])
    shared = _make("mtt", iterations=1, experts=tmp_path / "experts")
    assert shared.config["experts"].startswith(str(tmp_path / "experts"))
    assert torch.equal(
        shared.distill(images, labels).images,
        _make("mtt", iterations=1).distill(images, labels).images,
    )
