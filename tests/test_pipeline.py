"""`ddcal run`: the smoke preset end to end on real FashionMNIST, resume, user sets, tables."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import ddcal.pipeline as pipeline
from ddcal.cli import main
from ddcal.config import load_config
from ddcal.data import DistilledSet, ImageClassificationData
from ddcal.report import COLUMNS, Row, csv_table, markdown_table

pytestmark = pytest.mark.slow

SMOKE_ROWS = [
    "Raw",
    "TS on the distilled set",
    "TS on a 10% per-class hold-out",
    "MTS r=0.5",
    "Mixup",
    "Label smoothing",
    "Focal loss",
    "MDT r=0.5",
    "MDT r=0.5 + MTS r=0.5",
    "TS on real held-out data (oracle)",
    "MTS, r chosen on real held-out data (oracle)",
    "Full training set (raw)",
    "Full training set + TS on real held-out data",
]


@pytest.fixture(scope="module")
def smoke_run(
    fashion_mnist: ImageClassificationData,
    tmp_path_factory: pytest.TempPathFactory,
    one_torch_thread: None,
) -> tuple[Path, dict[str, Any], str]:
    out = tmp_path_factory.mktemp("smoke")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["run", "--preset", "smoke", "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    return out, results, buffer.getvalue()


def test_every_row_is_present_with_finite_numbers(smoke_run: tuple[Path, Any, str]) -> None:
    _, results, printed = smoke_run
    names = [row["name"] for row in results["rows"]]
    assert names == SMOKE_ROWS
    for row in results["rows"]:
        assert len(row["per_seed"]) == 2, row["name"]
        for values in row["per_seed"]:
            for key, *_ in COLUMNS:
                assert math.isfinite(values[key]), (row["name"], key)
            assert 0.0 <= values["accuracy"] <= 1.0
            assert 0.0 <= values["ece"] <= values["mce"] <= 1.0
            assert 0.0 <= values["brier"] <= 2.0
            assert values["temperature"] > 0
    for name in SMOKE_ROWS:
        assert f"| {name}" in printed


def test_rows_sharing_a_network_share_accuracy_and_raw_rows_have_t_1(
    smoke_run: tuple[Path, Any, str],
) -> None:
    rows = {row["name"]: row for row in smoke_run[1]["rows"]}
    raw = [s["accuracy"] for s in rows["Raw"]["per_seed"]]
    for name in ("TS on the distilled set", "MTS r=0.5", "TS on real held-out data (oracle)"):
        assert [s["accuracy"] for s in rows[name]["per_seed"]] == raw
    for name in ("Raw", "Mixup", "Focal loss", "MDT r=0.5", "Full training set (raw)"):
        assert all(s["temperature"] == 1.0 for s in rows[name]["per_seed"])
    chosen = rows["MTS, r chosen on real held-out data (oracle)"]["per_seed"]
    assert all(0.0 <= s["mask_ratio"] < 1.0 for s in chosen)


def test_every_file_is_written(smoke_run: tuple[Path, Any, str]) -> None:
    out, results, _ = smoke_run
    for name in ("results.json", "table.md", "table.csv", "config.toml"):
        assert (out / name).stat().st_size > 0
    plots = set(results["plots"])
    expected = {
        "plots/reliability_panel.png",
        "plots/explained_variance.png",
        "plots/max_logits.png",
        "plots/features_pca_distilled.png",
        "plots/features_pca_full.png",
        "plots/reliability_raw.png",
        "plots/reliability_mts_r_0_5.png",
    }
    assert expected <= plots
    assert len([p for p in plots if p.startswith("plots/reliability_")]) == len(SMOKE_ROWS) + 1
    for plot in plots:
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.rglob("*.tmp"))
    assert load_config(file=out / "config.toml") == load_config("smoke")
    assert results["config"] == load_config("smoke").to_dict()
    assert set(results["versions"]) >= {"ddcal", "torch", "python"}
    assert {"data", "distill", "train", "calibrate", "total"} <= set(results["timings_s"])


def test_table_files_agree_with_results(smoke_run: tuple[Path, Any, str]) -> None:
    out, results, _ = smoke_run
    rows = list(csv.DictReader(io.StringIO((out / "table.csv").read_text())))
    assert [r["method"] for r in rows] == SMOKE_ROWS
    for line, row in zip(rows, results["rows"], strict=True):
        ece = [s["ece"] for s in row["per_seed"]]
        assert float(line["ece_mean"]) == pytest.approx(sum(ece) / 2)
        assert float(line["ece_std"]) == pytest.approx(abs(ece[0] - ece[1]) / math.sqrt(2))


def test_rerun_resumes_without_recomputing(
    smoke_run: tuple[Path, Any, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, results, _ = smoke_run

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a finished stage was recomputed")

    monkeypatch.setattr(pipeline, "get_distiller", forbidden)
    monkeypatch.setattr(pipeline, "train_network", forbidden)
    monkeypatch.setattr(pipeline, "predict_logits", forbidden)
    again = pipeline.run_experiment(load_config("smoke"), out, progress=False)
    assert [row.to_dict() for row in again.rows] == results["rows"]
    assert any(name.startswith("net-") for name in again.cached)
    assert any(name.startswith("distilled-") for name in again.cached)


def test_without_matplotlib_the_run_says_so_and_writes_the_rest(
    smoke_run: tuple[Path, Any, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = smoke_run[0]
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = pipeline.run_experiment(load_config("smoke"), out, progress=False)
    written = json.loads((out / "results.json").read_text())
    assert written["plots"] == []
    assert "matplotlib" in written["notes"]["plots"]
    assert [row.name for row in result.rows] == SMOKE_ROWS


def test_a_users_distilled_file_without_hold_out(
    fashion_mnist: ImageClassificationData, tmp_path: Path, one_torch_thread: None
) -> None:
    """IPC 1 from a file: no MDT rows, and the hold-out row says why it is empty."""
    labels = fashion_mnist.train_labels
    first = torch.stack([torch.nonzero(labels == c)[0, 0] for c in range(10)])
    path = DistilledSet(fashion_mnist.train_images[first], labels[first]).save(tmp_path / "s.pt")
    config = load_config(
        "smoke",
        overrides=[
            ("distilled", str(path)),
            ("seeds", [0]),
            ("baselines", []),
            ("oracle_per_class", 0),
            ("full_data_epochs", 0),
            ("plots", False),
        ],
    )
    result = pipeline.run_experiment(config, tmp_path / "out", progress=False)
    names = [row.name for row in result.rows]
    assert names == [
        "Raw",
        "TS on the distilled set",
        "TS on a 10% per-class hold-out",
        "MTS r=0.5",
    ]
    holdout = result.rows[2]
    assert holdout.per_seed == []
    assert "at least 2 images per class" in holdout.note
    table = (tmp_path / "out" / "table.md").read_text()
    line = next(x for x in table.splitlines() if x.startswith("| TS on a 10% per-class"))
    assert line.endswith("] | – | – | – | – | – | – |")
    assert not (tmp_path / "out" / "plots").exists()


def test_markdown_and_csv_tables_by_hand() -> None:
    rows = [
        Row("A", "raw", [_values(0.5, 0.1), _values(0.7, 0.3)]),
        Row("B", "post-hoc", [_values(0.9, 0.05)], note="only one seed"),
        Row("C", "post-hoc", note="impossible"),
    ]
    text = markdown_table(rows)
    lines = text.splitlines()
    assert lines[0].startswith("| Method | Acc % | ECE % |")
    assert lines[2].startswith("| A | 60.00 ± 14.14 | 20.00 ± 14.14 |")
    assert lines[3].startswith("| B [1] | 90.00 | 5.00 |")
    assert lines[4] == "| C [2] | – | – | – | – | – | – |"
    assert lines[-2:] == ["[1] only one seed", "[2] impossible"]
    parsed = list(csv.DictReader(io.StringIO(csv_table(rows))))
    assert parsed[0]["accuracy_mean"] == "0.6"
    assert float(parsed[0]["accuracy_std"]) == pytest.approx(0.2 / math.sqrt(2))
    assert parsed[2]["ece_mean"] == ""
    assert parsed[2]["note"] == "impossible"


def _values(acc: float, ece: float) -> dict[str, float]:
    return {"accuracy": acc, "ece": ece, "mce": ece, "nll": 1.0, "brier": 0.5, "temperature": 1.0}
