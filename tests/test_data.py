"""IDX reader/writer, dataset search path, MNIST/FashionMNIST loaders."""

from __future__ import annotations

import gzip
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddcal.data import (
    DATA_ENV_VAR,
    FASHION_MNIST_CLASSES,
    DatasetNotFoundError,
    ImageClassificationData,
    dataset_search_dirs,
    find_dataset_files,
    load_fashion_mnist,
    load_mnist,
    normalize_images,
    read_idx,
    write_idx,
)

# Every loader test below must load without the wrong-dataset warning.
pytestmark = pytest.mark.filterwarnings("error::UserWarning")

# IDX type codes and the big-endian dtypes of the format, written out here
# independently of the library.
IDX_CODES = {
    np.uint8: (0x08, ">u1"),
    np.int8: (0x09, ">i1"),
    np.int16: (0x0B, ">i2"),
    np.int32: (0x0C, ">i4"),
    np.float32: (0x0D, ">f4"),
    np.float64: (0x0E, ">f8"),
}
TORCH_DTYPES = {
    np.uint8: torch.uint8,
    np.int8: torch.int8,
    np.int16: torch.int16,
    np.int32: torch.int32,
    np.float32: torch.float32,
    np.float64: torch.float64,
}
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array``, built by hand from the format's description."""
    code, big_endian = IDX_CODES[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    return header + array.astype(big_endian).tobytes()


def save(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def write_fake_mnist(
    folder: Path,
    *,
    n_train: int = 30,
    n_test: int = 20,
    pixel_mean: float = 0.2861,
    num_classes: int = 10,
    seed: int = 0,
    gz: bool = True,
) -> dict[str, np.ndarray]:
    """Four small IDX files in MNIST layout whose mean pixel is about ``pixel_mean``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = (rng.random((n, 28, 28)) < pixel_mean).astype(np.uint8) * 255
        images[:, 0, 0] = rng.integers(0, 256, n)  # some in-between values
        labels = (np.arange(n) % num_classes).astype(np.uint8)
        arrays[f"{prefix}-images-idx3-ubyte"] = images
        arrays[f"{prefix}-labels-idx1-ubyte"] = labels
    suffix = ".gz" if gz else ""
    for name, array in arrays.items():
        save(folder / (name + suffix), idx_bytes(array))
    return arrays


# --------------------------------------------------------------------- IDX


@pytest.mark.parametrize("dtype", list(IDX_CODES))
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_reads_back_exactly(tmp_path, dtype, suffix):
    rng = np.random.default_rng(1)
    array = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        array.flat[:2] = [info.min, info.max]
    path = save(tmp_path / f"a.idx{suffix}", idx_bytes(array))
    out = read_idx(path)
    assert out.dtype == TORCH_DTYPES[dtype]
    assert out.shape == array.shape
    np.testing.assert_array_equal(out.numpy(), array)
    out += 1  # writable, owns its memory


def test_read_idx_detects_gzip_by_content_and_accepts_str_paths(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = tmp_path / "compressed-but-not-named-gz"
    path.write_bytes(gzip.compress(idx_bytes(array)))
    np.testing.assert_array_equal(read_idx(str(path)).numpy(), array)


def test_read_idx_multi_member_gzip(tmp_path):
    data = idx_bytes(np.arange(100, dtype=np.int32))
    path = tmp_path / "two-members.gz"
    path.write_bytes(gzip.compress(data[:50]) + gzip.compress(data[50:]))
    np.testing.assert_array_equal(read_idx(path).numpy(), np.arange(100))


@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from(list(IDX_CODES)),
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=4),
    gz=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_write_idx_round_trip_and_matches_the_format(tmp_path_factory, dtype, shape, gz, seed):
    rng = np.random.default_rng(seed)
    array = (rng.standard_normal(shape) * 50).astype(dtype)
    path = tmp_path_factory.mktemp("idx") / ("x.idx.gz" if gz else "x.idx")
    write_idx(path, torch.from_numpy(array))
    on_disk = path.read_bytes()
    assert (gzip.decompress(on_disk) if gz else on_disk) == idx_bytes(array)
    out = read_idx(path)
    assert out.dtype == TORCH_DTYPES[dtype]
    np.testing.assert_array_equal(out.numpy(), array)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


def test_write_idx_rejects_unsupported_arrays(tmp_path):
    with pytest.raises(TypeError, match="dtype"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="1 to 255 dimensions"):
        write_idx(tmp_path / "x", np.zeros((), dtype=np.uint8))
    assert list(tmp_path.iterdir()) == []


GOOD = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x01" + GOOD[1:], "not an IDX file: magic number 0x01000803"),
        (GOOD[:2] + b"\x07" + GOOD[3:], "not an IDX file: magic number 0x00000703"),
        (b"\x00\x00\x08", "truncated IDX header: 3 bytes"),
        (b"", "truncated IDX header: 0 bytes"),
        (GOOD[:10], "truncated IDX header: 3 dimensions need 16 bytes, the file has 10"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (GOOD[:-1], r"truncated IDX data: the header declares shape \(2, 3, 4\).* 24 bytes.* 23"),
        (GOOD[:16], r"truncated IDX data.*the file has 0"),
        (GOOD + b"\x00\x00", "2 unexpected trailing bytes"),
    ],
)
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_rejects_malformed_files(tmp_path, data, match, suffix):
    path = save(tmp_path / f"bad-file{suffix}", data)
    with pytest.raises(ValueError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_rejects_truncated_gzip(tmp_path):
    compressed = gzip.compress(idx_bytes(np.zeros((50, 28, 28), dtype=np.uint8)))
    for cut in (1, 8, len(compressed) // 2):
        path = tmp_path / f"cut{cut}.gz"
        path.write_bytes(compressed[:-cut])
        with pytest.raises(ValueError, match=re.escape(f"{path}: corrupt or truncated gzip")):
            read_idx(path)


def test_read_idx_rejects_bad_gzip_checksum_and_garbage(tmp_path):
    compressed = bytearray(gzip.compress(idx_bytes(np.arange(200, dtype=np.int16))))
    compressed[-8] ^= 0xFF  # the CRC32 of the trailer
    path = tmp_path / "crc.gz"
    path.write_bytes(bytes(compressed))
    with pytest.raises(ValueError, match="CRC"):
        read_idx(path)
    path = tmp_path / "not-gzip.gz"
    path.write_bytes(b"this is not gzip data")
    with pytest.raises(ValueError, match=re.escape(f"{path}: corrupt or truncated gzip")):
        read_idx(path)
    path = tmp_path / "garbage-after.gz"
    path.write_bytes(gzip.compress(GOOD) + b"garbage")
    with pytest.raises(ValueError, match=re.escape(str(path))):
        read_idx(path)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope.gz")


# ------------------------------------------------------------ search path


def test_search_dirs_order(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv(DATA_ENV_VAR, f"{a}{os.pathsep}{b}")
    dirs = dataset_search_dirs("mnist", system_dirs=["/sys/dir"])
    assert dirs == (a / "mnist", a, b / "mnist", b, Path("/sys/dir"))
    # root given: only root, whatever DDCAL_DATA says
    assert dataset_search_dirs("mnist", tmp_path / "r", system_dirs=["/sys/dir"]) == (
        tmp_path / "r",
    )
    monkeypatch.delenv(DATA_ENV_VAR)
    assert dataset_search_dirs("mnist", system_dirs=["/x", "/x"]) == (Path("/x"),)


def test_find_dataset_files_takes_all_files_from_one_folder(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (first / "a.gz").write_bytes(b"")  # first lacks b: not used at all
    for name in ("a", "a.gz", "b.gz"):
        (second / name).write_bytes(b"")
    found = find_dataset_files("ds", ["a", "b"], system_dirs=[first, second])
    assert found == {"a": second / "a", "b": second / "b.gz"}  # uncompressed preferred


def test_find_dataset_files_error_lists_what_is_missing(tmp_path):
    (tmp_path / "a").write_bytes(b"")
    with pytest.raises(DatasetNotFoundError) as info:
        find_dataset_files(
            "ds",
            ["a", "b"],
            system_dirs=[tmp_path, tmp_path / "absent"],
            display_name="My DS",
            how_to_get="Ask nicely.",
        )
    message = str(info.value)
    assert message.startswith(f"My DS files not found in {tmp_path}, {tmp_path / 'absent'}.")
    assert "a[.gz], b[.gz]" in message
    assert f"{tmp_path} (lacks b)" in message
    assert f"{tmp_path / 'absent'} (no such folder)" in message
    assert message.endswith("Ask nicely.")
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.searched == (tmp_path, tmp_path / "absent")


# ----------------------------------------------------------------- loaders


@pytest.mark.parametrize("gz", [True, False])
def test_load_fashion_mnist_from_root(tmp_path, gz):
    arrays = write_fake_mnist(tmp_path, gz=gz)
    data = load_fashion_mnist(tmp_path)
    assert data.name == "fashion-mnist"
    assert data.classes == FASHION_MNIST_CLASSES
    assert data.classes[0] == "T-shirt/top"
    assert data.classes[9] == "Ankle boot"
    assert (data.mean, data.std) == ((0.2861,), (0.3530,))
    assert data.train_images.shape == (30, 1, 28, 28)
    assert data.test_images.shape == (20, 1, 28, 28)
    assert data.train_images.dtype == data.test_images.dtype == torch.float32
    assert data.train_labels.dtype == data.test_labels.dtype == torch.int64
    assert (data.num_classes, data.in_channels, data.im_size) == (10, 1, (28, 28))
    for split, prefix in (("train", "train"), ("test", "t10k")):
        raw = arrays[f"{prefix}-images-idx3-ubyte"]
        expected = (raw[:, None].astype(np.float32) / 255 - np.float32(0.2861)) / np.float32(0.353)
        np.testing.assert_allclose(getattr(data, f"{split}_images").numpy(), expected, atol=1e-6)
        labels = getattr(data, f"{split}_labels").numpy()
        np.testing.assert_array_equal(labels, arrays[f"{prefix}-labels-idx1-ubyte"])


def test_load_without_normalisation(tmp_path):
    arrays = write_fake_mnist(tmp_path)
    data = load_fashion_mnist(tmp_path, normalize=False)
    assert (data.mean, data.std) == ((0.0,), (1.0,))
    expected = arrays["train-images-idx3-ubyte"][:, None].astype(np.float32) / 255
    np.testing.assert_array_equal(data.train_images.numpy(), expected)
    assert float(data.train_images.min()) == 0.0
    assert float(data.train_images.max()) == 1.0


def test_load_mnist(tmp_path):
    write_fake_mnist(tmp_path, pixel_mean=0.1307)
    data = load_mnist(root=tmp_path)
    assert data.name == "mnist"
    assert data.classes == tuple("0123456789")
    assert (data.mean, data.std) == ((0.1307,), (0.3081,))
    raw = data.denormalize(data.train_images) * 255
    torch.testing.assert_close(raw, raw.round(), atol=1e-3, rtol=0)


def test_wrong_dataset_files_warn(tmp_path):
    write_fake_mnist(tmp_path, pixel_mean=0.1307)  # MNIST-like brightness
    with pytest.warns(UserWarning, match="another dataset's files"):
        load_fashion_mnist(tmp_path)


def test_mixed_gz_and_raw_files(tmp_path):
    write_fake_mnist(tmp_path, gz=True)
    gz_path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(gzip.decompress(gz_path.read_bytes()))
    gz_path.unlink()
    assert load_fashion_mnist(tmp_path).test_labels.shape == (20,)


def test_mismatched_label_count_names_the_files(tmp_path):
    write_fake_mnist(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    save(labels, idx_bytes(np.zeros(29, dtype=np.uint8)))
    with pytest.raises(ValueError, match=re.escape(f"{labels} has 29 labels but ")) as info:
        load_fashion_mnist(tmp_path)
    assert "train-images-idx3-ubyte.gz has 30 images" in str(info.value)


def test_labels_out_of_range(tmp_path):
    write_fake_mnist(tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    save(labels, idx_bytes(np.full(20, 10, dtype=np.uint8)))
    with pytest.raises(ValueError, match=re.escape(f"{labels}: labels must be in [0, 10)")):
        load_fashion_mnist(tmp_path)


def test_images_of_the_wrong_kind(tmp_path):
    write_fake_mnist(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    save(images, idx_bytes(np.zeros((30, 28, 28), dtype=np.float32)))
    with pytest.raises(ValueError, match=re.escape(f"{images}: expected uint8 images")):
        load_fashion_mnist(tmp_path)


def test_corrupt_file_in_dataset_raises(tmp_path):
    write_fake_mnist(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:-20])
    with pytest.raises(ValueError, match=re.escape(str(images))):
        load_fashion_mnist(tmp_path)


def test_missing_files_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist(tmp_path)
    message = str(info.value)
    assert message.startswith(f"FashionMNIST files not found in {tmp_path}.")
    assert "apt-get install dataset-fashion-mnist" in message
    assert "root=" in message
    assert DATA_ENV_VAR in message
    assert "train-images-idx3-ubyte[.gz]" in message
    with pytest.raises(FileNotFoundError, match="MNIST files not found") as info:
        load_mnist(tmp_path / "absent")
    assert "no such folder" in str(info.value)


def test_partial_download_names_the_missing_file(tmp_path):
    write_fake_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape("(lacks t10k-labels-idx1-ubyte)")):
        load_fashion_mnist(tmp_path)


def test_root_is_the_only_place_searched(tmp_path, monkeypatch):
    write_fake_mnist(tmp_path / "data" / "fashion-mnist")
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "data"))
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist(tmp_path / "empty")
    assert info.value.searched == (tmp_path / "empty",)


def test_ddcal_data_is_honoured(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))
    write_fake_mnist(tmp_path, n_train=10)  # directly in $DDCAL_DATA
    assert load_fashion_mnist().train_images.shape[0] == 10
    write_fake_mnist(tmp_path / "fashion-mnist", n_train=12)  # the subfolder comes first
    assert load_fashion_mnist().train_images.shape[0] == 12
    write_fake_mnist(tmp_path / "mnist", n_train=14, pixel_mean=0.1307)
    assert load_mnist().train_images.shape[0] == 14


# ---------------------------------------------------------------- dataclass


def _small_data(**overrides):
    fields = {
        "name": "toy",
        "train_images": torch.zeros(4, 3, 8, 8),
        "train_labels": torch.tensor([0, 1, 2, 0]),
        "test_images": torch.zeros(2, 3, 8, 8),
        "test_labels": torch.tensor([1, 2]),
        "classes": ("a", "b", "c"),
        "mean": (0.5, 0.4, 0.3),
        "std": (0.2, 0.2, 0.25),
    }
    return ImageClassificationData(**(fields | overrides))


def test_dataclass_helpers():
    data = _small_data()
    assert (data.num_classes, data.in_channels, data.im_size) == (3, 3, (8, 8))
    assert len(data.train_dataset()) == 4
    image, label = data.test_dataset()[1]
    assert image.shape == (3, 8, 8)
    assert int(label) == 2
    pixels = data.denormalize(data.train_images)
    torch.testing.assert_close(pixels[0, :, 0, 0], torch.tensor([0.5, 0.4, 0.3]))
    assert "train=(4, 3, 8, 8)" in repr(data)
    with pytest.raises(AttributeError):
        data.name = "other"  # frozen


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"train_labels": torch.tensor([0, 1, 2])}, "train_labels has 3 entries but"),
        ({"test_labels": torch.tensor([1, 3])}, r"test_labels must be in \[0, 3\)"),
        ({"train_labels": torch.tensor([0, 1, 2, 0], dtype=torch.int32)}, "int64"),
        ({"train_images": torch.zeros(4, 3, 8, 8, dtype=torch.uint8)}, "floating point"),
        ({"test_images": torch.zeros(2, 3, 8, 9)}, "differ in shape"),
        ({"mean": (0.5,)}, "one value per channel"),
        ({"classes": ()}, "at least one class"),
    ],
)
def test_dataclass_validates(overrides, match):
    with pytest.raises(ValueError, match=match):
        _small_data(**overrides)


def test_normalize_images_matches_to_tensor_then_normalize():
    images = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).repeat(2, 3, 1, 1)
    out = normalize_images(images, (0.1, 0.2, 0.3), (0.5, 0.25, 2.0))
    mean = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.5, 0.25, 2.0]).view(1, 3, 1, 1)
    expected = (images.float() / 255 - mean) / std
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(normalize_images(images), images.float() / 255, rtol=0, atol=0)
    with pytest.raises(ValueError, match="uint8"):
        normalize_images(images.float())
    with pytest.raises(ValueError, match="one value per channel"):
        normalize_images(images, (0.1,), (0.5,))
    with pytest.raises(ValueError, match="std must be positive"):
        normalize_images(images, (0.1, 0.2, 0.3), (0.5, 0.0, 1.0))


# ----------------------------------------------------------------- real data


@pytest.mark.slow
def test_real_fashion_mnist(fashion_mnist):
    data = fashion_mnist
    assert data.name == "fashion-mnist"
    assert data.train_images.shape == (60000, 1, 28, 28)
    assert data.test_images.shape == (10000, 1, 28, 28)
    assert data.train_images.dtype == torch.float32
    assert data.train_labels.dtype == torch.int64
    assert data.classes == FASHION_MNIST_CLASSES
    assert data.train_labels.bincount().tolist() == [6000] * 10
    assert data.test_labels.bincount().tolist() == [1000] * 10
    # the files' order: the first training image is an ankle boot
    assert data.train_labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert data.test_labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    # normalised pixels: (k / 255 - 0.2861) / 0.3530 for integers k covering 0..255
    pixels = data.denormalize(data.train_images)
    assert float(pixels.min()) == pytest.approx(0.0, abs=1e-6)
    assert float(pixels.max()) == pytest.approx(1.0, abs=1e-6)
    levels = pixels * 255
    assert float((levels - levels.round()).abs().max()) < 1e-3
    assert float(data.train_images.mean()) == pytest.approx(0.0, abs=0.01)
    assert float(data.train_images.std()) == pytest.approx(1.0, abs=0.01)
    assert float(data.test_images.mean()) == pytest.approx(0.0, abs=0.02)
