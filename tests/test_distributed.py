"""Several processes with torch.distributed: 2-process gloo runs on the loopback, against 1 process.

The multi-process tests start ``torchrun --standalone`` (rendezvous on a free
local port) on tests/distributed_worker.py or on the ``ddcal`` command.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ddcal import (
    CalibrationMeter,
    accuracy,
    calibration_error,
    distributed,
    negative_log_likelihood,
)
from ddcal.errors import InvalidValueError

WORKER = Path(__file__).with_name("distributed_worker.py")
#: The ``ddcal`` command, as a module: ``python -m ddcal.cli`` or ``torchrun -m ddcal.cli``.
DDCAL = ("-m", "ddcal.cli")
#: What one launch may take on 2 busy cores before the test calls it a hang.
LAUNCH_TIMEOUT_S = 300


def _environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "DDCAL_DIST_TIMEOUT": "120", **extra}


def _launch(
    *command: str | Path, processes: int, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    prefix: list[str | Path] = [sys.executable]
    if processes > 1:
        prefix += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return subprocess.run(
        [*prefix, *command],
        env=env or _environment(),
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT_S,
        check=False,
    )


def _job(job: str, out: Path, processes: int, **env: str) -> dict[str, object]:
    done = _launch(WORKER, job, out, processes=processes, env=_environment(**env))
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = torch.load(out, weights_only=False)
    assert result["world"] == processes
    digests = result["digests"]
    assert isinstance(digests, list)
    assert len(set(digests)) == 1, "the processes disagree"
    return result


# --------------------------------------------------------------------------- #
# One process: every function is the no-op.
# --------------------------------------------------------------------------- #


def test_alone_every_function_is_the_single_process_one(monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_environment() is False
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert not distributed.is_distributed()
    assert distributed.owned(5) == range(0, 5)
    assert distributed.deal(["a", "b", "c"]) == ["a", "b", "c"]
    assert distributed.on_main(lambda: 42, "x") == 42
    assert distributed.gather_objects("v") == ["v"]
    assert distributed.broadcast_object({"k": 1}) == {"k": 1}
    distributed.leave()
    assert not torch.distributed.is_initialized()
    tensor = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce_sum(tensor) is tensor
    assert tensor.tolist() == [1.0, 2.0]
    with pytest.raises(KeyError), distributed.all_or_nothing("x"):
        raise KeyError("the block's own error passes through")


def test_a_bad_timeout_variable_is_refused_by_name(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("DDCAL_DIST_TIMEOUT", "soon")
    with pytest.raises(InvalidValueError, match=r"DDCAL_DIST_TIMEOUT.*'soon'"):
        distributed.init_from_environment()


def test_a_meter_alone_all_reduces_to_itself() -> None:
    meter = CalibrationMeter(n_bins=5)
    meter.update(torch.tensor([[0.2, 0.8], [0.6, 0.4]]), torch.tensor([1, 1]))
    before = meter.compute()
    assert meter.all_reduce() is meter
    assert meter.compute() == before


# --------------------------------------------------------------------------- #
# Two processes against one.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("method", ["dm", "dc", "dsa"])
def test_two_processes_distil_the_images_of_one(fashion_mnist, tmp_path, method: str) -> None:
    one = _job(method, tmp_path / "one.pt", 1)
    two = _job(method, tmp_path / "two.pt", 2)
    # Each process back-propagates its own classes, disjoint rows of the images: the
    # summed gradient is the single-process one exactly. Only the reported loss is
    # added in another order (tolerance: float32 rounding of a sum of 10 terms).
    assert torch.equal(one["images"], two["images"])
    torch.testing.assert_close(two["losses"], one["losses"], rtol=1e-6, atol=0.0)


def test_two_processes_distil_mtt_like_one_up_to_the_order_of_a_sum(
    fashion_mnist, tmp_path
) -> None:
    one = _job("mtt", tmp_path / "one.pt", 1)
    two = _job("mtt", tmp_path / "two.pt", 2)
    # The student's gradient is the sum of the processes' parts (rows of the batch):
    # the same terms added in another order, amplified by lr_img 1000 over the steps.
    torch.testing.assert_close(two["images"], one["images"], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(two["losses"], one["losses"], rtol=1e-5, atol=0.0)


def test_two_processes_train_the_experts_of_one(fashion_mnist, tmp_path) -> None:
    one = _job("experts", tmp_path / "one.pt", 1, DDCAL_TEST_EXPERTS=str(tmp_path / "e1"))
    two = _job("experts", tmp_path / "two.pt", 2, DDCAL_TEST_EXPERTS=str(tmp_path / "e2"))
    assert torch.equal(one["memory"], two["memory"])
    assert torch.equal(one["shards"], two["shards"])
    assert torch.equal(one["memory"], one["shards"])
    assert sorted(p.name for p in (tmp_path / "e2").iterdir()) == [
        "expert_00000.pt",
        "expert_00001.pt",
        "expert_00002.pt",
    ]


def test_the_meters_all_reduce_equals_the_functional_metrics_of_the_union(tmp_path) -> None:
    two = _job("meter", tmp_path / "two.pt", 2)
    assert two["own_count"] == 502  # process 0 saw rows 0, 2, ...: half the data
    generator = torch.Generator().manual_seed(11)  # the worker's data, made again
    logits = torch.randn(1003, 7, generator=generator, dtype=torch.float64) * 3
    labels = torch.randint(7, (1003,), generator=generator)
    metrics = two["metrics"]
    assert isinstance(metrics, dict)
    assert metrics["count"] == 1003
    expected = {
        "ece": calibration_error(logits, labels, n_bins=12, from_logits=True),
        "mce": calibration_error(logits, labels, n_bins=12, norm="max", from_logits=True),
        "accuracy": accuracy(logits, labels),
        "nll": negative_log_likelihood(logits, labels, from_logits=True),
    }
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(float(value), rel=1e-12, abs=1e-12), name


def test_the_torchmetrics_metric_syncs_to_the_functional_metric_of_the_union(tmp_path) -> None:
    pytest.importorskip("torchmetrics")
    two = _job("torchmetrics", tmp_path / "two.pt", 2)
    assert two["own_count"] == 502  # each process updated its own half of the rows
    generator = torch.Generator().manual_seed(11)  # the worker's data, made again
    logits = torch.randn(1003, 7, generator=generator, dtype=torch.float64) * 3
    labels = torch.randint(7, (1003,), generator=generator)
    expected = [
        calibration_error(logits, labels, n_bins=12, norm=norm, from_logits=True)
        for norm in ("l1", "l2", "max")
    ]
    values = two["values"]
    assert isinstance(values, torch.Tensor)
    assert values.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_an_error_on_one_process_is_an_error_on_every_process(tmp_path) -> None:
    seen = _job("fails", tmp_path / "two.pt", 2)["seen"]
    assert isinstance(seen, list)
    first, second = seen
    assert first["block"].startswith("RankFailedError: the block failed on process 1 of 2")
    assert second["block"] == "ValueError: planted on 1"
    assert first["main"] == "KeyError: 'planted on 0'"
    assert second["main"].startswith("RankFailedError: the main part failed on process 0")


def test_a_killed_process_ends_the_run_with_an_error(fashion_mnist, tmp_path) -> None:
    start = time.monotonic()
    done = _launch(WORKER, "dies", tmp_path / "out.pt", processes=2)
    assert done.returncode != 0
    assert "SIGKILL" in done.stderr
    assert time.monotonic() - start < LAUNCH_TIMEOUT_S
    assert not (tmp_path / "out.pt").exists()


def _one_and_two(tmp_path: Path, command: str, result: str, printed: str) -> list[str]:
    """``ddcal COMMAND --preset smoke`` with 1 and with 2 processes: the file ``result``
    of each; process 0 alone prints (``printed`` appears once)."""
    texts = []
    for processes in (1, 2):
        out = tmp_path / f"{command}{processes}"
        done = _launch(
            *DDCAL, command, "--preset", "smoke", "--out", out, "--quiet", processes=processes
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count(printed) == 1
        texts.append((out / result).read_text())
    return texts


def test_ddcal_run_on_two_processes_writes_the_report_of_one(fashion_mnist, tmp_path) -> None:
    one, two = _one_and_two(tmp_path, "run", "table.md", "files in")
    assert one == two


def test_ddcal_study_on_two_processes_writes_the_summary_of_one(fashion_mnist, tmp_path) -> None:
    one, two = _one_and_two(tmp_path, "study", "study.csv", "4 finished cells (4 computed now)")
    assert one == two
