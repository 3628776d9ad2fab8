from __future__ import annotations

import pytest

from ddcal.cli import main
from ddcal.data import load_distilled


def test_distill_writes_a_distilled_set_and_resumes(fashion_mnist, tmp_path, capsys) -> None:
    out = tmp_path / "dm.pt"
    arguments = [
        "distill", "--method", "dm", "--ipc", "1", "--iterations", "2", "--mdt-ratio", "0.5",
        "--set", "width=8", "--set", "batch_real=8", "--out", str(out), "--quiet",
    ]  # fmt: skip
    assert main(arguments) == 0
    result = load_distilled(out)
    assert result.images.shape == (10, 1, 28, 28)
    assert result.meta["method"] == "dm"
    assert result.meta["mdt_ratio"] == 0.5
    assert result.meta["dataset"] == "fashion-mnist"
    assert result.meta["config"]["width"] == 8
    assert "2 iterations" in capsys.readouterr().out
    assert (tmp_path / "dm.pt.checkpoint" / "checkpoint.pt").exists()
    assert main(arguments) == 0  # finds the finished checkpoint: nothing recomputed
    again = load_distilled(out)
    assert (again.images == result.images).all()


def test_distill_reports_bad_options_as_errors(fashion_mnist, tmp_path, capsys) -> None:
    code = main(["distill", "--method", "dm", "--ipc", "1", "--set", "colour=1", "--quiet"])
    assert code == 2
    assert "unknown option(s) ['colour'] for 'dm'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["distill", "--method", "kip", "--ipc", "1"])
