"""Loading the public reference implementations for side-by-side timings.

Nothing of them is part of ddcal: the benchmarks take the folder of a checkout
(VICO-UoE/DatasetCondensation for ``utils.py``/``networks.py``,
GeorgeCazenavette/mtt-distillation for ``reparam_module.py``) and import it.
"""

from __future__ import annotations

import importlib.util
import sys
import types
import warnings
from pathlib import Path

import torch


def load_dc_reference(folder: Path) -> tuple[types.ModuleType, types.ModuleType]:
    """The reference's ``utils`` and ``networks`` modules.

    torchvision, which the reference uses in its dataset loaders only, is stubbed.
    On 1-channel images the reference's ``DiffAugment`` can return strides that
    torch >= 2 reads as channels_last, and its ConvNet's ``.view()`` then fails;
    one copy back to NCHW strides lets it run unchanged otherwise.
    """
    stub = types.ModuleType("torchvision")
    stub.datasets = types.SimpleNamespace()  # type: ignore[attr-defined]
    stub.transforms = types.SimpleNamespace()  # type: ignore[attr-defined]
    sys.modules.setdefault("torchvision", stub)
    sys.path.insert(0, str(folder))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import networks  # type: ignore[import-not-found]
        import utils  # type: ignore[import-not-found]
    if not getattr(utils, "_ddcal_patched", False):
        diff_augment = utils.DiffAugment
        utils.DiffAugment = lambda *a, **k: diff_augment(*a, **k).clone(
            memory_format=torch.contiguous_format
        )
        utils._ddcal_patched = True
    return utils, networks


def load_reparam_module(folder: Path) -> type[torch.nn.Module]:
    """MTT's ``ReparamModule`` (the flat-parameter wrapper its student runs through)."""
    path = folder / "reparam_module.py"
    spec = importlib.util.spec_from_file_location("mtt_reparam_module", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"no reparam_module.py in {folder}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reparam: type[torch.nn.Module] = module.ReparamModule
    return reparam
