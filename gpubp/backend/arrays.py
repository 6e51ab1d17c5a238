"""Which device an array lives on, asked in one place (a leaf module: CuPy is imported only for its arrays).

A device array is anything with the CUDA array interface (CuPy, or an emulation of it); everything else is
host data that NumPy reads.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np


def is_device_array(x: Any) -> bool:
    """Whether ``x`` is a GPU array (it has ``__cuda_array_interface__``)."""
    return hasattr(x, "__cuda_array_interface__")


def is_sparse(x: Any) -> bool:
    """Whether ``x`` is a sparse matrix: SciPy's (host) or ``cupyx.scipy.sparse``'s (GPU), told by its class's
    module so that neither library is imported to ask."""
    return type(x).__module__.startswith(("scipy.sparse.", "cupyx.scipy.sparse."))


def array_module(x: Any) -> Any:
    """The array module of ``x``: CuPy for a GPU array, else NumPy (CuPy is never imported for host data)."""
    if is_device_array(x):
        import cupy

        return cupy
    return np


def on_device_of(x: Any) -> contextlib.AbstractContextManager:
    """The device ``x`` lives on as the current one, for work on ``x`` itself (CuPy runs an operation on the
    current device, whatever device its arrays are on); nothing for host data."""
    device = getattr(x, "device", None) if is_device_array(x) else None
    return device if isinstance(device, contextlib.AbstractContextManager) else contextlib.nullcontext()


def to_host(x: Any) -> np.ndarray:
    """``x`` as a NumPy array: a GPU array is copied to the host, anything else read by ``np.asarray``."""
    if is_device_array(x) and hasattr(x, "get"):
        return x.get()
    return np.asarray(x)
