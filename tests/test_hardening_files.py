"""Regression tests of reading untrusted files: sizes checked before allocating, errors that
name the file, refused pickles keeping torch's reason, checkpoints, temporary files, archives.

The fuzz suite (test_fuzz_files.py) pushes generated files through the same readers and
measures the memory of the bomb cases; these are the hand-made cases, one per finding.
"""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import pickle
import re
import signal
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

import kornia_rs
import numpy as np
import pytest
import torch

import ddcal._io
import ddcal.data.image_folder
from ddcal._io import (
    MAX_DECLARED_BYTES,
    atomic_write,
    load_weights_only,
    read_npz,
    remove_stale_temporaries,
)
from ddcal.cli import main
from ddcal.data import DistilledSet, load_distilled
from ddcal.data.cifar import UnsafePickleError, read_cifar_pickle
from ddcal.data.download import _extract
from ddcal.data.idx import read_idx
from ddcal.data.image_folder import MAX_IMAGE_PIXELS, read_images
from ddcal.distill.checkpoint import Checkpoint
from ddcal.distill.loop import DistillationStep
from ddcal.errors import InvalidValueError
from ddcal.inference import save_predictions

CEILING = f"ceiling of {MAX_DECLARED_BYTES // 2**30} GiB"

# ---------------------------------------------------------------- builders


def idx_header(shape: tuple[int, ...], code: int = 0x08) -> bytes:
    """The IDX header declaring ``shape`` of type ``code`` (0x08: uint8)."""
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


def npy_bytes(shape: tuple[int, ...], descr: str = "<f4", data: bytes = b"") -> bytes:
    """An ``.npy`` (format 1.0) header declaring ``shape`` and ``descr``, then ``data``."""
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}".encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def write_zip(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


class RunsCommand:
    """Pickles as ``os.system(command)``: whoever unpickles it without restriction runs it."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (self.command,)


class SGDStep(DistillationStep):
    """The smallest distillation step: SGD with momentum on the images, no extra state."""

    def make_optimizer(self, synthetic: torch.Tensor) -> torch.optim.Optimizer:
        return torch.optim.SGD([synthetic], lr=0.1, momentum=0.9)

    def step(self, iteration: int, synthetic: torch.Tensor, optimizer: Any) -> float:
        return 0.0


def saved_checkpoint(folder: Path, iterations_done: int = 2) -> Checkpoint:
    """A checkpoint of 4 synthetic images ``(4, 1, 2, 2)`` after a momentum step, saved."""
    synthetic = torch.arange(16.0).reshape(4, 1, 2, 2).requires_grad_(True)
    optimizer = SGDStep().make_optimizer(synthetic)
    synthetic.grad = torch.ones_like(synthetic)
    optimizer.step()
    checkpoint = Checkpoint(folder, {"method": "sgd", "seed": 0, "iterations": 5})
    checkpoint.save(iterations_done, synthetic, optimizer, [0.5] * iterations_done, {})
    return checkpoint


def restore(checkpoint: Checkpoint) -> tuple[int, list[float]]:
    synthetic = torch.zeros(4, 1, 2, 2, requires_grad=True)
    step = SGDStep()
    return checkpoint.restore(synthetic, step.make_optimizer(synthetic), step, iterations=5)


# ------------------------------------------- 1. sizes checked before allocating


def test_idx_gzip_declaring_few_bytes_is_not_decompressed_past_them(tmp_path: Path) -> None:
    path = tmp_path / "bomb-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_header((10,)) + bytes(8 << 20), compresslevel=9))
    with pytest.raises(InvalidValueError, match="at least 1048576 unexpected trailing") as caught:
        read_idx(path)
    assert str(path) in str(caught.value)


def test_idx_gzip_declaring_more_than_deflate_can_expand_to_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_header((2**15, 2**15))))  # 1 GiB from a few bytes
    with pytest.raises(InvalidValueError, match="deflate expands at most 1032-fold") as caught:
        read_idx(path)
    assert str(path) in str(caught.value)
    assert "corrupt or truncated gzip" in str(caught.value)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_declaring_more_than_the_ceiling_is_refused_naming_it(
    tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"huge-idx3-ubyte{suffix}"
    header = idx_header((2**16, 2**16, 2))  # 8 GiB
    path.write_bytes(gzip.compress(header) if suffix else header)
    with pytest.raises(InvalidValueError, match=CEILING) as caught:
        read_idx(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("dtype", [">i2", ">i4", ">f4", ">f8", "u1", "i1"])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_read_back_bit_for_bit(tmp_path: Path, dtype: str, suffix: str) -> None:
    rng = np.random.default_rng(0)
    on_disk = rng.integers(0, 256, size=3 * 4 * 5 * np.dtype(dtype).itemsize, dtype=np.uint8)
    code = {">i2": 0x0B, ">i4": 0x0C, ">f4": 0x0D, ">f8": 0x0E, "u1": 0x08, "i1": 0x09}[dtype]
    data = idx_header((3, 4, 5), code) + on_disk.tobytes()  # any bit pattern, NaN payloads too
    path = tmp_path / f"x-idx3-ubyte{suffix}"
    path.write_bytes(gzip.compress(data) if suffix else data)
    array = read_idx(path).numpy()
    expected = np.frombuffer(on_disk.tobytes(), dtype=dtype).reshape(3, 4, 5)
    assert array.dtype == expected.dtype.newbyteorder("=")
    assert array.tobytes() == expected.astype(array.dtype).tobytes()
    assert array.flags.writeable
    assert array.flags.c_contiguous


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_read_npz_returns_what_numpy_reads(tmp_path: Path, save: Any) -> None:
    arrays = {
        "logits": np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32),
        "labels": np.arange(6) % 3,
        "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        "empty": np.zeros((0, 5), dtype=np.int16),
    }
    path = tmp_path / "predictions.npz"
    save(path, **arrays)
    read = read_npz(path)
    with np.load(path, allow_pickle=False) as expected:
        assert sorted(read) == sorted(expected.files)
        for name in expected.files:
            assert read[name].dtype == expected[name].dtype
            np.testing.assert_array_equal(read[name], expected[name])


@pytest.mark.parametrize(
    ("members", "method", "match"),
    [
        ({"logits.npy": npy_bytes((2**20, 2**20))}, zipfile.ZIP_STORED, "declares shape"),
        ({"logits.npy": npy_bytes((2**12,), data=bytes(8))}, zipfile.ZIP_DEFLATED, "holds 8"),
        ({"x.npy": npy_bytes((2,), "|O", b"")}, zipfile.ZIP_STORED, "pickles: refused"),
        ({"x.npy": npy_bytes((2,), "<f4", bytes(8))}, zipfile.ZIP_BZIP2, "zip method 12"),
        ({"x.npy": b"\x93NUMPY\x01"}, zipfile.ZIP_STORED, "not a readable .npz"),
    ],
)
def test_read_npz_refuses_before_allocating_what_a_member_cannot_hold(
    tmp_path: Path, members: dict[str, bytes], method: int, match: str
) -> None:
    path = write_zip(tmp_path / "bad.npz", members, method)
    with pytest.raises(InvalidValueError, match=re.escape(match)) as caught:
        read_npz(path)
    assert str(path) in str(caught.value)


def test_read_npz_refuses_arrays_past_the_ceiling_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ddcal._io, "MAX_DECLARED_BYTES", 1000)
    path = tmp_path / "big.npz"
    np.savez(path, a=np.zeros(100), b=np.zeros(100))  # 800 bytes each
    with pytest.raises(InvalidValueError, match=r"its arrays declares 1600 bytes.*\(1000 bytes\)"):
        read_npz(path)


def test_read_npz_names_a_file_that_is_no_zip(tmp_path: Path) -> None:
    path = tmp_path / "text.npz"
    path.write_text("not a zip")
    with pytest.raises(InvalidValueError, match=r"text\.npz is not a readable \.npz archive"):
        read_npz(path)


def test_cli_metrics_on_an_npz_declaring_terabytes_is_a_user_error(tmp_path: Path) -> None:
    path = write_zip(
        tmp_path / "huge.npz",
        {"logits.npy": npy_bytes((2**20, 2**20)), "labels.npy": npy_bytes((2**20,), "<i8")},
    )
    assert main(["metrics", str(path)]) == 2


@pytest.mark.parametrize(
    ("opcode", "prefix"),
    [(b"\x8e", "<Q"), (b"\x8d", "<Q"), (b"B", "<I"), (b"X", "<I"), (b"T", "<i"), (b"\x96", "<Q")],
)
def test_cifar_pickle_declaring_more_bytes_than_follow_is_refused(
    tmp_path: Path, opcode: bytes, prefix: str
) -> None:
    path = tmp_path / "data_batch_1"
    path.write_bytes(b"\x80\x04" + opcode + struct.pack(prefix, 2**31 - 1) + b"abc.")
    with pytest.raises(InvalidValueError, match="declares 2147483647 bytes, but only 4") as caught:
        read_cifar_pickle(path)
    assert str(path) in str(caught.value)


def test_cifar_array_declaring_more_than_the_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data_batch_1"
    huge_shape = b"\x8a\x05" + (2**36).to_bytes(5, "little") + b"\x85"  # LONG1, TUPLE1
    path.write_bytes(
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        + huge_shape
        + b"U\x01b\x87R."
    )
    with pytest.raises(InvalidValueError, match=r"declares shape \(68719476736,\)") as caught:
        read_cifar_pickle(path)
    assert str(path) in str(caught.value)


def _png_declaring(height: int, width: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + header
    chunk += struct.pack(">I", zlib.crc32(b"IHDR" + header))
    return b"\x89PNG\r\n\x1a\n" + chunk


def _jpeg_declaring(tmp_path: Path, height: int, width: int) -> bytes:
    """A real 16x16 JPEG with an APP1 segment and fill bytes, its frame size rewritten."""
    small = tmp_path / "small.jpg"
    kornia_rs.io.write_image_jpeg(str(small), np.zeros((16, 16, 3), np.uint8), "rgb", 90)
    data = small.read_bytes()
    app1 = b"\xff\xe1" + struct.pack(">H", 10) + b"Exif\x00\x00\x00\x00"
    data = data[:2] + app1 + b"\xff\xff" + data[2:]  # fill bytes before the next marker
    frame = re.search(b"\xff\xc0..\x08", data, re.DOTALL)
    assert frame is not None
    at = frame.end()
    return data[:at] + struct.pack(">HH", height, width) + data[at + 4 :]


@pytest.mark.parametrize("kind", ["png", "jpg"])
def test_images_declaring_more_than_the_pixel_ceiling_are_refused_undecoded(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / f"bomb.{kind}"
    path.write_bytes(
        _png_declaring(30000, 30000) if kind == "png" else _jpeg_declaring(tmp_path, 30000, 30000)
    )

    def never(*args: Any) -> None:
        raise AssertionError("decoded an image whose header declares too many pixels")

    monkeypatch.setattr(ddcal.data.image_folder, "load_image", never)
    with pytest.raises(InvalidValueError, match=f"30000 x 30000 pixels.*{MAX_IMAGE_PIXELS}"):
        read_images([path])


def test_a_jpeg_with_segments_and_fill_bytes_before_its_frame_still_reads(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ok.jpg"
    path.write_bytes(_jpeg_declaring(tmp_path, 16, 16))
    assert read_images([path]).shape == (1, 3, 16, 16)


def test_pt_with_a_compressed_record_is_refused(tmp_path: Path) -> None:
    saved = tmp_path / "set.pt"
    torch.save({"images": torch.zeros(4096)}, saved)
    with zipfile.ZipFile(saved) as original:
        members = {info.filename: original.read(info) for info in original.infolist()}
    path = write_zip(tmp_path / "deflated.pt", members, zipfile.ZIP_DEFLATED)
    with pytest.raises(InvalidValueError, match=r"is compressed .* torch.save never writes"):
        load_weights_only(path)


def test_pt_whose_records_declare_more_than_the_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "lying.pt"
    torch.save({"images": torch.zeros(16)}, path)
    data = bytearray(path.read_bytes())
    (entry,) = (  # the central directory entry of the tensor's record
        found.start()
        for found in re.finditer(b"PK\x01\x02", data)
        if data[found.start() + 46 :].startswith(b"lying/data/0")
    )
    data[entry + 20 : entry + 28] = struct.pack("<II", 2**31, 2**31)  # its two sizes
    path.write_bytes(bytes(data))
    with pytest.raises(
        InvalidValueError, match=r"declare .* bytes, more than the file's"
    ) as caught:
        load_weights_only(path)
    assert str(path) in str(caught.value)


def test_pt_broadcast_tensor_past_the_ceiling_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "res_DM_CIFAR10_ConvNet_1ipc.pt"
    images = torch.zeros(1, 1, 1, 1).expand(2**16, 3, 2**10, 2**10)  # 768 GiB over 4 bytes
    torch.save({"data": [[images, torch.zeros(2**16, dtype=torch.long)]]}, path)
    with pytest.raises(InvalidValueError, match=CEILING) as caught:
        load_distilled(path)
    assert str(path) in str(caught.value)


def test_pt_small_broadcast_tensor_reads_as_saved(tmp_path: Path) -> None:
    path = tmp_path / "view.pt"
    view = torch.arange(3.0).expand(1000, 3)
    torch.save({"x": view}, path)
    loaded = load_weights_only(path)["x"]
    assert torch.equal(loaded, view)
    assert loaded.stride() == view.stride()


# ------------------------------------------------- 2. load errors name the file


def test_every_cut_of_a_pt_file_is_an_error_naming_it_and_what_to_do(tmp_path: Path) -> None:
    whole = tmp_path / "whole.pt"
    DistilledSet(torch.zeros(4, 1, 8, 8), torch.arange(4)).save(whole)
    data = whole.read_bytes()
    path = tmp_path / "cut.pt"
    ends = {0, 1, 10, 100, len(data) // 2, len(data) - 22, len(data) - 10, len(data) - 1}
    for cut in sorted(ends):
        path.write_bytes(data[:cut])
        with pytest.raises(InvalidValueError) as caught:
            load_weights_only(path)
        message = str(caught.value)
        assert message.startswith(f"{path} is not a readable PyTorch file"), message
        assert "write or fetch it again" in message


def test_an_os_error_without_a_filename_is_given_the_files_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "on-a-failing-disk.pt"
    torch.save({"x": torch.zeros(1)}, path)

    def input_output_error(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(torch, "load", input_output_error)
    with pytest.raises(OSError, match="Input/output error") as caught:
        load_weights_only(path)
    assert caught.value.filename == str(path)
    assert caught.value.errno == errno.EIO


# ------------------------------------------- 3. refused pickles keep torch's reason


def test_a_refused_global_keeps_torchs_reason_and_is_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"x": RunsCommand(f"touch {marker}")}, path)
    with pytest.raises(InvalidValueError) as caught:
        load_weights_only(path)
    message = str(caught.value)
    assert f"unsupported GLOBAL {os.system.__module__}.system" in message, message
    assert message.startswith(f"{path} holds objects other than tensors")
    assert "not run" in message
    assert not marker.exists()


def test_a_refused_builtin_keeps_torchs_reason(tmp_path: Path) -> None:
    class Evaluates:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return eval, ("1 + 1",)

    path = tmp_path / "eval.pt"
    path.write_bytes(pickle.dumps({"x": Evaluates()}, protocol=2))
    with pytest.raises(InvalidValueError, match=r"\(Unsupported global: GLOBAL .*eval") as caught:
        load_weights_only(path)
    assert str(path) in str(caught.value)


def test_a_cifar_batch_running_a_command_is_refused_naming_the_global(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": RunsCommand(f"touch {marker}")}, protocol=2))
    with pytest.raises(UnsafePickleError, match=f"{os.system.__module__}.system") as caught:
        read_cifar_pickle(path)
    assert str(path) in str(caught.value)
    assert not marker.exists()


# -------------------------------------------------- 4. distillation checkpoints


def _rewritten(checkpoint: Checkpoint, change: Any) -> None:
    torch.save(change(torch.load(checkpoint.path, weights_only=True)), checkpoint.path)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda path: path.write_bytes(b""), "is not a readable PyTorch file"),
        (lambda path: path.write_bytes(b"\x00" * 64), "is not a readable PyTorch file"),
        (lambda path: path.write_bytes(path.read_bytes()[:-30]), "not a readable PyTorch"),
        (lambda path: torch.save({}, path), "not a 'ddcal-distillation-checkpoint' file"),
    ],
)
def test_a_corrupt_or_empty_checkpoint_names_the_file(
    tmp_path: Path, change: Any, match: str
) -> None:
    checkpoint = saved_checkpoint(tmp_path)
    change(checkpoint.path)
    with pytest.raises(InvalidValueError, match=match) as caught:
        restore(checkpoint)
    assert str(checkpoint.path) in str(caught.value)
    assert "start over" in str(caught.value)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda state: {**state, "config": {0: 1}}, "'config' must map names to plain values"),
        (lambda state: {**state, "config": {"seed": torch.zeros(2)}}, "plain values"),
        (lambda state: {**state, "iteration": True}, "'iteration' must be a int"),
        (lambda state: {**state, "synthetic": torch.zeros(4, 1, 2, 2).double()}, "synthetic"),
        (lambda state: {**state, "synthetic": torch.zeros(3, 1, 2, 2)}, "synthetic"),
        (lambda state: {**state, "history": torch.zeros(2, 1)}, "loss history"),
        (
            lambda state: {**state, "optimizer": {**state["optimizer"], "state": [1]}},
            "optimizer state does not fit",
        ),
        (
            lambda state: {
                **state,
                "optimizer": {
                    **state["optimizer"],
                    "param_groups": [{**state["optimizer"]["param_groups"][0], "lr": "fast"}],
                },
            },
            "optimizer setting lr is 'fast', expected a float",
        ),
        (
            lambda state: {
                **state,
                "optimizer": {**state["optimizer"], "state": {0: {"momentum_buffer": 1}}},
            },
            "optimizer",
        ),
    ],
)
def test_a_mis_shaped_checkpoint_names_the_file(tmp_path: Path, change: Any, match: str) -> None:
    checkpoint = saved_checkpoint(tmp_path)
    _rewritten(checkpoint, change)
    with pytest.raises(InvalidValueError, match=match) as caught:
        restore(checkpoint)
    assert str(checkpoint.path) in str(caught.value)


def test_a_checkpoint_restores_what_was_saved(tmp_path: Path) -> None:
    checkpoint = saved_checkpoint(tmp_path, iterations_done=3)
    synthetic = torch.zeros(4, 1, 2, 2, requires_grad=True)
    optimizer = SGDStep().make_optimizer(synthetic)
    done, history = checkpoint.restore(synthetic, optimizer, SGDStep(), iterations=5)
    assert (done, history) == (3, [0.5, 0.5, 0.5])
    saved = torch.load(checkpoint.path, weights_only=True)
    assert torch.equal(synthetic.detach(), saved["synthetic"])
    assert torch.equal(optimizer.state[synthetic]["momentum_buffer"], torch.ones(4, 1, 2, 2))


# --------------------------------------------------- 5. temporary files, full disks


def _temporary_name(target: Path, host: str, pid: int) -> Path:
    return target.with_name(f".{target.name}.ddcal-{host}-{pid}-abcd_123.tmp")


def _finished_pid() -> int:
    """The id of a process that has exited (and, a moment later, not been reused)."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def test_temporary_files_have_a_recognisable_name(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.pt"
    with atomic_write(target) as handle:
        handle.write(b"data")
        (temporary,) = (path.name for path in tmp_path.iterdir())
    assert re.fullmatch(rf"\.checkpoint\.pt\.ddcal-.+-{os.getpid()}-[a-z0-9_]{{8}}\.tmp", temporary)
    assert [path.name for path in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_only_temporaries_of_finished_writers_on_this_host_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.pt"
    with atomic_write(target) as handle:  # learn this host's name as atomic_write writes it
        handle.write(b"first")
        (own,) = tmp_path.iterdir()
    named = re.fullmatch(r"\.checkpoint\.pt\.ddcal-(.+)-\d+-\w{8}\.tmp", own.name)
    assert named is not None
    host = named[1]
    stale = _temporary_name(target, host, _finished_pid())
    live = _temporary_name(target, host, os.getpid())
    foreign = _temporary_name(target, "another-host", _finished_pid())
    other_target = _temporary_name(tmp_path / "other.pt", host, _finished_pid())
    for path in (stale, live, foreign, other_target):
        path.write_bytes(b"partial")
    with atomic_write(target) as handle:
        handle.write(b"second")
    assert not stale.exists()
    assert [path.exists() for path in (live, foreign, other_target)] == [True, True, True]
    assert target.read_bytes() == b"second"
    assert remove_stale_temporaries(tmp_path / "other.pt") == [other_target]


def test_a_write_killed_midway_leaves_a_temporary_that_resuming_removes(tmp_path: Path) -> None:
    checkpoint = saved_checkpoint(tmp_path)
    before = checkpoint.path.read_bytes()
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from ddcal._io import atomic_write\n"
            "with atomic_write(sys.argv[1]) as handle:\n"
            "    handle.write(b'half a checkpoint'); handle.flush()\n"
            "    print('writing', flush=True); time.sleep(120)\n",
            str(checkpoint.path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None
    assert writer.stdout.readline() == "writing\n"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=60)
    writer.stdout.close()
    left = [path for path in tmp_path.iterdir() if path.name.endswith(".tmp")]
    assert [str(writer.pid) in path.name for path in left] == [True]
    assert checkpoint.path.read_bytes() == before
    assert restore(checkpoint) == (2, [0.5, 0.5])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_a_full_disk_at_fsync_keeps_the_previous_checkpoint_and_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = saved_checkpoint(tmp_path)
    before = checkpoint.path.read_bytes()

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space left on device") as caught:
        saved_checkpoint(tmp_path, iterations_done=3)
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(checkpoint.path)
    assert checkpoint.path.read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_a_write_refused_by_the_os_inside_torch_save_is_an_os_error_naming_the_file(
    tmp_path: Path,
) -> None:
    """torch.save reports a failed write as a RuntimeError; the OSError must surface."""
    checkpoint = saved_checkpoint(tmp_path)
    before = checkpoint.path.read_bytes()
    code = (
        "import json, resource, signal, sys, torch\n"
        "from ddcal.distill.checkpoint import Checkpoint\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "limit = int(sys.argv[2])\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))\n"
        "synthetic = torch.zeros(4096, requires_grad=True)\n"
        "optimizer = torch.optim.SGD([synthetic], lr=0.1)\n"
        "try:\n"
        "    Checkpoint(sys.argv[1], {}).save(1, synthetic, optimizer, [0.0], {})\n"
        "except OSError as exc:\n"
        "    print(json.dumps([exc.errno, exc.filename, str(exc)]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), str(len(before) + 1000)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    number, filename, message = json.loads(result.stdout)
    assert (number, filename) == (errno.EFBIG, str(checkpoint.path)), message
    assert checkpoint.path.read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_other_errors_inside_atomic_write_pass_through_unchanged(tmp_path: Path) -> None:
    def write_then_read_elsewhere() -> None:
        with atomic_write(tmp_path / "x") as handle:
            handle.write(b"1")
            (tmp_path / "elsewhere" / "y").read_bytes()  # an unrelated error, with its name

    with pytest.raises(FileNotFoundError) as caught:
        write_then_read_elsewhere()
    assert caught.value.filename == str(tmp_path / "elsewhere" / "y")
    assert list(tmp_path.iterdir()) == []


def test_predictions_written_to_a_full_disk_name_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    target = tmp_path / "predictions.pt"
    with pytest.raises(OSError, match="No space left on device") as caught:
        save_predictions(target, torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))
    assert caught.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ 6. archives


def _tar(path: Path, members: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)
    return path


def _tar_member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = 1 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(
    "member",
    [
        _tar_member("../escape.txt"),
        _tar_member("toy/../../escape.txt"),
        _tar_member("/tmp/escape.txt"),
        _tar_member("toy/link", tarfile.SYMTYPE, "/etc/passwd"),
        _tar_member("toy/relative-link", tarfile.SYMTYPE, "../../escape.txt"),
        _tar_member("toy/hard", tarfile.LNKTYPE, "/etc/passwd"),
        _tar_member("toy/device", tarfile.CHRTYPE),
        _tar_member("toy/fifo", tarfile.FIFOTYPE),
    ],
    ids=lambda member: f"{member.name}-{member.type!r}",
)
def test_tar_members_outside_the_folder_or_not_plain_are_refused(
    tmp_path: Path, member: tarfile.TarInfo
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    archive = _tar(root / "toy.tgz", [_tar_member("toy/ok.txt"), member])
    with pytest.raises(InvalidValueError, match="refusing to extract") as caught:
        _extract(archive, root, "toy")
    assert str(archive) in str(caught.value)
    assert sorted(path.name for path in root.iterdir()) == ["toy.tgz"]
    assert not (tmp_path / "escape.txt").exists()


def _zip_member(name: str, mode: int = 0o100644) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    return info


@pytest.mark.parametrize(
    "member",
    [
        _zip_member("../escape.txt"),
        _zip_member("toy/../../escape.txt"),
        _zip_member("/tmp/escape.txt"),
        _zip_member("\\escape.txt"),
        _zip_member("C:/escape.txt"),
        _zip_member("toy/link", 0o120777),
    ],
    ids=lambda member: member.filename,
)
def test_zip_members_outside_the_folder_or_links_are_refused(
    tmp_path: Path, member: zipfile.ZipInfo
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    archive = root / "toy.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("toy/ok.txt", b"fine")
        zipped.writestr(member, b"/etc/passwd")
    with pytest.raises(InvalidValueError, match="refusing to extract") as caught:
        _extract(archive, root, "toy")
    assert str(archive) in str(caught.value)
    assert sorted(path.name for path in root.iterdir()) == ["toy.zip"]
    assert not (tmp_path / "escape.txt").exists()


def test_a_plain_archive_extracts_into_its_folder(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "toy.tgz", [_tar_member("toy/a/b.txt"), _tar_member("toy/c.txt")])
    target = _extract(archive, tmp_path, "toy")
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*.txt")) == ["a/b.txt", "c.txt"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["toy", "toy.tgz"]
