"""The central promise on real data: MTS fixes what TS on the training images breaks.

A narrow ConvNet trained on 10 real FashionMNIST images per class (the same
code paths as the demo, smaller sizes) over-fits its training images, so TS
fitted on them drives T to its lower bound, while MTS fitted on masked copies
of the same images gives a higher T the higher the mask ratio. The test-set
numbers are only measured here, never used to choose anything.
"""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch
from torch import nn

from ddcal import (
    MaskedTemperatureScaler,
    PerClassSampler,
    TemperatureBoundWarning,
    TemperatureScaler,
    accuracy,
    build_convnet,
    calibration_error,
    predict_logits,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def overfit_network(fashion_mnist):
    data = fashion_mnist
    chosen = PerClassSampler(data.train_labels, per_class=10, seed=0).indices()
    images, labels = data.train_images[chosen], data.train_labels[chosen]
    torch.manual_seed(0)
    net = build_convnet("ConvNetD3", 1, 10, 28, width=32)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    for _ in range(150):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(images), labels).backward()
        optimizer.step()
    net.eval()
    test = PerClassSampler(data.test_labels, per_class=200, seed=0).indices()
    return net, images, labels, data.test_images[test], data.test_labels[test]


def test_mts_raises_the_temperature_that_ts_on_training_images_lowers(overfit_network) -> None:
    net, images, labels, test_images, test_labels = overfit_network
    with pytest.warns(TemperatureBoundWarning, match="lower bound"):
        ts = TemperatureScaler().fit(net, images, labels)
    assert ts.temperature_ == 0.01
    temperatures = [
        MaskedTemperatureScaler(ratio, seed=0).fit(net, images, labels).temperature_
        for ratio in (0.3, 0.5, 0.8)
    ]
    assert ts.temperature_ < temperatures[0] < temperatures[1] < temperatures[2]
    assert temperatures[2] > 1.0

    test_logits = predict_logits(net, test_images)
    assert accuracy(test_logits, test_labels) > 0.6

    def test_ece(temperature: float) -> float:
        return calibration_error(test_logits / temperature, test_labels, from_logits=True)

    raw, mts_05, mts_08 = test_ece(1.0), test_ece(temperatures[1]), test_ece(temperatures[2])
    assert test_ece(ts.temperature_) > mts_05 > mts_08
    assert mts_08 < raw


def test_quickstart_example_runs_end_to_end(fashion_mnist, capsys) -> None:
    main = runpy.run_path(str(EXAMPLES / "quickstart.py"))["main"]
    rows = main(
        [
            "--ipc",
            "2",
            "--epochs",
            "4",
            "--oracle-per-class",
            "5",
            "--ratios",
            "0.5",
            "--width",
            "8",
        ]
    )
    methods = [row["method"] for row in rows]
    assert methods == [
        "Raw",
        "TS on the training images",
        "TS on a 10% hold-out (net on 90%)",
        "MTS r=0.5",
        "Mixup",
        "Label smoothing",
        "Focal loss",
        "Oracle: TS on real held-out",
    ]
    assert all(0.0 <= row["ece"] <= 100.0 for row in rows)
    out = capsys.readouterr().out
    assert "| MTS r=0.5" in out
