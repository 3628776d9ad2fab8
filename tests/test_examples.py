"""Every script in examples/ runs, small, on the real FashionMNIST and prints sane numbers.

The scripts run as subprocesses with tiny arguments. They are all started at
once (one torch thread each) and each test waits for its own, so the module
takes about as long as the slowest script plus a share of the others.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ddcal.data import load_distilled
from ddcal.scaling import MASK_RATIO_CANDIDATES

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# Tiny arguments for each example; {out} is the example's own temporary folder.
ARGUMENTS: dict[str, list[str]] = {
    "quickstart.py": [
        "--ipc", "2", "--epochs", "2", "--width", "16", "--ratios", "0.5",
        "--oracle-per-class", "5",
    ],
    "calibrate_your_model.py": [
        "--ipc", "2", "--iterations", "2", "--batch-real", "16", "--epochs", "2",
        "--width", "16", "--calibration-fraction", "0.001", "--out-dir", "{out}",
    ],
    "mdt_own_loop.py": ["--ipc", "2", "--iterations", "3", "--width", "16", "--batch-real", "16"],
    "meter_training_loop.py": ["--per-class", "5", "--epochs", "2", "--width", "16"],
}  # fmt: skip

TIMEOUT_S = 300


@dataclass
class Run:
    """A started example: its process, folder and the files its output goes to."""

    process: subprocess.Popen[bytes]
    folder: Path

    def finish(self) -> tuple[int, str, str]:
        """Wait for the process; its exit code, stdout and stderr."""
        code = self.process.wait(timeout=TIMEOUT_S)
        return code, _read(self.folder / "stdout"), _read(self.folder / "stderr")


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _start(script: str, arguments: list[str], folder: Path) -> Run:
    folder.mkdir(parents=True)
    command = [sys.executable, str(EXAMPLES / script)]
    command += [argument.format(out=folder / "out") for argument in arguments]
    with open(folder / "stdout", "wb") as stdout, open(folder / "stderr", "wb") as stderr:
        process = subprocess.Popen(
            command,
            stdout=stdout,
            stderr=stderr,
            cwd=folder,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    return Run(process, folder)


@pytest.fixture(scope="module")
def runs(fashion_mnist, tmp_path_factory) -> Iterator[dict[str, Run]]:
    """Every example started at once: the tiny run, and one with an empty --data-root."""
    root = tmp_path_factory.mktemp("examples")
    empty = root / "no-data"
    empty.mkdir()
    started: dict[str, Run] = {}
    for script, arguments in ARGUMENTS.items():
        stem = Path(script).stem
        started[script] = _start(script, arguments, root / stem)
        started[f"{script} --data-root"] = _start(
            script, [*arguments, "--data-root", str(empty)], root / f"{stem}-no-data"
        )
    yield started
    for run in started.values():
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()


def _succeeded(runs: dict[str, Run], script: str) -> tuple[str, Path]:
    code, out, err = runs[script].finish()
    assert code == 0, f"{script} exited with {code}\n{out}\n{err[-3000:]}"
    return out, runs[script].folder


def _table(out: str) -> dict[str, list[float]]:
    """The rows of a Markdown table ``| name | number | ... |``, keyed by name."""
    rows = {}
    for line in out.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) > 1 and cells[1] and cells[1][0] in "-0123456789":
            rows[cells[0]] = [float(cell) for cell in cells[1:]]
    return rows


def _check_row(name: str, row: list[float]) -> None:
    temperature, acc, ece, nll = row
    assert 0 < temperature < math.inf, name
    assert 0 <= acc <= 100, name
    assert 0 <= ece <= 100, name
    assert 0 < nll < math.inf, name


def test_every_example_has_a_test() -> None:
    assert sorted(path.name for path in EXAMPLES.glob("*.py")) == sorted(ARGUMENTS)
    untested = [name for name in ARGUMENTS if f"test_{Path(name).stem}" not in globals()]
    assert untested == [], "add a test_<name> that checks what the example prints"


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(ARGUMENTS))
def test_example_reads_the_data_root_it_is_given(runs, script) -> None:
    run = runs[f"{script} --data-root"]
    code, out, err = run.finish()
    assert code == 1, f"{script} exited with {code}\n{out}\n{err[-3000:]}"
    assert "DatasetNotFoundError" in err
    assert str(run.folder.parent / "no-data") in err


@pytest.mark.slow
def test_quickstart(runs) -> None:
    out, _ = _succeeded(runs, "quickstart.py")
    rows = _table(out)
    assert list(rows)[:4] == [
        "Raw",
        "TS on the training images",
        "TS on a 10% hold-out (net on 90%)",
        "MTS r=0.5",
    ]
    assert len(rows) == 8
    for name, row in rows.items():
        _check_row(name, row)
    assert rows["Raw"][0] == 1.0


@pytest.mark.slow
def test_calibrate_your_model(runs) -> None:
    out, folder = _succeeded(runs, "calibrate_your_model.py")
    rows = _table(out)
    assert list(rows)[:3] == ["Raw", "TS on the distilled set", "MTS r=0.5"]
    selected = re.search(r"\| MTS r=([0-9.]+) \(selected\)", out)
    assert selected is not None
    assert 0 <= float(selected.group(1)) < 1
    for name, row in rows.items():
        _check_row(name, row)
    accuracies = {row[1] for row in rows.values()}
    assert len(accuracies) == 1  # a temperature never changes the argmax
    chosen = re.findall(r"r=([0-9.]+) +T= *([0-9.]+) +calibration NLL ([0-9.]+)  <- chosen", out)
    assert len(chosen) == 1
    assert float(chosen[0][0]) == float(selected.group(1))
    assert len(re.findall(r"calibration NLL", out)) == len(MASK_RATIO_CANDIDATES)
    difference = re.search(r"max \|difference\| to predict_proba on 1000 test images (\S+)", out)
    assert difference is not None
    assert float(difference.group(1)) <= 1e-6
    files = folder / "out"
    assert len(load_distilled(files / "distilled.pt")) == 20
    assert (files / "convnet.pt").is_file()
    state = torch.load(files / "scaler.pt", weights_only=True)
    assert state["mask_ratio"] == 0.5
    assert state["temperature"] == pytest.approx(rows["MTS r=0.5"][0], abs=5e-4)


@pytest.mark.slow
def test_mdt_own_loop(runs) -> None:
    out, _ = _succeeded(runs, "mdt_own_loop.py")
    loop, _, analysis = out.partition("Share of the k largest singular values")
    losses = _number_rows(loop)
    assert [row[0] for row in losses] == [0, 1, 2]  # one line per iteration
    assert all(0 < loss < math.inf for row in losses for loss in row[1:])
    assert [row[1] for row in losses] != [row[2] for row in losses]  # MDT changes the loss
    shares = _number_rows(analysis)
    assert [row[0] for row in shares] == [1, 2, 5, 10]  # k < 20 images
    assert all(0 < share <= 1 for row in shares for share in row[1:])


@pytest.mark.slow
def test_meter_training_loop(runs) -> None:
    out, _ = _succeeded(runs, "meter_training_loop.py")
    epochs = _number_rows(out)
    assert [row[0] for row in epochs] == [1, 2]
    for _, loss, acc, ece, mce, nll in epochs:
        assert 0 < loss < math.inf
        assert 0 <= acc <= 100
        assert 0 <= ece <= mce <= 100
        assert 0 < nll < math.inf
    merged = re.search(
        r"two halves merged ([0-9.]+)% over 10000 images; one meter over the whole split: "
        r"([0-9.]+)%",
        out,
    )
    assert merged is not None
    assert merged.group(1) == merged.group(2) == f"{epochs[-1][3]:.2f}"


def _number_rows(text: str) -> list[list[float]]:
    """The lines of ``text`` that hold only numbers (at least two), parsed."""
    rows = []
    for line in text.splitlines():
        words = line.split()
        if len(words) > 1 and all(re.fullmatch(r"-?[0-9.]+", word) for word in words):
            rows.append([float(word) for word in words])
    return rows
