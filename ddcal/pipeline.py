"""One experiment: dataset -> distilled sets -> evaluation networks -> calibration -> table.

:func:`run_experiment` runs the stages of ``ddcal run`` in order:

1. **data**: the dataset; with ``oracle_per_class > 0`` a per-class slice of
   the *training* split is held out (for the oracle rows only) and everything
   else uses the rest (the pool).
2. **distill**: the pool distilled with ``method``, with MDT off and at
   ``mdt_ratio`` (or the user's ``distilled`` file). Checkpointed: a killed run
   resumes mid-distillation.
3. **train**: one network per arm and seed with the protocol: cross-entropy on
   the distilled set, on its per-class hold-out split, each training-time
   baseline, the MDT set, and the full pool.
4. **calibrate + metrics**: temperatures fitted on distilled (or real held-out)
   data, never on the test set; test-set accuracy, ECE, MCE, NLL, Brier.
5. **report**: ``results.json``, ``table.md``, ``table.csv``, ``config.toml``
   and the figures under ``plots/``.

Every distilled set, network and set of logits is cached under ``cache/`` in
the output folder, named by a hash of the settings it depends on, so running
again with the same folder recomputes only what changed.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddcal import __version__, plot
from ddcal._io import atomic_write
from ddcal.analysis import explained_variance_ratio, feature_projections, max_logit_statistics
from ddcal.augment import dsa_from_strategy
from ddcal.config import ExperimentConfig, config_to_toml
from ddcal.data import DistilledSet, ImageClassificationData, load_dataset, load_distilled
from ddcal.distill import get_distiller
from ddcal.inference import load_predictions, predict_logits, save_predictions
from ddcal.metrics import calibration_summary
from ddcal.models import ConvNet, build_convnet, load_checkpoint, save_checkpoint
from ddcal.report import Row, csv_table, markdown_table
from ddcal.sampling import PerClassSampler, per_class_split
from ddcal.scaling import (
    MASK_RATIO_CANDIDATES,
    MaskedTemperatureScaler,
    TemperatureBoundWarning,
    TemperatureScaler,
    select_mask_ratio,
)
from ddcal.train import train_network

__all__ = ["ExperimentResult", "run_experiment"]

N_BINS = 15


@dataclass
class ExperimentResult:
    """What :func:`run_experiment` produced.

    Attributes:
        rows: the table, in order.
        out_dir: the output folder.
        files: every file written (results, tables, config, plots).
        timings: seconds per stage; ``cached`` lists the stages' cached items reused.
    """

    rows: list[Row]
    out_dir: Path
    files: list[Path]
    timings: dict[str, float] = field(default_factory=dict)
    cached: list[str] = field(default_factory=list)

    @property
    def table(self) -> str:
        return markdown_table(self.rows)


def _key(**parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _file_digest(path: Path) -> str:
    """A hash of a user's distilled-set file or folder (content, not name)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


@dataclass
class _Arm:
    """One kind of evaluation network: what it trains on and with which loss."""

    name: str
    images: Tensor
    labels: Tensor
    loss: str
    epochs: int
    lr: float
    key: str
    holdout: tuple[Tensor, Tensor] | None = None


class _Experiment:
    def __init__(
        self, config: ExperimentConfig, out_dir: Path, *, progress: bool, log: Callable[[str], None]
    ) -> None:
        self.config = config
        self.out = out_dir
        self.cache = out_dir / "cache"
        self.progress = progress
        self.log = log
        self.device = torch.device(config.device)
        self.timings: dict[str, float] = {}
        self.cached: list[str] = []
        self.files: list[Path] = []
        self.notes: dict[str, str] = {}
        self.first_seed_test_logits: dict[str, Tensor] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.log(f"[{name}]")
        start = time.perf_counter()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    def bar(self, total: int | None, desc: str) -> tqdm[Any]:
        return tqdm(total=total, desc=desc, disable=not self.progress, leave=False)

    # -- data -------------------------------------------------------------------------

    def load_data(self) -> None:
        c = self.config
        data: ImageClassificationData = load_dataset(c.dataset, c.data_root or None)
        self.data = data
        self.num_classes = len(data.classes)
        pool = torch.arange(data.train_labels.numel())
        self.oracle: tuple[Tensor, Tensor] | None = None
        if c.oracle_per_class > 0:
            held = PerClassSampler(
                data.train_labels, per_class=c.oracle_per_class, seed=c.distill_seed
            ).indices()
            keep = torch.ones(pool.numel(), dtype=torch.bool)
            keep[held] = False
            pool = pool[keep]
            self.oracle = (data.train_images[held], data.train_labels[held])
        self.pool_images = data.train_images[pool]
        self.pool_labels = data.train_labels[pool]
        self.test_images, self.test_labels = data.test_images, data.test_labels

    # -- distillation -----------------------------------------------------------------

    def distilled_sets(self) -> dict[str, tuple[DistilledSet, str]]:
        """``{"distilled": ..., "mdt": ...}``, each with the key its networks are cached by."""
        c = self.config
        if c.distilled:
            path = Path(c.distilled).expanduser()
            distilled = load_distilled(path)
            return {"distilled": (distilled, _key(file=_file_digest(path)))}
        sets = {}
        ratios = {"distilled": 0.0, **({"mdt": c.mdt_ratio} if c.mdt_ratio > 0 else {})}
        for name, ratio in ratios.items():
            key = _key(
                dataset=c.dataset,
                method=c.method,
                ipc=c.ipc,
                iterations=c.iterations,
                options=c.distill_options,
                seed=c.distill_seed,
                mdt_ratio=ratio,
                oracle_per_class=c.oracle_per_class,
            )
            path = self.cache / f"{name}-{c.method}-{key}.pt"
            if path.exists():
                self.cached.append(path.name)
                sets[name] = (load_distilled(path), key)
                continue
            self.log(
                f"  distilling: {c.method}, IPC {c.ipc}" + (f", MDT {ratio:g}" if ratio else "")
            )
            distiller = get_distiller(
                c.method,
                ipc=c.ipc,
                iterations=c.iterations or None,
                net=c.net,
                mdt_ratio=ratio,
                seed=c.distill_seed,
                device=self.device,
                progress=self.progress,
                **c.distill_options,
            )
            checkpoints = self.cache / f"{name}-{c.method}-{key}.checkpoints"
            result = distiller.distill(
                self.pool_images,
                self.pool_labels,
                checkpoint_dir=checkpoints,
                checkpoint_every=max(1, distiller.iterations // 10),
            )
            result.meta["dataset"] = c.dataset
            result.save(path)
            shutil.rmtree(checkpoints, ignore_errors=True)
            sets[name] = (result, key)
        return sets

    # -- networks ---------------------------------------------------------------------

    def arms(self, sets: dict[str, tuple[DistilledSet, str]], seed: int) -> list[_Arm]:
        c = self.config
        distilled, set_key = sets["distilled"]
        lr = c.lr or distilled.lr or 0.01
        arms = [_Arm("ce", distilled.images, distilled.labels, "ce", c.epochs, lr, set_key)]
        counts = torch.bincount(distilled.labels, minlength=self.num_classes)
        if int(counts.min()) >= 2:
            train_idx, val_idx = per_class_split(distilled.labels, c.holdout_fraction, seed=seed)
            arms.append(
                _Arm(
                    "holdout",
                    distilled.images[train_idx],
                    distilled.labels[train_idx],
                    "ce",
                    c.epochs,
                    lr,
                    _key(set=set_key, fraction=c.holdout_fraction),
                    holdout=(distilled.images[val_idx], distilled.labels[val_idx]),
                )
            )
        else:
            self.notes["holdout"] = (
                f"a per-class hold-out needs at least 2 images per class; this set has "
                f"{int(counts.min())}"
            )
        for loss in c.baselines:
            arms.append(_Arm(loss, distilled.images, distilled.labels, loss, c.epochs, lr, set_key))
        if "mdt" in sets:
            mdt, mdt_key = sets["mdt"]
            arms.append(_Arm("mdt", mdt.images, mdt.labels, "ce", c.epochs, lr, mdt_key))
        if c.full_data_epochs > 0:
            images, labels = self.pool_images, self.pool_labels
            if 0 < c.full_data_limit < labels.numel():
                self.notes["full"] = (
                    f"trained on {c.full_data_limit} of the {labels.numel()} training images "
                    "(full_data_limit)"
                )
                chosen = torch.randperm(
                    labels.numel(), generator=torch.Generator().manual_seed(c.distill_seed)
                )[: c.full_data_limit]
                images, labels = images[chosen], labels[chosen]
            full_key = _key(dataset=c.dataset, oracle=c.oracle_per_class, limit=c.full_data_limit)
            arms.append(_Arm("full", images, labels, "ce", c.full_data_epochs, 0.01, full_key))
        return arms

    def network(self, arm: _Arm, seed: int) -> tuple[ConvNet, str]:
        """The arm's trained network for ``seed``, from the cache when it is there."""
        c = self.config
        key = _key(
            arm=arm.name,
            data=arm.key,
            seed=seed,
            net=c.net,
            width=c.width,
            epochs=arm.epochs,
            lr=arm.lr,
            dsa=c.dsa,
            strategy=c.dsa_strategy,
        )
        path = self.cache / f"net-{arm.name}-seed{seed}-{key}.pt"
        if path.exists():
            self.cached.append(path.name)
            return self.for_inference(load_checkpoint(path, map_location=self.device)), key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build_convnet(
                c.net,
                arm.images.shape[1],
                self.num_classes,
                (arm.images.shape[2], arm.images.shape[3]),
                width=c.width,
            )
        train_network(
            net,
            arm.images,
            arm.labels,
            epochs=arm.epochs,
            lr=arm.lr,
            augment=dsa_from_strategy(c.dsa_strategy) if c.dsa else None,
            loss=arm.loss,
            seed=seed,
            device=self.device,
        )
        save_checkpoint(net, path, extra={"arm": arm.name, "seed": seed})
        return self.for_inference(net), key

    def for_inference(self, net: ConvNet) -> ConvNet:
        """channels_last on a CPU: every later forward pass (test logits, masked fits,
        analysis) is ~1.3x faster, with the same logits up to float rounding."""
        if self.device.type == "cpu":
            net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return net

    def logits(self, net: ConvNet, images: Tensor, labels: Tensor, name: str) -> Tensor:
        """``net``'s logits on ``images``, cached under ``name``."""
        path = self.cache / f"logits-{name}.pt"
        if path.exists():
            self.cached.append(path.name)
            return load_predictions(path)[0]
        logits = predict_logits(
            net, images, batch_size=self.config.batch_size, device=self.device
        ).cpu()
        save_predictions(path, logits, labels)
        return logits


def _metrics(logits: Tensor, labels: Tensor, temperature: float) -> dict[str, float]:
    scaled = logits.double() / temperature
    summary = calibration_summary(scaled, labels, n_bins=N_BINS, from_logits=True)
    return {**summary, "temperature": float(temperature)}


@contextmanager
def _bound_notes(notes: list[str], what: str) -> Iterator[None]:
    """Record a temperature on its search bound as a note instead of warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TemperatureBoundWarning)
        yield
    if any(issubclass(w.category, TemperatureBoundWarning) for w in caught):
        notes.append(what)


class _Table:
    """Rows in display order, filled seed by seed."""

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}

    def add(self, name: str, kind: str, values: dict[str, float]) -> None:
        self.rows.setdefault(name, Row(name, kind)).per_seed.append(values)

    def placeholder(self, name: str, kind: str, note: str) -> None:
        self.rows.setdefault(name, Row(name, kind, note=note))


def run_experiment(
    config: ExperimentConfig,
    out_dir: str | Path,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> ExperimentResult:
    """Run the experiment ``config`` describes, writing everything under ``out_dir``.

    Args:
        config: see :class:`~ddcal.config.ExperimentConfig` (and
            :func:`~ddcal.config.load_config` for presets and files).
        out_dir: the output folder; created if missing. Run again with the same
            folder to reuse every finished stage.
        progress: progress bars per stage.
        log: receives one line per stage (default: print when ``progress``).

    Returns:
        The table rows, the files written and the time per stage.
    """
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"config key 'device' is {config.device!r}, but torch sees no CUDA device here; "
            "run with --set device=cpu (and smaller budgets than the paper preset)"
        )
    out = Path(out_dir)
    (out / "cache").mkdir(parents=True, exist_ok=True)
    say = log if log is not None else (print if progress else (lambda _: None))
    exp = _Experiment(config, out, progress=progress, log=say)
    start = time.perf_counter()
    with exp.stage("data"):
        exp.load_data()
    with exp.stage("distill"):
        sets = exp.distilled_sets()
    distilled = sets["distilled"][0]
    zca = distilled.zca
    if zca is not None:
        exp.test_images = zca.transform(exp.test_images)
        if exp.oracle is not None:
            exp.oracle = (zca.transform(exp.oracle[0]), exp.oracle[1])

    table = _Table()
    bound_notes: dict[str, list[str]] = {}
    first_seed_logits: dict[str, tuple[Tensor, float]] = {}
    c = config
    with exp.stage("train"):
        arms = {seed: exp.arms(sets, seed) for seed in c.seeds}
        nets: dict[int, dict[str, tuple[ConvNet, str]]] = {seed: {} for seed in c.seeds}
        bar = exp.bar(sum(map(len, arms.values())), "networks")
        for seed in c.seeds:
            for arm in arms[seed]:
                nets[seed][arm.name] = exp.network(arm, seed)
                bar.update()
        bar.close()
    with exp.stage("calibrate"):
        bar = exp.bar(len(c.seeds), "calibration, seeds")
        for seed in c.seeds:
            _calibrate_seed(
                exp, table, bound_notes, arms[seed], nets[seed], seed, sets, first_seed_logits
            )
            bar.update()
        bar.close()
    analysis_nets = {name: net for name, (net, _) in nets[c.seeds[0]].items()}

    rows = _rows_with_notes(exp, table, bound_notes)
    with exp.stage("plots"):
        plots = _plots(exp, sets, analysis_nets, first_seed_logits) if c.plots else []
    exp.timings["total"] = time.perf_counter() - start
    exp.files += _write_results(exp, rows, plots)
    return ExperimentResult(
        rows=rows, out_dir=out, files=exp.files, timings=exp.timings, cached=exp.cached
    )


def _calibrate_seed(
    exp: _Experiment,
    table: _Table,
    bound_notes: dict[str, list[str]],
    arms: list[_Arm],
    nets: dict[str, tuple[ConvNet, str]],
    seed: int,
    sets: dict[str, tuple[DistilledSet, str]],
    first_seed_logits: dict[str, tuple[Tensor, float]],
) -> None:
    c = exp.config
    labels = exp.test_labels
    by_name = {arm.name: arm for arm in arms}

    def test_logits(arm: str) -> Tensor:
        net, key = nets[arm]
        logits = exp.logits(net, exp.test_images, labels, f"test-{arm}-seed{seed}-{key}")
        if seed == c.seeds[0]:
            exp.first_seed_test_logits[arm] = logits
        return logits

    def add(name: str, kind: str, logits: Tensor, temperature: float) -> None:
        table.add(name, kind, _metrics(logits, labels, temperature))
        if seed == c.seeds[0]:
            first_seed_logits[name] = (logits, temperature)

    def mts(arm: str, ratio: float, name: str) -> float:
        """MTS (TS at ``ratio`` 0) fitted on the arm's own distilled training images."""
        data = by_name[arm]
        scaler = (
            TemperatureScaler(seed=seed, batch_size=c.batch_size)
            if ratio == 0
            else MaskedTemperatureScaler(
                ratio, num_masks=c.num_masks, seed=seed, batch_size=c.batch_size
            )
        )
        with _bound_notes(bound_notes.setdefault(name, []), f"seed {seed}"):
            scaler.fit(nets[arm][0], data.images, data.labels)
        assert scaler.temperature_ is not None
        return scaler.temperature_

    def ts_on_logits(name: str, logits: Tensor, targets: Tensor) -> float:
        scaler = TemperatureScaler(seed=seed)
        with _bound_notes(bound_notes.setdefault(name, []), f"seed {seed}"):
            scaler.fit_logits(logits, targets)
        assert scaler.temperature_ is not None
        return scaler.temperature_

    ce = test_logits("ce")
    add("Raw", "raw", ce, 1.0)
    add("TS on the distilled set", "post-hoc", ce, mts("ce", 0.0, "TS on the distilled set"))
    holdout_name = f"TS on a {c.holdout_fraction:.0%} per-class hold-out"
    if "holdout" in nets:
        arm = by_name["holdout"]
        assert arm.holdout is not None
        net, key = nets["holdout"]
        held = exp.logits(net, arm.holdout[0], arm.holdout[1], f"holdout-seed{seed}-{key}")
        temperature = ts_on_logits(holdout_name, held, arm.holdout[1])
        add(holdout_name, "post-hoc", test_logits("holdout"), temperature)
    else:
        table.placeholder(holdout_name, "post-hoc", exp.notes["holdout"])
    for ratio in c.mask_ratios:
        name = f"MTS r={ratio:g}"
        add(name, "post-hoc", ce, mts("ce", ratio, name))
    names = {"mixup": "Mixup", "label_smoothing": "Label smoothing", "focal": "Focal loss"}
    for loss in c.baselines:
        add(names[loss], "train-time", test_logits(loss), 1.0)
    if "mdt" in nets:
        mdt = test_logits("mdt")
        add(f"MDT r={c.mdt_ratio:g}", "mdt", mdt, 1.0)
        for ratio in c.mask_ratios:
            name = f"MDT r={c.mdt_ratio:g} + MTS r={ratio:g}"
            add(name, "mdt", mdt, mts("mdt", ratio, name))
    if exp.oracle is not None:
        images, targets = exp.oracle
        net, key = nets["ce"]
        real = exp.logits(net, images, targets, f"oracle-ce-seed{seed}-{key}")
        name = "TS on real held-out data (oracle)"
        add(name, "oracle", ce, ts_on_logits(name, real, targets))
        name = "MTS, r chosen on real held-out data (oracle)"
        with _bound_notes(bound_notes.setdefault(name, []), f"seed {seed}"):
            selection = select_mask_ratio(
                net,
                by_name["ce"].images,
                by_name["ce"].labels,
                (images, targets),
                candidates=MASK_RATIO_CANDIDATES,
                num_masks=c.num_masks,
                seed=seed,
                batch_size=c.batch_size,
                device=exp.device,
            )
        add(name, "oracle", ce, selection.temperature)
        table.rows[name].per_seed[-1]["mask_ratio"] = selection.mask_ratio
    if "full" in nets:
        full = test_logits("full")
        add("Full training set (raw)", "reference", full, 1.0)
        if exp.oracle is not None:
            images, targets = exp.oracle
            net, key = nets["full"]
            real = exp.logits(net, images, targets, f"oracle-full-seed{seed}-{key}")
            name = "Full training set + TS on real held-out data"
            add(name, "reference", full, ts_on_logits(name, real, targets))


def _rows_with_notes(
    exp: _Experiment, table: _Table, bound_notes: dict[str, list[str]]
) -> list[Row]:
    """The table's rows, each with its notes (subset, temperature on a bound, chosen r)."""
    rows = list(table.rows.values())
    for row in rows:
        if row.kind == "reference" and "full" in exp.notes:
            row.note = exp.notes["full"]
        seeds = bound_notes.get(row.name, [])
        if seeds:
            bound = (
                f"the fitted temperature is on its search bound ({', '.join(seeds)}): "
                "the calibration data is fitted confidently"
            )
            row.note = f"{row.note}; {bound}" if row.note else bound
        if row.name.startswith("MTS, r chosen") and row.per_seed:
            chosen = sorted({f"{s['mask_ratio']:g}" for s in row.per_seed})
            row.note = (row.note + "; " if row.note else "") + f"chosen r: {', '.join(chosen)}"
    return rows


def _plots(
    exp: _Experiment,
    sets: dict[str, tuple[DistilledSet, str]],
    nets: dict[str, ConvNet],
    predictions: dict[str, tuple[Tensor, float]],
) -> list[Path]:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        exp.log("  plots skipped: matplotlib is missing (pip install 'ddcal[plot]')")
        exp.notes["plots"] = "skipped: matplotlib is missing"
        return []
    c = exp.config
    folder = exp.out / "plots"
    written: list[Path] = []
    labels = exp.test_labels

    bar = exp.bar(None, "figures")

    def save(fig: Any, name: str) -> None:
        written.append(plot.save_figure(fig, folder / name))
        bar.update()

    for name, (logits, temperature) in predictions.items():
        fig = plot.reliability_diagram(
            logits / temperature, labels, from_logits=True, n_bins=N_BINS, title=name
        )
        save(fig, f"reliability_{_slug(name)}.png")
    panel_rows = ["Raw", "TS on the distilled set", _default_mts_row(c)]
    panel_rows += [n for n in predictions if n.startswith("TS on real")]
    panel = {
        name: (predictions[name][0] / predictions[name][1], labels)
        for name in panel_rows
        if name in predictions
    }
    save(plot.reliability_panel(panel, from_logits=True, n_bins=N_BINS), "reliability_panel.png")

    curves = {
        ("distilled" if name == "distilled" else f"distilled + MDT r={c.mdt_ratio:g}"): (
            explained_variance_ratio(distilled.images)
        )
        for name, (distilled, _) in sets.items()
    }
    ipc_sample = PerClassSampler(exp.pool_labels, per_class=c.ipc, seed=c.distill_seed).indices()
    curves["random real sample"] = explained_variance_ratio(exp.pool_images[ipc_sample])
    save(plot.plot_explained_variance(curves), "explained_variance.png")

    count = min(c.analysis_images, labels.numel())
    if count >= 2:
        images = exp.test_images[:count]
        ratio = c.mdt_ratio if c.mdt_ratio > 0 else 0.5
        histograms: dict[str, Tensor] = {}
        owners = {"ce": "distilled-data network", "full": "full-data network"}
        for arm, owner in owners.items():
            if arm in nets:
                clean = exp.first_seed_test_logits[arm][:count]
                histograms[f"{owner}, clean"] = clean.max(dim=1).values
                masked = max_logit_statistics(
                    nets[arm], images, ratio, seed=0, batch_size=c.batch_size, device=exp.device
                )
                histograms[f"{owner}, masked r={ratio:g}"] = masked.values
        save(plot.plot_max_logit_histograms(histograms), "max_logits.png")
        methods = ["pca"] + (["tsne"] if _has_sklearn() else [])
        for method in methods:
            for arm in ("ce", "full"):
                if arm in nets:
                    projections = feature_projections(
                        nets[arm],
                        images,
                        method,
                        seed=0,
                        batch_size=c.batch_size,
                        device=exp.device,
                    )
                    fig = plot.plot_feature_projections(projections, labels[:count])
                    save(fig, f"features_{method}_{'distilled' if arm == 'ce' else 'full'}.png")
    bar.close()
    return written


def _default_mts_row(config: ExperimentConfig) -> str:
    ratio = 0.5 if 0.5 in config.mask_ratios else config.mask_ratios[0]
    return f"MTS r={ratio:g}"


def _has_sklearn() -> bool:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return True


def _slug(name: str) -> str:
    keep = "".join(ch.lower() if ch.isalnum() else "_" for ch in name)
    return "_".join(part for part in keep.split("_") if part)


def _write_results(exp: _Experiment, rows: list[Row], plots: list[Path]) -> list[Path]:
    c = exp.config
    out = exp.out
    results = {
        "config": c.to_dict(),
        "rows": [row.to_dict() for row in rows],
        "notes": exp.notes,
        "timings_s": exp.timings,
        "cached": exp.cached,
        "plots": [str(p.relative_to(out)) for p in plots],
        "versions": {
            "ddcal": __version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "test_images": int(exp.test_labels.numel()),
        "metric_settings": {"n_bins": N_BINS, "binning": "uniform", "ece_norm": "l1"},
    }
    written = []
    for name, text in (
        ("results.json", json.dumps(results, indent=2, default=float) + "\n"),
        ("table.md", markdown_table(rows)),
        ("table.csv", csv_table(rows)),
        ("config.toml", config_to_toml(c)),
    ):
        with atomic_write(out / name) as handle:
            handle.write(text.encode())
        written.append(out / name)
    return written + plots
