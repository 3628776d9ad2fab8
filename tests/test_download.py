"""download() against a local HTTP server on 127.0.0.1 started by the tests."""

from __future__ import annotations

import hashlib
import http.server
import io
import pickle
import re
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from ddcal.data.download import RESOURCES, Resource, download
from ddcal.data.registry import load_dataset


@dataclass
class Server:
    """What the handler serves and what it saw."""

    files: dict[str, bytes] = field(default_factory=dict)
    honour_range: bool = True
    cut_after: int | None = None  # send only this many body bytes, then close
    requests: list[dict[str, str]] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)
    port: int = 0

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


def _handler(server: Server) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server.requests.append({"path": self.path, "range": self.headers.get("Range", "")})
            body = server.files.get(self.path.lstrip("/"))
            if body is None:
                self.send_error(404)
                return
            start, status = 0, 200
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if match and server.honour_range:
                start, status = int(match.group(1)), 206
                if start >= len(body):
                    self.send_error(416)
                    return
            payload = body[start:]
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.end_headers()
            if server.cut_after is not None:
                payload = payload[: server.cut_after]
                self.close_connection = True
            # Recorded before the write: the client may finish reading (and the test
            # look) before this thread runs again after it.
            server.sent.append(len(payload))
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def table(
    server: Server,
    name: str,
    data: bytes,
    *,
    size: int | None = None,
    extracts_to: str | None = None,
) -> dict[str, tuple[Resource]]:
    """A one-entry table "toy" serving ``name`` with the digest of ``data``."""
    resource = Resource(
        server.url(name), name, sha256=sha256(data), size=size, extracts_to=extracts_to
    )
    return {"toy": (resource,)}


def test_good_download_is_verified_extracted_and_not_fetched_twice(
    server: Server, tmp_path: Path
) -> None:
    archive = tar_gz({"toy-data/a.txt": b"alpha", "toy-data/sub/b.txt": b"beta"})
    server.files["toy.tar.gz"] = archive
    resources = table(server, "toy.tar.gz", archive, size=len(archive), extracts_to="toy-data")
    places = download("toy", tmp_path, progress=False, resources=resources)
    assert places == (tmp_path / "toy-data",)
    assert (tmp_path / "toy-data" / "sub" / "b.txt").read_bytes() == b"beta"
    assert (tmp_path / "toy.tar.gz").read_bytes() == archive
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy-data", "toy.tar.gz"]  # no temp
    assert len(server.requests) == 1
    assert server.requests[0]["range"] == ""
    download("toy", tmp_path, progress=False, resources=resources)
    assert len(server.requests) == 1  # verified file already there: no request


def test_corrupted_transfer_is_rejected_and_leaves_no_file(server: Server, tmp_path: Path) -> None:
    good = b"the published bytes" * 100
    server.files["f.bin"] = b"tampered bytes here" * 100  # same length, other bytes
    resources = table(server, "f.bin", good, size=len(good))
    with pytest.raises(ValueError, match=r"f.bin: the downloaded file is corrupt \(sha256"):
        download("toy", tmp_path, progress=False, resources=resources)
    assert list(tmp_path.iterdir()) == []  # no final file, no .part


def test_resume_from_a_partial_file_uses_a_range_request(server: Server, tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    server.files["big.bin"] = data
    (tmp_path / "big.bin.part").write_bytes(data[:20_000])
    resources = table(server, "big.bin", data, size=len(data))
    (path,) = download("toy", tmp_path, progress=False, resources=resources)
    assert path == tmp_path / "big.bin"
    assert path.read_bytes() == data
    assert server.requests[0]["range"] == "bytes=20000-"
    assert server.sent == [30_000]  # only the rest travelled
    assert not (tmp_path / "big.bin.part").exists()


def test_resume_when_the_server_ignores_range(server: Server, tmp_path: Path) -> None:
    data = bytes(range(256)) * 40
    server.files["f.bin"] = data
    server.honour_range = False
    (tmp_path / "f.bin.part").write_bytes(b"stale junk")
    download("toy", tmp_path, progress=False, resources=table(server, "f.bin", data))
    assert (tmp_path / "f.bin").read_bytes() == data


def test_a_cut_transfer_keeps_the_part_and_the_next_call_resumes(
    server: Server, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 100
    server.files["f.bin"] = data
    server.cut_after = 10_000
    resources = table(server, "f.bin", data, size=len(data))
    with pytest.raises(OSError, match="run download again to resume"):
        download("toy", tmp_path, progress=False, resources=resources, timeout=5)
    assert not (tmp_path / "f.bin").exists()
    assert (tmp_path / "f.bin.part").read_bytes() == data[:10_000]
    server.cut_after = None
    download("toy", tmp_path, progress=False, resources=resources, timeout=5)
    assert (tmp_path / "f.bin").read_bytes() == data
    assert server.requests[-1]["range"] == "bytes=10000-"


def test_a_whole_part_file_answered_416_is_verified(server: Server, tmp_path: Path) -> None:
    data = b"complete already"
    server.files["f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(data)
    download("toy", tmp_path, progress=False, resources=table(server, "f.bin", data))
    assert (tmp_path / "f.bin").read_bytes() == data


def test_md5_only_entries_are_verified_with_md5(server: Server, tmp_path: Path) -> None:
    data = b"tiny imagenet stand-in"
    server.files["t.bin"] = data
    good = {"t": (Resource(server.url("t.bin"), "t.bin", md5=hashlib.md5(data).hexdigest()),)}
    download("t", tmp_path, progress=False, resources=good)
    assert (tmp_path / "t.bin").read_bytes() == data
    bad = {"t": (Resource(server.url("t.bin"), "u.bin", md5="0" * 32),)}
    with pytest.raises(ValueError, match="md5"):
        download("t", tmp_path, progress=False, resources=bad)
    assert not (tmp_path / "u.bin").exists()


@pytest.mark.parametrize(
    "member", ["../escape.txt", "/etc/escape.txt", "ok/../../escape.txt", "link"]
)
def test_unsafe_tar_members_are_refused(server: Server, tmp_path: Path, member: str) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        if member == "link":
            info = tarfile.TarInfo("toy-data/link")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info = tarfile.TarInfo(member)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    archive = buffer.getvalue()
    server.files["a.tgz"] = archive
    root = tmp_path / "root"
    resources = table(server, "a.tgz", archive, extracts_to="toy-data")
    with pytest.raises(ValueError, match="refusing to extract"):
        download("toy", root, progress=False, resources=resources)
    assert not (tmp_path / "escape.txt").exists()
    assert sorted(p.name for p in root.iterdir()) == ["a.tgz"]  # temp folder removed


def test_unsafe_zip_members_are_refused(server: Server, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        zipped.writestr("toy-data/ok.txt", b"fine")
        zipped.writestr("../escape.txt", b"bad")
    archive = buffer.getvalue()
    server.files["a.zip"] = archive
    resources = table(server, "a.zip", archive, extracts_to="toy-data")
    with pytest.raises(ValueError, match=r"refusing to extract '\.\./escape\.txt'"):
        download("toy", tmp_path / "root", progress=False, resources=resources)
    assert not (tmp_path / "escape.txt").exists()


def test_download_then_load_a_cifar10_archive(server: Server, tmp_path: Path) -> None:
    rows = np.random.default_rng(1).integers(0, 256, (4, 3072), dtype=np.uint8)
    batch = pickle.dumps({b"data": rows, b"labels": [0, 1, 2, 3]}, protocol=2)
    meta = pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}, protocol=2)
    archive = tar_gz(
        {
            "cifar-10-batches-py/data_batch_1": batch,
            "cifar-10-batches-py/test_batch": batch,
            "cifar-10-batches-py/batches.meta": meta,
        }
    )
    server.files["cifar-10-python.tar.gz"] = archive
    real = RESOURCES["cifar10"][0]
    local = Resource(
        server.url(real.filename),
        real.filename,
        sha256=sha256(archive),
        extracts_to=real.extracts_to,
    )
    download("CIFAR10", tmp_path, progress=False, resources={"cifar10": (local,)})
    data = load_dataset("cifar10", tmp_path)
    assert data.train_images.shape == (4, 3, 32, 32)
    assert data.classes[3] == "c3"


def test_names_table_and_resource_checks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no download for dataset 'svhn'; known: fashion-mnist"):
        download("svhn", tmp_path)
    assert set(RESOURCES) >= {"fashion-mnist", "mnist", "cifar10", "cifar100", "tiny-imagenet"}
    for entries in RESOURCES.values():
        for resource in entries:
            assert resource.url.startswith(("http://", "https://"))
            assert resource.size is not None
            assert resource.size > 0
            assert resource.digest[0] == ("md5" if "tiny-imagenet" in resource.url else "sha256")
    with pytest.raises(ValueError, match="give sha256"):
        Resource("https://example.org/x", "x")
    with pytest.raises(ValueError, match="64 lower-case hex digits"):
        Resource("https://example.org/x", "x", sha256="abc")
    with pytest.raises(ValueError, match="plain file name"):
        Resource("https://example.org/x", "../x", sha256="0" * 64)
    with pytest.raises(ValueError, match="http"):
        Resource("file:///etc/passwd", "x", sha256="0" * 64)
