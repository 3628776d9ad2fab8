from __future__ import annotations

import contextlib
import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import ddcal.cli
from ddcal.cli import EXIT_BUG, EXIT_INTERRUPTED, EXIT_USER_ERROR, METRIC_NAMES, main
from ddcal.data import ZCA, DistilledSet, load_distilled
from ddcal.inference import predict_logits, save_predictions
from ddcal.label_free import UninformativeMaskingWarning
from ddcal.metrics import (
    accuracy,
    brier_score,
    calibration_error,
    classwise_calibration_error,
    negative_log_likelihood,
)
from ddcal.models import ConvNet, build_convnet, load_checkpoint, save_checkpoint
from ddcal.plot import save_figure
from ddcal.scaling import MaskedTemperatureScaler, fit_temperature

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- errors: the user's (exit 2, one line) or ddcal's (exit 1, traceback) -----------------


def _one_line_error(err: str) -> str:
    assert err.startswith("ddcal: error: ")
    assert err.strip().count("\n") == 0
    return err


@pytest.fixture
def no_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ddcal run`` stops before the pipeline: these tests are about what comes before it."""

    def refuse(*args: object, **kwargs: object) -> None:
        pytest.fail("run_experiment was called")

    monkeypatch.setattr(ddcal.cli, "run_experiment", refuse)


@pytest.mark.usefixtures("no_pipeline")
def test_a_bad_config_key_is_one_line_naming_it(capsys) -> None:
    assert main(["run", "--set", "nope=1"]) == EXIT_USER_ERROR
    captured = capsys.readouterr()
    assert "unknown config key 'nope'" in _one_line_error(captured.err)
    assert captured.out == ""


@pytest.mark.usefixtures("no_pipeline")
def test_a_missing_config_file_is_one_line_naming_it(tmp_path, capsys) -> None:
    absent = tmp_path / "absent.toml"
    assert main(["run", "--config", str(absent)]) == EXIT_USER_ERROR
    assert str(absent) in _one_line_error(capsys.readouterr().err)


@pytest.mark.usefixtures("no_pipeline")
@pytest.mark.parametrize(
    "arguments",
    [["--debug", "run", "--set", "nope=1"], ["run", "--set", "nope=1", "--debug"]],
    ids=["before the command", "after it"],
)
def test_debug_shows_the_traceback_of_a_user_error(arguments: list[str], capsys) -> None:
    assert main(arguments) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert "ConfigError: unknown config key 'nope'" in err
    assert err.strip().splitlines()[-1].startswith("ddcal: error: unknown config key 'nope'")


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("boom in a stage"),
        ValueError("a plain ValueError from deep inside"),
        TypeError("a plain TypeError from deep inside"),
        OSError(28, "No space left on device"),  # no file named: not about the user's paths
    ],
    ids=lambda error: type(error).__name__,
)
def test_an_internal_error_is_a_bug_with_a_traceback(
    error: Exception, tmp_path, monkeypatch, capsys
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(ddcal.cli, "run_experiment", fail)
    assert main(["run", "--quiet", "--out", str(tmp_path)]) == EXIT_BUG
    captured = capsys.readouterr()
    assert captured.err.startswith("Traceback (most recent call last):")
    assert f"{type(error).__name__}: {error}" in captured.err
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("ddcal: this is a bug in ddcal, not in your input: please report it")
    assert "ddcal: error:" not in captured.err
    assert captured.out == ""


@pytest.mark.parametrize(
    "error",
    [
        PermissionError(13, "Permission denied", "/data/predictions.pt"),
        IsADirectoryError(21, "Is a directory", "/data/predictions.pt"),
        OSError(28, "No space left on device", "/data/predictions.pt"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_an_os_error_on_a_named_file_is_the_users(error: OSError, monkeypatch, capsys) -> None:
    def fail(path: object) -> None:
        raise error

    monkeypatch.setattr(ddcal.cli, "load_predictions", fail)
    assert main(["metrics", "/data/predictions.pt"]) == EXIT_USER_ERROR
    err = _one_line_error(capsys.readouterr().err)
    assert f"{error.strerror}: '/data/predictions.pt'" in err


def test_ctrl_c_exits_with_130(monkeypatch, capsys) -> None:
    def interrupt(path: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ddcal.cli, "load_predictions", interrupt)
    assert main(["metrics", "p.pt"]) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "ddcal: interrupted\n"


def test_a_multi_line_message_is_printed_on_one_line(monkeypatch, capsys) -> None:
    def fail(path: object) -> None:
        raise ddcal.cli.InvalidValueError("first line\n  second line")

    monkeypatch.setattr(ddcal.cli, "load_predictions", fail)
    assert main(["metrics", "p.pt"]) == EXIT_USER_ERROR
    assert _one_line_error(capsys.readouterr().err) == "ddcal: error: first line second line\n"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--device", "toaster"], "--device: "),
        (["--device", "meta"], "--device must be cpu, cuda, cuda:N or mps, got 'meta'"),
        (["--out", "no/such/folder/dm.pt"], "cannot write .*folder no/such/folder does not exist"),
    ],
)
def test_distill_checks_the_device_and_output_folder_before_any_work(
    arguments: list[str], message: str, monkeypatch, capsys
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        pytest.fail("the dataset was loaded")

    monkeypatch.setattr(ddcal.cli, "load_dataset", refuse)
    assert main(["distill", "--method", "dm", "--ipc", "1", *arguments]) == EXIT_USER_ERROR
    assert re.search(message, _one_line_error(capsys.readouterr().err))


def test_a_cuda_device_that_is_not_there_is_the_users(monkeypatch, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(ddcal.cli, "load_dataset", lambda *args, **kwargs: pytest.fail("loaded"))
    assert main(["distill", "--method", "dm", "--ipc", "1", "--device", "cuda:3"]) == 2
    err = _one_line_error(capsys.readouterr().err)
    assert "--device cuda:3: there are 1 CUDA device(s) here, cuda:0 to cuda:0" in err


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


# --- ddcal calibrate / ddcal metrics -------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny trained ConvNet (checkpoint and TorchScript), its distilled set, an eval file.

    The "distilled" set is 9 of the network's own training images, so plain TS on it hits
    the lower bound and MTS does not, as with a real distilled set.
    """
    folder = tmp_path_factory.mktemp("cli")
    generator = torch.Generator().manual_seed(1)
    patterns = torch.randn(3, 1, 8, 8, generator=generator)

    def data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % 3
        return 0.5 * patterns[labels] + torch.randn(n, 1, 8, 8, generator=generator), labels

    torch.manual_seed(0)
    model = ConvNet(1, 3, 8, width=8)
    images, labels = data(60)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    model.eval()
    eval_images, eval_labels = data(80)
    paths = {
        "model": save_checkpoint(model, folder / "net.pt"),
        "distilled": DistilledSet(images[:9], labels[:9]).save(folder / "distilled.pt"),
        "eval": folder / "eval.pt",
        "script": folder / "net_script.pt",
        "distilled_6px": DistilledSet(images[:9, :, :6, :6], labels[:9]).save(
            folder / "distilled_6px.pt"
        ),
        "eval_6px": folder / "eval_6px.pt",
    }
    torch.save({"images": eval_images, "labels": eval_labels}, paths["eval"])
    torch.save({"images": eval_images[:4, :, :6, :6], "labels": eval_labels[:4]}, paths["eval_6px"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace is deprecated, and warns on shape checks
        torch.jit.trace(model, eval_images[:2]).save(str(paths["script"]))
    return paths


def _expected_metrics(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict:
    return {
        "accuracy": accuracy(logits, labels),
        "ece": calibration_error(logits, labels, n_bins=n_bins, from_logits=True),
        "mce": calibration_error(logits, labels, n_bins=n_bins, norm="max", from_logits=True),
        "classwise_ece": classwise_calibration_error(
            logits, labels, n_bins=n_bins, from_logits=True
        ),
        "nll": negative_log_likelihood(logits, labels, from_logits=True),
        "brier": brier_score(logits, labels, from_logits=True),
    }


def _table_row(out: str, name: str) -> list[float]:
    row = next(line for line in out.splitlines() if line.split()[:1] == [name])
    return [float(value) for value in row.split()[1:]]


def test_calibrate_fits_mts_and_reports_raw_and_calibrated_metrics(files, tmp_path, capsys) -> None:
    out = tmp_path / "result.json"
    arguments = [
        "calibrate", "--model", str(files["model"]), "--distilled", str(files["distilled"]),
        "--eval-data", str(files["eval"]), "--out", str(out), "--device", "cpu",
        "--mask-ratio", "0.5",
    ]  # fmt: skip
    assert main(arguments) == 0
    printed = capsys.readouterr().out

    model = load_checkpoint(files["model"])
    distilled = load_distilled(files["distilled"])
    scaler = MaskedTemperatureScaler(0.5, num_masks=10, seed=0)
    scaler.fit(model, distilled.images, distilled.labels)
    evaluation = torch.load(files["eval"], weights_only=True)
    logits = predict_logits(model, evaluation["images"])
    raw = _expected_metrics(logits, evaluation["labels"])
    calibrated = _expected_metrics(logits / scaler.temperature_, evaluation["labels"])

    result = json.loads(out.read_text())
    assert result["temperature"] == pytest.approx(scaler.temperature_, rel=1e-9)
    assert result["model_format"] == "ddcal-convnet"
    assert result["num_distilled_images"] == 9
    assert result["metrics"]["raw"] == pytest.approx(raw, rel=1e-9)
    assert result["metrics"]["calibrated"] == pytest.approx(calibrated, rel=1e-9)
    restored = MaskedTemperatureScaler().load_state_dict(result["scaler"])
    assert restored.temperature_ == result["temperature"]
    assert restored.mask_ratio == 0.5

    assert f"temperature {scaler.temperature_:.4f}" in printed
    assert "80 images, 15 bins" in printed
    assert _table_row(printed, "raw") == pytest.approx(list(raw.values()), abs=5e-5)
    assert _table_row(printed, "calibrated") == pytest.approx(list(calibrated.values()), abs=5e-5)
    assert calibrated["accuracy"] == raw["accuracy"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_calibrate_uses_the_label_free_default(files, capsys) -> None:
    arguments = [
        "calibrate", "--model", str(files["model"]), "--distilled", str(files["distilled"]),
        "--device", "cpu",
    ]  # fmt: skip
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    model = load_checkpoint(files["model"])
    distilled = load_distilled(files["distilled"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UninformativeMaskingWarning)
        scaler = MaskedTemperatureScaler().fit(model, distilled.images, distilled.labels)
    assert scaler.fitted_mask_ratio_ is not None
    assert f"(mask ratio auto: {scaler.fitted_mask_ratio_:.3g}," in printed
    assert f"temperature {scaler.temperature_:.4f}" in printed


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_calibrate_takes_a_torchscript_model_and_its_options(files, tmp_path, capsys) -> None:
    out = tmp_path / "script.json"
    arguments = [
        "calibrate", "--model", str(files["script"]), "--distilled", str(files["distilled"]),
        "--mask-ratio", "0.3", "--num-masks", "4", "--seed", "7", "--batch-size", "5",
        "--device", "cpu", "--out", str(out),
    ]  # fmt: skip
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    assert "mask ratio 0.3, 4 masks, seed 7" in printed
    assert "raw" not in printed  # no eval data, no table
    result = json.loads(out.read_text())
    assert result["model_format"] == "torchscript"
    assert result["metrics"] is None
    assert result["eval_data"] is None
    assert result["scaler"]["num_masks"] == 4
    assert result["scaler"]["batch_size"] == 5
    distilled = load_distilled(files["distilled"])
    expected = MaskedTemperatureScaler(0.3, num_masks=4, seed=7).fit(
        load_checkpoint(files["model"]), distilled.images, distilled.labels
    )
    assert result["temperature"] == pytest.approx(expected.temperature_, rel=1e-5)


def test_calibrate_applies_the_distilled_sets_zca_to_the_eval_images(
    files, tmp_path, capsys
) -> None:
    distilled = load_distilled(files["distilled"])
    evaluation = torch.load(files["eval"], weights_only=True)
    zca = ZCA().fit(evaluation["images"])
    whitened = DistilledSet(distilled.images, distilled.labels, meta={"zca": zca.state_dict()})
    path = whitened.save(tmp_path / "zca.pt")
    out = tmp_path / "zca.json"
    arguments = [
        "calibrate", "--model", str(files["model"]), "--distilled", str(path),
        "--eval-data", str(files["eval"]), "--device", "cpu", "--out", str(out), "--n-bins", "10",
    ]  # fmt: skip
    assert main(arguments) == 0
    logits = predict_logits(load_checkpoint(files["model"]), zca(evaluation["images"]))
    expected = _expected_metrics(logits, evaluation["labels"], n_bins=10)
    assert json.loads(out.read_text())["metrics"]["raw"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
def test_calibrate_evaluates_on_a_named_datasets_test_split(
    fashion_mnist, tmp_path, capsys
) -> None:
    torch.manual_seed(0)
    model = save_checkpoint(build_convnet("ConvNetD3", 1, 10, 28, width=8), tmp_path / "net.pt")
    per_class = [
        int(i) for c in range(10) for i in (fashion_mnist.train_labels == c).nonzero()[:2, 0]
    ]
    distilled = DistilledSet(
        fashion_mnist.train_images[per_class], fashion_mnist.train_labels[per_class]
    ).save(tmp_path / "real20.pt")
    arguments = [
        "calibrate", "--model", str(model), "--distilled", str(distilled),
        "--eval-data", "FashionMNIST", "--device", "cpu",
    ]  # fmt: skip
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    assert "fashion-mnist test split: 10000 images" in printed
    logits = predict_logits(load_checkpoint(model), fashion_mnist.test_images)
    expected = _expected_metrics(logits, fashion_mnist.test_labels)
    assert _table_row(printed, "raw") == pytest.approx(list(expected.values()), abs=5e-5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--model": "absent.pt"}, r"model file .*absent\.pt does not exist"),
        ({"--model": "{distilled}"}, r"distilled\.pt is not a ddcal ConvNet checkpoint"),
        ({"--model": "{eval}"}, r"eval\.pt is not a ddcal ConvNet checkpoint"),
        ({"--distilled": "absent.pt"}, r"distilled set .*absent\.pt does not exist"),
        ({"--distilled": "{model}"}, r"net\.pt has an unknown format tag 'ddcal-convnet'"),
        ({"--mask-ratio": "1.5"}, r"mask_ratio must be in \[0, 1\), got 1\.5"),
        ({"--num-masks": "0"}, "num_masks must be >= 1, got 0"),
        ({"--eval-data": "imagenet21k"}, "unknown dataset 'imagenet21k'; known: fashion-mnist"),
        ({"--eval-data": "absent.pt"}, r"eval data file absent\.pt does not exist"),
        ({"--eval-data": "{model}"}, r"net\.pt must hold a dict with tensors 'images'"),
        ({"--out": "no/such/folder/t.json"}, "cannot write .*folder no/such/folder does not exist"),
        ({"--plot": "r.png"}, r"--plot r\.png needs --eval-data"),
        ({"--eval-data": "{eval}", "--plot": "r.jpg"}, r"--plot must end in \.png, got 'r\.jpg'"),
        (
            {"--eval-data": "{eval}", "--plot": "no/such/folder/r.png"},
            "cannot write .*folder no/such/folder does not exist",
        ),
        ({"--device": "toaster"}, "--device: "),
        (
            {"--eval-data": "{eval_6px}"},
            r"eval images must have the shape of the distilled images \(N, 1, 8, 8\), "
            r"got \(4, 1, 6, 6\)",
        ),
        (
            {"--distilled": "{distilled_6px}"},
            r"model .*net\.pt cannot take the distilled images of shape \(N, 1, 6, 6\): "
            r"x must have shape \(N, 1, 8, 8\), got \(1, 1, 6, 6\)",
        ),
        (
            {"--model": "{script}", "--distilled": "{distilled_6px}"},
            r"model .*net_script\.pt cannot take the distilled images of shape \(N, 1, 6, 6\): ",
        ),
    ],
)
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_calibrate_reports_bad_inputs_in_one_line(files, capsys, change, message) -> None:
    options = {
        "--model": str(files["model"]),
        "--distilled": str(files["distilled"]),
        "--device": "cpu",
    }
    options |= {
        key: value.format(**{k: str(v) for k, v in files.items()}) for key, value in change.items()
    }
    assert main(["calibrate", *(item for pair in options.items() for item in pair)]) == 2
    captured = capsys.readouterr()
    assert re.search(message, _one_line_error(captured.err))
    assert captured.out == ""


def test_calibrate_plots_the_eval_data_before_and_after(
    files, tmp_path, monkeypatch, capsys
) -> None:
    pytest.importorskip("matplotlib")
    drawn = []

    def keep(figure: object, path: Path) -> Path:
        drawn.append(figure)
        return save_figure(figure, path)

    monkeypatch.setattr(ddcal.cli.plot, "save_figure", keep)
    out = tmp_path / "plots" / "reliability.png"
    out.parent.mkdir()
    arguments = [
        "calibrate", "--model", str(files["model"]), "--distilled", str(files["distilled"]),
        "--eval-data", str(files["eval"]), "--device", "cpu", "--mask-ratio", "0.5",
        "--n-bins", "10", "--plot", str(out),
    ]  # fmt: skip
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    assert f"saved {out}" in printed
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    (figure,) = drawn
    temperature = re.search(r"temperature (\d+\.\d+)", printed)
    assert temperature is not None
    raw, calibrated = figure.axes
    assert raw.get_title() == "raw"
    assert calibrated.get_title() == f"calibrated (T = {float(temperature.group(1)):.3f})"
    for ax in (raw, calibrated):
        (hist,) = ax.child_axes
        (bars,) = [c for c in hist.containers if c.get_label() == "samples"]
        assert len(bars) == 10
        assert sum(bar.get_height() for bar in bars) == 80  # the eval images


def test_calibrate_refuses_a_plot_without_matplotlib_before_any_work(
    files, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(ddcal.cli, "matplotlib_missing", lambda: True)
    arguments = [
        "calibrate", "--model", str(files["model"]), "--distilled", str(files["distilled"]),
        "--eval-data", str(files["eval"]), "--plot", str(tmp_path / "r.png"),
    ]  # fmt: skip
    assert main(arguments) == EXIT_USER_ERROR
    captured = capsys.readouterr()
    assert "--plot needs matplotlib: pip install 'ddcal[plot]'" in _one_line_error(captured.err)
    assert captured.out == ""


def test_a_full_disk_while_writing_out_is_one_line_naming_the_file(
    files, tmp_path, monkeypatch, capsys
) -> None:
    class FullDisk:
        def write(self, data: bytes) -> None:
            raise OSError(28, "No space left on device")

    @contextlib.contextmanager
    def full_disk(path: object) -> Iterator[FullDisk]:
        yield FullDisk()

    monkeypatch.setattr(ddcal.cli, "atomic_write", full_disk)
    out = tmp_path / "result.json"
    arguments = [
        "calibrate", "--model", str(files["model"]), "--distilled", str(files["distilled"]),
        "--device", "cpu", "--out", str(out), "--mask-ratio", "0.5",
    ]  # fmt: skip
    assert main(arguments) == EXIT_USER_ERROR
    err = _one_line_error(capsys.readouterr().err)
    assert f"No space left on device: '{out}'" in err


def test_calibrate_reports_a_temperature_on_a_bound_as_a_warning(files, capsys) -> None:
    arguments = [
        "calibrate", "--model", str(files["model"]), "--distilled", str(files["distilled"]),
        "--mask-ratio", "0", "--device", "cpu",
    ]  # fmt: skip
    assert main(arguments) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("ddcal: warning: fitted temperature 0.01 is on the lower bound")
    assert "temperature 0.0100" in captured.out


def test_metrics_prints_the_metrics_of_saved_predictions(tmp_path, capsys) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = 3.0 * torch.randn(200, 5, generator=generator)
    labels = torch.randint(0, 5, (200,), generator=generator)
    path = save_predictions(tmp_path / "predictions.pt", logits, labels)
    np.savez(tmp_path / "predictions.npz", logits=logits.numpy(), labels=labels.numpy())

    assert main(["metrics", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "200 samples, 5 classes, 15 bins" in printed
    expected = _expected_metrics(logits, labels)
    for (key, label), line in zip(METRIC_NAMES, printed.splitlines()[1:], strict=True):
        assert line.startswith(label)
        assert float(line.split()[-1]) == pytest.approx(expected[key], abs=5e-5)

    assert main(["metrics", str(tmp_path / "predictions.npz"), "--n-bins", "10", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    header = {"path": str(tmp_path / "predictions.npz"), "num_samples": 200, "num_classes": 5}
    assert {key: result.pop(key) for key in header} == header
    assert result.pop("n_bins") == 10
    assert result == pytest.approx(_expected_metrics(logits, labels, n_bins=10), rel=1e-12)


def test_metrics_reports_bad_inputs_in_one_line(files, tmp_path, capsys) -> None:
    path = save_predictions(tmp_path / "p.pt", torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    cases = [
        (["metrics", str(tmp_path / "absent.pt")], r"absent\.pt does not exist"),
        (["metrics", str(files["distilled"])], "format tag 'ddcal.distilled'"),
        (["metrics", str(files["eval"])], r"eval\.pt must hold 'logits' \(N, C\) and 'labels'"),
        (["metrics", str(path), "--n-bins", "0"], "n_bins must be >= 1, got 0"),
    ]
    for arguments, message in cases:
        assert main(arguments) == 2
        assert re.search(message, _one_line_error(capsys.readouterr().err))
    with pytest.raises(SystemExit):
        main(["metrics", str(path), "--n-bins", "ten"])


def test_calibrate_with_labelled_real_images_uses_plain_ts(files, capsys) -> None:
    arguments = [
        "calibrate", "--model", str(files["model"]), "--distilled", str(files["distilled"]),
        "--labelled", str(files["eval"]), "--device", "cpu",
    ]  # fmt: skip
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    model = load_checkpoint(files["model"])
    evaluation = torch.load(files["eval"], weights_only=True)
    expected = fit_temperature(predict_logits(model, evaluation["images"]), evaluation["labels"])
    assert "method: ts-labelled: 80 labelled real images were given" in printed
    assert f"temperature {expected[0]:.4f}" in printed


def test_calibrate_refuses_a_labelled_file_without_labels(files, tmp_path, capsys) -> None:
    path = tmp_path / "images_only.pt"
    torch.save({"images": torch.rand(4, 1, 28, 28)}, path)
    arguments = [
        "calibrate", "--model", str(files["model"]), "--distilled", str(files["distilled"]),
        "--labelled", str(path), "--device", "cpu",
    ]  # fmt: skip
    assert main(arguments) == EXIT_USER_ERROR
    assert "must hold a dict with tensors ['images', 'labels']" in capsys.readouterr().err
