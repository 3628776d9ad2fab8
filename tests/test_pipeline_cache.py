"""The artifact cache: keys hold exactly what each artifact reads, and nothing else."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from ddcal.config import ExperimentConfig, load_config
from ddcal.data import ImageClassificationData
from ddcal.pipeline import run_experiment
from ddcal.pipeline.cache import Artifact, ArtifactCache, StaleArtifactError, tensor_digest
from ddcal.pipeline.distilled import CHECKPOINTS, DISTILLED, EXPERTS
from ddcal.pipeline.networks import LOGITS, NETWORK

ARTIFACTS = (EXPERTS, DISTILLED, CHECKPOINTS, NETWORK, LOGITS)

# A valid value other than the default for every configuration field.
OTHER_VALUES: dict[str, Any] = {
    "preset": "smoke",
    "dataset": "mnist",
    "data_root": "/elsewhere",
    "distilled": "/a/set.pt",
    "method": "dc",
    "ipc": 5,
    "iterations": 7,
    "distill_options": {"batch_real": 3},
    "distill_seed": 9,
    "mdt_ratio": 0.3,
    "mdt_mask_real": False,
    "net": "ConvNetD4",
    "width": 16,
    "epochs": 7,
    "lr": 0.5,
    "dsa": False,
    "dsa_strategy": "color",
    "compile": True,
    "seeds": [5],
    "baselines": [],
    "mask_ratios": [0.2],
    "calibrators": ["multi-ratio"],
    "num_masks": 3,
    "holdout_fraction": 0.2,
    "oracle_per_class": 7,
    "full_data_epochs": 4,
    "full_data_limit": 9,
    "analysis_images": 3,
    "plots": False,
    "device": "meta",
    "batch_size": 7,
}


def test_every_field_has_another_value_in_the_table() -> None:
    assert set(OTHER_VALUES) == set(ExperimentConfig.__dataclass_fields__)


@pytest.mark.parametrize("artifact", ARTIFACTS, ids=lambda a: a.name)
@pytest.mark.parametrize("field", sorted(OTHER_VALUES))
def test_a_key_changes_exactly_with_the_fields_it_reads(artifact: Artifact, field: str) -> None:
    base = ExperimentConfig()
    changed = base.replace(**{field: OTHER_VALUES[field]})
    assert (artifact.key(base) != artifact.key(changed)) == (field in artifact.reads)


def test_keys_depend_on_inputs_params_and_version() -> None:
    config = ExperimentConfig()
    key = NETWORK.key(config, inputs={"train": "a"}, params={"seed": 0})
    assert key != NETWORK.key(config, inputs={"train": "b"}, params={"seed": 0})
    assert key != NETWORK.key(config, inputs={"train": "a"}, params={"seed": 1})
    newer = Artifact(NETWORK.name, NETWORK.reads, version=NETWORK.version + 1)
    assert key != newer.key(config, inputs={"train": "a"}, params={"seed": 0})


def test_a_view_refuses_fields_the_artifact_did_not_declare() -> None:
    view = NETWORK.view(ExperimentConfig())
    assert view.width == 128
    with pytest.raises(AttributeError, match=r"'net' reads config key 'epochs' without declaring"):
        _ = view.epochs


def test_an_artifact_cannot_declare_an_unknown_field() -> None:
    with pytest.raises(ValueError, match=r"unknown config keys \['epoch'\]"):
        Artifact("x", reads=("epoch",))


def test_tensor_digest_sees_values_dtype_and_shape() -> None:
    x = torch.arange(6.0)
    assert tensor_digest(x) == tensor_digest(x.clone())
    assert tensor_digest(x) != tensor_digest(x.double())
    assert tensor_digest(x) != tensor_digest(x.reshape(2, 3))
    y = x.clone()
    y[3] += 1e-6
    assert tensor_digest(x) != tensor_digest(y)
    assert tensor_digest(x, None) != tensor_digest(x)


def _store(cache: ArtifactCache, value: int, load_value: int | None = None) -> tuple[int, str]:
    def compute(path: Path) -> int:
        path.write_text(str(value))
        return value

    def load(path: Path) -> int:
        found = int(path.read_text())
        if load_value is not None and found != load_value:
            raise StaleArtifactError(f"{path.name} holds {found}")
        return found

    return cache.get(NETWORK, ExperimentConfig(), compute=compute, load=load, suffix=".txt")


def test_a_stored_artifact_is_reused_and_one_that_fails_verification_recomputed(
    tmp_path: Path,
) -> None:
    assert _store(ArtifactCache(tmp_path), 1)[0] == 1
    again = ArtifactCache(tmp_path)
    assert _store(again, 2)[0] == 1
    assert again.computed == []
    assert len(again.reused) == 1
    stale = ArtifactCache(tmp_path)
    assert _store(stale, 3, load_value=3)[0] == 3
    assert len(stale.computed) == 1
    manifest = json.loads(next(tmp_path.glob("net-*.json")).read_text())
    assert manifest["artifact"] == "net"
    assert manifest["config"]["width"] == 128


def test_an_artifact_without_its_manifest_is_recomputed(tmp_path: Path) -> None:
    _store(ArtifactCache(tmp_path), 1)
    next(tmp_path.glob("net-*.json")).unlink()  # as if killed between the two writes
    cache = ArtifactCache(tmp_path)
    assert _store(cache, 2)[0] == 2
    assert len(cache.computed) == 1


# -- the whole pipeline: which artifacts a changed setting recomputes ------------------

BASE = [
    ("seeds", [0]),
    ("baselines", []),
    ("mask_ratios", [0.5]),
    ("oracle_per_class", 3),
    ("full_data_epochs", 0),
    ("plots", False),
]

# change -> the artifacts it must recompute (every other artifact is reused).
INVALIDATES: list[tuple[str, Any, set[str]]] = [
    ("epochs", 3, {"net", "logits"}),
    ("lr", 0.02, {"net", "logits"}),
    ("dsa", False, {"net", "logits"}),
    ("width", 4, {"net", "logits"}),
    ("iterations", 3, {"distilled", "net", "logits"}),
    ("distill_options", {"batch_real": 4, "width": 8}, {"distilled", "net", "logits"}),
    ("oracle_per_class", 4, {"distilled", "net", "logits"}),
    ("distill_seed", 1, {"distilled", "net", "logits"}),
    ("num_masks", 3, set()),
    ("mask_ratios", [0.3], set()),
    ("analysis_images", 10, set()),
    ("batch_size", 64, set()),
]


def _kinds(names: list[str]) -> Counter[str]:
    return Counter(name.split("-", 1)[0] for name in names)


@pytest.fixture(scope="module")
def base_run(
    fashion_mnist: ImageClassificationData,
    tmp_path_factory: pytest.TempPathFactory,
    one_torch_thread: None,
) -> Path:
    out = tmp_path_factory.mktemp("cache-base")
    run_experiment(load_config("smoke", overrides=BASE), out, progress=False)
    return out


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


@pytest.mark.slow
@pytest.mark.parametrize(("field", "value", "recomputed"), INVALIDATES, ids=lambda x: str(x))
def test_a_changed_setting_recomputes_exactly_what_depends_on_it(
    base_run: Path, tmp_path: Path, field: str, value: Any, recomputed: set[str]
) -> None:
    out = _copy(base_run, tmp_path / "out")
    config = load_config("smoke", overrides=[*BASE, (field, value)])
    result = run_experiment(config, out, progress=False)
    assert set(_kinds(result.computed)) == recomputed
    if "distilled" not in recomputed:
        assert _kinds(result.cached)["distilled"] == 2


@pytest.mark.slow
def test_a_new_seed_trains_only_that_seeds_networks(base_run: Path, tmp_path: Path) -> None:
    out = _copy(base_run, tmp_path / "out")
    config = load_config("smoke", overrides=[*BASE, ("seeds", [0, 1])])
    result = run_experiment(config, out, progress=False)
    assert _kinds(result.computed)["net"] == 3  # ce, holdout and mdt arms of seed 1
    assert "distilled" not in _kinds(result.computed)


@pytest.mark.slow
def test_changing_distill_seed_gives_the_rows_of_a_fresh_run(
    base_run: Path, tmp_path: Path
) -> None:
    config = load_config("smoke", overrides=[*BASE, ("distill_seed", 1)])
    rerun = run_experiment(config, _copy(base_run, tmp_path / "rerun"), progress=False)
    fresh = run_experiment(config, tmp_path / "fresh", progress=False)
    assert [row.to_dict() for row in rerun.rows] == [row.to_dict() for row in fresh.rows]


@pytest.mark.slow
def test_more_iterations_continue_the_distillation(base_run: Path, tmp_path: Path) -> None:
    """The checkpoints outlive the finished run: 2 then 3 iterations equal 3 at once."""
    config = load_config("smoke", overrides=[*BASE, ("iterations", 3)])
    continued = run_experiment(config, _copy(base_run, tmp_path / "more"), progress=False)
    fresh = run_experiment(config, tmp_path / "fresh", progress=False)
    assert [row.to_dict() for row in continued.rows] == [row.to_dict() for row in fresh.rows]
