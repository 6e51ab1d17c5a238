"""Shared test set-up: GPU tests skip cleanly where no usable GPU exists."""

from __future__ import annotations

import numpy as np
import pytest

from gpubp.backend import cuda_unavailable_reason


def pytest_collection_modifyitems(config, items):
    reason = cuda_unavailable_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"no usable GPU: {reason}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
