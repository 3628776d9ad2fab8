"""Shared fixtures."""

from __future__ import annotations

import pytest

from ddcal.data import DatasetNotFoundError, ImageClassificationData, load_fashion_mnist


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
