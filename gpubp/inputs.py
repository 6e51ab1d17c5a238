"""Checking what users pass in: shapes, dtypes, NaN/inf, labels; a clear ValueError for each problem.

Nothing here writes into the caller's arrays: inputs are read, and converted copies go to the device.
"""

from __future__ import annotations

import contextlib
import numbers
import threading
from typing import Any, Iterator

import numpy as np

from .backend import Ops, array_module, is_device_array, to_host
from .backend.arrays import is_sparse

#: a NumPy array from a NumPy, CuPy or array-like input (copies device arrays to the host): gpubp.to_numpy
to_numpy = to_host


#: ids of the arrays whose NaN/inf check the caller has done, inside ``finite_checked`` (per thread)
_checked = threading.local()


@contextlib.contextmanager
def finite_checked(*arrays: Any) -> Iterator[None]:
    """Inside the block, ``check_inputs`` takes these very arrays (by identity) as free of NaN and ±inf,
    because the caller has just checked them (gpubp.sklearn, after scikit-learn's check with its messages):
    one pass less over the data set per ``fit``."""
    previous = getattr(_checked, "ids", frozenset())
    _checked.ids = previous | {id(a) for a in arrays}
    try:
        yield
    finally:
        _checked.ids = previous


def _all_finite(arr: Any, ops: Ops) -> bool:
    """Whether no element of ``arr`` (host or device) is NaN or ±inf: a sum is finite when every element
    is (NaN and inf propagate), so only a sum that overflows needs the elementwise check."""
    xp = array_module(arr)
    with np.errstate(over="ignore", invalid="ignore"), ops.activate():
        return bool(xp.isfinite(arr.sum())) or bool(xp.isfinite(arr).all())


def _is_device_array(x: Any, ops: Ops) -> bool:
    """Whether ``x`` is a GPU array that ``ops`` (a GPU backend) takes as it is; on a CPU backend every
    input is host data."""
    return not ops.on_host and is_device_array(x)


def _host_or_device(x: Any, ops: Ops, what: str) -> Any:
    """``x`` as a host array, or as a device array on ``ops``'s device (copied there from another GPU,
    so that the checks below run where the data will be used)."""
    if _is_device_array(x, ops):
        with ops.activate():
            return ops.asarray(x)
    try:
        arr = to_numpy(x)
    except Exception as exc:
        raise ValueError(f"{what} must be an array; could not convert {type(x).__name__}: {exc}") from exc
    return arr


def check_inputs(X: Any, width: int, ops: Ops, dtype: np.dtype, what: str = "X") -> tuple[Any, bool]:
    """X as a (batch, width) array of ``dtype`` on the device, and whether X was one 1-D sample. A sparse X
    (SciPy's, any format, or cupyx's) becomes a CSR matrix on the device (``Ops.sparse_rows``), never dense."""
    if is_sparse(X):
        return _check_sparse(X, width, ops, dtype, what), False
    arr = _host_or_device(X, ops, what)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{what} must hold numbers; got dtype {arr.dtype}")
    single = arr.ndim == 1
    if single:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != width:
        raise ValueError(f"{what} must have shape (batch, {width}) (or ({width},) for one sample); "
                         f"got {tuple(to_shape(X))}")
    vouched = id(arr) in getattr(_checked, "ids", ())
    if arr.dtype.kind == "f" and not vouched and not _all_finite(arr, ops):
        raise ValueError(f"{what} contains NaN or infinite values")
    return ops.asarray(arr, dtype=dtype), single


def _check_sparse(X: Any, width: int, ops: Ops, dtype: np.dtype, what: str) -> Any:
    """A sparse X checked as a dense one is (numbers, (batch, width), finite: the stored values of the CSR
    matrix in ``dtype``) and as that CSR matrix on the device."""
    if X.dtype.kind not in "biuf":
        raise ValueError(f"{what} must hold numbers; got dtype {X.dtype}")
    if len(X.shape) != 2 or X.shape[1] != width:
        raise ValueError(f"{what} must have shape (batch, {width}); got a sparse matrix of shape {X.shape}")
    csr = ops.sparse_rows(X, dtype)
    if id(X) not in getattr(_checked, "ids", ()) and not _all_finite(csr.data, ops):
        raise ValueError(f"{what} contains NaN or infinite values")
    return csr


def to_shape(x: Any) -> tuple:
    return tuple(getattr(x, "shape", np.shape(x)))


def check_targets(Y: Any, n: int, width: int, ops: Ops, dtype: np.dtype, needs_target: bool,
                  what: str = "Y") -> Any:
    """Targets on the device: float (n, width), or integer labels (n,) in [0, width).

    A single-output network (width 1) takes 0/1 labels as the float target y itself.
    """
    if Y is None:
        if needs_target:
            raise ValueError(f"{what} is required for this cost")
        return None
    arr = _host_or_device(Y, ops, what)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{what} must hold numbers; got dtype {arr.dtype}")
    if arr.ndim == 0 or len(arr) != n:
        raise ValueError(f"len(X) != len({what}): X has {n} samples, {what} has "
                         f"{0 if arr.ndim == 0 else len(arr)} (shape {to_shape(Y)})")
    if arr.ndim == 1 and arr.dtype.kind in "biu":
        with ops.activate():
            lo, hi = (int(arr.min()), int(arr.max())) if n else (0, 0)
        top = 1 if width == 1 else width - 1
        if lo < 0 or hi > top:
            raise ValueError(f"{what} holds class labels, which must lie in 0..{top}; "
                             f"found {'a negative label ' + str(lo) if lo < 0 else 'label ' + str(hi)}")
        if width == 1:
            return ops.asarray(arr.reshape(n, 1), dtype=dtype)
        return ops.asarray(arr, dtype=np.int64)
    if arr.ndim == 1 and width == 1:
        arr = arr.reshape(n, 1)
    if arr.ndim != 2 or arr.shape[1] != width:
        raise ValueError(f"{what} must have shape ({n}, {width}) (float targets) or ({n},) (integer "
                         f"class labels); got {to_shape(Y)} with dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not _all_finite(arr, ops):
        raise ValueError(f"{what} contains NaN or infinite values")
    return ops.asarray(arr, dtype=dtype)


def check_sample_weight(weights: Any, n: int, ops: Ops, dtype: np.dtype) -> Any:
    """Per-sample weights (n,) on the device: finite, >= 0, not all zero; None stays None."""
    if weights is None:
        return None
    arr = _host_or_device(weights, ops, "sample_weight")
    if arr.dtype.kind not in "biuf" or arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"sample_weight must be a vector of {n} numbers (one per sample); got "
                         f"{arr.dtype} of shape {to_shape(weights)}")
    if arr.dtype.kind == "f" and not _all_finite(arr, ops):
        raise ValueError("sample_weight contains NaN or infinite values")
    if n and (bool((arr < 0).any()) or not bool((arr > 0).any())):
        raise ValueError("sample_weight must be >= 0 with at least one positive weight")
    return ops.asarray(arr, dtype=dtype)


def labels_of(target: Any, ops: Ops) -> np.ndarray:
    """Class labels (host ints) from device targets: labels as they are, one-hot/float rows by argmax,
    a single output by thresholding at 0.5."""
    if target.ndim == 1:
        return ops.to_numpy(target).astype(np.int64)
    if target.shape[1] == 1:
        return (ops.to_numpy(target)[:, 0] > 0.5).astype(np.int64)
    return ops.to_numpy(target.argmax(axis=1)).astype(np.int64)


def target_vectors(target: Any, width: int, ops: Ops) -> np.ndarray:
    """Device targets as host float rows (n, width): float targets as they are, class labels one-hot."""
    if target.ndim == 2:
        return ops.to_numpy(target)
    return np.eye(width)[ops.to_numpy(target).astype(np.int64)]


def positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def seed(value: Any) -> int | None:
    """A seed of NumPy's generators: None, or an integer >= 0."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0):
        raise ValueError(f"seed must be an integer >= 0 or None; got {value!r}")
    return value


def positive_float(value: Any, name: str, allow_zero: bool = False, below: float | None = None) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0) and (below is None or value < below)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        extra = f" and < {below}" if below is not None else ""
        raise ValueError(f"{name} must be a finite number {bound}{extra}; got {value!r}")
    return float(value)


def boolean(value: Any, name: str) -> bool:
    """True or False (NumPy's bools too); ValueError for anything else, 0 and 1 included."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False; got {value!r}")
    return bool(value)
