"""`ddcal study`: the grid of experiments, its summary, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from ddcal.cli import main
from ddcal.config import load_config
from ddcal.data import ImageClassificationData
from ddcal.study import (
    REGIMES,
    _same_config,
    load_study_config,
    mdt_summary,
    run_study,
    study_cells,
    summarize,
)

SMOKE_CALIBRATORS = {
    "raw",
    "ts-distilled",
    "ts-holdout",
    "mts-0.5",
    "mts-0.9",
    "mts-multi",
    "mts-auto",
    "mts-unlabelled",
    "agreement-unlabelled",
    "ts-distiller-real",
    "oracle-ts",
    "oracle-mts",
    "mdt",
    "mdt+mts-auto",
    "mdt+mts-0.5",
    "mdt+mts-0.9",
}


def _record(point: str, seed: int, **ece: float) -> dict[str, Any]:
    return {
        "id": f"{point}-seed{seed}",
        "point": point,
        "seed": seed,
        "rows": {row: {"ece": value} for row, value in ece.items()},
        "labels": {},
    }


def test_summary_by_hand() -> None:
    records = [
        _record("a", 0, **{"raw": 0.10, "ts-distilled": 0.20, "oracle-ts": 0.02, "x": 0.04}),
        _record("a", 1, **{"raw": 0.10, "ts-distilled": 0.20, "oracle-ts": 0.02, "x": 0.02}),
        _record("b", 0, **{"raw": 0.01, "ts-distilled": 0.05, "oracle-ts": 0.01, "x": 0.04}),
    ]
    summary = summarize(records)
    x = summary["rows"]["x"]
    assert summary["points"] == ["a", "b"]
    assert x["ece_by_point"] == pytest.approx({"a": 0.03, "b": 0.04})
    assert x["ratio_by_point"] == pytest.approx({"a": 1.5, "b": 4.0})
    assert x["geomean_ratio_to_oracle"] == pytest.approx(math.sqrt(1.5 * 4.0))
    assert x["worst_point"] == "b"
    assert x["win_rate_vs_raw"] == 0.5
    assert x["win_rate_vs_ts_distilled"] == 1.0
    assert summary["rows"]["oracle-ts"]["geomean_ratio_to_oracle"] == pytest.approx(1.0)
    assert summary["seeds"] == {"a": [0, 1], "b": [0]}


def test_cells_cover_the_grid_with_the_regimes_settings() -> None:
    study = load_study_config("cpu")
    cells = study_cells(study)
    assert len({cell.id for cell in cells}) == len(cells)
    ipc50 = [c for c in cells if c.ipc == 50]
    assert {c.seed for c in ipc50} == {0}  # narrowed, and stated in the output
    iterations = {(c.backbone, c.ipc): c.config.iterations for c in cells}
    assert iterations[("dc", 1)] == 10  # the backbone's budget
    assert iterations[("dc", 10)] == iterations[("dc", 50)] == 1  # "dc:10" overrides it
    assert iterations[("dm", 10)] == 80
    for cell in cells:
        regime = REGIMES[cell.regime]
        assert (cell.config.epochs, cell.config.dsa) == (regime.epochs, regime.dsa)
        assert cell.config.seeds == [cell.seed]
        assert cell.config.distill_seed == cell.seed
        assert cell.config.method == cell.backbone


@pytest.mark.parametrize(
    ("key", "value"), [("experiment", '{"plots": false}'), ("seeds", 3), ("ipcs", True)]
)
def test_a_study_key_of_the_wrong_type_is_refused(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"study key '{key}' must be a"):
        load_study_config("smoke", [(key, value)])


def test_unknown_study_keys_and_regimes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown study key 'seed'"):
        load_study_config("smoke", [("seed", [1])])
    with pytest.raises(ValueError, match=r"unknown regimes \['fast'\]"):
        load_study_config("smoke", [("regimes", ["fast"])])


def test_the_mdt_axis_adds_cells_with_their_ratio() -> None:
    plain = study_cells(load_study_config("cpu"))
    assert plain[0].id == "dm-ipc1-fit-noaug-seed0"
    assert plain[0].mdt_ratio is None
    cells = study_cells(load_study_config("mdt"))
    assert {c.config.mdt_ratio for c in cells} == {0.1, 0.25, 0.5}
    assert len(cells) == 2 * 3 * 3  # backbones x ratios x seeds
    first = cells[0]
    assert first.id == "dm-ipc10-fit-dsa-mdt0.1-seed0"
    assert first.point == "dm-ipc10-fit-dsa-mdt0.1"
    assert first.config.mdt_ratio == first.mdt_ratio == 0.1


@pytest.mark.parametrize("ratios", [[], [0.1, 0.1], [0.0], [1.0], [-0.5]])
def test_bad_mdt_ratios_are_refused(ratios: list[float]) -> None:
    with pytest.raises(ValueError, match=r"study key 'mdt_ratios'"):
        load_study_config("mdt", [("mdt_ratios", ratios)])


def _mdt_record(seed: int, accuracy: dict[str, float], ece: dict[str, float]) -> dict[str, Any]:
    rows = {row: {"accuracy": accuracy[row], "ece": ece[row]} for row in accuracy}
    return {
        "id": f"dm-ipc10-fit-dsa-mdt0.25-seed{seed}",
        "point": "dm-ipc10-fit-dsa-mdt0.25",
        "backbone": "dm",
        "ipc": 10,
        "regime": "fit-dsa",
        "seed": seed,
        "mdt_ratio": 0.25,
        "rows": rows,
        "labels": {},
    }


def test_mdt_summary_by_hand() -> None:
    rows = ["raw", "mdt", "mts-auto", "mdt+mts-auto", "oracle-ts"]
    records = [
        _mdt_record(
            0,
            dict(zip(rows, [0.80, 0.79, 0.80, 0.79, 0.80], strict=True)),
            dict.fromkeys(rows, 0.1),
        ),
        _mdt_record(
            1,
            dict(zip(rows, [0.70, 0.68, 0.70, 0.68, 0.70], strict=True)),
            dict.fromkeys(rows, 0.3),
        ),
    ]
    (entry,) = mdt_summary(records)
    assert entry["seeds"] == [0, 1]
    assert entry["accuracy_plain"] == pytest.approx(0.75)
    assert entry["accuracy_mdt"] == pytest.approx(0.735)
    assert entry["accuracy_cost_points"] == pytest.approx(1.5)
    assert entry["ece_mdt_mts_auto"] == pytest.approx(0.2)
    assert mdt_summary([{**r, "rows": {"raw": r["rows"]["raw"]}} for r in records]) == []


def test_a_cell_stored_before_a_config_key_existed_is_read_back_where_the_key_changes_nothing() -> (
    None
):
    config = load_config("smoke")
    stored = config.to_dict()
    assert _same_config(stored, config)
    del stored["mdt_mask_real"]  # a cell made before the key existed: MDT masked syn only
    masked_real = load_config("smoke", overrides=[("mdt_mask_real", True)])
    synthetic_only = load_config("smoke", overrides=[("mdt_mask_real", False)])
    no_mdt = load_config("smoke", overrides=[("mdt_mask_real", True), ("mdt_ratio", 0.0)])
    assert _same_config(stored, synthetic_only)
    assert not _same_config(stored, masked_real)
    assert _same_config({**stored, "mdt_ratio": 0.0}, no_mdt)  # the key changes nothing
    stored_off = {**no_mdt.to_dict(), "mdt_mask_real": False}  # stored with the old default
    assert _same_config(stored_off, no_mdt)
    assert not _same_config({**stored, "epochs": 7}, config)
    assert not _same_config({**stored, "gone": 1}, config)
    before_compile = {key: value for key, value in config.to_dict().items() if key != "compile"}
    assert _same_config(before_compile, config)  # those networks were eager
    assert not _same_config(before_compile, config.replace(compile=True))


@pytest.fixture(scope="module")
def smoke_study(
    fashion_mnist: ImageClassificationData,
    tmp_path_factory: pytest.TempPathFactory,
    one_torch_thread: None,
) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("study")
    result = run_study(load_study_config("smoke"), out, progress=False)
    return out, result


def test_the_smoke_study_has_every_calibrator_in_every_cell(smoke_study: tuple[Path, Any]) -> None:
    out, result = smoke_study
    assert len(result.cells) == len(study_cells(load_study_config("smoke")))
    for record in result.cells:
        present = {row for row, v in record["rows"].items() if v is not None}
        # A per-class hold-out needs 2 images per class.
        expected = SMOKE_CALIBRATORS - ({"ts-holdout"} if record["ipc"] == 1 else set())
        assert present == expected
    written = json.loads((out / "study.json").read_text())
    assert written["regimes"] == {"smoke": REGIMES["smoke"].description}
    markdown = (out / "study.md").read_text()
    assert markdown.startswith("# Study `smoke`")
    assert "## MDT: accuracy cost" in markdown
    assert [e["point"] for e in written["summary"]["mdt"]] == written["summary"]["points"]
    assert (out / "study.csv").read_text().startswith("cell,backbone,ipc,regime,seed,row")
    for point in written["summary"]["points"]:
        assert (out / "plots" / f"ece_vs_ratio_{point}.png").read_bytes()[:4] == b"\x89PNG"


def test_the_summary_is_recomputed_from_the_cells(smoke_study: tuple[Path, Any]) -> None:
    out, _ = smoke_study
    written = json.loads((out / "study.json").read_text())
    assert summarize(written["cells"]) == written["summary"]
    cells = {c["id"]: c for c in written["cells"]}
    for row, values in written["summary"]["rows"].items():
        for point, ece in values["ece_by_point"].items():
            seeds = [c for c in cells.values() if c["point"] == point]
            assert ece == pytest.approx(sum(c["rows"][row]["ece"] for c in seeds) / len(seeds))


def test_a_rerun_recomputes_nothing(smoke_study: tuple[Path, Any]) -> None:
    out, result = smoke_study
    again = run_study(load_study_config("smoke"), out, progress=False)
    assert again.computed == []
    assert again.summary == result.summary


def test_the_command_prints_the_summary(
    smoke_study: tuple[Path, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = smoke_study
    assert main(["study", "--preset", "smoke", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "geo-mean ECE / oracle" in printed
    assert "(0 computed now)" in printed
