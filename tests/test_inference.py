"""Saved predictions: save_predictions / load_predictions (.pt and .npz)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddcal.inference import PREDICTIONS_FORMAT, load_predictions, save_predictions


def _predictions(n: int = 20, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(n, classes, generator=generator)
    return logits, torch.randint(0, classes, (n,), generator=generator)


def test_round_trip_through_a_weights_only_file(tmp_path) -> None:
    logits, labels = _predictions()
    path = save_predictions(tmp_path / "p.pt", logits, labels.int(), extra={"model": "net.pt"})
    assert path == tmp_path / "p.pt"
    assert [p.name for p in tmp_path.iterdir()] == ["p.pt"]  # no temporary file left
    loaded_logits, loaded_labels = load_predictions(path)
    assert torch.equal(loaded_logits, logits)
    assert torch.equal(loaded_labels, labels)
    assert loaded_labels.dtype == torch.int64
    content = torch.load(path, weights_only=True)
    assert content["format"] == PREDICTIONS_FORMAT == "ddcal-predictions"
    assert content["version"] == 1
    assert content["extra"] == {"model": "net.pt"}


def test_numpy_and_half_precision_inputs(tmp_path) -> None:
    logits, labels = _predictions()
    save_predictions(tmp_path / "half.pt", logits.half(), labels)
    stored, _ = load_predictions(tmp_path / "half.pt")
    assert stored.dtype == torch.float32
    assert torch.equal(stored, logits.half().float())
    save_predictions(tmp_path / "np.pt", logits.double().numpy(), labels.numpy())
    stored, stored_labels = load_predictions(tmp_path / "np.pt")
    assert stored.dtype == torch.float64
    assert torch.equal(stored_labels, labels)


def test_npz_archives_and_plain_torch_dicts_are_read(tmp_path) -> None:
    logits, labels = _predictions()
    np.savez(tmp_path / "p.npz", logits=logits.numpy(), labels=labels.numpy(), other=np.ones(2))
    from_npz = load_predictions(tmp_path / "p.npz")
    torch.save({"logits": logits, "labels": labels}, tmp_path / "plain.pt")
    from_dict = load_predictions(tmp_path / "plain.pt")
    for loaded_logits, loaded_labels in (from_npz, from_dict):
        assert torch.equal(loaded_logits, logits)
        assert torch.equal(loaded_labels, labels)


@pytest.mark.parametrize(
    ("content", "error", "match"),
    [
        ({"logits": torch.zeros(3, 2)}, ValueError, r"must hold 'logits' \(N, C\) and 'labels'"),
        (torch.zeros(3, 2), ValueError, "must hold 'logits'.*got a Tensor"),
        (
            {"logits": torch.zeros(3), "labels": torch.zeros(3, dtype=torch.long)},
            ValueError,
            r"logits must have shape \(N, C\)",
        ),
        (
            {"logits": torch.zeros(3, 2), "labels": torch.zeros(4, dtype=torch.long)},
            ValueError,
            r"labels must have one entry per sample \(3\), got 4",
        ),
        (
            {"logits": torch.zeros(3, 2), "labels": torch.tensor([0, 1, 2])},
            ValueError,
            r"labels must be in \[0, 2\), got max 2",
        ),
        (
            {"logits": torch.zeros(3, 2, dtype=torch.long), "labels": torch.zeros(3).long()},
            TypeError,
            "logits must be floating point, got dtype torch.int64",
        ),
        (
            {"logits": torch.zeros(3, 2), "labels": torch.zeros(3)},
            TypeError,
            "labels must hold integer class indices",
        ),
        (
            {"logits": torch.tensor([[0.0, float("nan")]]), "labels": torch.zeros(1).long()},
            ValueError,
            "logits must be finite",
        ),
        (
            {"format": "ddcal.distilled", "logits": torch.zeros(1, 2), "labels": torch.zeros(1)},
            ValueError,
            "format tag 'ddcal.distilled', not 'ddcal-predictions'",
        ),
        (
            {"format": PREDICTIONS_FORMAT, "version": 2, "logits": 0, "labels": 0},
            ValueError,
            "newer ddcal.*predictions format version 2",
        ),
    ],
)
def test_bad_files_are_errors_naming_the_path(tmp_path, content, error, match) -> None:
    path = tmp_path / "bad.pt"
    torch.save(content, path)
    with pytest.raises(error, match=match) as caught:
        load_predictions(path)
    assert str(path) in str(caught.value)


def test_unreadable_missing_and_unsafe_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"absent\.pt does not exist"):
        load_predictions(tmp_path / "absent.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"garbage\.pt is not a readable PyTorch file"):
        load_predictions(tmp_path / "garbage.pt")
    (tmp_path / "garbage.npz").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match=r"garbage\.npz is not a readable \.npz archive"):
        load_predictions(tmp_path / "garbage.npz")
    np.savez(tmp_path / "objects.npz", logits=np.array([{"a": 1}], dtype=object), labels=[0])
    with pytest.raises(ValueError, match=r"objects\.npz is not a readable \.npz archive"):
        load_predictions(tmp_path / "objects.npz")
    torch.save(
        {"logits": torch.zeros(1, 2), "labels": [0], "x": torch.nn.Linear(1, 1)}, tmp_path / "m.pt"
    )
    with pytest.raises(ValueError, match=r"m\.pt holds objects other than tensors .*not run"):
        load_predictions(tmp_path / "m.pt")


def test_save_rejects_bad_arguments(tmp_path) -> None:
    logits, labels = _predictions()
    with pytest.raises(ValueError, match=r"labels must have one entry per sample \(20\)"):
        save_predictions(tmp_path / "p.pt", logits, labels[:-1])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\)"):
        save_predictions(tmp_path / "p.pt", logits, labels + 4)
    with pytest.raises(TypeError, match="logits must be floating point"):
        save_predictions(tmp_path / "p.pt", logits.long(), labels)
    with pytest.raises(TypeError, match=r"extra must hold only plain values .*PosixPath"):
        save_predictions(tmp_path / "p.pt", logits, labels, extra={"where": tmp_path})
    with pytest.raises(TypeError, match="extra keys must be str"):
        save_predictions(tmp_path / "p.pt", logits, labels, extra={1: "a"})
    with pytest.raises(FileNotFoundError, match=r"folder .* does not exist"):
        save_predictions(tmp_path / "no" / "p.pt", logits, labels)
    assert list(tmp_path.iterdir()) == []
