"""Seconds per distillation iteration of each backbone on FashionMNIST IPC 10.

Full-width ConvNetD3 and the reference options of each method; one warm-up
iteration, then ``--iterations`` timed. DC and DSA run the reference loops for
IPC 10 (10 outer x 50 inner steps, minutes per iteration on a CPU) unless
``--dc-loops OUTER INNER`` says otherwise. MTT runs on stand-in expert
trajectories (the time per iteration does not depend on what they hold).

With ``--reference-dc`` (a VICO-UoE/DatasetCondensation checkout) and
``--reference-mtt`` (a GeorgeCazenavette/mtt-distillation checkout) the
references' own iteration loops, as their ``main.py``/``main_DM.py``/
``distill.py`` run them with their own network, ``DiffAugment``, ``match_loss``,
``epoch`` and ``ReparamModule``, are timed on the same data, settings and device
in the same process, and the ratios are printed. Nothing of them is part of ddcal.
DM is also timed with ``compile=True`` (its warm-up iteration compiles).

    python benchmarks/bench_distill.py [--iterations 3] [--methods dm dc dsa mtt]
        [--device cpu] [--dc-loops 10 50] [--reference-dc DIR] [--reference-mtt DIR]
"""

from __future__ import annotations

import argparse
import copy
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ddcal.data import load_fashion_mnist
from ddcal.distill import DISTILLERS, get_distiller
from ddcal.distill.experts import flatten_parameters
from ddcal.models import build_convnet

IPC = 10
NUM_CLASSES = 10
STRATEGY = "color_crop_cutout_flip_scale_rotate"  # every method's reference default
MTT_OPTIONS = {"syn_steps": 30, "expert_epochs": 2, "max_start_epoch": 20}
NUM_STAND_IN_EXPERTS = 2

sync: Callable[[], None] = lambda: None  # noqa: E731


def _seconds_per_iteration(run: Callable[[int], None], iterations: int) -> float:
    run(1)
    sync()
    start = time.perf_counter()
    run(iterations)
    sync()
    return (time.perf_counter() - start) / iterations


def stand_in_trajectories(image_shape: tuple[int, int, int]) -> list[torch.Tensor]:
    """``(S, P)`` random walks from a ConvNetD3 initialisation, one per expert."""
    generator = torch.Generator().manual_seed(0)
    snapshots = MTT_OPTIONS["max_start_epoch"] + MTT_OPTIONS["expert_epochs"] + 1
    trajectories = []
    for _ in range(NUM_STAND_IN_EXPERTS):
        start = flatten_parameters(
            build_convnet("ConvNetD3", image_shape[0], NUM_CLASSES, image_shape[1:])
        )
        steps = 1e-3 * torch.randn((snapshots, start.numel()), generator=generator)
        trajectories.append(start + steps.cumsum(0))
    return trajectories


def _ddcal_runner(
    method: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    options: dict[str, Any],
) -> Callable[[int], None]:
    def run(iterations: int) -> None:
        distiller = get_distiller(
            method, ipc=IPC, iterations=iterations, progress=False, device=device, **options
        )
        distiller.distill(images, labels)

    return run


class _Reference:
    """The references' iteration loops on the same data, device and settings."""

    def __init__(
        self,
        dc_folder: Path,
        mtt_folder: Path | None,
        images: torch.Tensor,
        labels: torch.Tensor,
        device: torch.device,
        dc_loops: tuple[int, int],
    ) -> None:
        from _reference import load_dc_reference, load_reparam_module

        self.utils, self.networks = load_dc_reference(dc_folder)
        self.reparam = None if mtt_folder is None else load_reparam_module(mtt_folder)
        self.images = images.to(device)
        self.indices_class = [np.flatnonzero(labels.numpy() == c) for c in range(NUM_CLASSES)]
        self.device = device
        self.outer_loop, self.inner_loop = dc_loops
        self.channel, self.im_size = images.shape[1], tuple(images.shape[2:])
        self.args = types.SimpleNamespace(
            device=str(device),
            dsa=True,
            dsa_strategy=STRATEGY,
            dsa_param=self.utils.ParamDiffAug(),
            dis_metric="ours",
            dc_aug_param=None,
        )
        self.rng = np.random.default_rng(0)
        torch.manual_seed(0)
        self.initial = torch.cat([self.get_images(c, IPC) for c in range(NUM_CLASSES)])
        self.syn_labels = torch.arange(NUM_CLASSES, device=device).repeat_interleave(IPC)

    def get_images(self, c: int, n: int) -> torch.Tensor:
        return self.images[self.rng.permutation(self.indices_class[c])[:n]]

    def network(self) -> torch.nn.Module:
        net: torch.nn.Module = self.networks.ConvNet(
            self.channel, NUM_CLASSES, 128, 3, "relu", "instancenorm", "avgpooling", self.im_size
        )
        return net.to(self.device)

    def dm(self, iterations: int) -> None:
        """``main_DM.py``'s loop for a ConvNet (no BatchNorm)."""
        image_syn = self.initial.clone().requires_grad_(True)
        optimizer = torch.optim.SGD([image_syn], lr=1.0, momentum=0.5)
        for _ in range(iterations):
            net = self.network()
            net.train()
            for param in net.parameters():
                param.requires_grad = False
            loss = torch.tensor(0.0).to(self.device)
            for c in range(NUM_CLASSES):
                img_real = self.get_images(c, 256)
                img_syn = image_syn[c * IPC : (c + 1) * IPC]
                seed = int(time.time() * 1000) % 100000
                img_real = self.utils.DiffAugment(
                    img_real, STRATEGY, seed=seed, param=self.args.dsa_param
                )
                img_syn = self.utils.DiffAugment(
                    img_syn, STRATEGY, seed=seed, param=self.args.dsa_param
                )
                output_real = net.embed(img_real).detach()
                output_syn = net.embed(img_syn)
                loss += torch.sum((output_real.mean(0) - output_syn.mean(0)) ** 2)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    def dc(self, iterations: int, *, dsa: bool) -> None:
        """``main.py``'s loop (DC, or DSA with ``dsa``) for a ConvNet (no BatchNorm)."""
        args = copy.copy(self.args)
        args.dsa = dsa
        image_syn = self.initial.clone().requires_grad_(True)
        optimizer_img = torch.optim.SGD([image_syn], lr=0.1, momentum=0.5)
        criterion = torch.nn.CrossEntropyLoss().to(self.device)
        for _ in range(iterations):
            net = self.network()
            net.train()
            net_parameters = list(net.parameters())
            optimizer_net = torch.optim.SGD(net.parameters(), lr=0.01)
            for ol in range(self.outer_loop):
                loss = torch.tensor(0.0).to(self.device)
                for c in range(NUM_CLASSES):
                    img_real = self.get_images(c, 256)
                    lab_real = torch.full((img_real.shape[0],), c, device=self.device)
                    img_syn = image_syn[c * IPC : (c + 1) * IPC]
                    lab_syn = torch.full((IPC,), c, device=self.device)
                    if dsa:
                        seed = int(time.time() * 1000) % 100000
                        img_real = self.utils.DiffAugment(
                            img_real, STRATEGY, seed=seed, param=args.dsa_param
                        )
                        img_syn = self.utils.DiffAugment(
                            img_syn, STRATEGY, seed=seed, param=args.dsa_param
                        )
                    loss_real = criterion(net(img_real), lab_real)
                    gw_real = [
                        g.detach().clone() for g in torch.autograd.grad(loss_real, net_parameters)
                    ]
                    loss_syn = criterion(net(img_syn), lab_syn)
                    gw_syn = torch.autograd.grad(loss_syn, net_parameters, create_graph=True)
                    loss += self.utils.match_loss(gw_syn, gw_real, args)
                optimizer_img.zero_grad()
                loss.backward()
                optimizer_img.step()
                if ol == self.outer_loop - 1:
                    break
                train_set = self.utils.TensorDataset(
                    copy.deepcopy(image_syn.detach()), copy.deepcopy(self.syn_labels)
                )
                loader = torch.utils.data.DataLoader(train_set, batch_size=256, shuffle=True)
                for _ in range(self.inner_loop):
                    self.utils.epoch("train", loader, net, optimizer_net, criterion, args, aug=dsa)

    def mtt(self, iterations: int, buffer: list[list[torch.Tensor]]) -> None:
        """``distill.py``'s loop: buffer of per-epoch parameter lists on the CPU."""
        assert self.reparam is not None
        image_syn = self.initial.clone().requires_grad_(True)
        syn_lr = torch.tensor(0.01).to(self.device).requires_grad_(True)
        optimizer_img = torch.optim.SGD([image_syn], lr=1000.0, momentum=0.5)
        optimizer_lr = torch.optim.SGD([syn_lr], lr=1e-5, momentum=0.5)
        criterion = torch.nn.CrossEntropyLoss().to(self.device)
        for _ in range(iterations):
            student_net = self.reparam(self.network())
            student_net.train()
            num_params = sum(int(np.prod(p.size())) for p in student_net.parameters())
            trajectory = buffer[self.rng.integers(len(buffer))]
            start_epoch = int(self.rng.integers(MTT_OPTIONS["max_start_epoch"]))
            starting = torch.cat([p.to(self.device).reshape(-1) for p in trajectory[start_epoch]])
            target = trajectory[start_epoch + MTT_OPTIONS["expert_epochs"]]
            target_params = torch.cat([p.to(self.device).reshape(-1) for p in target])
            student_params = [starting.clone().requires_grad_(True)]
            chunks: list[torch.Tensor] = []
            for _ in range(MTT_OPTIONS["syn_steps"]):
                if not chunks:
                    chunks = list(torch.split(torch.randperm(len(image_syn)), len(image_syn)))
                these = chunks.pop()
                x = self.utils.DiffAugment(image_syn[these], STRATEGY, param=self.args.dsa_param)
                output = student_net(x, flat_param=student_params[-1])
                ce_loss = criterion(output, self.syn_labels[these])
                grad = torch.autograd.grad(ce_loss, student_params[-1], create_graph=True)[0]
                student_params.append(student_params[-1] - syn_lr * grad)
            param_loss = F.mse_loss(student_params[-1], target_params, reduction="sum") / num_params
            param_dist = F.mse_loss(starting, target_params, reduction="sum") / num_params
            grand_loss = param_loss / param_dist
            optimizer_img.zero_grad()
            optimizer_lr.zero_grad()
            grand_loss.backward()
            optimizer_img.step()
            optimizer_lr.step()


def _reference_buffer(trajectories: list[torch.Tensor]) -> list[list[list[torch.Tensor]]]:
    """The stand-in trajectories in the reference's buffer layout (lists of tensors)."""
    shapes = [p.shape for p in build_convnet("ConvNetD3", 1, NUM_CLASSES, (28, 28)).parameters()]
    sizes = [int(np.prod(s)) for s in shapes]

    def as_list(row: torch.Tensor) -> list[torch.Tensor]:
        return [t.view(s).clone() for t, s in zip(row.split(sizes), shapes, strict=True)]

    return [[as_list(row) for row in trajectory] for trajectory in trajectories]


def main() -> None:
    global sync
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=sorted(DISTILLERS), choices=DISTILLERS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dc-loops", nargs=2, type=int, metavar=("OUTER", "INNER"))
    parser.add_argument("--reference-dc", type=Path, help="a VICO-UoE/DatasetCondensation checkout")
    parser.add_argument("--reference-mtt", type=Path, help="a mtt-distillation checkout")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        sync = torch.cuda.synchronize

    data = load_fashion_mnist()
    images, labels = data.train_images, data.train_labels
    dc_loops = tuple(args.dc_loops) if args.dc_loops else (10, 50)
    trajectories = stand_in_trajectories(tuple(images.shape[1:]))
    options: dict[str, dict[str, Any]] = {
        "dm": {},
        "dc": {"outer_loop": dc_loops[0], "inner_loop": dc_loops[1]},
        "dsa": {"outer_loop": dc_loops[0], "inner_loop": dc_loops[1]},
        "mtt": {**MTT_OPTIONS, "experts": trajectories},
    }
    reference = None
    if args.reference_dc is not None:
        reference = _Reference(
            args.reference_dc, args.reference_mtt, images, labels, device, dc_loops
        )
    reference_runs: dict[str, Callable[[int], None]] = {}
    if reference is not None:
        reference_runs = {
            "dm": reference.dm,
            "dc": lambda n: reference.dc(n, dsa=False),
            "dsa": lambda n: reference.dc(n, dsa=True),
        }
        if reference.reparam is not None:
            buffer = _reference_buffer(trajectories)
            reference_runs["mtt"] = lambda n: reference.mtt(n, buffer)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"FashionMNIST IPC {IPC}, ConvNetD3, {where}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {args.iterations} iterations after one warm-up; "
        f"DC/DSA loops {dc_loops[0]} x {dc_loops[1]}"
    )
    print(f"{'method':<14} {'ddcal s/it':>11} {'reference s/it':>15} {'ratio':>7}")
    for method in args.methods:
        variants = [(method, options[method])]
        if DISTILLERS[method].compiles:
            variants.append((f"{method} compiled", {**options[method], "compile": True}))
        theirs = None
        if method in reference_runs:
            theirs = _seconds_per_iteration(reference_runs[method], args.iterations)
        for name, settings in variants:
            ours = _seconds_per_iteration(
                _ddcal_runner(method, images, labels, device, settings), args.iterations
            )
            row = f"{name:<14} {ours:>11.3f}"
            if theirs is not None:
                row += f" {theirs:>15.3f} {theirs / ours:>6.2f}x"
            print(row, flush=True)
    if reference_runs:
        print("ratio: reference time / ddcal time (above 1: ddcal faster)")


if __name__ == "__main__":
    main()
