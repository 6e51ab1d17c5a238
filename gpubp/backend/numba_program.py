"""The CPU's compiled training program: a chunk of mini-batches as one Numba call (``cpu_kernels.chunk_kernel``).

The chunk runs the eager step's own kernels in the eager step's order, so its parameters, optimizer state
and loss equal the eager loop's bit for bit where the eager loop also runs those kernels (layers up to
``cpu_kernels.SMALL_MATMUL``; larger matmuls there go to NumPy's BLAS, here to SciPy's, and may round
differently). What it does not cover runs the eager loop, for the reason ``plan_kernel`` gives.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from typing import Any

import numpy as np

from . import cpu_kernels
from .kernels import LOG_EPS
from .ops import cost_id, is_stable
from .programs import Array, ProgramPlan

#: the dtypes the compiled kernels take
FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
#: Numba's np.dot calls BLAS through SciPy
NUMBA_BLAS = importlib.util.find_spec("scipy") is not None
#: a step whose largest matmul has at most this many multiply-adds runs BLAS on one thread: on 2 cores the
#: second thread made scikit-learn's config (2.5M) 10 % slower on a quiet machine and 4× slower beside
#: another busy process (bench/README.md); larger matmuls (configs M, L) keep BLAS's threads
SERIAL_MATMUL = 16_000_000


@functools.cache
def _blas_pools() -> Any:
    """threadpoolctl's handle on the loaded BLAS libraries (None without threadpoolctl)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController().select(user_api="blas")


def one_blas_thread() -> contextlib.AbstractContextManager:
    """BLAS on one thread inside the block (where threadpoolctl can say so)."""
    pools = _blas_pools()
    return contextlib.nullcontext() if pools is None else pools.limit(limits=1)


def plan_kernel(plan: ProgramPlan) -> tuple[tuple | None, str]:
    """(the chunk kernel's compile-time constants, "") for a plan the kernel covers, else (None, why not)."""
    hidden, output = plan.activations[0], plan.activations[-1]
    if not NUMBA_BLAS:
        return None, "SciPy is not installed (Numba calls BLAS through it): pip install scipy"
    if plan.dtype not in FLOATS:
        return None, f"dtype {plan.dtype} (the compiled steps take float32 and float64)"
    if not all(a.elementwise and a.name in cpu_kernels.KERNELS for a in plan.activations[:-1]):
        return None, f"the hidden activation {hidden.name!r} is not a built-in one"
    if not (output.name == "softmax" or (output.elementwise and output.name in cpu_kernels.KERNELS)):
        return None, f"the output activation {output.name!r} is not a built-in one"
    if cost_id(plan.cost) is None:
        return None, f"the cost {getattr(plan.cost, 'name', plan.cost)!r} is user-defined"
    if plan.optimizer.name not in cpu_kernels.OPTIMIZER_IDS or \
            type(plan.optimizer).__module__ != "gpubp.optimizers":
        return None, f"the optimizer {type(plan.optimizer).__name__} is not a built-in one"
    labels = plan.target.ndim == 1 and plan.target.dtype == np.int64
    if not all(type(a) is np.ndarray and a.dtype == plan.dtype for a in (plan.x, plan.params)) \
            or not (labels or (type(plan.target) is np.ndarray and plan.target.dtype == plan.dtype)) \
            or not plan.params.flags.c_contiguous:
        return None, "the training arrays are not NumPy arrays of the network's dtype"
    softmax = output.name == "softmax"
    return (hidden.kernel_id, hidden.kernel_id if softmax else output.kernel_id, softmax,
            cost_id(plan.cost), is_stable(plan.cost, output), cpu_kernels.OPTIMIZER_IDS[plan.optimizer.name]), ""


class NumbaProgram:
    """Chunks of a fit's mini-batches, each one call of the compiled chunk kernel."""

    granule = 1

    def __init__(self, plan: ProgramPlan, constants: tuple) -> None:
        self.plan, self.kernel = plan, cpu_kernels.chunk_kernel(*constants)
        #: the data, C-contiguous (a copy only where it is not: the kernel gathers whole rows)
        self.x = np.ascontiguousarray(plan.x)
        bs, dtype, sizes = plan.batch_size, plan.dtype, plan.sizes
        units = sum(sizes[1:])
        #: zˡ, aˡ and δˡ of every layer, one flat buffer each (layer l's (bs, sizes[l+1]) block after the others)
        self.zs, self.activations, self.deltas = (np.empty(bs * units, dtype) for _ in range(3))
        self.sizes = np.asarray(sizes, dtype=np.int64)
        labelled = plan.target.ndim == 1
        #: the gathered batch
        self.xb = np.empty((bs, sizes[0]), dtype)
        self.yb = np.empty((0, 0) if labelled else (bs, sizes[-1]), dtype)
        self.lb = np.empty(bs if labelled else 0, np.int64)
        self.labels = np.ascontiguousarray(plan.target) if labelled else self.lb[:0]
        self.y = self.yb[:0] if labelled else np.ascontiguousarray(plan.target)
        self.log_eps = LOG_EPS.get(dtype, 1e-7)
        largest = max(a * b for a, b in zip(sizes[:-1], sizes[1:])) * bs
        self.blas_threads = contextlib.nullcontext if largest > SERIAL_MATMUL else one_blas_thread
        #: stands in for the state buffers an optimizer has not (SGD has none, momentum one)
        self.no_buffer = np.empty(0, dtype)

    def run(self, order: Array, first: int, count: int, loss_sum: Array) -> None:
        """Batches ``first`` … ``first + count − 1`` of the epoch in ``order`` (see TrainingProgram.run)."""
        plan, optimizer = self.plan, self.plan.optimizer
        settings = np.array([float(getattr(optimizer, key, 0.0)) for key in cpu_kernels.STEP_SETTINGS])
        buffers = optimizer.state_arrays() + [self.no_buffer] * 2
        with self.blas_threads():
            self.kernel(self.x, self.y, self.labels, order, first, count, plan.batch_size, self.sizes, plan.params,
                        plan.grad, plan.n_weights, buffers[0], buffers[1], self.zs, self.activations,
                        self.deltas, self.xb, self.yb, self.lb, settings, optimizer.t, loss_sum, self.log_eps)
        optimizer.t += count
