"""The fused CPU backend: ``Ops`` on NumPy arrays, with every elementwise step one compiled Numba pass.

The CPU counterpart of ``CupyOps``: bias + σ, σ′ ⊙ g, the output delta with its loss, softmax forward and
backward and the SGD / momentum / Adam updates are the kernels of ``cpu_kernels``, each one pass over memory
with no temporaries. The network's whole-layer calls (zˡ and aˡ, BP2, BP3 with BP4) are one compiled call
each on small layers, with the matmul called from Numba (BLAS, through SciPy) rather than by NumPy, whose
per-call overhead is a third of a step there; larger layers use NumPy's matmul. Anything the kernels do not
cover (a user-defined cost or activation, arrays that are not C-contiguous float32/float64 of one dtype)
runs the NumPy reference of ``Ops`` instead, so the backend accepts everything ``Ops`` does.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Iterator

import numpy as np

from ..activations import Activation
from . import cpu_kernels, sparse_kernels
from .cpu_kernels import ActivationKernels
from .kernels import LOG_EPS
from .numba_program import FLOATS as _FLOATS
from .numba_program import NUMBA_BLAS as _NUMBA_BLAS  # without SciPy the layer methods compose NumPy's matmul
from .numba_program import NumbaProgram, plan_kernel
from .ops import Array, Ops, cost_id, is_stable

if TYPE_CHECKING:
    from ..costs import Cost
    from .programs import ProgramPlan

_INT64 = np.dtype(np.int64)
_KERNELS = cpu_kernels.KERNELS
_IDENTITY = _KERNELS["identity"]


def _fusable(*arrays: Array) -> bool:
    """Whether the kernels can take these arrays: C-contiguous NumPy arrays of one float dtype."""
    dtype = arrays[0].dtype
    if dtype not in _FLOATS:
        return False
    for x in arrays:  # a plain loop: this runs several times per step, where all(generator) costs 2×
        if type(x) is not np.ndarray or (x.dtype is not dtype and x.dtype != dtype) or not x.flags.c_contiguous:
            return False
    return True


def _matrices(*arrays: Array) -> bool:
    """Whether all these arrays are 2-D (the layer kernels are compiled for matrices)."""
    for x in arrays:
        if x.ndim != 2:
            return False
    return True


def _kernels(activation: Activation) -> ActivationKernels | None:
    """The kernels of a built-in elementwise activation (by name, as the registry's), None for any other."""
    return _KERNELS.get(activation.name) if activation.elementwise else None


def _flat(x: Array) -> Array:
    """A C-contiguous array as a 1-D view (no copy)."""
    return x.reshape(-1)


class NumbaOps(Ops):
    """Every step on the CPU: NumPy's BLAS for the matmuls, one fused Numba kernel per elementwise step."""

    name = "numba"
    xp = np
    device = "cpu"

    def __init__(self) -> None:
        super().__init__()
        #: stand-ins for the arrays a kernel call goes without: (0, 0) floats, (0,) labels
        self._empty = {**{dtype: np.empty((0, 0), dtype) for dtype in _FLOATS}, _INT64: np.empty(0, _INT64)}
        self._plans: dict[tuple, tuple[ActivationKernels, int, bool] | None] = {}

    # ---- forward ------------------------------------------------------------------------------------
    def bias_activation(self, z: Array, b: Array, activation: Activation, a: Array) -> Array:
        """z += b (row-broadcast) and a = σ(z) in one pass (row-wise for softmax)."""
        kernels = _kernels(activation)
        cols = z.shape[-1] if z.ndim else 0
        if (activation.elementwise and kernels is None) or not _fusable(z, b, a) or a.shape != z.shape \
                or b.shape != (cols,):
            return super().bias_activation(z, b, activation, a)
        if z.size:
            if kernels is None:
                cpu_kernels.bias_softmax(_flat(z), b, _flat(a), cols)
            else:
                kernels.bias_activation(_flat(z), b, _flat(a), cols)
        return a

    # ---- backward -----------------------------------------------------------------------------------
    def backprop_activation(self, activation: Activation, z: Array, a: Array, g: Array,
                            out: Array) -> Array:
        """out = σ′(z) ⊙ g in one pass (softmax: its Jacobian, row by row); ``out`` may be ``g``."""
        if not activation.elementwise:
            cols = a.shape[-1] if a.ndim else 0
            if not _fusable(a, g, out) or not a.shape == g.shape == out.shape:
                return super().backprop_activation(activation, z, a, g, out)
            if a.size:
                cpu_kernels.softmax_backward(_flat(a), _flat(g), _flat(out), cols)
            return out
        kernels = _kernels(activation)
        if z is None and not activation.needs_z:
            z = a  # σ′ from a alone never reads z
        if kernels is None or a is None or z is None or not _fusable(z, a, g, out) \
                or not z.shape == a.shape == g.shape == out.shape:
            return super().backprop_activation(activation, z, a, g, out)
        kernels.backprop_activation(_flat(z), _flat(a), _flat(g), _flat(out))
        return out

    def output_delta(self, cost: Cost, activation: Activation, z: Array, a: Array, target: Array,
                     out: Array, loss_sum: Array | None = None) -> Array:
        """δᴸ and Σₓ Cₓ (into ``loss_sum``) in one pass for the built-in costs (see Ops.output_delta)."""
        plan = self._output_plan(cost, activation)
        if plan is not None:
            kernels, kind, stable = plan
            if z is None and (stable or not activation.needs_z):
                z = a
            if z is not None and z.shape == a.shape == out.shape and _fusable(z, a, out) and \
                    self._output_kernel(kernels, kind, stable, z, a, target, out, loss_sum):
                if not activation.elementwise and not stable:  # softmax with another cost: its Jacobian
                    self.backprop_activation(activation, z, a, out, out)
                return out
        return super().output_delta(cost, activation, z, a, target, out, loss_sum)

    def _output_plan(self, cost: Cost, activation: Activation) -> tuple[ActivationKernels, int, bool] | None:
        """(activation's kernels, cost id, stable) of the output kernel for this pair (softmax: the
        identity's, its Jacobian applied after), None where the kernel does not cover it; kept per pair of
        classes."""
        key = (type(cost), type(activation), activation.name)
        if key not in self._plans:
            kernels = _kernels(activation) if activation.elementwise else _IDENTITY
            kind = cost_id(cost)
            self._plans[key] = None if kernels is None or kind is None else \
                (kernels, kind, is_stable(cost, activation))
        return self._plans[key]

    def cost_sum(self, cost: Cost, a: Array, target: Array) -> Array:
        """Σₓ Cₓ(a, y) as a 0-d array (one pass for the built-in costs)."""
        total = np.zeros(1, np.float64)
        kind = cost_id(cost)
        if kind is None or not _fusable(a) or \
                not self._output_kernel(_IDENTITY, kind, False, a, a, target, None, total):
            return super().cost_sum(cost, a, target)
        return a.dtype.type(total[0])

    def _output_kernel(self, kernels: ActivationKernels, kind: int, stable: bool, z: Array, a: Array,
                       target: Array, out: Array | None, loss_sum: Array | None) -> bool:
        """Run the activation's output_delta kernel for the cost of kernel id ``kind``; False (nothing done)
        where the targets or ``loss_sum`` do not fit it, so that the caller runs the reference instead."""
        if a.ndim != 2 or a.size == 0:
            return False
        empty = self._empty[a.dtype]
        if target.ndim == 1 and target.dtype is _INT64 and len(target) == len(a):
            y, labels = empty, target
        elif target.shape == a.shape and target.dtype == a.dtype and type(target) is np.ndarray:
            y, labels = np.ascontiguousarray(target), self._empty[_INT64]
        else:
            return False
        if loss_sum is None:
            loss = empty.reshape(0)
        elif type(loss_sum) is np.ndarray and loss_sum.size == 1 and loss_sum.dtype in _FLOATS \
                and loss_sum.flags.c_contiguous:
            loss = loss_sum.reshape(1)
        else:
            return False
        kernels.output_delta(kind, stable, z, a, y, labels, empty if out is None else out, loss,
                             LOG_EPS.get(a.dtype, 1e-7))
        return True

    # ---- whole layers: BLAS and the fused pass in one compiled call -------------------------------------
    def layer_forward(self, a_prev: Array, W: Array, b: Array, activation: Activation, z: Array,
                      a: Array) -> Array:
        """zˡ = aˡ⁻¹ Wˡᵀ + bˡ and aˡ = σ(zˡ) in one call (the activation's layer_forward kernel)."""
        if activation.elementwise:
            kernels = _KERNELS.get(activation.name)
            forward = None if kernels is None else kernels.layer_forward
        else:
            forward = cpu_kernels.layer_forward_softmax if activation.name == "softmax" else None
        if forward is None or not _NUMBA_BLAS or not _fusable(a_prev, W, b, z, a) \
                or not _matrices(a_prev, W, z, a) or b.ndim != 1 or not forward(a_prev, W, b, z, a):
            return super().layer_forward(a_prev, W, b, activation, z, a)
        return a

    def layer_backward(self, delta: Array, W: Array, activation: Activation, z: Array, a: Array,
                       out: Array) -> Array:
        """BP2: δˡ = (δˡ⁺¹ Wˡ⁺¹) ⊙ σ′(zˡ) in one call (the activation's layer_backward kernel)."""
        kernels = _kernels(activation)
        if z is None and not activation.needs_z:
            z = a  # σ′ from a alone never reads z
        if kernels is None or not _NUMBA_BLAS or a is None or z is None or not _fusable(delta, W, z, a, out) \
                or not _matrices(delta, W, z, a, out) or not kernels.layer_backward(delta, W, z, a, out):
            return super().layer_backward(delta, W, activation, z, a, out)
        return out

    # ---- sparse input: the CSR kernels of ``sparse_kernels`` ------------------------------------------
    def sparse_forward(self, a: Array, W: Array, out: Array) -> Array:
        """out = a Wᵀ for a CSR ``a`` in one pass over W, row by row (sparse_kernels.csr_forward)."""
        if not _fusable(W, out, a.data) or out.shape != (a.shape[0], W.shape[0]) or W.shape[1] != a.shape[1]:
            return super().sparse_forward(a, W, out)
        sparse_kernels.csr_forward(a.indptr, a.indices, a.data, W, out)
        return out

    def sparse_weight_gradient(self, delta: Array, a: Array, out: Array) -> Array:
        """BP4 δᵀ a for a CSR ``a``, zeroed and scattered straight into ``out`` (sparse_kernels)."""
        if not _fusable(delta, out, a.data) or out.shape != (delta.shape[1], a.shape[1]) \
                or delta.shape[0] != a.shape[0]:
            return super().sparse_weight_gradient(delta, a, out)
        sparse_kernels.csr_weight_gradient(a.indptr, a.indices, a.data, delta, out)
        return out

    def layer_gradients(self, delta: Array, a_prev: Array, nabla_w: Array, nabla_b: Array) -> None:
        """BP3 and BP4 in one call (cpu_kernels.layer_gradients)."""
        if not _NUMBA_BLAS or not _fusable(delta, a_prev, nabla_w, nabla_b) \
                or not _matrices(delta, a_prev, nabla_w) or nabla_b.ndim != 1 \
                or not cpu_kernels.layer_gradients(delta, a_prev, nabla_w, nabla_b):
            super().layer_gradients(delta, a_prev, nabla_w, nabla_b)

    @contextlib.contextmanager
    def training_floats(self) -> Iterator[None]:
        """Subnormal floats flushed to zero in this thread while a fit trains (x86 FTZ/DAZ; the thread's mode
        is restored after): Adam's decaying moments turn subnormal, and every operation on one costs x86 a
        microcode assist (an epoch of scikit-learn's config on MNIST grew 10× slower by its third epoch)."""
        saved = cpu_kernels.flush_subnormals()
        try:
            yield
        finally:
            cpu_kernels.restore_subnormals(saved)

    # ---- compiled training ----------------------------------------------------------------------------
    def training_program(self, plan: ProgramPlan) -> tuple[NumbaProgram | None, str]:
        """Chunks of mini-batches as one compiled call each (``numba_program``), where the kernels cover the
        plan's activations, cost, optimizer and arrays."""
        constants, reason = plan_kernel(plan)
        return (None, reason) if constants is None else (NumbaProgram(plan, constants), "")

    # ---- optimizers over the flat parameter buffer ------------------------------------------------
    def sgd_update(self, params: Array, grad: Array, lr: float, grad_scale: float,
                   weight_decay: float, n_weights: int) -> None:
        """w ← w − η (s·g + λw) in one pass (``grad`` is left as it was)."""
        if not _fusable(params, grad) or params.ndim != 1 or grad.shape != params.shape:
            return super().sgd_update(params, grad, lr, grad_scale, weight_decay, n_weights)
        cpu_kernels.sgd_update(params, grad, n_weights, 1.0 - lr * weight_decay, lr * grad_scale)

    def velocity_update(self, kind: str, params: Array, grad: Array, velocity: Array, lr: float,
                        momentum: float, grad_scale: float, weight_decay: float, n_weights: int) -> None:
        """Momentum or Nesterov (see Ops.velocity_update) in one pass: cpu_kernels.{kind}_update, or the
        reference where the arrays do not fit the kernel."""
        if not _fusable(params, grad, velocity) or params.ndim != 1 or \
                not params.shape == grad.shape == velocity.shape:
            return super().velocity_update(kind, params, grad, velocity, lr, momentum, grad_scale,
                                           weight_decay, n_weights)
        getattr(cpu_kernels, f"{kind}_update")(params, grad, velocity, n_weights, grad_scale, weight_decay, lr,
                                               momentum)

    def adam_update(self, params: Array, grad: Array, m: Array, v: Array, lr: float, beta1: float,
                    beta2: float, eps: float, step: int, grad_scale: float, weight_decay: float,
                    n_weights: int) -> None:
        """Adam (see Ops.adam_update) in one pass; the bias corrections are folded into α̂ and ε̂."""
        if not _fusable(params, grad, m, v) or params.ndim != 1 or \
                not params.shape == grad.shape == m.shape == v.shape:
            return super().adam_update(params, grad, m, v, lr, beta1, beta2, eps, step, grad_scale,
                                       weight_decay, n_weights)
        step_size = lr * math.sqrt(1.0 - beta2 ** step) / (1.0 - beta1 ** step)
        eps_hat = eps * math.sqrt(1.0 - beta2 ** step)
        cpu_kernels.adam_update(params, grad, m, v, n_weights, grad_scale, weight_decay, beta1, 1.0 - beta1,
                                beta2, 1.0 - beta2, step_size, eps_hat)
