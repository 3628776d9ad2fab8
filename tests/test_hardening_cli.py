"""The command line refuses what it cannot do before doing any work, in one line each:
option ranges, seeds, devices, unwritable outputs, a diverging distillation, a full
disk, Ctrl-C; ``--set`` reads values as config.toml writes them; ``metrics`` never
softmaxes probabilities."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

import ddcal.cli
import ddcal.pipeline.run
from ddcal.cli import EXIT_INTERRUPTED, EXIT_USER_ERROR, main, parse_option
from ddcal.config import ConfigError, ExperimentConfig, load_config
from ddcal.data import ImageClassificationData, load_distilled
from ddcal.distill import get_distiller
from ddcal.distill.dm import DMStep
from ddcal.errors import InvalidValueError
from ddcal.inference import save_predictions
from ddcal.metrics import calibration_summary

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _one_line_error(err: str) -> str:
    assert err.startswith("ddcal: error: "), err
    assert err.strip().count("\n") == 0, err
    return err


def _tiny_data(*args: object, **kwargs: object) -> ImageClassificationData:
    """Two classes of 8x8 images: small enough for a ConvNetD3 of width 8 in milliseconds."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(12, 1, 8, 8, generator=generator)
    labels = torch.arange(12) % 2
    return ImageClassificationData(
        "tiny", images, labels, images[:4], labels[:4], ("a", "b"), (0.0,), (1.0,)
    )


#: Each command with the least it takes; the files named are never read (the error comes first).
COMMANDS: dict[str, list[str]] = {
    "run": ["run", "--preset", "smoke", "--quiet"],
    "study": ["study", "--quiet"],
    "distill": ["distill", "--method", "dm", "--ipc", "1", "--quiet"],
    "calibrate": ["calibrate", "--model", "m.pt", "--distilled", "d.pt"],
}


def _distill_arguments(out: Path, *extra: str) -> list[str]:
    return [
        "distill", "--method", "dm", "--ipc", "1", "--iterations", "2", "--device", "cpu",
        "--set", "width=8", "--set", "batch_real=4", "--set", "dsa_strategy=none",
        "--out", str(out), "--quiet", *extra,
    ]  # fmt: skip


@pytest.fixture
def no_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading any dataset fails the test: the error must come before it."""

    def refuse(*args: object, **kwargs: object) -> None:
        pytest.fail("the dataset was loaded")

    monkeypatch.setattr(ddcal.cli, "load_dataset", refuse)
    monkeypatch.setattr(ddcal.pipeline.run, "load_experiment_data", refuse)


@pytest.fixture
def tiny_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ddcal.cli, "load_dataset", _tiny_data)


# --- 1. every numeric option is range-checked where it is parsed ---------------------------


@pytest.mark.usefixtures("no_data")
@pytest.mark.parametrize(
    ("method", "arguments", "message"),
    [
        ("dm", ["--set", "batch_real=-5"], "batch_real must be an int >= 1, got -5"),
        ("dm", ["--set", "momentum=5"], r"momentum must be in \[0, 1\), got 5"),
        ("dm", ["--set", "lr_img=1e30"], "lr_img must be at most 1e\\+06, got 1e\\+30"),
        ("dm", ["--set", "lr_img=inf"], "lr_img must be a finite number > 0, got inf"),
        ("dc", ["--set", "lr_net=100"], "lr_net must be at most 10, got 100"),
        ("mtt", ["--set", "lr_lr=1e3"], "lr_lr must be at most 10, got 1000.0"),
        ("dm", ["--ipc", "0"], "ipc must be >= 1, got 0"),
        ("dm", ["--iterations", "0"], "iterations must be >= 1, got 0"),
        ("dm", ["--mdt-ratio", "1.0"], r"mdt_ratio must be in \[0, 1\)"),
        ("dm", ["--checkpoint-every", "0"], "--checkpoint-every must be >= 1, got 0"),
        ("dm", ["--seed", "-1"], "seed must be >= 0, got -1"),
    ],
)
def test_distill_refuses_an_out_of_range_option_before_loading_data(
    method: str, arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["distill", "--method", method, "--ipc", "1", "--device", "cpu", *arguments])
    assert code == EXIT_USER_ERROR
    assert re.search(message, _one_line_error(capsys.readouterr().err))


def test_the_reference_learning_rates_stay_valid() -> None:
    assert get_distiller("mtt", ipc=10, lr_img=1e5).options.lr_img == 1e5  # ZCA'd CIFAR-10
    assert get_distiller("dc", ipc=10, lr_net=0.01).options.lr_net == 0.01


def test_calibrate_checks_n_bins_before_loading_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    absent = str(tmp_path / "absent.pt")
    arguments = ["--model", absent, "--distilled", absent, "--device", "cpu", "--n-bins", "0"]
    assert main(["calibrate", *arguments]) == EXIT_USER_ERROR
    assert "n_bins must be >= 1, got 0" in _one_line_error(capsys.readouterr().err)


# --- 2. seeds lie in [0, 2**32) and never repeat ---------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ([("seeds", [0, 2**32])], "'seeds'"),
        ([("seeds", [3, 3])], "'seeds'"),
        ([("distill_seed", 2**32)], "'distill_seed'"),
    ],
)
def test_config_refuses_seeds_that_alias(overrides: list[tuple[str, Any]], key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config("smoke", overrides=overrides)


def test_config_takes_every_seed_below_2_to_the_32() -> None:
    config = load_config("smoke", overrides=[("seeds", [0, 2**32 - 1]), ("distill_seed", 7)])
    assert config.seeds == [0, 2**32 - 1]


@pytest.mark.usefixtures("no_data")
@pytest.mark.parametrize(
    ("command", "seed"),
    [
        ("run", ["--set", "seeds=[0, 4294967296]"]),
        ("study", ["--set", "seeds=[0, 4294967296]"]),
        ("distill", ["--seed", "4294967296"]),
        ("calibrate", ["--seed", "4294967296"]),
    ],
)
def test_every_command_refuses_a_seed_of_2_to_the_32(
    command: str, seed: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = [*COMMANDS[command], *seed, "--out", str(tmp_path / "out")]
    assert main(arguments) == EXIT_USER_ERROR
    assert re.search(r"seeds?'? must be .*2\*\*32", _one_line_error(capsys.readouterr().err))
    assert not (tmp_path / "out").exists()


# --- 3. no raw tracebacks: devices, a diverging loss, a full disk, Ctrl-C ---------------------


@pytest.mark.usefixtures("no_data")
@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("bogus", "device'?: .*bogus"),
        ("meta", "must be cpu, cuda, cuda:N or mps, got 'meta'"),
        ("cuda", "CUDA is not available here"),
    ],
)
@pytest.mark.parametrize("command", ["run", "study", "distill", "calibrate"])
def test_every_command_refuses_a_device_it_cannot_use(
    command: str,
    device: str,
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    chosen = {
        "run": ["--set", f"device={device}"],
        "study": ["--set", f'experiment={{device = "{device}"}}'],
    }.get(command, ["--device", device])
    arguments = [*COMMANDS[command], *chosen, "--out", str(tmp_path / "out")]
    assert main(arguments) == EXIT_USER_ERROR
    assert re.search(message, _one_line_error(capsys.readouterr().err))


@pytest.mark.usefixtures("tiny_data")
def test_a_diverging_distillation_is_one_line_naming_the_iteration_and_the_cure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(DMStep, "step", lambda self, *args: float("nan"))
    assert main(_distill_arguments(tmp_path / "dm.pt")) == EXIT_USER_ERROR
    err = _one_line_error(capsys.readouterr().err)
    assert "matching loss became nan at iteration 0" in err
    assert "try a lower lr_img (it is 1)" in err


@pytest.mark.usefixtures("tiny_data")
def test_a_full_disk_at_a_checkpoint_is_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    assert main(_distill_arguments(tmp_path / "dm.pt")) == EXIT_USER_ERROR
    err = _one_line_error(capsys.readouterr().err)
    checkpoint = tmp_path / "dm.pt.checkpoint" / "checkpoint.pt"
    assert f"No space left on device: '{checkpoint}'" in err


@pytest.mark.parametrize("command", ["run", "distill"])
def test_ctrl_c_outside_the_loop_says_interrupted(
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ddcal.cli, "load_dataset", interrupt)
    monkeypatch.setattr(ddcal.cli, "run_experiment", interrupt)
    assert main([*COMMANDS[command], "--out", str(tmp_path / "out")]) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "ddcal: interrupted\n"


@pytest.mark.usefixtures("tiny_data")
def test_ctrl_c_in_the_loop_says_how_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    step = DMStep.step

    def pressed_during_the_first(self: DMStep, iteration: int, *args: Any) -> float:
        loss = step(self, iteration, *args)
        if iteration == 0:
            signal.raise_signal(signal.SIGINT)
        return loss

    monkeypatch.setattr(DMStep, "step", pressed_during_the_first)
    out = tmp_path / "dm.pt"
    assert main(_distill_arguments(out)) == EXIT_INTERRUPTED
    checkpoint = tmp_path / "dm.pt.checkpoint" / "checkpoint.pt"
    assert capsys.readouterr().err == (
        f"ddcal: interrupted after iteration 1; checkpoint saved in {checkpoint}; "
        "run the same command again to resume\n"
    )
    monkeypatch.setattr(DMStep, "step", step)
    assert main(_distill_arguments(out)) == 0
    assert load_distilled(out).meta["loss_history"].shape == (2,)


# --- 4. outputs are checked before any work; a failed run leaves no empty folders ------------


def _refuse_new_files(*args: object, **kwargs: object) -> None:
    raise PermissionError(13, "Permission denied")


@pytest.mark.usefixtures("no_data")
@pytest.mark.parametrize("command", ["run", "study", "distill", "calibrate"])
def test_an_output_that_takes_no_file_is_refused_before_any_work(
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(ddcal.cli.tempfile, "TemporaryFile", _refuse_new_files)
    monkeypatch.setattr(ddcal.cli, "run_study", lambda *a, **k: pytest.fail("study started"))
    out = tmp_path / "out.pt"
    assert main([*COMMANDS[command], "--out", str(out)]) == EXIT_USER_ERROR
    err = _one_line_error(capsys.readouterr().err)
    assert f"cannot write {out}: folder {tmp_path} takes no new file (Permission denied)" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("no_data")
@pytest.mark.parametrize(
    ("command", "out", "message"),
    [
        ("run", "a_file/out", "cannot write to .*a_file/out: .*a_file is a file, not a folder"),
        ("study", "a_file/out", "cannot write to .*a_file/out: .*a_file is a file, not a folder"),
        ("distill", "a_folder", "cannot write .*a_folder: it is a folder; give a file name"),
        ("calibrate", "a_folder", "cannot write .*a_folder: it is a folder; give a file name"),
    ],
)
def test_an_output_path_that_cannot_be_made_is_refused_before_any_work(
    command: str, out: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a_file").write_text("")
    (tmp_path / "a_folder").mkdir()
    assert main([*COMMANDS[command], "--out", str(tmp_path / out)]) == EXIT_USER_ERROR
    assert re.search(message, _one_line_error(capsys.readouterr().err))


@pytest.mark.parametrize("existing", [False, True], ids=["new out", "existing out"])
def test_a_failed_run_leaves_no_empty_folder_behind(
    existing: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def no_data(config: ExperimentConfig) -> None:
        raise InvalidValueError("no such dataset here")

    monkeypatch.setattr(ddcal.pipeline.run, "load_experiment_data", no_data)
    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    assert main(["run", "--preset", "smoke", "--out", str(out), "--quiet"]) == EXIT_USER_ERROR
    assert "no such dataset here" in _one_line_error(capsys.readouterr().err)
    assert not (out / "cache").exists()
    assert out.exists() == existing


# --- 5. --set reads values as config.toml writes them ----------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        *[(word, False) for word in ("false", "False", "FALSE", "no", "0")],
        *[(word, True) for word in ("true", "True", "Yes", "1")],
    ],
)
def test_run_takes_toml_booleans_and_the_usual_words(
    text: str, expected: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[ExperimentConfig] = []

    def record(config: ExperimentConfig, *args: object, **kwargs: object) -> None:
        seen.append(config)
        raise InvalidValueError("stop before the pipeline")

    monkeypatch.setattr(ddcal.cli, "run_experiment", record)
    arguments = ["run", "--preset", "smoke", "--set", f"plots={text}", "--set", f"dsa={text}"]
    assert main([*arguments, "--out", str(tmp_path / "out")]) == EXIT_USER_ERROR
    assert (seen[0].plots, seen[0].dsa) == (expected, expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plots=false", ("plots", False)),
        ("seeds=[0, 1]", ("seeds", [0, 1])),
        ("distill_options={batch_real = 8}", ("distill_options", {"batch_real": 8})),
        ('dataset="fashion-mnist"', ("dataset", "fashion-mnist")),
        ("dataset=fashion-mnist", ("dataset", "fashion-mnist")),
        ("dataset=2024-01-01", ("dataset", "2024-01-01")),
        ("lr=inf", ("lr", float("inf"))),
        ("lr=.5", ("lr", 0.5)),
        ("batch_syn=None", ("batch_syn", None)),
        ("epochs=1\nplots=false", ("epochs", "1\nplots=false")),
    ],
)
def test_set_values_read_as_toml_then_python(text: str, expected: tuple[str, Any]) -> None:
    assert parse_option(text) == expected


@pytest.mark.usefixtures("no_data")
@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("plots=maybe", "config key 'plots' must be true or false, got 'maybe'"),
        ("seeds=3", r"config key 'seeds' must be a list in brackets, e\.g\. \[0, 1\], got 3"),
        ("lr=inf", r"config key 'lr' must be a number in \[0, 10\], got inf"),
    ],
)
def test_run_explains_a_value_it_cannot_read(
    setting: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--set", setting, "--out", str(tmp_path / "out")]) == EXIT_USER_ERROR
    assert re.search(message, _one_line_error(capsys.readouterr().err))


def test_run_takes_a_comma_separated_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ExperimentConfig] = []

    def record(config: ExperimentConfig, *args: object, **kwargs: object) -> None:
        seen.append(config)
        raise InvalidValueError("stop before the pipeline")

    monkeypatch.setattr(ddcal.cli, "run_experiment", record)
    main(["run", "--preset", "smoke", "--set", "seeds=0,1", "--out", str(tmp_path / "out")])
    assert seen[0].seeds == [0, 1]


# --- 6. metrics never softmaxes probabilities ---------------------------------------------------


@pytest.fixture
def probabilities(tmp_path: Path) -> tuple[Path, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    probs = (2.0 * torch.randn(50, 4, generator=generator)).softmax(dim=1)
    labels = torch.randint(0, 4, (50,), generator=generator)
    return save_predictions(tmp_path / "probs.pt", probs, labels), probs, labels


def test_metrics_refuses_probabilities_read_as_logits_by_default(
    probabilities: tuple[Path, torch.Tensor, torch.Tensor], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _, _ = probabilities
    assert main(["metrics", str(path)]) == EXIT_USER_ERROR
    err = _one_line_error(capsys.readouterr().err)
    assert "like probabilities" in err
    assert "pass --inputs probs" in err


@pytest.mark.parametrize("inputs", ["probs", "logits"])
def test_metrics_reads_the_inputs_it_is_told(
    inputs: str,
    probabilities: tuple[Path, torch.Tensor, torch.Tensor],
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, probs, labels = probabilities
    assert main(["metrics", str(path), "--inputs", inputs, "--json"]) == 0
    printed = ddcal.cli.json.loads(capsys.readouterr().out)
    expected = calibration_summary(
        probs, labels, n_bins=15, from_logits=inputs == "logits", classwise=True
    )
    assert {key: printed[key] for key in expected} == pytest.approx(expected, rel=1e-12)


def test_metrics_help_documents_the_inputs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["metrics", "--help"])
    assert "--inputs {logits,probs}" in capsys.readouterr().out
