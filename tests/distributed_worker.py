"""One job of tests/test_distributed.py, run alone or under ``torchrun``: ``worker.py JOB OUT``.

Process 0 saves what the job produced to the file ``OUT`` (``torch.save``);
the test compares a 2-process run with a 1-process one. Every process also
reports a digest of its own result, so the test sees that they agree.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

from ddcal import CalibrationMeter, distributed
from ddcal.data import load_fashion_mnist
from ddcal.distill import get_distiller, train_experts
from ddcal.distill.dm import DMStep
from ddcal.pipeline.cache import tensor_digest


def _real_images(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_fashion_mnist()
    images, labels = data.train_images, data.train_labels
    chosen = torch.cat([torch.nonzero(labels == c)[:per_class, 0] for c in range(10)])
    return images[chosen], labels[chosen]


def _distil(method: str, **options: object) -> dict[str, object]:
    images, labels = _real_images(40)
    distiller = get_distiller(method, ipc=2, progress=False, seed=3, **options)  # type: ignore[arg-type]
    result = distiller.distill(images, labels)
    return {"images": result.images, "losses": torch.as_tensor(result.meta["loss_history"])}


def _experts() -> dict[str, object]:
    images, labels = _real_images(20)
    settings = {"num_experts": 3, "epochs": 2, "width": 16, "seed": 5, "progress": False}
    in_memory = train_experts(images, labels, **settings)  # type: ignore[arg-type]
    folder = os.environ["DDCAL_TEST_EXPERTS"]
    sharded = train_experts(images, labels, out_dir=folder, **settings)  # type: ignore[arg-type]
    return {
        "memory": torch.stack([in_memory[i] for i in range(len(in_memory))]),
        "shards": torch.stack([sharded[i] for i in range(len(sharded))]),
    }


def _mtt() -> dict[str, object]:
    images, labels = _real_images(20)
    experts = train_experts(images, labels, num_experts=2, epochs=2, width=16, progress=False)
    options = {"syn_steps": 3, "expert_epochs": 1, "max_start_epoch": 1, "batch_syn": 7}
    return _distil("mtt", iterations=2, width=16, experts=experts, mdt_ratio=0.3, **options)


def _meter() -> dict[str, object]:
    generator = torch.Generator().manual_seed(11)
    logits = torch.randn(1003, 7, generator=generator, dtype=torch.float64) * 3
    labels = torch.randint(7, (1003,), generator=generator)
    meter = CalibrationMeter(n_bins=12, from_logits=True)
    mine = list(distributed.owned(len(labels)))
    meter.update(logits[mine], labels[mine])
    return {"metrics": meter.all_reduce().compute(), "own_count": len(mine)}


def _torchmetrics() -> dict[str, object]:
    """The torchmetrics CalibrationError of each norm on this process's rows, synced on compute."""
    from ddcal.integrations.torchmetrics import CalibrationError

    generator = torch.Generator().manual_seed(11)
    logits = torch.randn(1003, 7, generator=generator, dtype=torch.float64) * 3
    labels = torch.randint(7, (1003,), generator=generator)
    mine = torch.tensor(list(distributed.owned(len(labels))))
    values = []
    for norm in ("l1", "l2", "max"):
        metric = CalibrationError(n_bins=12, norm=norm, from_logits=True)
        for rows in torch.split(mine, 100):
            metric.update(logits[rows], labels[rows])
        values.append(metric.compute())
    return {"values": torch.stack(values), "own_count": len(mine)}


def _dies() -> dict[str, object]:
    """DM in which process 1 is killed (SIGKILL) during its second iteration."""
    original = DMStep.step

    def step(self: DMStep, iteration: int, *args: object) -> float:
        if iteration == 1 and distributed.rank() == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, iteration, *args)  # type: ignore[arg-type]

    DMStep.step = step  # type: ignore[method-assign]
    return _distil("dm", iterations=50, batch_real=16, width=16)


def _fails() -> dict[str, object]:
    """An error on process 1 inside ``all_or_nothing``, then one on process 0 inside ``on_main``:
    what each process sees (every process survives to report it)."""
    seen: dict[str, object] = {}
    try:
        with distributed.all_or_nothing("the block"):
            if distributed.rank() == 1:
                raise ValueError("planted on 1")
    except (ValueError, distributed.RankFailedError) as error:
        seen["block"] = f"{type(error).__name__}: {error}"

    def planted() -> int:
        raise KeyError("planted on 0")

    try:
        distributed.on_main(planted, "the main part")
    except (KeyError, distributed.RankFailedError) as error:
        seen["main"] = f"{type(error).__name__}: {error}"
    return {"seen": distributed.gather_objects(seen)}


JOBS = {
    "dm": lambda: _distil("dm", iterations=3, batch_real=16, mdt_ratio=0.5),
    "dc": lambda: _distil("dc", iterations=1, outer_loop=2, inner_loop=1, batch_real=16, width=32),
    "dsa": lambda: _distil(
        "dsa", iterations=1, outer_loop=2, inner_loop=1, batch_real=16, width=32, mdt_ratio=0.3
    ),
    "mtt": _mtt,
    "experts": _experts,
    "meter": _meter,
    "torchmetrics": _torchmetrics,
    "dies": _dies,
    "fails": _fails,
}


def main() -> None:
    job, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    distributed.init_from_environment()
    result = JOBS[job]()
    tensors = [value for value in result.values() if isinstance(value, torch.Tensor)]
    result["digests"] = distributed.gather_objects(tensor_digest(*tensors))
    result["world"] = distributed.world_size()
    if distributed.is_main():
        torch.save(result, out)
    distributed.leave()
    survivors = _gloo_threads()
    if survivors:
        sys.exit(f"the process group's threads outlived leave(): {survivors}")


def _gloo_threads() -> list[str]:
    """The names of this process's gloo threads (Linux: ``/proc/self/task``; elsewhere none)."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return []
    names = [(task / "comm").read_text().strip() for task in tasks.iterdir()]
    return [name for name in names if "gloo" in name]


if __name__ == "__main__":
    main()
