"""The CPU backend: the reference ``Ops`` on NumPy."""

from __future__ import annotations

import numpy as np

from .ops import Ops


class NumpyOps(Ops):
    """Every step on NumPy arrays in host memory; the reference the CUDA backend is tested against."""

    name = "numpy"
    xp = np
    device = "cpu"
