"""Training and evaluation speed of the protocol on CPU, with the reference side by side.

Trains ConvNetD3 on 100 real FashionMNIST images (10 per class) for 20 epochs
in NCHW and channels_last, eager and through torch.compile, with and without
DSA, and measures test-set evaluation throughput. With ``--reference DIR`` (a checkout of
VICO-UoE/DatasetCondensation; nothing of it is part of ddcal) the reference's
own ``epoch()`` loop, as ``evaluate_synset`` runs it, is timed on the same
data and settings in the same process, and the ratios are printed.

    python benchmarks/bench_train.py [--reference /path/to/DatasetCondensation]
"""

from __future__ import annotations

import argparse
import time
import types
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ddcal import PerClassSampler, build_convnet, predict_logits
from ddcal.augment import DSA
from ddcal.data import load_fashion_mnist
from ddcal.train import train_network

EPOCHS = 20
REPEATS = 3  # each timing is the median of this many runs
STRATEGY = "color_crop_cutout_scale_rotate"  # the DSA strategy for 1-channel data (no flip)


def _timed(work: Callable[[], Any], repeats: int = REPEATS) -> float:
    """Median wall time of ``repeats`` runs of ``work``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _ddcal_train_seconds(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    dsa: bool,
    channels_last: bool,
    compile: bool = False,
) -> tuple[float, float]:
    """Median seconds of ``EPOCHS`` epochs, and of the first run (compilation included)."""
    torch.manual_seed(0)
    net = build_convnet("ConvNetD3", 1, 10, 28)
    augment = DSA(STRATEGY) if dsa else None

    def work() -> None:
        train_network(
            net,
            images,
            labels,
            epochs=EPOCHS,
            augment=augment,
            channels_last=channels_last,
            compile=compile,
        )

    first = _timed(work, repeats=1)
    return _timed(work), first


def _ddcal_eval_seconds(test_images: torch.Tensor, *, channels_last: bool) -> float:
    torch.manual_seed(0)
    net = build_convnet("ConvNetD3", 1, 10, 28)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        test_images = test_images.contiguous(memory_format=torch.channels_last)
    return _timed(lambda: predict_logits(net, test_images, batch_size=256))


def _reference_train(
    utils: types.ModuleType, net: torch.nn.Module, dataset: Any, args: Any
) -> None:
    """What the reference's evaluate_synset does per epoch, for ``EPOCHS`` epochs."""
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    criterion = torch.nn.CrossEntropyLoss()
    loader = torch.utils.data.DataLoader(dataset, batch_size=256, shuffle=True)
    for _ in range(EPOCHS):
        utils.epoch("train", loader, net, optimizer, criterion, args, aug=True)


def _reference_eval(
    utils: types.ModuleType, net: torch.nn.Module, test_loader: Any, args: Any
) -> None:
    criterion = torch.nn.CrossEntropyLoss()
    utils.epoch("test", test_loader, net, None, criterion, args, aug=False)


def _reference_seconds(
    folder: Path,
    images: torch.Tensor,
    labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
) -> dict[str, float]:
    from _reference import load_dc_reference

    utils, networks = load_dc_reference(folder)
    dataset = utils.TensorDataset(images, labels)
    test_loader = torch.utils.data.DataLoader(
        utils.TensorDataset(test_images, test_labels), batch_size=256, shuffle=False
    )
    seconds = {}
    for dsa in (False, True):
        args = types.SimpleNamespace(
            device="cpu",
            dsa=dsa,
            dsa_strategy=STRATEGY,
            dsa_param=utils.ParamDiffAug(),
            dc_aug_param=None,
        )
        torch.manual_seed(0)
        net = networks.ConvNet(1, 10, 128, 3, "relu", "instancenorm", "avgpooling", (28, 28))
        seconds[f"train dsa={dsa}"] = _timed(partial(_reference_train, utils, net, dataset, args))
        if not dsa:
            seconds["eval"] = _timed(partial(_reference_eval, utils, net, test_loader, args))
    return seconds


def _sgemm_gflops(size: int = 2048) -> float:
    """This machine's float32 matrix-multiply rate (GFLOP/s): the ceiling a conv net meets."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds = _timed(lambda: torch.mm(a, b))
    return 2 * size**3 / seconds / 1e9


def _epoch_gflop(images: torch.Tensor, labels: torch.Tensor) -> float:
    """Floating-point work of one training epoch (forward and backward), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    net = build_convnet("ConvNetD3", 1, 10, 28)
    with FlopCounterMode(display=False) as counter:
        loss = torch.nn.functional.cross_entropy(net(images), labels)
        loss.backward()
    return counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, help="a VICO-UoE/DatasetCondensation checkout")
    args = parser.parse_args()

    data = load_fashion_mnist()
    chosen = PerClassSampler(data.train_labels, per_class=10, seed=0).indices()
    images, labels = data.train_images[chosen], data.train_labels[chosen]
    n_test = data.test_images.shape[0]
    print(
        f"ConvNetD3 on FashionMNIST, 100 images (IPC 10), {EPOCHS} epochs, batch 256, CPU, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {REPEATS} runs"
    )
    reference = (
        _reference_seconds(args.reference, images, labels, data.test_images, data.test_labels)
        if args.reference
        else None
    )

    sgemm = _sgemm_gflops()
    epoch_gflop = _epoch_gflop(images, labels)
    print(
        f"sgemm (2048 x 2048, float32): {sgemm:.0f} GFLOP/s; one training epoch: "
        f"{epoch_gflop:.1f} GFLOP (forward + backward, torch's FlopCounterMode)"
    )
    print(
        f"\n{'training':<42} {'epochs/s':>9} {'vs reference':>13} {'first run s':>12} "
        f"{'of sgemm':>9}"
    )
    for dsa in (False, True):
        for compile in (False, True):
            for channels_last in (False, True):
                seconds, first = _ddcal_train_seconds(
                    images, labels, dsa=dsa, channels_last=channels_last, compile=compile
                )
                layout = "channels_last" if channels_last else "NCHW"
                name = f"ddcal {layout}{' compiled' if compile else ''}{' + DSA' if dsa else ''}"
                ratio = ""
                if reference is not None:
                    ratio = f"{reference[f'train dsa={dsa}'] / seconds:.2f}x"
                share = EPOCHS * epoch_gflop / seconds / sgemm
                print(
                    f"{name:<42} {EPOCHS / seconds:>9.2f} {ratio:>13} {first:>12.1f} {share:>9.0%}"
                )
        if reference is not None:
            ref_name = f"reference epoch(){' + DiffAugment' if dsa else ''}"
            print(f"{ref_name:<42} {EPOCHS / reference[f'train dsa={dsa}']:>9.2f} {'1.00x':>13}")

    print(f"\n{'test-set evaluation (10000 images)':<34} {'images/s':>9} {'vs reference':>13}")
    for channels_last in (False, True):
        seconds = _ddcal_eval_seconds(data.test_images, channels_last=channels_last)
        ratio = f"{reference['eval'] / seconds:.2f}x" if reference is not None else ""
        name = f"ddcal predict_logits {'channels_last' if channels_last else 'NCHW'}"
        print(f"{name:<34} {n_test / seconds:>9.0f} {ratio:>13}")
    if reference is not None:
        print(f"{'reference epoch(test)':<34} {n_test / reference['eval']:>9.0f} {'1.00x':>13}")
    print(
        "\nratios: reference time / ddcal time (above 1: ddcal faster); epochs/s leave out "
        "the first run, which compiles"
    )


if __name__ == "__main__":
    main()
