"""A grid of experiments and its summary: ``ddcal study``.

A study is backbone x IPC x evaluation regime x seed on one dataset. Each
*cell* is one experiment of the engine (:func:`ddcal.pipeline.run_experiment`)
with one seed (which seeds its distillation, its oracle slice and its
evaluation networks), run in its own folder against one shared artifact cache:
cells that share an artifact compute it once, cells run in any order, and a
finished cell is read back instead of recomputed.

:func:`summarize` turns the cells into, per calibrator row: the geometric-mean
ratio of its test ECE to the oracle's over the grid's points (backbone, IPC,
regime; seeds averaged first), the worst point, and its win rates against the
raw network and against TS on the distilled set.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ddcal import distributed, plot
from ddcal._io import atomic_write
from ddcal.config import ExperimentConfig, load_config
from ddcal.errors import InvalidValueError
from ddcal.pipeline import run_experiment
from ddcal.pipeline.distilled import mdt_placement_matters
from ddcal.pipeline.figures import matplotlib_missing
from ddcal.pipeline.rows import TABLE_VERSION

__all__ = [
    "REGIMES",
    "STUDY_PRESETS",
    "Cell",
    "Regime",
    "StudyConfig",
    "StudyResult",
    "load_study_config",
    "mdt_summary",
    "run_study",
    "study_cells",
    "summarize",
]

ORACLE_ROW = "oracle-ts"
_FIXED_RATIO_ROW = re.compile(r"mts-[0-9.]+")
_REFERENCE_LINES = (
    ("raw", "raw"),
    ("ts-distilled", "TS on the distilled set"),
    (ORACLE_ROW, "oracle: TS on real held-out data"),
)


@dataclass(frozen=True)
class Regime:
    """How the evaluation networks of a cell are trained."""

    name: str
    epochs: int
    dsa: bool
    description: str


REGIMES: dict[str, Regime] = {
    regime.name: regime
    for regime in (
        Regime("smoke", 2, True, "2 epochs with DSA (tests only)"),
        Regime("demo", 100, True, "100 epochs with DSA: the demo's budget"),
        Regime("fit-noaug", 300, False, "300 epochs, no augmentation: the network fits its set"),
        Regime("fit-dsa", 300, True, "300 epochs with DSA: fits its set, over-confident"),
        Regime("reference", 1000, True, "1000 epochs with DSA: the reference protocol"),
    )
}

#: Mask ratios every cell sweeps: its MTS rows and the ECE-against-ratio figure.
SWEEP_RATIOS = [0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98]


@dataclass(frozen=True)
class StudyConfig:
    """A study grid.

    Attributes:
        preset: the preset it started from.
        backbones, ipcs, regimes, seeds: the grid's axes (regimes by name, :data:`REGIMES`).
        experiment: ``ExperimentConfig`` keys every cell shares (on top of the
            experiment preset ``experiment_preset``).
        by_backbone: keys per backbone (iterations, distill_options, ...).
        by_ipc: keys per IPC, as strings of the IPC (``"50": {"seeds": [...]}``
            may also narrow the seeds of that IPC, stated in the output), or per
            backbone and IPC (``"dc:10"``, applied after the IPC's own).
        mdt_ratios: an optional axis of MDT ratios (each cell distils an MDT
            set at its ratio beside the plain one); ``None`` leaves
            ``mdt_ratio`` to ``experiment``.
    """

    preset: str
    backbones: list[str]
    ipcs: list[int]
    regimes: list[str]
    seeds: list[int]
    experiment_preset: str = "demo"
    experiment: dict[str, Any] = field(default_factory=dict)
    by_backbone: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_ipc: dict[str, dict[str, Any]] = field(default_factory=dict)
    mdt_ratios: list[float] | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.regimes) - set(REGIMES))
        if unknown:
            raise InvalidValueError(
                f"study key 'regimes' has unknown regimes {unknown}; known: {sorted(REGIMES)}"
            )
        for name in ("backbones", "ipcs", "regimes", "seeds"):
            values = getattr(self, name)
            if not values or len(set(values)) != len(values):
                raise InvalidValueError(
                    f"study key {name!r} must be a non-empty list without repeats, got {values!r}"
                )
        if self.mdt_ratios is not None:
            ratios = self.mdt_ratios
            if (
                not ratios
                or len(set(ratios)) != len(ratios)
                or not all(0.0 < r < 1.0 for r in ratios)
            ):
                raise InvalidValueError(
                    "study key 'mdt_ratios' must be a non-empty list of distinct ratios in "
                    f"(0, 1), got {ratios!r}"
                )

    def to_dict(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "backbones": list(self.backbones),
            "ipcs": list(self.ipcs),
            "regimes": list(self.regimes),
            "seeds": list(self.seeds),
            "experiment_preset": self.experiment_preset,
            "experiment": dict(self.experiment),
            "by_backbone": {k: dict(v) for k, v in self.by_backbone.items()},
            "by_ipc": {k: dict(v) for k, v in self.by_ipc.items()},
            "mdt_ratios": None if self.mdt_ratios is None else list(self.mdt_ratios),
        }


_CALIBRATORS = ["multi-ratio", "unlabelled", "distiller-real"]
_CELL_EXPERIMENT: dict[str, Any] = {
    "baselines": [],
    "calibrators": _CALIBRATORS,
    "mdt_ratio": 0.0,
    "mask_ratios": SWEEP_RATIOS,
    "oracle_per_class": 100,
    "full_data_epochs": 0,
    "plots": False,
}

_CPU_BUDGETS: dict[str, dict[str, Any]] = {
    "dm": {"iterations": 80},
    "dc": {"iterations": 10, "distill_options": {"batch_real": 64}},
}
# One DC iteration at IPC 10 is 10 image updates with 50 inner epochs each:
# about 5 minutes on 2 cores (IPC 50: 50 updates). Ten would not fit.
_CPU_BUDGETS_BY_IPC: dict[str, dict[str, Any]] = {
    "dc:10": {"iterations": 1},
    "dc:50": {"iterations": 1},
}

#: The MDT sweep on 2 CPU cores: IPC 10, the over-confident regime, three ratios.
#: Its plain arms are those of the ``cpu`` study (same keys and budgets), so
#: sharing that study's cache computes only the MDT arms.
_MDT_SWEEP: dict[str, Any] = {
    "backbones": ["dm", "dc"],
    "ipcs": [10],
    "regimes": ["fit-dsa"],
    "mdt_ratios": [0.1, 0.25, 0.5],
    "experiment": {
        **_CELL_EXPERIMENT,
        "calibrators": [],
        "mask_ratios": [0.5, 0.7],
        "mdt_mask_real": True,
    },
    "by_backbone": _CPU_BUDGETS,
    "by_ipc": _CPU_BUDGETS_BY_IPC,
}

STUDY_PRESETS: dict[str, dict[str, Any]] = {
    # Every stage of a study on tiny budgets, for tests.
    "smoke": {
        "backbones": ["dm"],
        "ipcs": [1, 2],
        "regimes": ["smoke"],
        "seeds": [0, 1],
        "experiment_preset": "smoke",
        "mdt_ratios": [0.5],
        "experiment": {
            **_CELL_EXPERIMENT,
            "calibrators": [*_CALIBRATORS, "agreement"],
            "mask_ratios": [0.5, 0.9],
            "oracle_per_class": 5,
        },
    },
    # Development seeds: where rules and defaults are chosen (never reported as results).
    "dev": {
        "backbones": ["dm"],
        "ipcs": [1, 10],
        "regimes": ["demo", "fit-noaug", "fit-dsa"],
        "seeds": [100, 101],
        "experiment": {
            **_CELL_EXPERIMENT,
            "calibrators": [*_CALIBRATORS, "agreement"],
        },
        "by_backbone": {"dm": {"iterations": 80}},
    },
    # Fresh seeds on 2 CPU cores: DM and DC at IPC 1 / 10 / 50, the two regimes that fit.
    "cpu": {
        "backbones": ["dm", "dc"],
        "ipcs": [1, 10, 50],
        "regimes": ["fit-noaug", "fit-dsa"],
        "seeds": [0, 1, 2],
        "experiment": _CELL_EXPERIMENT,
        "by_backbone": _CPU_BUDGETS,
        "by_ipc": {"50": {"seeds": [0]}, **_CPU_BUDGETS_BY_IPC},
    },
    # MDT's ratio: chosen on development seeds ("mdt-dev"), reported on fresh ones ("mdt").
    "mdt-dev": _MDT_SWEEP | {"seeds": [100, 101]},
    "mdt": _MDT_SWEEP | {"seeds": [0, 1, 2]},
    # The placement MDT had before: the synthetic batch alone masked (development seeds).
    "mdt-dev-synthetic": _MDT_SWEEP
    | {
        "seeds": [100, 101],
        "experiment": {**_MDT_SWEEP["experiment"], "mdt_mask_real": False},
    },
    # The reference protocol on a GPU: MTT and DSA too, 1000 epochs with DSA.
    "gpu": {
        "backbones": ["dm", "dc", "dsa", "mtt"],
        "ipcs": [1, 10, 50],
        "regimes": ["fit-dsa", "reference"],
        "seeds": [0, 1, 2],
        "experiment": {**_CELL_EXPERIMENT, "device": "cuda"},
        "by_backbone": {
            "dm": {"iterations": 2000},
            "dc": {"iterations": 200},
            "dsa": {"iterations": 200},
            "mtt": {"iterations": 500},
        },
    },
}


_STUDY_KEY_TYPES: dict[str, type | tuple[type, ...]] = {
    "backbones": list,
    "ipcs": list,
    "regimes": list,
    "seeds": list,
    "experiment_preset": str,
    "experiment": dict,
    "by_backbone": dict,
    "by_ipc": dict,
    "mdt_ratios": (list, type(None)),
}
_TYPE_NAMES: dict[type | tuple[type, ...], str] = {
    list: "a list",
    dict: "a table",
    str: "a string",
    (list, type(None)): "a list",
}


def load_study_config(preset: str, overrides: Sequence[tuple[str, Any]] = ()) -> StudyConfig:
    """The study ``preset`` with ``(key, value)`` overrides of its top-level keys."""
    if preset not in STUDY_PRESETS:
        raise InvalidValueError(
            f"study preset must be one of {sorted(STUDY_PRESETS)}, got {preset!r}"
        )
    values = {**json.loads(json.dumps(STUDY_PRESETS[preset])), "preset": preset}
    known = set(StudyConfig.__dataclass_fields__) - {"preset"}
    for key, value in overrides:
        if key not in known:
            raise InvalidValueError(f"unknown study key {key!r}; the keys are {sorted(known)}")
        expected = _STUDY_KEY_TYPES[key]
        if not isinstance(value, expected) or isinstance(value, bool):
            raise InvalidValueError(
                f"study key {key!r} must be {_TYPE_NAMES[expected]}, got {value!r} "
                "(tables are written {key = value, ...}, lists [a, b])"
            )
        values[key] = value
    return StudyConfig(**values)


@dataclass(frozen=True)
class Cell:
    """One experiment of the grid: its id and its configuration."""

    id: str
    backbone: str
    ipc: int
    regime: str
    seed: int
    config: ExperimentConfig
    mdt_ratio: float | None = None

    @property
    def point(self) -> str:
        """The grid point the cell belongs to (its id without the seed)."""
        mdt = "" if self.mdt_ratio is None else f"-mdt{self.mdt_ratio:g}"
        return f"{self.backbone}-ipc{self.ipc}-{self.regime}{mdt}"


def _mdt_axis(study: StudyConfig) -> list[float | None]:
    return [None] if study.mdt_ratios is None else list(study.mdt_ratios)


def study_cells(study: StudyConfig) -> list[Cell]:
    """Every cell of the grid, in a fixed order."""
    cells = []
    for backbone in study.backbones:
        for ipc in study.ipcs:
            narrowed = {
                **study.by_ipc.get(str(ipc), {}),
                **study.by_ipc.get(f"{backbone}:{ipc}", {}),
            }
            seeds = narrowed.pop("seeds", study.seeds)
            for regime_name in study.regimes:
                regime = REGIMES[regime_name]
                for mdt_ratio in _mdt_axis(study):
                    for seed in seeds:
                        overrides = {
                            **study.experiment,
                            **study.by_backbone.get(backbone, {}),
                            **narrowed,
                            **({} if mdt_ratio is None else {"mdt_ratio": mdt_ratio}),
                            "method": backbone,
                            "ipc": ipc,
                            "epochs": regime.epochs,
                            "dsa": regime.dsa,
                            "seeds": [seed],
                            "distill_seed": seed,
                        }
                        config = load_config(
                            study.experiment_preset, overrides=list(overrides.items())
                        )
                        cell = Cell("", backbone, ipc, regime_name, seed, config, mdt_ratio)
                        cells.append(replace(cell, id=f"{cell.point}-seed{seed}"))
    return cells


def _finished(folder: Path, config: ExperimentConfig) -> dict[str, Any] | None:
    """The cell's stored results when they were made with ``config``, else ``None``."""
    path = folder / "results.json"
    if not path.exists():
        return None
    results: dict[str, Any] = json.loads(path.read_text())
    current = results.get("table_version") == TABLE_VERSION
    return results if current and _same_config(results.get("config", {}), config) else None


_ABSENT = object()


#: Keys added after cells were stored: when each matters (``mdt_mask_real`` changes
#: nothing without MDT or for MTT), and the value a cell stored before the key existed
#: had (what it did).
_CONDITIONAL_KEYS: dict[str, tuple[Callable[[ExperimentConfig], bool], Any]] = {
    "mdt_mask_real": (mdt_placement_matters, False),
    "compile": (lambda _: True, False),
}


def _same_config(stored: dict[str, Any], config: ExperimentConfig) -> bool:
    """Whether ``stored`` (a cell's configuration) describes what ``config`` computes."""
    wanted = config.to_dict()
    if not set(stored) <= set(wanted):
        return False
    for key, value in wanted.items():
        matters, before_the_key = _CONDITIONAL_KEYS.get(key, (None, _ABSENT))
        if matters is not None and not matters(config):
            continue
        if stored.get(key, before_the_key) != value:
            return False
    return True


def _cell_record(cell: Cell, results: dict[str, Any]) -> dict[str, Any]:
    rows = {row["id"]: row["per_seed"][0] if row["per_seed"] else None for row in results["rows"]}
    labels = {row["id"]: row["name"] for row in results["rows"]}
    return {
        "id": cell.id,
        "point": cell.point,
        "backbone": cell.backbone,
        "ipc": cell.ipc,
        "regime": cell.regime,
        "seed": cell.seed,
        "mdt_ratio": cell.mdt_ratio,
        "rows": rows,
        "labels": labels,
    }


@dataclass
class StudyResult:
    """What :func:`run_study` produced: the cells' records, the summary, the files."""

    cells: list[dict[str, Any]]
    summary: dict[str, Any]
    files: list[Path]
    computed: list[str]


def run_study(
    study: StudyConfig,
    out_dir: str | Path,
    *,
    cells: str = "*",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    cache_dir: str | Path | None = None,
) -> StudyResult:
    """Run every cell of ``study`` matching the glob ``cells`` (finished ones are read back),
    then write the summary of all finished cells.

    ``cache_dir`` is the artifact cache (default ``out_dir/cache``); studies that
    share one compute the artifacts they have in common once. Under ``torchrun``
    the processes share out the unfinished cells (those on one distilled set go
    to one process, each cell run as a single process) and process 0 writes the
    summary; every process returns it.

    Returns:
        The records of every finished cell, the summary, the files written and the
        ids of the cells computed by this call.
    """
    out = Path(out_dir)
    say = log if log is not None else (print if progress else (lambda _: None))
    cache = out / "cache" if cache_dir is None else Path(cache_dir)
    distributed.barrier()  # every process lists the unfinished cells before any finishes
    pending = [
        cell
        for cell in study_cells(study)
        if fnmatch.fnmatch(cell.id, cells)
        and _finished(out / "cells" / cell.id, cell.config) is None
    ]
    computed = []
    with distributed.all_or_nothing("a study cell"), distributed.single_process():
        for group in distributed.deal(_by_distilled_set(pending)):
            for cell in group:
                say(f"[cell {cell.id}]")
                run_experiment(
                    cell.config,
                    out / "cells" / cell.id,
                    progress=progress,
                    log=lambda _: None,
                    cache_dir=cache,
                )
                computed.append(cell.id)
    computed_ids = {cell_id for ids in distributed.gather_objects(computed) for cell_id in ids}

    def summary_files() -> tuple[list[dict[str, Any]], dict[str, Any], list[Path]]:
        records = [
            _cell_record(cell, found)
            for cell in study_cells(study)
            if (found := _finished(out / "cells" / cell.id, cell.config)) is not None
        ]
        summary = summarize(records)
        return records, summary, _write_study(out, study, records, summary)

    records, summary, files = distributed.on_main(summary_files, "the study's summary")
    in_order = [cell.id for cell in pending if cell.id in computed_ids]
    return StudyResult(records, summary, files, in_order)


def _by_distilled_set(cells: Sequence[Cell]) -> list[list[Cell]]:
    """``cells`` grouped by the distilled set they train on (backbone, IPC, MDT ratio and
    seed), so that one process makes each set; groups in first-appearance order."""
    groups: dict[tuple[Any, ...], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.backbone, cell.ipc, cell.mdt_ratio, cell.seed), []).append(cell)
    return list(groups.values())


def _geometric_mean(values: Sequence[float]) -> float:
    return math.exp(math.fsum(math.log(v) for v in values) / len(values))


def point_means(
    records: Sequence[dict[str, Any]], metric: str = "ece"
) -> dict[str, dict[str, float]]:
    """``{point: {row id: mean of metric over the point's seeds}}`` (rows present in every seed)."""
    by_point: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_point.setdefault(record["point"], []).append(record)
    means: dict[str, dict[str, float]] = {}
    for point, group in by_point.items():
        rows = set.intersection(
            *({row for row, values in r["rows"].items() if values is not None} for r in group)
        )
        means[point] = {
            row: math.fsum(r["rows"][row][metric] for r in group) / len(group) for row in rows
        }
    return means


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per calibrator row over the grid's points (seeds averaged first): the geometric-mean
    ECE ratio to the oracle, the worst point and ratio, and win rates against raw and
    against TS on the distilled set (a tie is not a win)."""
    means = point_means(records)
    points = sorted(p for p, rows in means.items() if ORACLE_ROW in rows)
    rows = sorted(set.intersection(*(set(means[p]) for p in points))) if points else []
    summary: dict[str, Any] = {
        "points": points,
        "seeds": _seeds_per_point(records),
        "rows": {},
        "mdt": mdt_summary(records),
    }
    for row in rows:
        ratios = {p: means[p][row] / max(means[p][ORACLE_ROW], 1e-12) for p in points}
        worst = max(ratios, key=lambda p: ratios[p])
        summary["rows"][row] = {
            "geomean_ratio_to_oracle": _geometric_mean([max(r, 1e-12) for r in ratios.values()]),
            "worst_point": worst,
            "worst_ratio": ratios[worst],
            "win_rate_vs_raw": sum(means[p][row] < means[p]["raw"] for p in points) / len(points),
            "win_rate_vs_ts_distilled": sum(
                means[p][row] < means[p]["ts-distilled"] for p in points
            )
            / len(points),
            "ece_by_point": {p: means[p][row] for p in points},
            "ratio_by_point": ratios,
        }
    return summary


_MDT_ECE_ROWS = {
    "raw": "raw",
    "mdt": "mdt",
    "mts_auto": "mts-auto",
    "mdt_mts_auto": "mdt+mts-auto",
    "oracle": ORACLE_ROW,
}


def mdt_summary(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """What MDT costs and buys at each grid point with an MDT arm (seeds averaged).

    Per point: the plain and MDT networks' test accuracy and the cost (plain minus
    MDT, in points), and test ECE of the raw and default-calibrated (label-free
    MTS) networks with and without MDT, beside the oracle.
    """
    with_mdt = [r for r in records if r["rows"].get("mdt") is not None]
    accuracy = point_means(with_mdt, "accuracy")
    ece = point_means(with_mdt, "ece")
    by_point = {record["point"]: record for record in with_mdt}
    seeds = _seeds_per_point(with_mdt)
    summary = []
    for point in sorted(accuracy):
        record = by_point[point]
        entry: dict[str, Any] = {
            "point": point,
            "backbone": record["backbone"],
            "ipc": record["ipc"],
            "regime": record["regime"],
            "mdt_ratio": record["mdt_ratio"],
            "seeds": seeds[point],
            "accuracy_plain": accuracy[point]["raw"],
            "accuracy_mdt": accuracy[point]["mdt"],
            "accuracy_cost_points": 100 * (accuracy[point]["raw"] - accuracy[point]["mdt"]),
        }
        entry.update({f"ece_{key}": ece[point].get(row) for key, row in _MDT_ECE_ROWS.items()})
        summary.append(entry)
    return summary


def _mdt_markdown(entries: Sequence[dict[str, Any]]) -> list[str]:
    if not entries:
        return []

    def percent(value: float | None) -> str:
        return "" if value is None else f"{100 * value:.2f}"

    lines = [
        "",
        "## MDT: accuracy cost and calibration after the default MTS",
        "",
        "Test accuracy and ECE %, mean over the point's seeds; cost = plain minus MDT "
        "accuracy (points). Default MTS = label-free r (`mts-auto`).",
        "",
        "| point | MDT r | seeds | plain acc | MDT acc | cost | raw ECE | MDT raw ECE | "
        "default MTS ECE | MDT + default MTS ECE | oracle ECE |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in entries:
        lines.append(
            f"| {e['backbone']}-ipc{e['ipc']}-{e['regime']} | {e['mdt_ratio']:g} | "
            f"{e['seeds']} | {percent(e['accuracy_plain'])} | {percent(e['accuracy_mdt'])} | "
            f"{e['accuracy_cost_points']:.2f} | {percent(e['ece_raw'])} | "
            f"{percent(e['ece_mdt'])} | {percent(e['ece_mts_auto'])} | "
            f"{percent(e['ece_mdt_mts_auto'])} | {percent(e['ece_oracle'])} |"
        )
    return lines


def _seeds_per_point(records: Sequence[dict[str, Any]]) -> dict[str, list[int]]:
    seeds: dict[str, list[int]] = {}
    for record in records:
        seeds.setdefault(record["point"], []).append(record["seed"])
    return {point: sorted(found) for point, found in seeds.items()}


def _labels(records: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Each row's label; its id where cells label it differently (``MDT r=0.1`` / ``r=0.5``)."""
    found: dict[str, set[str]] = {}
    for record in records:
        for row, label in record["labels"].items():
            found.setdefault(row, set()).add(label)
    return {row: labels.pop() if len(labels) == 1 else row for row, labels in found.items()}


def summary_markdown(
    study: StudyConfig, records: Sequence[dict[str, Any]], summary: dict[str, Any]
) -> str:
    labels = _labels(records)
    lines = [
        f"# Study `{study.preset}`: {len(records)} cells, {len(summary['points'])} grid points",
        "",
        "Regimes: "
        + "; ".join(f"`{name}` = {REGIMES[name].description}" for name in study.regimes)
        + ".",
        "",
        "Seeds per point: "
        + "; ".join(f"{p}: {s}" for p, s in summary["seeds"].items())
        + ". Test ECE (15 bins), mean over a point's seeds; ratios to the oracle "
        "(TS on labelled real held-out images).",
        "",
        "| calibrator | id | geo-mean ECE / oracle | worst point | worst ratio | "
        "wins vs raw | wins vs TS on distilled |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    ordered = sorted(summary["rows"].items(), key=lambda item: item[1]["geomean_ratio_to_oracle"])
    for row, values in ordered:
        lines.append(
            f"| {labels.get(row, row)} | `{row}` | {values['geomean_ratio_to_oracle']:.2f} | "
            f"{values['worst_point']} | {values['worst_ratio']:.2f} | "
            f"{values['win_rate_vs_raw']:.0%} | {values['win_rate_vs_ts_distilled']:.0%} |"
        )
    lines += ["", "## Test ECE % per grid point", ""]
    points = summary["points"]
    lines.append("| calibrator | " + " | ".join(points) + " |")
    lines.append("|---|" + "---:|" * len(points))
    for row, values in ordered:
        cells = " | ".join(f"{100 * values['ece_by_point'][p]:.2f}" for p in points)
        lines.append(f"| {labels.get(row, row)} | {cells} |")
    lines += _mdt_markdown(summary.get("mdt", []))
    return "\n".join(lines) + "\n"


def _csv(records: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    metrics = [
        "accuracy",
        "ece",
        "nll",
        "brier",
        "temperature",
        "mask_ratio",
        "calibration_accuracy",
    ]
    writer.writerow(["cell", "backbone", "ipc", "regime", "seed", "row", *metrics])
    for record in records:
        for row, values in record["rows"].items():
            if values is None:
                continue
            writer.writerow(
                [
                    record["id"],
                    record["backbone"],
                    record["ipc"],
                    record["regime"],
                    record["seed"],
                    row,
                ]
                + [values.get(m, "") for m in metrics]
            )
    return buffer.getvalue()


def _write_study(
    out: Path, study: StudyConfig, records: list[dict[str, Any]], summary: dict[str, Any]
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    content = {
        "study": study.to_dict(),
        "regimes": {name: REGIMES[name].description for name in study.regimes},
        "cells": records,
        "summary": summary,
    }
    written = []
    for name, text in (
        ("study.json", json.dumps(content, indent=2) + "\n"),
        ("study.md", summary_markdown(study, records, summary)),
        ("study.csv", _csv(records)),
    ):
        with atomic_write(out / name) as handle:
            handle.write(text.encode())
        written.append(out / name)
    return written + _figures(out / "plots", records, summary)


def _figures(
    folder: Path, records: Sequence[dict[str, Any]], summary: dict[str, Any]
) -> list[Path]:
    if matplotlib_missing():
        return []
    written = []
    means = point_means(records)
    for point in summary["points"]:
        rows = means[point]
        ratios = sorted(
            (float(row.removeprefix("mts-")), ece)
            for row, ece in rows.items()
            if _FIXED_RATIO_ROW.fullmatch(row)
        )
        if not ratios:
            continue
        lines = {name: rows[row] for row, name in _REFERENCE_LINES if row in rows}
        fig = plot.plot_ece_against_ratio(ratios, lines, title=point)
        written.append(plot.save_figure(fig, folder / f"ece_vs_ratio_{point}.png"))
    return written
