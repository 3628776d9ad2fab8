"""``run_experiment``: the stages composed, data -> distilled sets -> networks -> rows -> report."""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddcal import __version__, distributed
from ddcal._io import atomic_write
from ddcal.config import ExperimentConfig, config_to_toml, device_unavailable, parse_device
from ddcal.errors import InvalidValueError
from ddcal.pipeline.cache import ArtifactCache
from ddcal.pipeline.data import ExperimentData, LabelledImages, load_experiment_data
from ddcal.pipeline.distilled import DistilledSets, Runtime, distilled_sets
from ddcal.pipeline.figures import FigureInputs, matplotlib_missing, write_figures
from ddcal.pipeline.networks import SeedNetworks, cached_logits, train_networks
from ddcal.pipeline.rows import N_BINS, TABLE_VERSION, SeedInputs, evaluate_rows, table_spec
from ddcal.report import Row, csv_table, markdown_table

__all__ = ["ExperimentResult", "run_experiment"]


@dataclass
class ExperimentResult:
    """What :func:`run_experiment` produced.

    Attributes:
        rows: the table, in order (each with its stable ``id``).
        out_dir: the output folder.
        files: every file written (results, tables, config, plots).
        timings: seconds per stage.
        cached: the cached artifacts reused instead of computed (file names).
        computed: the artifacts this run computed and stored (file names).
    """

    rows: list[Row]
    out_dir: Path
    files: list[Path]
    timings: dict[str, float] = field(default_factory=dict)
    cached: list[str] = field(default_factory=list)
    computed: list[str] = field(default_factory=list)

    regime: str = ""

    @property
    def table(self) -> str:
        return markdown_table(self.rows)


class _Stages:
    """Times each stage and announces it."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.log(f"[{name}]")
        start = time.perf_counter()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


def _runtime(config: ExperimentConfig, progress: bool) -> Runtime:
    device = parse_device(config.device, "config key 'device'")
    missing = device_unavailable(device)
    if missing is not None:
        raise InvalidValueError(
            f"config key 'device' is {config.device!r}, but {missing}; "
            "run with --set device=cpu (and smaller budgets than the paper preset)"
        )
    return Runtime(
        device=device,
        progress=progress,
        batch_size=config.batch_size,
        compile=config.compile,
        # One network at a time is faster on a CPU; compiled training is per network.
        vectorize=device.type == "cuda" and not config.compile,
    )


@contextmanager
def _removed_if_left_empty(*folders: Path) -> Iterator[None]:
    """If the block fails, remove those of ``folders`` it made that are still empty."""
    new = [folder for folder in folders if not folder.exists()]
    try:
        yield
    except BaseException:
        for folder in reversed(new):  # given outer first: empty the inner ones first
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise


def run_experiment(
    config: ExperimentConfig,
    out_dir: str | Path,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    cache_dir: str | Path | None = None,
) -> ExperimentResult:
    """Run the experiment ``config`` describes, writing everything under ``out_dir``.

    Args:
        config: see :class:`~ddcal.config.ExperimentConfig` (and
            :func:`~ddcal.config.load_config` for presets and files).
        out_dir: the output folder; created if missing (and removed again, like the
            cache folder, when the run fails before writing anything there). Run again
            with the same folder to reuse every artifact whose inputs did not change.
        progress: progress bars per stage.
        log: receives one line per stage (default: print when ``progress``).
        cache_dir: the artifact cache (default ``out_dir/cache``); experiments
            that share one share every artifact they have in common.

    Returns:
        The table rows, the files written and the time per stage.
    """
    runtime = _runtime(config, progress)
    out = Path(out_dir)
    cache_root = out / "cache" if cache_dir is None else Path(cache_dir)
    with _removed_if_left_empty(out, cache_root):
        out.mkdir(parents=True, exist_ok=True)
        say = log if log is not None else (print if progress else (lambda _: None))
        cache = ArtifactCache(cache_root, log=say)
        stage = _Stages(say)
        start = time.perf_counter()
        with stage("data"):
            data = load_experiment_data(config)
        with stage("distill"):
            sets, data = distilled_sets(config, data, cache, runtime)
        with stage("train"), _bar(progress, None, "networks") as bar:
            trained = train_networks(config, sets, data, cache, runtime, on_network=bar.update)

        def report() -> ExperimentResult:
            return _report(config, out, data, sets, trained, cache, runtime, stage, say, start)

        return distributed.on_main(report, "the calibration and the report")


def _report(
    config: ExperimentConfig,
    out: Path,
    data: ExperimentData,
    sets: DistilledSets,
    trained: list[SeedNetworks],
    cache: ArtifactCache,
    runtime: Runtime,
    stage: _Stages,
    say: Callable[[str], None],
    start: float,
) -> ExperimentResult:
    """The calibration stage, the figures and the files: what process 0 does alone."""
    progress = runtime.progress
    first = trained[0]
    specs = table_spec(config, first.arms.by_id, has_oracle=data.oracle is not None)
    seeds = [_seed_inputs(seed, data, cache, runtime) for seed in trained]
    with stage("calibrate"), _bar(progress, len(seeds), "calibration, seeds") as bar:
        table = evaluate_rows(specs, seeds, config, first.arms.notes, on_seed=bar.update)
    notes = dict(first.arms.notes)
    with stage("plots"):
        plots = []
        if config.plots and matplotlib_missing():
            say("  plots skipped: matplotlib is missing (pip install 'ddcal[plot]')")
            notes["plots"] = "skipped: matplotlib is missing"
        elif config.plots:
            inputs = FigureInputs(
                specs,
                table.first_seed,
                data,
                sets,
                first.networks,
                lambda arm: seeds[0].logits(arm, data.test),
            )
            with _bar(progress, None, "figures") as bar:
                plots = write_figures(out / "plots", config, inputs, runtime, on_figure=bar.update)
    timings = {**stage.timings, "total": time.perf_counter() - start}
    files = _write_results(out, config, table.rows, notes, timings, cache, plots, len(data.test))
    return ExperimentResult(
        table.rows, out, files + plots, timings, cache.reused, cache.computed, regime(config)
    )


def regime(config: ExperimentConfig) -> str:
    """One line saying what the table's networks are and how they were trained."""
    source = (
        f"the distilled set {config.distilled}"
        if config.distilled
        else f"{config.method.upper()} IPC {config.ipc} of {config.dataset} "
        f"({config.iterations or 'default'} iterations)"
    )
    seeds = ", ".join(map(str, config.seeds))
    augmentation = "with DSA" if config.dsa else "without augmentation"
    return (
        f"{config.net} (width {config.width}) trained on {source} for {config.epochs} epochs "
        f"{augmentation}; seeds {seeds}; test ECE with 15 bins"
    )


@contextmanager
def _bar(progress: bool, total: int | None, desc: str) -> Iterator[tqdm[Any]]:
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    try:
        yield bar
    finally:
        bar.close()


def _seed_inputs(
    trained: SeedNetworks, data: ExperimentData, cache: ArtifactCache, runtime: Runtime
) -> SeedInputs:
    def logits(arm: str, images: LabelledImages) -> Tensor:
        return cached_logits(trained.networks[arm], images, cache, runtime)

    return SeedInputs(
        trained.seed,
        trained.arms.by_id,
        trained.networks,
        logits,
        data.test,
        data.oracle,
        data.distiller_real,
    )


def _write_results(
    out: Path,
    config: ExperimentConfig,
    rows: list[Row],
    notes: dict[str, str],
    timings: dict[str, float],
    cache: ArtifactCache,
    plots: list[Path],
    test_images: int,
) -> list[Path]:
    results = {
        "config": config.to_dict(),
        "regime": regime(config),
        "rows": [row.to_dict() for row in rows],
        "notes": notes,
        "timings_s": timings,
        "cached": cache.reused,
        "computed": cache.computed,
        "plots": [str(p.relative_to(out)) for p in plots],
        "versions": {
            "ddcal": __version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "test_images": test_images,
        "metric_settings": {"n_bins": N_BINS, "binning": "uniform", "ece_norm": "l1"},
        "table_version": TABLE_VERSION,
    }
    written = []
    for name, text in (
        ("results.json", json.dumps(results, indent=2, default=float) + "\n"),
        ("table.md", markdown_table(rows)),
        ("table.csv", csv_table(rows)),
        ("config.toml", config_to_toml(config)),
    ):
        with atomic_write(out / name) as handle:
            handle.write(text.encode())
        written.append(out / name)
    return written
