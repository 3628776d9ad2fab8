"""Dataset readers on small files in each real format, written here; load_dataset."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path
from typing import Any

import kornia_rs
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ddcal.data.cifar import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    UnsafePickleError,
    load_cifar10,
    load_cifar100,
    read_cifar_pickle,
)
from ddcal.data.dataset import ImageClassificationData
from ddcal.data.idx import write_idx
from ddcal.data.image_folder import channel_stats, load_image_folder, read_images
from ddcal.data.imagenette import IMAGENETTE_CLASSES, IMAGENETTE_WNIDS, load_imagenette
from ddcal.data.paths import DATA_ENV_VAR, DatasetNotFoundError, find_dataset_dir
from ddcal.data.registry import DATASET_NAMES, canonical_name, load_dataset
from ddcal.data.tiny_imagenet import TINY_IMAGENET_MEAN, TINY_IMAGENET_STD, load_tiny_imagenet

# ---------------------------------------------------------------- writers


def cifar_pickle(obj: dict[bytes, Any], path: Path, *, protocol: int = 2) -> None:
    """Pickle ``obj`` as Python 3 writes a CIFAR batch."""
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def _py2_str(data: bytes) -> bytes:
    return b"U" + bytes([len(data)]) + data  # SHORT_BINSTRING: a Python 2 str


def py2_batch(path: Path, rows: np.ndarray, labels: list[int]) -> None:
    """A batch byte for byte as Python 2's cPickle wrote the official files (protocol 2:
    Python 2 strs, numpy.core.multiarray._reconstruct, the dtype's state tuple)."""
    n, width = rows.shape
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
        + _py2_str(b"b")
        + b"\x87R(K\x01K"
        + bytes([n])
        + b"M"
        + struct.pack("<H", width)
        + b"\x86cnumpy\ndtype\n"
        + _py2_str(b"u1")
        + b"K\x00K\x01\x87R(K\x03"
        + _py2_str(b"|")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T"
        + struct.pack("<I", rows.nbytes)
        + rows.tobytes()
        + b"tb"
    )
    label_list = b"](" + b"".join(b"K" + bytes([label]) for label in labels) + b"e"
    body = _py2_str(b"data") + array + _py2_str(b"labels") + label_list
    path.write_bytes(b"\x80\x02}(" + body + b"u.")


def cifar_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_cifar10(
    folder: Path, *, batches: int = 2, per_batch: int = 5, n_test: int = 4, protocol: int = 2
) -> dict[str, Any]:
    """cifar-10-batches-py with ``batches`` data batches, a test batch and batches.meta."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    train_rows, train_labels = [], []
    for b in range(1, batches + 1):
        rows, labels = cifar_rows(rng, per_batch), rng.integers(0, 10, per_batch).tolist()
        if b == 1 and protocol == 2:
            py2_batch(folder / "data_batch_1", rows, labels)
        else:
            batch = {b"batch_label": f"training batch {b} of 5".encode(), b"labels": labels}
            batch |= {b"data": rows, b"filenames": [f"{b}_{i}.png".encode() for i in labels]}
            cifar_pickle(batch, folder / f"data_batch_{b}", protocol=protocol)
        train_rows.append(rows)
        train_labels += labels
    test_rows, test_labels = cifar_rows(rng, n_test), rng.integers(0, 10, n_test).tolist()
    cifar_pickle(
        {b"batch_label": b"testing batch 1 of 1", b"labels": test_labels, b"data": test_rows},
        folder / "test_batch",
        protocol=protocol,
    )
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
    names += [b"dog", b"frog", b"horse", b"ship", b"truck"]
    cifar_pickle(
        {b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072},
        folder / "batches.meta",
        protocol=protocol,
    )
    return {
        "train": np.concatenate(train_rows),
        "train_labels": train_labels,
        "test": test_rows,
        "test_labels": test_labels,
    }


def write_cifar100(folder: Path, *, n_train: int = 6, n_test: int = 3) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    out: dict[str, Any] = {}
    for part, n in (("train", n_train), ("test", n_test)):
        rows, fine = cifar_rows(rng, n), rng.integers(0, 100, n).tolist()
        coarse = [f // 5 for f in fine]
        cifar_pickle(
            {b"data": rows, b"fine_labels": fine, b"coarse_labels": coarse},
            folder / part,
            protocol=4,
        )
        out |= {part: rows, f"{part}_fine": fine, f"{part}_coarse": coarse}
    meta = {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    }
    cifar_pickle(meta, folder / "meta", protocol=4)
    return out


def write_jpeg(path: Path, pixels: np.ndarray) -> None:
    """``pixels`` uint8 ``(H, W, 3)`` or ``(H, W, 1)``, via kornia-rs's encoder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "mono" if pixels.shape[2] == 1 else "rgb"
    kornia_rs.io.write_image_jpeg(str(path), np.ascontiguousarray(pixels), mode, 95)


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "mono" if pixels.shape[2] == 1 else "rgb"
    kornia_rs.io.write_image_png_u8(str(path), np.ascontiguousarray(pixels), mode)


def flat(color: tuple[int, int, int], height: int, width: int) -> np.ndarray:
    return np.broadcast_to(np.array(color, dtype=np.uint8), (height, width, 3)).copy()


COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40)]


def write_tiny_imagenet(root: Path, *, per_class: int = 2) -> dict[str, Any]:
    """A miniature tiny-imagenet-200: 3 classes, flat-colour 64x64 JPEGs, one grey."""
    folder = root / "tiny-imagenet-200"
    wnids = ["n09999999", "n01443537", "n02124075"]  # wnids.txt is not sorted
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    words = {"n01443537": "goldfish, Carassius auratus", "n02124075": "Egyptian cat"}
    words |= {"n09999999": "sandbar, sand bar", "n00001740": "entity"}
    (folder / "words.txt").write_text("".join(f"{k}\t{v}\n" for k, v in words.items()))
    order = sorted(wnids)
    for wnid in wnids:
        color = COLORS[order.index(wnid)]
        images = folder / "train" / wnid / "images"
        for k in range(per_class):
            write_jpeg(images / f"{wnid}_{k}.JPEG", flat(color, 64, 64))
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("x\t0\t0\t1\t1\n")
    val = [("val_0.JPEG", "n02124075"), ("val_1.JPEG", "n01443537"), ("val_2.JPEG", "n09999999")]
    for filename, wnid in val:
        write_jpeg(folder / "val" / "images" / filename, flat(COLORS[order.index(wnid)], 64, 64))
    grey = np.full((64, 64, 1), 90, dtype=np.uint8)
    write_jpeg(folder / "val" / "images" / "val_3.JPEG", grey)
    val.append(("val_3.JPEG", "n01443537"))
    lines = "".join(f"{f}\t{w}\t0\t0\t63\t63\n" for f, w in val)
    (folder / "val" / "val_annotations.txt").write_text(lines)
    write_jpeg(folder / "test" / "images" / "test_0.JPEG", flat((1, 2, 3), 64, 64))
    return {"folder": folder, "sorted": order, "val": val}


def assert_close_u8(images: torch.Tensor, expected: torch.Tensor, tol: float = 3.0) -> None:
    """Decoded JPEG pixels (as [0, 1] floats) within ``tol`` levels of ``expected`` (uint8)."""
    diff = (images * 255 - expected.to(torch.float32)).abs().max()
    assert float(diff) <= tol, float(diff)


# ---------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_layout_labels_and_normalisation(tmp_path: Path, protocol: int) -> None:
    written = write_cifar10(tmp_path / "cifar-10-batches-py", protocol=protocol)
    data = load_cifar10(tmp_path)
    assert isinstance(data, ImageClassificationData)
    assert data.name == "cifar10"
    assert data.train_images.shape == (10, 3, 32, 32)
    assert data.test_images.shape == (4, 3, 32, 32)
    assert data.train_images.dtype == torch.float32
    assert data.train_labels.tolist() == written["train_labels"]
    assert data.test_labels.tolist() == written["test_labels"]
    assert data.classes[:3] == ("airplane", "automobile", "bird")
    assert data.mean == CIFAR10_MEAN
    assert data.std == CIFAR10_STD
    # Row layout: the red, green, blue 32x32 planes in turn, row-major.
    row = written["train"][7]
    raw = torch.from_numpy(row.astype(np.float32) / 255).view(3, 32, 32)
    mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(3, 1, 1)
    torch.testing.assert_close(data.train_images[7], (raw - mean) / std)
    assert float(data.train_images[7, 1, 2, 5]) == pytest.approx(
        (row[1024 + 2 * 32 + 5] / 255 - CIFAR10_MEAN[1]) / CIFAR10_STD[1], abs=1e-6
    )


def test_cifar10_root_is_the_batches_folder_env_var_and_splits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "data" / "cifar10" / "cifar-10-batches-py"
    written = write_cifar10(folder, batches=3, per_batch=2)
    direct = load_cifar10(folder, normalize=False)
    assert direct.train_images.shape[0] == 6
    assert direct.mean == (0.0, 0.0, 0.0)
    assert direct.std == (1.0, 1.0, 1.0)
    expected = torch.from_numpy(written["test"]).view(-1, 3, 32, 32).float() / 255
    torch.testing.assert_close(direct.test_images, expected)

    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "data"))
    train_only = load_dataset("CIFAR10", split="train")
    assert train_only.train_images.shape == (6, 3, 32, 32)
    assert train_only.test_images.shape == (0, 3, 32, 32)
    test_only = load_dataset("cifar10", split="test")
    assert test_only.train_images.shape == (0, 3, 32, 32)
    assert test_only.test_labels.tolist() == written["test_labels"]


def test_cifar100_fine_and_coarse(tmp_path: Path) -> None:
    written = write_cifar100(tmp_path / "cifar-100-python")
    data = load_dataset("cifar100", tmp_path)
    assert data.num_classes == 100
    assert data.classes[7] == "fine7"
    assert data.mean == CIFAR100_MEAN
    assert data.train_labels.tolist() == written["train_fine"]
    assert data.test_labels.tolist() == written["test_fine"]
    coarse = load_cifar100(tmp_path, labels="coarse", split="train")
    assert coarse.num_classes == 20
    assert coarse.classes[0] == "coarse0"
    assert coarse.train_labels.tolist() == written["train_coarse"]
    with pytest.raises(ValueError, match="labels must be one of"):
        load_cifar100(tmp_path, labels="medium")


def test_cifar_missing_files_name_the_folders_and_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"download\('cifar10'") as info:
        load_cifar10(tmp_path)
    assert str(tmp_path) in str(info.value)
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder, batches=3)
    (folder / "data_batch_2").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_2 is missing"):
        load_cifar10(tmp_path)


def test_cifar_corrupt_or_malformed_batches_are_errors_naming_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    batch = folder / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:500])  # truncated
    with pytest.raises(ValueError, match=r"data_batch_2: not a readable pickle.*extract"):
        load_cifar10(tmp_path)
    cifar_pickle({b"labels": [0], b"data": np.zeros((1, 10), np.uint8)}, batch)
    with pytest.raises(ValueError, match=r"data_batch_2: expected 'data' of shape \(N, 3072\)"):
        load_cifar10(tmp_path)
    cifar_pickle({b"labels": [10], b"data": np.zeros((1, 3072), np.uint8)}, batch)
    with pytest.raises(ValueError, match=r"'labels' must be in \[0, 10\)"):
        load_cifar10(tmp_path)
    cifar_pickle({b"data": np.zeros((1, 3072), np.uint8)}, batch)
    with pytest.raises(ValueError, match="no 'labels' entry"):
        load_cifar10(tmp_path)


class _RunsACommand:
    """Unpickling this runs a shell command: what a malicious batch would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class _Evaluates:
    def __reduce__(self) -> tuple[Any, ...]:
        return (eval, ("1 + 1",))


def test_a_pickle_carrying_arbitrary_objects_is_refused_not_run(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    marker = tmp_path / "pwned"
    for protocol in (2, 4):
        cifar_pickle(
            {b"labels": [0], b"data": _RunsACommand(marker)},
            folder / "data_batch_1",
            protocol=protocol,
        )
        with pytest.raises(UnsafePickleError, match=r"data_batch_1: refusing.*system"):
            load_cifar10(tmp_path)
        assert not marker.exists()
    cifar_pickle({b"x": _Evaluates()}, folder / "batches.meta")
    with pytest.raises(UnsafePickleError, match=r"batches.meta: refusing.*eval"):
        load_cifar10(tmp_path)
    assert issubclass(UnsafePickleError, ValueError)


def test_restricted_unpickler_refuses_codecs_other_than_latin1(tmp_path: Path) -> None:
    path = tmp_path / "batch"
    # _codecs.encode("x", "rot13") spelled out in protocol-2 opcodes.
    path.write_bytes(
        b"\x80\x02c_codecs\nencode\nq\x00X\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R."
    )
    with pytest.raises(UnsafePickleError, match="rot13"):
        read_cifar_pickle(path)
    path.write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(ValueError, match="expected a pickled dict, got list"):
        read_cifar_pickle(path)


# ---------------------------------------------------------------- Tiny-ImageNet


def test_tiny_imagenet_miniature_tree(tmp_path: Path) -> None:
    tree = write_tiny_imagenet(tmp_path)
    data = load_tiny_imagenet(tmp_path, normalize=False)
    order = tree["sorted"]
    assert data.name == "tiny-imagenet"
    assert data.class_ids == tuple(order)
    assert data.classes == ("goldfish, Carassius auratus", "Egyptian cat", "sandbar, sand bar")
    assert data.train_images.shape == (6, 3, 64, 64)
    assert data.train_labels.tolist() == [0, 0, 1, 1, 2, 2]
    for i, label in enumerate(data.train_labels.tolist()):
        assert_close_u8(data.train_images[i], torch.tensor(COLORS[label]).view(3, 1, 1))
    assert data.test_images.shape == (4, 3, 64, 64)  # the val split; test/ has no labels
    assert data.test_labels.tolist() == [order.index(w) for _, w in tree["val"]]
    assert_close_u8(data.test_images[3], torch.full((3, 1, 1), 90))  # grey -> 3 channels

    normalised = load_dataset("tiny-imagenet", tmp_path / "tiny-imagenet-200")
    assert normalised.mean == TINY_IMAGENET_MEAN
    assert normalised.std == TINY_IMAGENET_STD
    mean = torch.tensor(TINY_IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(TINY_IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(normalised.train_images, (data.train_images - mean) / std)
    small = load_dataset("tiny", tmp_path, split="test", size=32)
    assert small.test_images.shape == (4, 3, 32, 32)
    assert small.train_images.shape[0] == 0


def test_tiny_imagenet_bad_annotations_missing_and_corrupt_images(tmp_path: Path) -> None:
    tree = write_tiny_imagenet(tmp_path, per_class=1)
    folder = tree["folder"]
    annotations = folder / "val" / "val_annotations.txt"
    original = annotations.read_text()
    annotations.write_text(original + "val_9.JPEG\tn12345678\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match=r"val_annotations.txt, line 5: .*n12345678.*download"):
        load_tiny_imagenet(tmp_path, split="test")
    annotations.write_text(original + "val_9.JPEG\tn01443537\t0\t0\t1\t1\n")
    with pytest.raises(FileNotFoundError, match=r"val_9.JPEG: no such image file.*download"):
        load_tiny_imagenet(tmp_path, split="test")
    annotations.write_text(original)
    broken = folder / "train" / "n01443537" / "images" / "n01443537_0.JPEG"
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(ValueError, match=r"n01443537_0.JPEG: cannot decode the image"):
        load_tiny_imagenet(tmp_path, split="train")
    (folder / "wnids.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"lacks wnids.txt.*tiny-imagenet-200.zip"):
        load_tiny_imagenet(tmp_path)


# ---------------------------------------------------------------- ImageNette


def write_imagenette(root: Path, *, wnids: tuple[str, ...] = IMAGENETTE_WNIDS) -> Path:
    folder = root / "imagenette2"
    for part, (height, width) in (("train", (40, 60)), ("val", (50, 50))):
        for i, wnid in enumerate(wnids):
            color = COLORS[i % len(COLORS)]
            write_jpeg(folder / part / wnid / f"{wnid}_{part}.JPEG", flat(color, height, width))
    return folder


def test_imagenette_resized_to_128_with_class_names(tmp_path: Path) -> None:
    write_imagenette(tmp_path)
    data = load_dataset("ImageNette", tmp_path, normalize=False)
    assert data.train_images.shape == (10, 3, 128, 128)
    assert data.test_images.shape == (10, 3, 128, 128)
    assert data.classes == IMAGENETTE_CLASSES
    assert data.classes[0] == "tench"
    assert data.class_ids == IMAGENETTE_WNIDS
    assert data.train_labels.tolist() == list(range(10))
    for i in range(10):  # flat colours stay flat through the resize
        assert_close_u8(data.train_images[i], torch.tensor(COLORS[i % 4]).view(3, 1, 1))
    small = load_imagenette(tmp_path, size=(16, 24), split="test")
    assert small.test_images.shape == (10, 3, 16, 24)
    assert small.mean == (0.485, 0.456, 0.406)


def test_imagenette_refuses_other_class_folders(tmp_path: Path) -> None:
    write_imagenette(tmp_path, wnids=(*IMAGENETTE_WNIDS[:9], "n99999999"))
    with pytest.raises(ValueError, match=r"n99999999.*not among the classes"):
        load_imagenette(tmp_path)


# ---------------------------------------------------------------- folder trees


def test_flat_folder_tree_classes_stats_and_no_test_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    pixels = {c: rng.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8) for c in ("dog", "cat")}
    for name, images in pixels.items():
        for k, image in enumerate(images):
            write_png(tmp_path / name / f"{k}.png", image)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "cat" / ".hidden.png").write_bytes(b"junk")
    data = load_dataset("folder", tmp_path, split="train")
    assert data.classes == ("cat", "dog")  # sorted folder names
    assert data.train_labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.test_images.shape == (0, 3, 8, 8)
    raw = torch.from_numpy(np.concatenate([pixels["cat"], pixels["dog"]])).permute(0, 3, 1, 2)
    as_float = raw.double() / 255
    expected_mean = as_float.mean(dim=(0, 2, 3))
    expected_std = as_float.std(dim=(0, 2, 3), unbiased=False)
    assert data.mean == pytest.approx(expected_mean.tolist(), abs=1e-12)
    assert data.std == pytest.approx(expected_std.tolist(), abs=1e-12)
    chunked_mean, chunked_std = channel_stats(raw.contiguous(), chunk=2)
    assert chunked_mean == pytest.approx(data.mean, abs=1e-12)
    assert chunked_std == pytest.approx(data.std, abs=1e-12)
    normalised = (as_float - expected_mean.view(1, 3, 1, 1)) / expected_std.view(1, 3, 1, 1)
    torch.testing.assert_close(data.train_images.double(), normalised, atol=1e-5, rtol=0)
    with pytest.raises(FileNotFoundError, match="no test split"):
        load_dataset("folder", tmp_path)


def test_folder_tree_with_train_and_test_splits(tmp_path: Path) -> None:
    for part, n in (("train", 2), ("test", 1)):
        for i, name in enumerate(("b", "a")):
            for k in range(n):
                write_png(tmp_path / part / name / f"{k}.png", flat(COLORS[i], 6, 6))
    data = load_image_folder(tmp_path, normalize=False, grayscale=True)
    assert data.classes == ("a", "b")
    assert data.train_images.shape == (4, 1, 6, 6)
    assert data.test_images.shape == (2, 1, 6, 6)
    assert data.test_labels.tolist() == [0, 1]
    test_only = load_dataset("folder", tmp_path, split="test")  # stats still from train
    assert test_only.train_images.shape[0] == 0
    assert test_only.mean == load_dataset("folder", tmp_path).mean
    (tmp_path / "test" / "c").mkdir()
    with pytest.raises(ValueError, match=r"\['c'\] are not among the classes"):
        load_image_folder(tmp_path)


def test_folder_sizes_must_agree_unless_resized_and_center_crop_keeps_aspect(
    tmp_path: Path,
) -> None:
    image = np.zeros((20, 40, 3), dtype=np.uint8)
    image[:, 20:] = 255  # left half black, right half white
    write_png(tmp_path / "x" / "wide.png", image)
    write_png(tmp_path / "x" / "square.png", flat((9, 9, 9), 10, 10))
    with pytest.raises(ValueError, match=r"wide.png: image is \(20, 40\).*pass size="):
        load_image_folder(tmp_path, split="train")
    files = [tmp_path / "x" / "wide.png"]
    cropped = read_images(files, size=10, center_crop=True)[0]
    assert cropped.shape == (3, 10, 10)
    assert cropped[:, :, :4].max() == 0
    assert cropped[:, :, 6:].min() == 255
    stretched = read_images(files, size=(10, 10))[0]
    reference = F.interpolate(
        torch.from_numpy(image).permute(2, 0, 1)[None].float(),
        size=(10, 10),
        mode="bilinear",
        antialias=True,
    )
    assert (stretched.int() - reference[0].round().int()).abs().max() <= 1
    data = load_image_folder(tmp_path, split="train", size=12)
    assert data.train_images.shape == (2, 3, 12, 12)
    with pytest.raises(ValueError, match="size must be >= 1"):
        read_images(files, size=0)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_image_folder(tmp_path / "absent")
    with pytest.raises(ValueError, match="no class subfolders"):
        load_image_folder(tmp_path, split="train")
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        load_image_folder(tmp_path, split="train")
    with pytest.raises(ValueError, match="root is required"):
        load_dataset("folder")


# ---------------------------------------------------------------- load_dataset


def test_load_dataset_names_and_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'svhn'; known: fashion-mnist, mnist"):
        load_dataset("svhn", tmp_path)
    assert canonical_name("FashionMNIST") == "fashion-mnist"
    assert canonical_name("tiny_imagenet") == "tiny-imagenet"
    assert set(DATASET_NAMES) == {canonical_name(n) for n in DATASET_NAMES}
    with pytest.raises(ValueError, match="split must be one of 'both', 'train', 'test'"):
        load_dataset("cifar10", tmp_path, split="val")
    write_cifar10(tmp_path / "cifar-10-batches-py")
    with pytest.raises(TypeError, match="size"):
        load_dataset("cifar10", tmp_path, size=64)


def test_load_dataset_mnist_from_idx_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    images[:] = (images * 0.5).astype(np.uint8)  # mean pixel near MNIST's
    labels = np.arange(5, dtype=np.uint8)
    for prefix in ("train", "t10k"):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    with pytest.warns(UserWarning, match="mean pixel"):
        data = load_dataset("mnist", tmp_path, split="test")
    assert data.test_images.shape == (5, 1, 28, 28)
    assert data.train_images.shape == (0, 1, 28, 28)
    assert data.test_labels.tolist() == [0, 1, 2, 3, 4]
    assert data.mean == (0.1307,)


def test_load_dataset_fashion_mnist_for_real(fashion_mnist: ImageClassificationData) -> None:
    data = load_dataset("fashion-mnist", split="test")
    assert data.test_images.shape == (10000, 1, 28, 28)
    assert data.train_images.shape == (0, 1, 28, 28)
    assert data.mean == (0.2861,)
    assert data.std == (0.3530,)
    torch.testing.assert_close(data.test_images, fashion_mnist.test_images, rtol=0, atol=0)
    assert torch.equal(data.test_labels, fashion_mnist.test_labels)


def test_find_dataset_dir_prefers_the_archive_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("")
    (tmp_path / "a.txt").write_text("")
    assert find_dataset_dir("x", ("a.txt",), tmp_path, subdirs=("sub",)) == tmp_path / "sub"
    assert find_dataset_dir("x", ("a.txt",), tmp_path) == tmp_path
    with pytest.raises(DatasetNotFoundError, match=r"lacks b.txt.*Get it here"):
        find_dataset_dir("x", ("b.txt",), tmp_path, subdirs=("sub",), how_to_get="Get it here.")
