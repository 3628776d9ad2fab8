"""`ddcal run`: the smoke preset end to end on real FashionMNIST, resume, user sets, tables."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

import ddcal.pipeline as pipeline
import ddcal.pipeline.data as pipeline_data
import ddcal.pipeline.distilled as distilled_stage
import ddcal.pipeline.figures as figures_stage
import ddcal.pipeline.networks as networks_stage
import ddcal.pipeline.rows as rows_stage
from ddcal.cli import main
from ddcal.config import load_config
from ddcal.data import ZCA, DistilledSet, ImageClassificationData
from ddcal.report import COLUMNS, Row, csv_table, markdown_table
from ddcal.sampling import PerClassSampler

pytestmark = pytest.mark.slow

SMOKE_ROWS = [
    "Raw",
    "TS on the distilled set",
    "MTS, label-free r (default)",
    "TS on real held-out data (oracle)",
    "TS on a 10% per-class hold-out",
    "MTS r=0.5",
    "Mixup",
    "Label smoothing",
    "Focal loss",
    "MDT r=0.1",
    "MDT r=0.1 + MTS, label-free r (default)",
    "MDT r=0.1 + MTS r=0.5",
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


SMOKE_ROW_IDS = [
    "raw",
    "ts-distilled",
    "mts-auto",
    "oracle-ts",
    "ts-holdout",
    "mts-0.5",
    "mixup",
    "label_smoothing",
    "focal",
    "mdt",
    "mdt+mts-auto",
    "mdt+mts-0.5",
    "oracle-mts",
    "full",
    "full+oracle-ts",
]


def test_every_row_is_present_with_finite_numbers(smoke_run: tuple[Path, Any, str]) -> None:
    _, results, printed = smoke_run
    names = [row["name"] for row in results["rows"]]
    assert names == SMOKE_ROWS
    assert [row["id"] for row in results["rows"]] == SMOKE_ROW_IDS
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
    for name in ("Raw", "Mixup", "Focal loss", "MDT r=0.1", "Full training set (raw)"):
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

    monkeypatch.setattr(distilled_stage, "get_distiller", forbidden)
    monkeypatch.setattr(networks_stage, "train_network", forbidden)
    monkeypatch.setattr(networks_stage, "predict_logits", forbidden)
    again = pipeline.run_experiment(load_config("smoke"), out, progress=False)
    assert [row.to_dict() for row in again.rows] == results["rows"]
    assert again.computed == []
    assert any(name.startswith("net-") for name in again.cached)
    assert any(name.startswith("distilled-") for name in again.cached)


def test_networks_trained_together_give_the_table_of_networks_trained_alone(
    smoke_run: tuple[Path, Any, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a GPU run does (``Runtime.vectorize``), forced on the CPU."""
    import dataclasses

    import ddcal.pipeline.run as run_stage

    runtime = run_stage._runtime
    monkeypatch.setattr(
        run_stage,
        "_runtime",
        lambda config, progress: dataclasses.replace(runtime(config, progress), vectorize=True),
    )
    together = networks_stage.train_together
    group_sizes: list[int] = []

    def spy(nets: list[Any], *args: Any, **kwargs: Any) -> Any:
        group_sizes.append(len(nets))
        return together(nets, *args, **kwargs)

    monkeypatch.setattr(networks_stage, "train_together", spy)
    result = pipeline.run_experiment(load_config("smoke"), tmp_path / "together", progress=False)
    # ce and mdt train alike on sets of one size: with two seeds, one group of 4 at least.
    assert max(group_sizes) >= 4
    alone = {row["id"]: row for row in smoke_run[1]["rows"]}
    for row in result.rows:
        for metrics, expected in zip(row.per_seed, alone[row.id]["per_seed"], strict=True):
            for key in ("accuracy", "ece", "nll"):
                assert metrics[key] == pytest.approx(expected[key], abs=1e-4), (row.id, key)


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
        "MTS, label-free r (default)",
        "TS on a 10% per-class hold-out",
        "MTS r=0.5",
    ]
    holdout = result.rows[3]
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


def _first_images_per_class(data: ImageClassificationData, count: int) -> Tensor:
    labels = data.train_labels
    return torch.cat([torch.nonzero(labels == c)[:count, 0] for c in range(10)])


def test_a_soft_label_file_runs_the_smoke_preset_end_to_end(
    fashion_mnist: ImageClassificationData, tmp_path: Path, one_torch_thread: None
) -> None:
    chosen = _first_images_per_class(fashion_mnist, 3)
    hard = fashion_mnist.train_labels[chosen]
    soft = 0.8 * torch.nn.functional.one_hot(hard, 10).float() + 0.02
    path = DistilledSet(fashion_mnist.train_images[chosen], soft).save(tmp_path / "soft.pt")
    config = load_config("smoke", overrides=[("distilled", str(path)), ("plots", False)])
    result = pipeline.run_experiment(config, tmp_path / "out", progress=False)
    rows = {row.id: row for row in result.rows}
    assert rows["ts-holdout"].per_seed  # hold-out split by the soft labels' classes
    for row in result.rows:
        assert len(row.per_seed) == 2, row.id
        assert all(math.isfinite(s["ece"]) for s in row.per_seed)


def test_a_zca_set_has_every_arm_and_analysis_whitened(
    fashion_mnist: ImageClassificationData,
    tmp_path: Path,
    one_torch_thread: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    chosen = _first_images_per_class(fashion_mnist, 2)
    zca = ZCA().fit(fashion_mnist.train_images[:2000])
    images = zca.transform(fashion_mnist.train_images[chosen])
    path = DistilledSet(
        images, fashion_mnist.train_labels[chosen], meta={"zca": zca.state_dict()}
    ).save(tmp_path / "zca.pt")
    trained: dict[str, Tensor] = {}
    scored: list[Tensor] = []
    curves: list[Tensor] = []
    train = networks_stage.train_network
    predict = networks_stage.predict_logits
    ratio = figures_stage.explained_variance_ratio

    def spy_train(net: Any, images: Tensor, labels: Tensor, **kwargs: Any) -> Any:
        if images.shape[0] > 100:  # the full-data arm; the others train on the 20-image set
            trained["full"] = images
        return train(net, images, labels, **kwargs)

    def spy_predict(net: Any, images: Tensor, **kwargs: Any) -> Tensor:
        scored.append(images)
        return predict(net, images, **kwargs)

    def spy_ratio(images: Tensor, **kwargs: Any) -> Tensor:
        curves.append(images)
        return ratio(images, **kwargs)

    monkeypatch.setattr(networks_stage, "train_network", spy_train)
    monkeypatch.setattr(networks_stage, "predict_logits", spy_predict)
    monkeypatch.setattr(figures_stage, "explained_variance_ratio", spy_ratio)
    config = load_config(
        "smoke",
        overrides=[
            ("distilled", str(path)),
            ("seeds", [0]),
            ("baselines", []),
            ("analysis_images", 0),
        ],
    )
    pipeline.run_experiment(config, tmp_path / "out", progress=False)
    raw = pipeline_data.load_experiment_data(config)
    generator = torch.Generator().manual_seed(config.distill_seed)
    subset = torch.randperm(len(raw.pool), generator=generator)[: config.full_data_limit]
    torch.testing.assert_close(trained["full"], zca.transform(raw.pool.images[subset]))
    assert any(torch.equal(x, zca.transform(raw.test.images)) for x in scored)
    assert raw.oracle is not None
    assert any(torch.equal(x, zca.transform(raw.oracle.images)) for x in scored)
    assert not any(
        x.shape == raw.test.images.shape and torch.equal(x, raw.test.images) for x in scored
    )
    sample = PerClassSampler(raw.pool.labels, per_class=2, seed=config.distill_seed).indices()
    assert len(curves) == 2  # the distilled set, then the random real sample
    torch.testing.assert_close(curves[-1], zca.transform(raw.pool.images[sample]))


def test_warnings_pass_through_and_bound_hits_become_notes(
    fashion_mnist: ImageClassificationData,
    tmp_path: Path,
    one_torch_thread: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A temperature on its bound is a note on its row; every other warning reaches the user."""
    chosen = _first_images_per_class(fashion_mnist, 2)
    path = DistilledSet(
        fashion_mnist.train_images[chosen], fashion_mnist.train_labels[chosen]
    ).save(tmp_path / "set.pt")
    fit = rows_stage.fit_temperature

    def fit_on_the_bound(logits: Tensor, labels: Tensor, **kwargs: Any) -> tuple[float, str]:
        warnings.warn("something the user must see", RuntimeWarning, stacklevel=2)
        fit(logits, labels, **kwargs)
        return 1e-2, "lower"

    monkeypatch.setattr(rows_stage, "fit_temperature", fit_on_the_bound)
    config = load_config(
        "smoke",
        overrides=[
            ("distilled", str(path)),
            ("seeds", [0, 1]),
            ("baselines", []),
            ("oracle_per_class", 0),
            ("full_data_epochs", 0),
            ("plots", False),
        ],
    )
    with pytest.warns(RuntimeWarning, match="something the user must see"):
        result = pipeline.run_experiment(config, tmp_path / "out", progress=False)
    rows = {row.id: row for row in result.rows}
    for row_id in ("ts-distilled", "mts-0.5"):
        assert rows[row_id].note == (
            "the fitted temperature is on its lower search bound (seed 0, seed 1): "
            "the calibration data is fitted confidently"
        )
    assert rows["raw"].note == ""


def test_a_fit_on_the_upper_bound_is_noted_as_near_chance_not_confident() -> None:
    # Logits that point away from the labels: the likelihood is best at the flattest T.
    labels = torch.arange(40) % 4
    logits = 5.0 * torch.nn.functional.one_hot((labels + 1) % 4, 4).double()
    temperature, bound = rows_stage.fit_temperature(logits, labels)
    assert (temperature, bound) == (100.0, "upper")
    spec = rows_stage.RowSpec("ts-distilled", "TS", "post-hoc", "ce")
    note = rows_stage._notes(spec, {bound: [0]}, [], {}, {})
    assert "upper search bound (seed 0)" in note
    assert "near chance" in note
    assert "confidently" not in note
