"""The array backend: one interface for every step of backpropagation that touches array elements.

``Ops`` is written against an array module ``self.xp`` and is the reference implementation (NumPy);
``CupyOps`` overrides the elementwise methods with the fused CUDA kernels in ``kernels/``, ``NumbaOps`` with
compiled CPU kernels. The network calls only these methods, a layer at a time (``layer_forward``,
``layer_backward``, ``layer_gradients``: compositions of the smaller methods here, which a backend may fuse),
and never branches on the device. Methods that take ``out=`` write into caller-owned
buffers, so a training step allocates nothing once its buffers exist.

Conventions: rows are samples; ``target`` is either a float array like the output (batch, k) or an integer
label vector (batch,) meaning one-hot targets that are never built in memory.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from ..activations import Activation
from .arrays import is_sparse
from .kernels import COST_IDS, LOG_EPS

if TYPE_CHECKING:
    from ..costs import Cost
    from .programs import ProgramPlan, TrainingProgram

Array = Any
QUADRATIC, CROSS_ENTROPY, LOG_LIKELIHOOD = (COST_IDS[n] for n in ("quadratic", "cross_entropy", "log_likelihood"))
#: (cost id, output activation) of the pairs whose output delta is exactly δᴸ = aᴸ − y
STABLE_PAIRS = {(CROSS_ENTROPY, "sigmoid"), (LOG_LIKELIHOOD, "softmax")}


def cost_id(cost: Cost) -> int | None:
    """The kernel id of a built-in cost (their subclasses too: they inherit it), None for any other cost."""
    return getattr(cost, "kernel_id", None)


def is_stable(cost: Cost, activation: Activation) -> bool:
    """Whether δᴸ = aᴸ − y exactly: sigmoid + cross_entropy, softmax + log_likelihood."""
    return (cost_id(cost), activation.name) in STABLE_PAIRS


def host_available_memory() -> int | None:
    """Bytes of host memory that new allocations can take: Linux's MemAvailable (/proc/meminfo), else the
    free physical pages (os.sysconf), else None (unknown)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # in kB
    except (OSError, ValueError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no os.sysconf (Windows) or no such name (macOS)
        return None


class Ops:
    """Reference backend over ``xp`` (NumPy); subclasses fuse the elementwise steps."""

    name = "numpy"
    xp: Any = np
    device = "cpu"
    #: whether this backend's arrays live in host memory (the CPU backends) rather than on a GPU
    on_host = True
    #: how the matmuls compute (gpubp.backend.precision): the CPU backends' float32 products are float32's
    matmul_precision = "fp32"

    def __init__(self) -> None:
        self._scratch: dict[tuple, Array] = {}

    # ---- memory -------------------------------------------------------------------------------------
    def asarray(self, x: Any, dtype: Any = None) -> Array:
        """``x`` as an array of this device (no copy when it already is one of that dtype)."""
        return self.xp.asarray(x, dtype=dtype)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def available_memory(self) -> int | None:
        """Bytes that new arrays on this backend's device can take now; None when that is unknown."""
        return host_available_memory()

    def empty(self, shape: Any, dtype: Any) -> Array:
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape: Any, dtype: Any) -> Array:
        return self.xp.zeros(shape, dtype=dtype)

    def copy(self, src: Array, out: Array) -> Array:
        """out[...] = src."""
        self.xp.copyto(out, src)
        return out

    def scratch(self, like: Array, slot: int = 0) -> Array:
        """A reusable buffer shaped like ``like`` (one per shape, dtype and slot)."""
        key = (like.shape, like.dtype, slot)
        buf = self._scratch.get(key)
        if buf is None:
            buf = self._scratch[key] = self.empty(like.shape, like.dtype)
        return buf

    def all_finite(self, x: Array) -> bool:
        """Whether every element is finite (a host sync on a GPU)."""
        return bool(self.xp.isfinite(x).all())

    def item(self, x: Array) -> float:
        """A one-element array as a Python float (a host sync on a GPU)."""
        return float(x.reshape(-1)[0])

    def synchronize(self) -> None:
        """Wait for queued device work (nothing to wait for on the CPU)."""

    def activate(self) -> contextlib.AbstractContextManager:
        """A context in which new arrays land on this backend's device."""
        return contextlib.nullcontext()

    def with_matmul_precision(self, precision: str) -> "Ops":
        """This device's backend for a network whose ``matmul_precision`` is ``precision``: the CPU backends
        compute float32 products in float32 whatever the choice, so they serve every network as they are."""
        return self

    # ---- compiled training (gpubp.backend.programs) -------------------------------------------------
    def training_program(self, plan: ProgramPlan) -> tuple[TrainingProgram | None, str]:
        """(a compiled program for ``plan``, "") where this backend has one, else (None, why not): the
        trainer then runs its eager loop. The NumPy reference always runs the eager loop."""
        return None, "the NumPy reference backend runs every step from Python (install gpubp[fast])"

    # ---- linear algebra -----------------------------------------------------------------------------
    def gemm(self, a: Array, b: Array, out: Array) -> Array:
        """out = a @ b (pass transposed views for aᵀ or bᵀ)."""
        return self.xp.matmul(a, b, out=out)

    def sum_rows(self, x: Array, out: Array) -> Array:
        """out = Σ over rows of x (BP3: ∂C/∂b = Σₓ δ)."""
        return x.sum(axis=0, out=out)

    # ---- forward ------------------------------------------------------------------------------------
    def bias_activation(self, z: Array, b: Array, activation: Activation, a: Array) -> Array:
        """z += b in place, then a = σ(z)."""
        z += b
        return activation.f(self.xp, z, a)

    # ---- backward -----------------------------------------------------------------------------------
    def backprop_activation(self, activation: Activation, z: Array, a: Array, g: Array,
                            out: Array) -> Array:
        """out = σ′(z) ⊙ g (BP1/BP2's Hadamard product; ``out`` may be ``g``)."""
        if not activation.elementwise:
            return activation.backward(self.xp, a, g, out)
        fprime = activation.df(self.xp, z, a, self.scratch(g, 1))
        return self.xp.multiply(fprime, g, out=out)

    def output_delta(self, cost: Cost, activation: Activation, z: Array, a: Array, target: Array,
                     out: Array, loss_sum: Array | None = None) -> Array:
        """δᴸ per sample (BP1), and Σₓ Cₓ added into ``loss_sum`` when given.

        Stable forms: sigmoid + cross_entropy and softmax + log_likelihood give δᴸ = aᴸ − y; quadratic gives
        (aᴸ − y) ⊙ σ′(zᴸ); any other pair is ∇ₐC ⊙ σ′(zᴸ) (softmax: its Jacobian applied to ∇ₐC).
        """
        stable = is_stable(cost, activation)
        if cost_id(cost) == QUADRATIC:
            self.subtract_target(a, target, out)                    # ∇ₐC = a − y
            if loss_sum is not None:
                loss_sum += 0.5 * self.xp.vdot(out, out)
            return self.backprop_activation(activation, z, a, out, out)
        if loss_sum is not None:
            loss_sum += self.cost_sum(cost, a, target)
        if stable:
            return self.subtract_target(a, target, out)
        g = cost.derivative(a, self.dense_target(target, a) if cost.needs_target else None)
        self.xp.copyto(out, g)
        return self.backprop_activation(activation, z, a, out, out)

    def weighted_output_delta(self, cost: Cost, activation: Activation, z: Array, a: Array,
                              target: Array, weights: Array, out: Array,
                              loss_sum: Array | None = None) -> Array:
        """BP1 for the weighted cost Σₓ wₓCₓ: δᴸ rows times wₓ, and Σₓ wₓCₓ added into ``loss_sum``."""
        self.output_delta(cost, activation, z, a, target, out)
        if loss_sum is not None:
            costs = cost.fn(a, self.dense_target(target, a) if cost.needs_target else None)
            loss_sum += self.xp.vdot(weights, self.xp.asarray(costs, dtype=a.dtype))
        return self.xp.multiply(out, weights[:, None], out=out)

    def subtract_target(self, a: Array, target: Array, out: Array) -> Array:
        """out = a − y, with y one-hot from integer labels gathered in place."""
        if target.ndim == 1:
            self.xp.copyto(out, a)
            out[self.row_index(len(a)), target] -= 1.0
            return out
        return self.xp.subtract(a, target, out=out)

    def row_index(self, n: int) -> Array:
        """0, 1, …, n−1 on this device (cached)."""
        key = ("rows", n)
        rows = self._scratch.get(key)
        if rows is None:
            rows = self._scratch[key] = self.xp.arange(n)
        return rows

    def dense_target(self, target: Array, a: Array) -> Array:
        """Float targets like ``a``: one-hot rows for integer labels (used off the fused paths only)."""
        if target.ndim == 2:
            return target
        y = self.zeros(a.shape, a.dtype)
        y[self.row_index(len(a)), target] = 1.0
        return y

    def cost_sum(self, cost: Cost, a: Array, target: Array) -> Array:
        """Σₓ Cₓ(a, y) as a 0-d array on this device."""
        xp, kind = self.xp, cost_id(cost)
        if kind == QUADRATIC:
            diff = self.subtract_target(a, target, self.scratch(a, 2))
            return 0.5 * xp.vdot(diff, diff)
        eps = LOG_EPS.get(a.dtype, 1e-7)
        if kind == LOG_LIKELIHOOD and target.ndim == 1:
            picked = a[self.row_index(len(a)), target]
            return -xp.log(xp.maximum(picked, eps)).sum()
        if kind == CROSS_ENTROPY:
            # −Σ [y ln a + (1 − y) ln(1 − a)] = −Σ ln(1 − a) − Σ y (ln a − ln(1 − a)), a clipped to [ε, 1 − ε]
            log_a, log_1ma = self.scratch(a, 2), self.scratch(a, 3)
            xp.clip(a, eps, 1.0 - eps, out=log_a)
            xp.subtract(1.0, log_a, out=log_1ma)
            xp.log(log_a, out=log_a)
            xp.log(log_1ma, out=log_1ma)
            log_a -= log_1ma
            if target.ndim == 1:
                picked = log_a[self.row_index(len(a)), target].sum()
            else:
                picked = xp.vdot(target, log_a)
            return -(log_1ma.sum() + picked)
        y = self.dense_target(target, a) if cost.needs_target else None
        return xp.asarray(cost.fn(a, y), dtype=a.dtype).sum()

    # ---- sparse input: a⁰ = X as a CSR matrix (layer 1's forward and BP4 only; BP2 stops above it) ----
    def sparse_rows(self, x: Any, dtype: Any) -> Array:
        """``x``, a sparse matrix of any SciPy format (or a cupyx one), as a CSR matrix of ``dtype`` on this
        device: SciPy's here (no copy when it is one already; another format is converted, O(nnz))."""
        import scipy.sparse

        if not type(x).__module__.startswith("scipy."):
            x = x.get()  # a cupyx matrix: to the host
        return scipy.sparse.csr_matrix(x, dtype=dtype)

    def sparse_forward(self, a: Array, W: Array, out: Array) -> Array:
        """out = a Wᵀ for a sparse CSR ``a`` (z¹ = a⁰ W¹ᵀ without the bias)."""
        out[...] = a @ W.T
        return out

    def sparse_weight_gradient(self, delta: Array, a: Array, out: Array) -> Array:
        """BP4 for a sparse CSR ``a``: out = δᵀ a (∂C/∂W¹ = δ¹ᵀ a⁰), as (aᵀ δ)ᵀ: the sparse product on the left."""
        out[...] = (a.T @ delta).T
        return out

    # ---- whole layers: the network's calls (a backend may fuse each into one) -------------------------
    def layer_forward(self, a_prev: Array, W: Array, b: Array, activation: Activation, z: Array,
                      a: Array) -> Array:
        """zˡ = aˡ⁻¹ Wˡᵀ + bˡ into ``z`` and aˡ = σ(zˡ) into ``a``; returns ``a``. ``a_prev`` may be a sparse
        CSR a⁰ (``sparse_rows``)."""
        if is_sparse(a_prev):
            self.sparse_forward(a_prev, W, out=z)
        else:
            self.gemm(a_prev, W.T, out=z)
        return self.bias_activation(z, b, activation, a)

    def layer_backward(self, delta: Array, W: Array, activation: Activation, z: Array, a: Array,
                       out: Array) -> Array:
        """BP2: δˡ = (δˡ⁺¹ Wˡ⁺¹) ⊙ σ′(zˡ) into ``out``, from ``delta`` = δˡ⁺¹ and ``W`` = Wˡ⁺¹; returns ``out``."""
        self.gemm(delta, W, out=out)
        return self.backprop_activation(activation, z, a, out, out)

    def layer_gradients(self, delta: Array, a_prev: Array, nabla_w: Array, nabla_b: Array) -> None:
        """BP3: Σₓ δˡ into ``nabla_b`` and BP4: δˡᵀ aˡ⁻¹ into ``nabla_w`` (sums of ∂Cₓ/∂b and ∂Cₓ/∂W);
        ``a_prev`` may be a sparse CSR a⁰."""
        self.sum_rows(delta, out=nabla_b)
        if is_sparse(a_prev):
            self.sparse_weight_gradient(delta, a_prev, out=nabla_w)
        else:
            self.gemm(delta.T, a_prev, out=nabla_w)

    # ---- optimizers over the flat parameter buffer ------------------------------------------------
    # ``params`` holds all weights first (``n_weights`` of them), then all biases; L2 weight decay
    # (C + λ/2 ‖w‖², ∇ += λw) applies to the weights only. ``grad_scale`` turns summed gradients into means.
    def sgd_update(self, params: Array, grad: Array, lr: float, grad_scale: float,
                   weight_decay: float, n_weights: int) -> None:
        """w ← w − η (s·g + λw)."""
        if weight_decay:
            params[:n_weights] *= 1.0 - lr * weight_decay
        grad *= lr * grad_scale
        params -= grad

    def momentum_update(self, params: Array, grad: Array, velocity: Array, lr: float,
                        momentum: float, grad_scale: float, weight_decay: float,
                        n_weights: int) -> None:
        """v ← μv − η (s·g + λw); w ← w + v."""
        self.velocity_update("momentum", params, grad, velocity, lr, momentum, grad_scale, weight_decay,
                             n_weights)

    def nesterov_update(self, params: Array, grad: Array, velocity: Array, lr: float,
                        momentum: float, grad_scale: float, weight_decay: float,
                        n_weights: int) -> None:
        """g ← s·g + λw; v ← μv − ηg; w ← w + μv − ηg (Nesterov's look-ahead step)."""
        self.velocity_update("nesterov", params, grad, velocity, lr, momentum, grad_scale, weight_decay,
                             n_weights)

    def velocity_update(self, kind: str, params: Array, grad: Array, velocity: Array, lr: float,
                        momentum: float, grad_scale: float, weight_decay: float, n_weights: int) -> None:
        """The two velocity methods, ``kind`` "momentum" or "nesterov" (backends fuse each into one pass):
        ηg ← η (s·g + λw) in place of grad; v ← μv − ηg; then w ← w + v, or w ← w + μv − ηg."""
        grad *= grad_scale
        if weight_decay:
            grad[:n_weights] += weight_decay * params[:n_weights]
        grad *= lr
        velocity *= momentum
        velocity -= grad
        if kind == "momentum":
            params += velocity
        else:
            params += self.xp.multiply(velocity, momentum, out=self.scratch(params, 1))
            params -= grad

    def adam_update(self, params: Array, grad: Array, m: Array, v: Array, lr: float, beta1: float,
                    beta2: float, eps: float, step: int, grad_scale: float, weight_decay: float,
                    n_weights: int) -> None:
        """g ← s·g + λw; m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²; w ← w − η m̂ / (√v̂ + ε)."""
        xp = self.xp
        grad *= grad_scale
        if weight_decay:
            grad[:n_weights] += weight_decay * params[:n_weights]
        m *= beta1
        m += (1.0 - beta1) * grad
        v *= beta2
        xp.multiply(grad, grad, out=grad)
        v += (1.0 - beta2) * grad
        step_size = lr * np.sqrt(1.0 - beta2 ** step) / (1.0 - beta1 ** step)
        eps_hat = eps * np.sqrt(1.0 - beta2 ** step)
        xp.sqrt(v, out=grad)
        grad += eps_hat
        xp.divide(m, grad, out=grad)
        grad *= step_size
        params -= grad

    # ---- data ---------------------------------------------------------------------------------------
    def permutation(self, n: int, rng: np.random.Generator) -> Array:
        """A random order of 0…n−1 on this device, drawn from ``rng``."""
        return self.asarray(rng.permutation(n))

    def take_rows(self, x: Array, index: Array, out: Array) -> Array:
        """out = x[index] (gather rows into a preallocated buffer)."""
        return self.xp.take(x, index, axis=0, out=out, mode="wrap")  # "raise" would buffer: 20× slower

    @contextlib.contextmanager
    def errstate(self) -> Iterator[None]:
        """Silence floating-point warnings; divergence is detected from the loss instead."""
        with np.errstate(all="ignore"):
            yield

    def training_floats(self) -> contextlib.AbstractContextManager:
        """The floating-point mode a fit trains in: IEEE arithmetic as it is in the reference (a fused
        backend may flush subnormal numbers to zero, as GPUs and XLA do)."""
        return contextlib.nullcontext()
