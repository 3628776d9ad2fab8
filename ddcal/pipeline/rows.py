"""The table as data: each row a declared spec, evaluated seed by seed.

A :class:`RowSpec` names a row once: a stable id (what plots, notes and
tests pick rows by), its label, which arm's network it scores and how its
temperature is fitted (:class:`Calibration`). :func:`table_spec` lists the
rows a configuration asks for; :func:`evaluate_rows` fits every temperature
without the test set and scores the test logits.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor

from ddcal.config import ExperimentConfig
from ddcal.label_free import (
    UninformativeMaskingWarning,
    agreement_temperature,
    confidence_matched_ratio,
    multi_ratio_logits,
    target_accuracy_ratio,
)
from ddcal.metrics import calibration_summary
from ddcal.pipeline.data import LabelledImages
from ddcal.pipeline.networks import Arm, TrainedNetwork
from ddcal.report import Row
from ddcal.scaling import (
    MASK_RATIO_CANDIDATES,
    TemperatureBoundWarning,
    fit_temperature,
    masked_logits,
    select_mask_ratio,
)

__all__ = [
    "N_BINS",
    "Calibration",
    "RowSpec",
    "SeedInputs",
    "evaluate_rows",
    "table_spec",
]

N_BINS = 15

#: Bumped whenever the rows or how they are fitted change: stored results of an
#: older table are not reused by ``ddcal study``.
TABLE_VERSION = 6

BASELINE_LABELS = {"mixup": "Mixup", "label_smoothing": "Label smoothing", "focal": "Focal loss"}


@dataclass(frozen=True)
class Calibration:
    """How a row's temperature is fitted (never on the test set).

    Attributes:
        method: ``"none"`` (T = 1), ``"ts"`` (plain temperature scaling),
            ``"mts"`` (masked, at ``mask_ratio``), ``"auto"`` (masked, at the
            label-free ratio of :func:`~ddcal.label_free.target_accuracy_ratio`:
            the library's default), ``"multi"`` (one temperature
            over masked copies at :data:`~ddcal.label_free.MULTI_RATIOS`),
            ``"select"`` (MTS with the ratio chosen by
            :func:`~ddcal.scaling.select_mask_ratio`) or ``"agreement"``
            (:func:`~ddcal.label_free.agreement_temperature` with the
            ``partner`` arm's network) or ``"matched"`` (MTS at the ratio where
            masked copies are as confident as the unlabelled real images,
            :func:`~ddcal.label_free.confidence_matched_ratio`).
        data: what it is fitted on: ``"train"`` (the arm's own training
            images), ``"holdout"`` (the arm's held-out split), ``"oracle"``
            (the real oracle slice; for ``"select"``, what chooses the ratio),
            ``"unlabelled"`` (the oracle slice's images, labels never read) or
            ``"distiller-real"`` (labelled real images the distiller saw).
        mask_ratio: the MTS ratio.
    """

    method: Literal["none", "ts", "mts", "auto", "multi", "select", "agreement", "matched"] = "none"
    data: Literal["none", "train", "holdout", "oracle", "unlabelled", "distiller-real"] = "none"
    mask_ratio: float = 0.0


@dataclass(frozen=True)
class RowSpec:
    """One row of the table: id, label, kind (see :class:`~ddcal.report.Row`), arm, calibration."""

    id: str
    label: str
    kind: str
    arm: str
    calibration: Calibration = field(default_factory=Calibration)


def mts_row_id(ratio: float, prefix: str = "") -> str:
    return f"{prefix}mts-{ratio:g}"


def table_spec(
    config: ExperimentConfig, arms: Collection[str], *, has_oracle: bool
) -> list[RowSpec]:
    """The rows of ``config``'s table, in display order, for the arms that exist.

    The table leads with what a user decides between: the raw network, TS on the
    distilled set, the label-free default and the oracle; the rest follow. The
    hold-out row is listed even without its arm (it then carries the reason).
    """
    rows = [
        RowSpec("raw", "Raw", "raw", "ce"),
        RowSpec(
            "ts-distilled", "TS on the distilled set", "post-hoc", "ce", Calibration("ts", "train")
        ),
        RowSpec(
            "mts-auto",
            "MTS, label-free r (default)",
            "post-hoc",
            "ce",
            Calibration("auto", "train"),
        ),
    ]
    if has_oracle:
        rows.append(
            RowSpec(
                "oracle-ts",
                "TS on real held-out data (oracle)",
                "oracle",
                "ce",
                Calibration("ts", "oracle"),
            )
        )
    rows.append(
        RowSpec(
            "ts-holdout",
            f"TS on a {config.holdout_fraction:.0%} per-class hold-out",
            "post-hoc",
            "holdout",
            Calibration("ts", "holdout"),
        )
    )
    rows += [
        RowSpec(mts_row_id(r), f"MTS r={r:g}", "post-hoc", "ce", Calibration("mts", "train", r))
        for r in config.mask_ratios
    ]
    rows += [RowSpec(loss, BASELINE_LABELS[loss], "train-time", loss) for loss in config.baselines]
    if "mdt" in arms:
        mdt = f"MDT r={config.mdt_ratio:g}"
        rows.append(RowSpec("mdt", mdt, "mdt", "mdt"))
        rows.append(
            RowSpec(
                "mdt+mts-auto",
                f"{mdt} + MTS, label-free r (default)",
                "mdt",
                "mdt",
                Calibration("auto", "train"),
            )
        )
        rows += [
            RowSpec(
                mts_row_id(r, "mdt+"),
                f"{mdt} + MTS r={r:g}",
                "mdt",
                "mdt",
                Calibration("mts", "train", r),
            )
            for r in config.mask_ratios
        ]
    if "multi-ratio" in config.calibrators:
        rows.append(
            RowSpec(
                "mts-multi",
                "MTS, one T over ratios 0.1-0.9",
                "post-hoc",
                "ce",
                Calibration("multi", "train"),
            )
        )
    if has_oracle and "unlabelled" in config.calibrators:
        rows.append(
            RowSpec(
                "mts-unlabelled",
                "MTS, r where masked copies are as confident as unlabelled real images",
                "unlabelled",
                "ce",
                Calibration("matched", "unlabelled"),
            )
        )
    if has_oracle and "partner" in arms:
        rows.append(
            RowSpec(
                "agreement-unlabelled",
                "T matching 2-seed agreement on unlabelled real images",
                "unlabelled",
                "ce",
                Calibration("agreement", "unlabelled"),
            )
        )
    if has_oracle and "distiller-real" in config.calibrators:
        rows.append(
            RowSpec(
                "ts-distiller-real",
                "TS on labelled real images the distiller saw (not the network)",
                "distiller-data",
                "ce",
                Calibration("ts", "distiller-real"),
            )
        )
    if has_oracle:
        rows.append(
            RowSpec(
                "oracle-mts",
                "MTS, r chosen on real held-out data (oracle)",
                "oracle",
                "ce",
                Calibration("select", "oracle"),
            )
        )
    if "full" in arms:
        rows.append(RowSpec("full", "Full training set (raw)", "reference", "full"))
        if has_oracle:
            rows.append(
                RowSpec(
                    "full+oracle-ts",
                    "Full training set + TS on real held-out data",
                    "reference",
                    "full",
                    Calibration("ts", "oracle"),
                )
            )
    return rows


@dataclass(frozen=True, eq=False)
class SeedInputs:
    """What evaluating one seed's rows needs.

    Attributes:
        seed: the evaluation seed (also seeds the masks).
        arms, networks: by arm id.
        logits: ``logits(arm_id, images)``, the arm network's cached logits.
        test, oracle: the test split and the oracle slice (or ``None``).
        distiller_real: labelled real images the distiller saw (or ``None``).
    """

    seed: int
    arms: dict[str, Arm]
    networks: dict[str, TrainedNetwork]
    logits: Callable[[str, LabelledImages], Tensor]
    test: LabelledImages
    oracle: LabelledImages | None
    distiller_real: LabelledImages | None = None


@dataclass(frozen=True)
class _Fit:
    """A row's fitted temperature, with what the fit saw.

    ``calibration_accuracy`` is the network's accuracy on the data the
    temperature was fitted on (e.g. on the masked copies): a label-free signal.
    """

    temperature: float
    bound: str | None = None
    mask_ratio: float | None = None
    calibration_accuracy: float | None = None
    calibration_confidence: float | None = None
    fallback: str | None = None


def _accuracy(logits: Tensor, labels: Tensor) -> float:
    return float((logits.argmax(dim=1) == labels).double().mean())


def _fit(spec: RowSpec, inputs: SeedInputs, config: ExperimentConfig) -> _Fit:
    calibration = spec.calibration
    arm = inputs.arms[spec.arm]
    # The network and its own training set, and how every masked fit draws its copies.
    own = (inputs.networks[spec.arm].net, arm.train.images, arm.train.class_labels)
    masking: dict[str, Any] = {
        "num_masks": config.num_masks,
        "seed": inputs.seed,
        "batch_size": config.batch_size,
    }
    if calibration.method == "none":
        return _Fit(1.0)
    if calibration.method == "select":
        assert inputs.oracle is not None
        with warnings.catch_warnings():
            # Recorded as a note on the row instead; every other warning passes through.
            warnings.simplefilter("ignore", TemperatureBoundWarning)
            selection = select_mask_ratio(
                *own,
                (inputs.oracle.images, inputs.oracle.class_labels),
                candidates=MASK_RATIO_CANDIDATES,
                **masking,
            )
        return _Fit(selection.temperature, selection.bound_hit, selection.mask_ratio)
    if calibration.method == "agreement":
        assert inputs.oracle is not None
        unlabelled = inputs.oracle  # its images only: agreement_temperature takes no labels
        temperature, agreement, bound = agreement_temperature(
            inputs.logits(spec.arm, unlabelled), inputs.logits("partner", unlabelled)
        )
        return _Fit(temperature, bound, calibration_accuracy=agreement)
    if calibration.method in ("auto", "matched"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UninformativeMaskingWarning)  # the reason is noted
            if calibration.method == "auto":
                choice = target_accuracy_ratio(*own, **masking)
            else:
                assert inputs.oracle is not None
                choice = confidence_matched_ratio(
                    *own,
                    inputs.oracle.images,  # images only: no label of real data is read
                    **masking,
                )
        return _Fit(
            choice.temperature,
            choice.bound,
            choice.mask_ratio,
            calibration_accuracy=choice.masked_accuracy,
            fallback=choice.reason if choice.reason in _FALLBACK_NOTES else None,
        )
    if calibration.method == "multi":
        logits, labels = multi_ratio_logits(*own, **masking)
    elif calibration.data == "train":
        ratio = calibration.mask_ratio if calibration.method == "mts" else 0.0
        logits, labels = masked_logits(
            *own,
            mask_ratio=ratio,
            **masking,
        )
    else:
        data = {
            "holdout": arm.holdout,
            "oracle": inputs.oracle,
            "distiller-real": inputs.distiller_real,
        }[calibration.data]
        assert data is not None
        logits, labels = inputs.logits(spec.arm, data), data.class_labels
    temperature, bound = fit_temperature(logits, labels)
    return _Fit(
        temperature,
        bound,
        calibration_accuracy=_accuracy(logits, labels),
        calibration_confidence=float(logits.double().softmax(dim=1).max(dim=1).values.mean()),
    )


def _metrics(logits: Tensor, labels: Tensor, temperature: float) -> dict[str, float]:
    scaled = logits.double() / temperature
    summary = calibration_summary(scaled, labels, n_bins=N_BINS, from_logits=True)
    return {**summary, "temperature": float(temperature)}


_BOUND_MEANING = {
    "lower": "the calibration data is fitted confidently",
    "upper": "the calibration predictions are near chance",
}


#: The notes of the label-free rule's safe choices (``LabelFreeChoice.reason``).
_FALLBACK_NOTES = {
    "fallback": "masked copies never got hard enough ({}): the distilled set cannot tell "
    "the temperature; fell back to max(T, 1)",
    "floor": "masked copies at the target asked for T < 1 ({}): the distilled set cannot "
    "tell the temperature; used T = 1, never sharper than the raw network",
}


def _notes(
    spec: RowSpec,
    bounds: dict[str, list[int]],
    ratios: list[float],
    fallbacks: dict[str, list[int]],
    arm_notes: dict[str, str],
) -> str:
    notes = [arm_notes[spec.arm]] if spec.arm in arm_notes else []
    for reason, seeds in fallbacks.items():
        listed = ", ".join(f"seed {s}" for s in seeds)
        notes.append(_FALLBACK_NOTES[reason].format(listed))
    for bound, seeds in bounds.items():
        listed = ", ".join(f"seed {s}" for s in seeds)
        notes.append(
            f"the fitted temperature is on its {bound} search bound ({listed}): "
            + _BOUND_MEANING[bound]
        )
    if ratios:
        notes.append("chosen r: " + ", ".join(sorted({f"{r:.3g}" for r in ratios})))
    return "; ".join(notes)


def _note_a_calibrated_raw_network(rows: dict[str, Row]) -> None:
    """Say so when the raw network is already about as calibrated as the oracle makes it."""
    raw, oracle = rows.get("raw"), rows.get("oracle-ts")
    if raw is None or oracle is None or not raw.per_seed or not oracle.per_seed:
        return
    if raw.mean("ece") <= 2 * oracle.mean("ece"):
        note = (
            f"the raw network is already well calibrated here (ECE {100 * raw.mean('ece'):.2f}% "
            f"against the oracle's {100 * oracle.mean('ece'):.2f}%): a calibrator can only "
            "keep it so"
        )
        raw.note = f"{raw.note}; {note}" if raw.note else note


@dataclass
class EvaluatedTable:
    """The rows, and the first seed's test logits and temperature per row id (for plots)."""

    rows: list[Row]
    first_seed: dict[str, tuple[Tensor, float]]


def evaluate_rows(
    specs: list[RowSpec],
    seeds: list[SeedInputs],
    config: ExperimentConfig,
    arm_notes: dict[str, str],
    *,
    on_seed: Callable[[], None] = lambda: None,
) -> EvaluatedTable:
    """Every row's metrics on the test split, seed by seed (rows without their arm stay empty)."""
    per_seed: dict[str, list[dict[str, float]]] = {spec.id: [] for spec in specs}
    bounds: dict[str, dict[str, list[int]]] = {spec.id: {} for spec in specs}
    chosen: dict[str, list[float]] = {spec.id: [] for spec in specs}
    fallbacks: dict[str, dict[str, list[int]]] = {spec.id: {} for spec in specs}
    first_seed: dict[str, tuple[Tensor, float]] = {}
    for position, inputs in enumerate(seeds):
        for spec in specs:
            if spec.arm not in inputs.arms:
                continue
            fit = _fit(spec, inputs, config)
            logits = inputs.logits(spec.arm, inputs.test)
            values = _metrics(logits, inputs.test.class_labels, fit.temperature)
            if fit.mask_ratio is not None:
                values["mask_ratio"] = fit.mask_ratio
                chosen[spec.id].append(fit.mask_ratio)
            if fit.calibration_accuracy is not None:
                values["calibration_accuracy"] = fit.calibration_accuracy
            if fit.calibration_confidence is not None:
                values["calibration_confidence"] = fit.calibration_confidence
            if fit.bound is not None:
                bounds[spec.id].setdefault(fit.bound, []).append(inputs.seed)
            if fit.fallback is not None:
                fallbacks[spec.id].setdefault(fit.fallback, []).append(inputs.seed)
            per_seed[spec.id].append(values)
            if position == 0:
                first_seed[spec.id] = (logits, fit.temperature)
        on_seed()
    rows = [
        Row(
            spec.label,
            spec.kind,
            per_seed[spec.id],
            note=_notes(spec, bounds[spec.id], chosen[spec.id], fallbacks[spec.id], arm_notes),
            id=spec.id,
        )
        for spec in specs
    ]
    _note_a_calibrated_raw_network({row.id: row for row in rows})
    return EvaluatedTable(rows, first_seed)
