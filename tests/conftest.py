"""Shared fixtures."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

from ddcal.data import DatasetNotFoundError, ImageClassificationData, load_fashion_mnist

#: ``DDCAL_FUZZ=deep`` runs the fuzz suite (tests/test_fuzz_*.py) with many more cases.
settings.register_profile(
    "ci", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "deep", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("deep" if os.environ.get("DDCAL_FUZZ") == "deep" else "ci")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that reads the real dataset (directly or through a fixture) is ``slow``.

    Derived from the fixtures a test uses, so a new real-data test cannot miss the
    mark; ``make test`` runs them all, ``pytest -m "not slow"`` the quick rest.
    """
    for item in items:
        if "fashion_mnist" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def fashion_mnist() -> ImageClassificationData:
    """The real FashionMNIST, normalised, loaded once per session; skips where absent."""
    try:
        return load_fashion_mnist()
    except DatasetNotFoundError as exc:
        places = ", ".join(str(folder) for folder in exc.searched)
        pytest.skip(
            f"FashionMNIST files not found in {places}; "
            "install with: apt-get install dataset-fashion-mnist"
        )


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for a module of tiny networks, restored afterwards.

    Tiny networks gain nothing from threads, and when other processes share the
    2 cores, two OpenMP threads per process wait on each other (many times slower).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def quick_start() -> str:
    """The Python block of the README's "Quick start" section, as a user would paste it."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    _, _, section = readme.partition("\n## Quick start\n")
    block = re.search(r"^```python\n(.*?)^```$", section, flags=re.DOTALL | re.MULTILINE)
    assert block is not None, "README.md has no ```python block under '## Quick start'"
    return block.group(1)
