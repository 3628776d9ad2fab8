"""The experiment table: rows of per-seed metrics, aggregated and written as Markdown and CSV.

A :class:`Row` holds one method's metrics for each seed; :func:`markdown_table`
and :func:`csv_table` print mean ± std over the seeds (the sample standard
deviation; a single seed prints the mean alone). Rows that could not be
computed keep a note and print it instead of numbers.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["COLUMNS", "Row", "csv_table", "markdown_table"]

#: ``(key, header, scale, decimals)`` of each metric column; percentages are scaled by 100.
COLUMNS: tuple[tuple[str, str, float, int], ...] = (
    ("accuracy", "Acc %", 100.0, 2),
    ("ece", "ECE %", 100.0, 2),
    ("mce", "MCE %", 100.0, 2),
    ("nll", "NLL", 1.0, 3),
    ("brier", "Brier", 1.0, 4),
    ("temperature", "T", 1.0, 3),
)


@dataclass
class Row:
    """One line of the table.

    Attributes:
        name: what the row is, e.g. ``"MTS r=0.5"``.
        kind: ``"raw"``, ``"post-hoc"``, ``"train-time"``, ``"mdt"``, ``"unlabelled"``
            (uses unlabelled real images), ``"distiller-data"`` (labelled real images
            the distiller saw), ``"oracle"`` or ``"reference"`` (the full-data network).
        per_seed: one ``{metric: value}`` per evaluation seed (keys of :data:`COLUMNS`).
        note: why the row has no numbers, or a remark (a temperature on its bound).
        id: a stable identifier (``"raw"``, ``"mts-0.5"``, ``"oracle-ts"``, ...) that
            does not change with the label's wording.
    """

    name: str
    kind: str
    per_seed: list[dict[str, float]] = field(default_factory=list)
    note: str = ""
    id: str = ""

    def mean(self, key: str) -> float:
        return math.fsum(s[key] for s in self.per_seed) / len(self.per_seed)

    def std(self, key: str) -> float:
        """Sample standard deviation over the seeds (0 for a single seed)."""
        n = len(self.per_seed)
        if n < 2:
            return 0.0
        mean = self.mean(key)
        return math.sqrt(math.fsum((s[key] - mean) ** 2 for s in self.per_seed) / (n - 1))

    def to_dict(self) -> dict[str, Any]:
        summary = {}
        if self.per_seed:
            summary = {key: {"mean": self.mean(key), "std": self.std(key)} for key, *_ in COLUMNS}
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "note": self.note,
            "per_seed": self.per_seed,
            "summary": summary,
        }

    def cell(self, key: str, scale: float, decimals: int) -> str:
        if not self.per_seed:
            return "–"
        text = f"{scale * self.mean(key):.{decimals}f}"
        if len(self.per_seed) > 1:
            text += f" ± {scale * self.std(key):.{decimals}f}"
        return text


def markdown_table(rows: Sequence[Row]) -> str:
    """A GitHub Markdown table: one line per row, mean ± std per column, notes below."""
    header = "| Method | " + " | ".join(h for _, h, _, _ in COLUMNS) + " |"
    rule = "|---|" + "---:|" * len(COLUMNS)
    lines = [header, rule]
    notes = []
    for row in rows:
        name = row.name
        if row.note:
            notes.append(row.note)
            name += f" [{len(notes)}]"
        lines.append(
            f"| {name} | " + " | ".join(row.cell(k, s, d) for k, _, s, d in COLUMNS) + " |"
        )
    if notes:
        lines.append("")
        lines.extend(f"[{i}] {note}" for i, note in enumerate(notes, start=1))
    return "\n".join(lines) + "\n"


def csv_table(rows: Sequence[Row]) -> str:
    """CSV with a mean and a std column per metric (raw values, not percentages)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["method", "kind", "seeds"]
        + [f"{key}_{stat}" for key, *_ in COLUMNS for stat in ("mean", "std")]
        + ["note"]
    )
    for row in rows:
        values: list[Any] = []
        for key, *_ in COLUMNS:
            values += [row.mean(key), row.std(key)] if row.per_seed else ["", ""]
        writer.writerow([row.name, row.kind, len(row.per_seed), *values, row.note])
    return buffer.getvalue()
