"""DistilledSet: validation, ddcal's file format, MTT and DC/DSA/DM imports, refusal of pickles."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ddcal.data.distilled import (
    DISTILLED_FORMAT,
    DISTILLED_FORMAT_VERSION,
    DistilledSet,
    load_distilled,
)
from ddcal.data.zca import ZCA


def synthetic(
    num_classes: int = 3, ipc: int = 2, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(num_classes * ipc, 1, 4, 4)``, labels [0, 0, 1, 1, ...] (the references' order)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(num_classes * ipc, 1, 4, 4, generator=generator)
    labels = torch.arange(num_classes).repeat_interleave(ipc)
    return images, labels


class Payload:
    """Unpickling this object runs code that writes a marker file (what a hostile file does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('executed')",))


# --- the type -----------------------------------------------------------------------------


def test_properties_hard_labels() -> None:
    images, labels = synthetic(num_classes=3, ipc=2)
    distilled = DistilledSet(images, labels.int())
    assert distilled.labels.dtype == torch.int64
    assert len(distilled) == 6
    assert distilled.num_classes == 3
    assert distilled.ipc == 2
    assert not distilled.is_soft
    assert torch.equal(distilled.class_labels, labels)
    assert distilled.lr is None
    assert distilled.meta == {}
    assert distilled.zca is None
    assert "ipc=2" in repr(distilled)


def test_properties_soft_labels_and_unbalanced() -> None:
    images, _ = synthetic(num_classes=2, ipc=2)
    soft = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0], [0.1, 0.0, 0.9]])
    distilled = DistilledSet(images, soft, lr=0.02)
    assert distilled.is_soft
    assert distilled.num_classes == 3
    assert torch.equal(distilled.class_labels, torch.tensor([0, 1, 0, 2]))
    assert distilled.ipc is None  # class counts 2, 1, 1
    assert distilled.lr == 0.02


def test_images_are_stored_detached() -> None:
    images, labels = synthetic()
    distilled = DistilledSet(images.requires_grad_(), labels)
    assert not distilled.images.requires_grad


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"images": torch.zeros(2, 1, 4, 4, dtype=torch.uint8)}, TypeError, "floating point"),
        ({"images": torch.zeros(2, 16)}, ValueError, r"\(N, C, H, W\)"),
        ({"images": torch.zeros(0, 1, 4, 4), "labels": torch.zeros(0)}, ValueError, "N >= 1"),
        ({"images": torch.full((2, 1, 4, 4), float("inf"))}, ValueError, "finite"),
        ({"labels": torch.tensor([0, 1, 1])}, ValueError, r"shape \(2,\).*got \(3,\)"),
        ({"labels": torch.tensor([0.0, 1.0])}, TypeError, "integer class indices"),
        ({"labels": torch.tensor([True, False])}, TypeError, "integer class indices"),
        ({"labels": torch.tensor([0, -1])}, ValueError, "non-negative"),
        ({"labels": torch.zeros(2, 3, dtype=torch.long)}, TypeError, "floating soft labels"),
        ({"labels": torch.tensor([[1.0, -0.5], [0.0, 1.0]])}, ValueError, "softmax"),
        ({"labels": torch.tensor([[1.0, float("nan")], [0.0, 1.0]])}, ValueError, "finite"),
        ({"labels": torch.tensor([[1.0, 1.0], [0.0, 1.0]])}, ValueError, "rows must sum to 1"),
        ({"labels": torch.zeros(2, 2, 2)}, ValueError, "labels must have shape"),
        ({"lr": -0.01}, ValueError, "lr must be a positive"),
        ({"lr": float("nan")}, ValueError, "lr must be a positive"),
        ({"lr": True}, TypeError, "lr must be a float"),
        ({"lr": torch.tensor(0.01)}, TypeError, "lr must be a float"),
        ({"meta": [1]}, TypeError, "meta must be a dict"),
        ({"meta": {"seed": np.int64(3)}}, TypeError, r"meta\['seed'\] must be None"),
        ({"meta": {"config": {"net": object()}}}, TypeError, r"meta\['config'\]\['net'\]"),
        ({"meta": {1: "a"}}, TypeError, "keys must be str"),
        ({"meta": {"zca": {"eps": 0.1}}}, ValueError, "state must be a dict with keys"),
    ],
)
def test_validation_errors(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    arguments: dict[str, Any] = {"images": torch.zeros(2, 1, 4, 4), "labels": torch.tensor([0, 1])}
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        DistilledSet(**arguments)


# --- ddcal's own file -----------------------------------------------------------------------


def test_round_trip_hard_labels_lr_and_meta_with_zca(tmp_path: Path) -> None:
    images, labels = synthetic()
    zca = ZCA().fit(torch.randn(50, 1, 4, 4, dtype=torch.float64))
    meta = {
        "method": "mtt",
        "dataset": "fashion-mnist",
        "ipc": 2,
        "seed": 7,
        "zca": zca.state_dict(),
        "config": {"syn_steps": 20, "lr_img": 100.0, "dsa": True, "strategy": None},
        "shape": (1, 4, 4),
        "init": torch.arange(3),
    }
    distilled = DistilledSet(images, labels, lr=0.0123, meta=meta)
    path = distilled.save(tmp_path / "set.pt")
    assert path == tmp_path / "set.pt"
    loaded = load_distilled(path)
    assert torch.equal(loaded.images, images)
    assert torch.equal(loaded.labels, labels)
    assert loaded.lr == 0.0123
    assert loaded.meta["config"] == meta["config"]
    assert loaded.meta["shape"] == (1, 4, 4)
    assert torch.equal(loaded.meta["init"], torch.arange(3))
    restored = loaded.zca
    assert restored is not None
    probe = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    assert torch.equal(restored(probe), zca(probe))


def test_round_trip_soft_labels_without_lr(tmp_path: Path) -> None:
    images, _ = synthetic(num_classes=2, ipc=3)
    soft = torch.softmax(torch.randn(6, 2, generator=torch.Generator().manual_seed(1)), dim=1)
    loaded = load_distilled(DistilledSet(images, soft).save(tmp_path / "soft.pt"))
    assert loaded.is_soft
    assert torch.equal(loaded.labels, soft)
    assert loaded.lr is None


def test_file_is_a_tagged_plain_dict(tmp_path: Path) -> None:
    images, labels = synthetic()
    path = DistilledSet(images, labels, meta={"method": "dm"}).save(tmp_path / "set.pt")
    content = torch.load(path, weights_only=True)
    assert content["format"] == DISTILLED_FORMAT
    assert content["version"] == DISTILLED_FORMAT_VERSION
    assert set(content) == {"format", "version", "images", "labels", "lr", "meta"}


def test_failed_save_leaves_no_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, labels = synthetic()
    distilled = DistilledSet(images, labels)

    def write_half_then_fail(obj: object, handle: io.BufferedWriter) -> None:
        handle.write(b"PK\x03\x04 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        distilled.save(tmp_path / "set.pt")
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, labels = synthetic()
    path = DistilledSet(images, labels, lr=0.01).save(tmp_path / "set.pt")
    before = path.read_bytes()

    def fail(obj: object, handle: io.BufferedWriter) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(KeyboardInterrupt):
        DistilledSet(images, labels, lr=0.5).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["set.pt"]


def test_save_into_missing_folder(tmp_path: Path) -> None:
    images, labels = synthetic()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DistilledSet(images, labels).save(tmp_path / "missing" / "set.pt")


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    images, _ = synthetic()
    path = tmp_path / "future.pt"
    torch.save(
        {"format": DISTILLED_FORMAT, "version": DISTILLED_FORMAT_VERSION + 1, "images": images},
        path,
    )
    with pytest.raises(ValueError, match="newer ddcal"):
        load_distilled(path)


def test_meta_argument_overrides_file_meta(tmp_path: Path) -> None:
    images, labels = synthetic()
    path = DistilledSet(images, labels, meta={"method": "dm", "seed": 1}).save(tmp_path / "s.pt")
    loaded = load_distilled(path, meta={"seed": 2, "dataset": "cifar10"})
    assert loaded.meta == {"method": "dm", "seed": 2, "dataset": "cifar10"}


# --- MTT ----------------------------------------------------------------------------------------


def write_mtt_run(folder: Path, lr: object | None, lr_name: str = "lr_best.pt") -> None:
    """What mtt-distillation's distill.py (and, for the lr, its forks) save as the best set."""
    folder.mkdir()
    images, labels = synthetic(num_classes=10, ipc=1)
    image_syn = images.detach().requires_grad_(True)
    with torch.no_grad():
        torch.save(image_syn.cpu(), folder / "images_best.pt")
    torch.save(labels.cpu(), folder / "labels_best.pt")
    if lr is not None:
        torch.save(lr, folder / lr_name)


@pytest.mark.parametrize(
    ("lr", "lr_name", "expected"),
    [
        (torch.tensor(0.0125), "lr_best.pt", 0.0125),  # forks saving syn_lr.detach().cpu()
        (0.0125, "lr_best.pt", 0.0125),  # forks saving syn_lr.item()
        (torch.tensor(0.03), "syn_lr_best.pt", 0.03),
        (None, "", None),  # the original repository saves no lr
    ],
)
def test_mtt_folder(tmp_path: Path, lr: object, lr_name: str, expected: float | None) -> None:
    run = tmp_path / "run"
    write_mtt_run(run, lr, lr_name)
    loaded = load_distilled(run)
    images, labels = synthetic(num_classes=10, ipc=1)
    assert torch.equal(loaded.images, images)
    assert torch.equal(loaded.labels, labels)
    assert loaded.ipc == 1
    assert loaded.num_classes == 10
    if expected is None:
        assert loaded.lr is None
    else:
        assert loaded.lr == pytest.approx(expected)
    assert loaded.meta["source"] == "mtt"
    assert loaded.meta["images_file"] == str(run / "images_best.pt")


def test_mtt_explicit_files_with_soft_labels(tmp_path: Path) -> None:
    images, _ = synthetic(num_classes=2, ipc=2)
    soft = torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8], [0.1, 0.9]])
    torch.save(images, tmp_path / "images_5000.pt")
    torch.save(soft, tmp_path / "labels_5000.pt")
    torch.save(torch.tensor(0.004), tmp_path / "lr_5000.pt")
    loaded = load_distilled(
        tmp_path / "images_5000.pt",
        labels_path=tmp_path / "labels_5000.pt",
        lr_path=tmp_path / "lr_5000.pt",
        meta={"method": "mtt", "dataset": "cifar10"},
    )
    assert loaded.is_soft
    assert loaded.ipc == 2
    assert loaded.lr == pytest.approx(0.004)
    assert loaded.meta["method"] == "mtt"
    assert loaded.meta["labels_file"] == str(tmp_path / "labels_5000.pt")


def test_bare_images_file_asks_for_labels(tmp_path: Path) -> None:
    torch.save(torch.zeros(2, 1, 4, 4), tmp_path / "images_best.pt")
    with pytest.raises(ValueError, match="labels_path="):
        load_distilled(tmp_path / "images_best.pt")


def test_mtt_errors_name_the_file(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_mtt_run(run, torch.zeros(3))
    with pytest.raises(ValueError, match=r"lr_best\.pt must hold one learning rate"):
        load_distilled(run)
    torch.save(torch.tensor(-0.01), run / "lr_best.pt")
    with pytest.raises(ValueError, match=rf"^{run}: lr must be a positive"):
        load_distilled(run)
    with pytest.raises(FileNotFoundError, match=r"labels_9\.pt"):
        load_distilled(run / "images_best.pt", labels_path=run / "labels_9.pt")
    with pytest.raises(ValueError, match="lr_path is only used with labels_path"):
        load_distilled(run / "images_best.pt", lr_path=run / "lr_best.pt")
    with pytest.raises(ValueError, match="experiment applies only"):
        load_distilled(run / "images_best.pt", labels_path=run / "labels_best.pt", experiment=1)


# --- DC / DSA / DM ------------------------------------------------------------------------------


def res_content() -> tuple[dict[str, Any], list[tuple[torch.Tensor, torch.Tensor]]]:
    """What DatasetCondensation's main.py / main_DM.py save after two experiments."""
    pairs = [synthetic(num_classes=10, ipc=1, seed=seed) for seed in (1, 2)]
    data_save = [[images.clone(), labels.clone()] for images, labels in pairs]
    accs_all_exps = {"ConvNet": [np.float64(0.7012), np.float64(0.6987)] * 2}  # numpy floats
    return {"data": data_save, "accs_all_exps": accs_all_exps}, pairs


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("res_DM_FashionMNIST_ConvNet_1ipc.pt", {"method": "DM", "dataset": "FashionMNIST"}),
        ("res_FashionMNIST_ConvNet_1ipc.pt", {"dataset": "FashionMNIST"}),  # DC/DSA main.py
        ("distilled.pt", {}),
    ],
)
def test_dc_res_file_two_experiments(tmp_path: Path, name: str, fields: dict[str, Any]) -> None:
    content, pairs = res_content()
    path = tmp_path / name
    torch.save(content, path)
    for experiment, (images, labels) in enumerate(pairs):
        loaded = load_distilled(path, experiment=experiment)
        assert torch.equal(loaded.images, images)
        assert torch.equal(loaded.labels, labels)
        assert loaded.lr is None
        assert loaded.meta["source"] == "dc-res"
        assert loaded.meta["experiment"] == experiment
        assert loaded.meta["num_experiments"] == 2
        assert loaded.meta["accs_all_exps"] == {"ConvNet": [0.7012, 0.6987] * 2}
        assert type(loaded.meta["accs_all_exps"]["ConvNet"][0]) is float
        for key, value in fields.items():
            assert loaded.meta[key] == value
    with pytest.raises(ValueError, match=r"experiment must be in \[0, 2\).*got 2"):
        load_distilled(path, experiment=2)


def test_dc_res_file_from_numpy_1(tmp_path: Path) -> None:
    """Files pickled under numpy 1.x name the scalar constructor numpy.core.multiarray.scalar."""
    content, pairs = res_content()
    buffer = io.BytesIO()
    torch.save(content, buffer, _use_new_zipfile_serialization=False)  # one plain pickle stream
    raw = buffer.getvalue()
    new_name, old_name = b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar"
    if new_name in raw:  # running under numpy 2: rewrite to what numpy 1.x wrote
        raw = raw.replace(new_name, old_name)
    assert old_name in raw
    path = tmp_path / "res_DSA_CIFAR10_ConvNet_1ipc.pt"
    path.write_bytes(raw)
    loaded = load_distilled(path, experiment=1)
    assert torch.equal(loaded.images, pairs[1][0])
    assert loaded.meta["accs_all_exps"]["ConvNet"][0] == 0.7012


def test_dc_res_bad_entries(tmp_path: Path) -> None:
    path = tmp_path / "res.pt"
    torch.save({"data": [], "accs_all_exps": {}}, path)
    with pytest.raises(ValueError, match="non-empty list"):
        load_distilled(path)
    torch.save({"data": [[torch.zeros(2, 1, 4, 4)]]}, path)
    with pytest.raises(ValueError, match=r"data\[0\] must be an \[images, labels\] pair"):
        load_distilled(path)
    torch.save({"data": [[torch.zeros(2, 1, 4, 4), torch.tensor([0, 1, 2])]]}, path)
    with pytest.raises(ValueError, match=rf"^{path}: labels must have shape"):
        load_distilled(path)


# --- refusing pickled objects --------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4:UserWarning")  # plain-pickle
@pytest.mark.parametrize("where", ["ddcal", "res", "mtt-labels", "mtt-lr", "plain-pickle"])
def test_malicious_pickle_is_refused_and_not_run(tmp_path: Path, where: str) -> None:
    marker = tmp_path / "marker.txt"
    images, labels = synthetic()
    run = tmp_path / "run"
    run.mkdir()
    if where == "ddcal":
        path = run / "set.pt"
        torch.save({"format": DISTILLED_FORMAT, "version": 1, "meta": Payload(marker)}, path)
    elif where == "plain-pickle":  # pickle.dump, not torch.save
        path = run / "res_DM_CIFAR10_ConvNet_1ipc.pt"
        path.write_bytes(pickle.dumps({"data": [[images, labels]], "x": Payload(marker)}))
    elif where == "res":
        path = run / "res_DM_CIFAR10_ConvNet_1ipc.pt"
        torch.save({"data": [[images, labels]], "accs_all_exps": Payload(marker)}, path)
    else:
        path = run
        torch.save(images, run / "images_best.pt")
        torch.save(Payload(marker) if where == "mtt-labels" else labels, run / "labels_best.pt")
        if where == "mtt-lr":
            torch.save(Payload(marker), run / "lr_best.pt")
    with pytest.raises(ValueError, match=r"holds objects other than tensors .*not run"):
        load_distilled(path)
    assert not marker.exists()
    if where != "plain-pickle":  # torch.save's protocol 2: the refused global is named
        with pytest.raises(ValueError, match=r"\(Unsupported global: GLOBAL exec was not"):
            load_distilled(path)


def test_payload_really_runs_code_when_trusted(tmp_path: Path) -> None:
    """The control for the test above: an unrestricted load does execute the payload."""
    marker = tmp_path / "marker.txt"
    torch.save({"x": Payload(marker)}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.read_text() == "executed"


# --- unknown layouts and unreadable files -------------------------------------------------


def test_unknown_layouts(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(ValueError, match=rf"{path} has an unknown layout.*supported:"):
        load_distilled(path)
    torch.save({"format": "other.tool", "images": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"unknown format tag 'other\.tool'"):
        load_distilled(path)
    torch.save({"format": DISTILLED_FORMAT, "version": 1, "images": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"lacks keys \['labels', 'lr', 'meta'\]"):
        load_distilled(path)
    empty = tmp_path / "empty_run"
    empty.mkdir()
    torch.save(torch.zeros(1), empty / "images_100.pt")
    with pytest.raises(ValueError, match=r"holds no images_best\.pt.*images_100\.pt"):
        load_distilled(empty)
    with pytest.raises(ValueError, match="labels_path is for an MTT images file"):
        load_distilled(empty, labels_path=empty / "images_100.pt")


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pt does not exist"):
        load_distilled(tmp_path / "nowhere.pt")
    text = tmp_path / "notes.pt"
    text.write_text("not a torch file")
    with pytest.raises(ValueError, match=r"notes\.pt is not a readable PyTorch file"):
        load_distilled(text)
    truncated = tmp_path / "truncated.pt"
    images, labels = synthetic()
    DistilledSet(images, labels).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"truncated\.pt is not a readable PyTorch file"):
        load_distilled(truncated)


def test_experiment_must_be_a_non_negative_int(tmp_path: Path) -> None:
    images, labels = synthetic()
    path = DistilledSet(images, labels).save(tmp_path / "s.pt")
    with pytest.raises(ValueError, match="experiment must be >= 0"):
        load_distilled(path, experiment=-1)
    with pytest.raises(TypeError, match="experiment must be an int"):
        load_distilled(path, experiment=1.0)
    with pytest.raises(ValueError, match="experiment applies only"):
        load_distilled(path, experiment=1)


def test_saved_file_is_world_readable(tmp_path: Path) -> None:
    images, labels = synthetic()
    path = DistilledSet(images, labels).save(tmp_path / "s.pt")
    assert os.stat(path).st_mode & 0o644 == 0o644
