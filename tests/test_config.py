"""Experiment configuration: presets, TOML files, overrides and their errors."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddcal.cli import main

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib
from ddcal.config import (
    PRESET_DISTILL_OPTIONS,
    PRESETS,
    ConfigError,
    ExperimentConfig,
    config_to_toml,
    load_config,
)


def test_presets_load_with_their_values() -> None:
    demo = load_config()
    assert demo.preset == "demo"
    assert (demo.dataset, demo.method, demo.ipc) == ("fashion-mnist", "dm", 10)
    assert demo.distill_options == {"batch_real": 64}
    assert demo.epochs == PRESETS["demo"]["epochs"]
    smoke = load_config("smoke")
    assert smoke.seeds == [0, 1]
    assert smoke.distill_options == PRESET_DISTILL_OPTIONS["smoke"]["dm"]
    paper = load_config("paper")
    assert (paper.epochs, paper.seeds, paper.device) == (1000, [0, 1, 2, 3, 4], "cuda")
    assert paper.iterations == 0  # the method's own default


def test_overrides_apply_last_and_coerce_numbers() -> None:
    config = load_config(
        "demo",
        overrides=[("epochs", 7), ("mdt_ratio", 0), ("mask_ratios", [0, 0.25])],
    )
    assert config.epochs == 7
    assert config.mdt_ratio == 0.0
    assert isinstance(config.mdt_ratio, float)
    assert config.mask_ratios == [0.0, 0.25]


def test_dotted_override_sets_one_distill_option() -> None:
    config = load_config("demo", overrides=[("distill_options.lr_img", 2.0)])
    assert config.distill_options == {"batch_real": 64, "lr_img": 2.0}


def test_changing_the_method_drops_the_presets_options_of_another_method() -> None:
    config = load_config("demo", overrides=[("method", "mtt")])
    assert config.distill_options == {}
    smoke_mtt = load_config("smoke", overrides=[("method", "mtt")])
    assert smoke_mtt.distill_options == PRESET_DISTILL_OPTIONS["smoke"]["mtt"]


def test_file_layer_between_preset_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        'preset = "smoke"\nepochs = 5\nseeds = [3]\n[distill_options]\nbatch_real = 4\n'
    )
    config = load_config(file=path, overrides=[("epochs", 6)])
    assert config.preset == "smoke"
    assert config.epochs == 6
    assert config.seeds == [3]
    assert config.distill_options == {"batch_real": 4, "width": 8}
    assert load_config("demo", path).preset == "demo"  # --preset wins over the file's


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ([("epoch", 3)], "'epoch'"),
        ([("epochs", "many")], "'epochs'"),
        ([("epochs", 0)], "'epochs'"),
        ([("epochs", True)], "'epochs'"),
        ([("ipc", 2.5)], "'ipc'"),
        ([("mdt_ratio", 1.0)], "'mdt_ratio'"),
        ([("mask_ratios", [])], "'mask_ratios'"),
        ([("mask_ratios", [0.5, 1.5])], "'mask_ratios'"),
        ([("mask_ratios", ["a"])], "'mask_ratios[]'"),
        ([("seeds", [1, 1])], "'seeds'"),
        ([("seeds", [-1])], "'seeds'"),
        ([("baselines", ["dropout"])], "'baselines'"),
        ([("method", "kip")], "'method'"),
        ([("holdout_fraction", 0.0)], "'holdout_fraction'"),
        ([("lr", -0.1)], "'lr'"),
        ([("plots", "yes")], "'plots'"),
        ([("distill_options.batch_real", [1])], "'distill_options.batch_real'"),
        ([("device.x", 1)], "'device.x'"),
        ([("preset", "paper")], "'preset'"),
    ],
)
def test_bad_values_name_the_key(overrides: list[tuple[str, object]], key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config("demo", overrides=overrides)


def test_unknown_preset_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'preset'"):
        load_config("huge")
    path = tmp_path / "bad.toml"
    path.write_text("epochs = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(file=path)
    path.write_text('preset = "huge"\n')
    with pytest.raises(ConfigError, match="'preset'"):
        load_config(file=path)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_written_toml_reads_back_unchanged(preset: str, tmp_path: Path) -> None:
    config = load_config(preset, overrides=[("data_root", 'C:\\data "x"')])
    path = tmp_path / "config.toml"
    path.write_text(config_to_toml(config))
    assert load_config(file=path) == config


@settings(max_examples=40, deadline=None)
@given(
    epochs=st.integers(1, 10**6),
    seeds=st.lists(st.integers(0, 2**31), min_size=1, max_size=5, unique=True),
    ratios=st.lists(st.floats(0.0, 0.99), min_size=1, max_size=4, unique=True),
    lr=st.floats(0.0, 10.0),
    dataset=st.text(max_size=20),
)
def test_toml_round_trip_property(
    epochs: int, seeds: list[int], ratios: list[float], lr: float, dataset: str
) -> None:
    config = ExperimentConfig(
        epochs=epochs, seeds=seeds, mask_ratios=ratios, lr=lr, dataset=dataset
    )
    assert ExperimentConfig(**tomllib.loads(config_to_toml(config))) == config


def test_replace_validates() -> None:
    config = load_config()
    assert config.replace(epochs=3).epochs == 3
    with pytest.raises(ConfigError, match="'epochs'"):
        config.replace(epochs=-3)


def test_cli_run_reports_bad_keys(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["run", "--set", "epoch=3", "--out", str(tmp_path / "out")]) == 2
    assert "unknown config key 'epoch'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is missing")
def test_cli_run_on_cuda_without_a_gpu_fails_at_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["run", "--preset", "paper", "--out", str(tmp_path / "out")]) == 2
    assert "config key 'device' is 'cuda'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
