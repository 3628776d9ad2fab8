"""The README's quick start runs as pasted, and the docs show the same code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddcal import MaskedTemperatureScaler

ROOT = Path(__file__).resolve().parents[1]


def test_the_quick_start_runs_as_pasted(fashion_mnist, quick_start: str, tmp_path: Path) -> None:
    script = tmp_path / "quick_start.py"
    script.write_text(quick_start)
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    eces = dict(re.findall(r"^test ECE (raw|MTS): (\d+\.\d+)%$", done.stdout, re.MULTILINE))
    assert sorted(eces) == ["MTS", "raw"]
    assert all(0 <= float(ece) <= 100 for ece in eces.values())
    fitted = re.search(r"^T = (\d+\.\d+) at mask ratio (\d\.\d+)$", done.stdout, re.MULTILINE)
    assert fitted is not None, done.stdout
    state = torch.load(tmp_path / "scaler.pt", weights_only=True)
    scaler = MaskedTemperatureScaler().load_state_dict(state)
    assert scaler.temperature_ == pytest.approx(float(fitted.group(1)), abs=5e-4)
    assert 0 <= float(fitted.group(2)) < 1


def test_getting_started_shows_the_same_quick_start(quick_start: str) -> None:
    page = (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")
    _, _, section = page.partition("\n## Quick start\n")
    assert f"```python\n{quick_start}```\n" in section
