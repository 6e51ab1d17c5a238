"""The CUDA backend: ``Ops`` on CuPy arrays, with the fused kernels of ``kernels/`` for every elementwise step.

Matmuls are cuBLAS's, called with the compute type of the backend's ``matmul_precision`` ("fp32" or "tf32",
``cublas_gemm``; one instance per GPU and precision). Forward bias + σ, backward σ′ ⊙ g, the output delta
with its loss and the optimizer updates are one kernel launch each, on the current stream, with no host sync
and no allocation. Kernels take C-contiguous float32 or float64 arrays of one dtype (views of the flat parameter
buffer qualify); integer labels are int64. A user-defined cost falls back to the NumPy-style code of ``Ops``
run by CuPy.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import cupy
import numpy as np

from ..activations import Activation
from . import kernels
from .cublas_gemm import gemm
from .ops import Array, Ops, cost_id, is_stable

if TYPE_CHECKING:
    from ..costs import Cost
    from .programs import ProgramPlan, TrainingProgram

BLOCK = 256
#: resident 256-thread blocks per SM at full occupancy is 8; a few waves more keep the tail short
BLOCKS_PER_SM = 32
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
_NULL = np.uint64(0)
_IDENTITY = kernels.ACTIVATION_IDS["identity"]
_UNKNOWN = object()


class CupyOps(Ops):
    """Every step on CUDA device ``device_index``: cuBLAS matmuls in ``matmul_precision`` and gpubp's fused
    kernels."""

    name = "cupy"
    xp = cupy
    on_host = False

    def __init__(self, device_index: int, matmul_precision: str = "fp32",
                 siblings: dict[str, "CupyOps"] | None = None) -> None:
        super().__init__()
        self.index = int(device_index)
        self.device = f"cuda:{self.index}"
        self.matmul_precision = matmul_precision
        #: this GPU's backends by matmul precision, shared by them (``with_matmul_precision``)
        self._siblings = {} if siblings is None else siblings
        self._siblings[matmul_precision] = self
        sms = cupy.cuda.runtime.deviceGetAttribute(cupy.cuda.runtime.cudaDevAttrMultiProcessorCount,
                                                   self.index)
        self._max_blocks = sms * BLOCKS_PER_SM
        self._graph_reason: Any = _UNKNOWN

    def with_matmul_precision(self, precision: str) -> Ops:
        """This GPU's backend whose matmuls run in ``precision``: made once, then shared by every network."""
        sibling = self._siblings.get(precision)
        return sibling if sibling is not None else CupyOps(self.index, precision, self._siblings)

    # ---- device and memory --------------------------------------------------------------------------
    def activate(self) -> contextlib.AbstractContextManager:
        return cupy.cuda.Device(self.index)

    def _on_device(self) -> contextlib.AbstractContextManager:
        """This device as the current one (free when it already is)."""
        if cupy.cuda.runtime.getDevice() == self.index:
            return contextlib.nullcontext()
        return cupy.cuda.Device(self.index)

    def asarray(self, x: Any, dtype: Any = None) -> Array:
        """``x`` on this device: NumPy data is uploaded, a CuPy array on another GPU is copied over
        (cupy.asarray copies to the current device), one already here is returned as it is."""
        with self._on_device():
            return cupy.asarray(x, dtype=dtype)

    def to_numpy(self, x: Any) -> np.ndarray:
        return cupy.asnumpy(x)

    def available_memory(self) -> int:
        """The GPU's free bytes (cudaMemGetInfo) plus those CuPy's memory pool holds unused there."""
        with self._on_device():
            free, _ = cupy.cuda.runtime.memGetInfo()
            return free + cupy.get_default_memory_pool().free_bytes()

    def empty(self, shape: Any, dtype: Any) -> Array:
        with self._on_device():
            return cupy.empty(shape, dtype=dtype)

    def zeros(self, shape: Any, dtype: Any) -> Array:
        with self._on_device():
            return cupy.zeros(shape, dtype=dtype)

    def all_finite(self, x: Array) -> bool:
        with self._on_device():
            return bool(cupy.isfinite(x).all())

    def item(self, x: Array) -> float:
        with self._on_device():
            return float(x.reshape(-1)[0])

    def synchronize(self) -> None:
        cupy.cuda.Device(self.index).synchronize()

    def copy(self, src: Array, out: Array) -> Array:
        with self._on_device():
            return super().copy(src, out)

    # ---- linear algebra (cuBLAS on this device) -----------------------------------------------------
    def gemm(self, a: Array, b: Array, out: Array) -> Array:
        """out = a @ b by cuBLAS in this backend's ``matmul_precision``, whatever CUPY_TF32 says."""
        with self._on_device():
            return gemm(a, b, out, self.matmul_precision)

    def sum_rows(self, x: Array, out: Array) -> Array:
        with self._on_device():
            return x.sum(axis=0, out=out)

    # ---- sparse input: cuSPARSE through cupyx.scipy.sparse ------------------------------------------
    def sparse_rows(self, x: Any, dtype: Any) -> Array:
        """``x`` as a cupyx CSR matrix of ``dtype`` on this device: a SciPy matrix converted on the host (CSR,
        ``dtype``) and uploaded once; a cupyx one converted here (no copy when it is one already)."""
        from cupyx.scipy import sparse

        with self._on_device():
            if not sparse.issparse(x):
                return sparse.csr_matrix(super().sparse_rows(x, dtype))
            x = x.tocsr()
            return x if x.dtype == dtype else x.astype(dtype)

    def sparse_forward(self, a: Array, W: Array, out: Array) -> Array:
        with self._on_device():
            return super().sparse_forward(a, W, out)

    def sparse_weight_gradient(self, delta: Array, a: Array, out: Array) -> Array:
        with self._on_device():
            return super().sparse_weight_gradient(delta, a, out)

    # ---- kernel launches ----------------------------------------------------------------------------
    def _launch(self, name: str, threads: int, args: tuple) -> None:
        """Run kernel ``name`` on this device with enough blocks for ``threads`` (grid-stride beyond)."""
        blocks = min(-(-threads // BLOCK), self._max_blocks)
        if blocks == 0:
            return
        with self._on_device():
            kernels.get_function(self.index, name)((blocks,), (BLOCK,), args)

    def _suffix(self, *arrays: Array) -> str:
        """"f32" or "f64" for C-contiguous CuPy arrays of one float dtype; ValueError otherwise."""
        dtype = arrays[0].dtype
        for x in arrays:
            if not isinstance(x, cupy.ndarray):
                raise ValueError(f"the CUDA backend needs CuPy arrays on {self.device}, got "
                                 f"{type(x).__name__}")
            if x.dtype != dtype:
                raise ValueError(f"arrays of one step must share a dtype; got {dtype} and {x.dtype}")
            if not x.flags.c_contiguous:
                raise ValueError(f"the CUDA kernels need C-contiguous arrays; got strides {x.strides} "
                                 f"for shape {x.shape}")
        suffix = _SUFFIX.get(dtype)
        if suffix is None:
            raise ValueError(f"the CUDA kernels support float32 and float64, not {dtype}")
        return suffix

    @staticmethod
    def _rows_cols(x: Array) -> tuple[int, int]:
        cols = x.shape[-1] if x.ndim else 1
        return (x.size // cols if cols else 0), cols

    # ---- forward ------------------------------------------------------------------------------------
    def bias_activation(self, z: Array, b: Array, activation: Activation, a: Array) -> Array:
        """z += b (row-broadcast) and a = σ(z) in one pass (row-wise for softmax)."""
        act = kernels.ACTIVATION_IDS.get(activation.name)
        if activation.elementwise and act is None:
            with self._on_device():
                return super().bias_activation(z, b, activation, a)
        suffix = self._suffix(z, b, a)
        rows, cols = self._rows_cols(z)
        if a.shape != z.shape or b.size != cols:
            raise ValueError(f"bias_activation: z {z.shape}, b {b.shape} and a {a.shape} do not match")
        if activation.elementwise:
            self._launch(f"gpubp_bias_activation_{suffix}", z.size,
                         (np.int32(act), z, b, a, np.uint64(rows), np.uint64(cols)))
        else:
            self._launch(f"gpubp_bias_softmax_{suffix}", rows * 32,
                         (z, b, a, np.uint64(rows), np.uint64(cols)))
        return a

    # ---- backward -----------------------------------------------------------------------------------
    def backprop_activation(self, activation: Activation, z: Array, a: Array, g: Array,
                            out: Array) -> Array:
        """out = σ′(z) ⊙ g in one pass (softmax: its Jacobian, one warp a row); ``out`` may be ``g``."""
        if not activation.elementwise:
            suffix = self._suffix(a, g, out)
            rows, cols = self._rows_cols(a)
            self._launch(f"gpubp_softmax_backward_{suffix}", rows * 32,
                         (a, g, out, np.uint64(rows), np.uint64(cols)))
            return out
        act = kernels.ACTIVATION_IDS.get(activation.name)
        if act is None:
            with self._on_device():
                return super().backprop_activation(activation, z, a, g, out)
        if z is None:
            if activation.needs_z:
                raise ValueError(f"{activation.name}′ needs z; got z=None")
            z = a  # σ′ from a alone never reads z
        suffix = self._suffix(z, a, g, out)
        if not z.size == a.size == g.size == out.size:
            raise ValueError(f"backprop_activation: z {z.shape}, a {a.shape}, g {g.shape} and out "
                             f"{out.shape} differ in size")
        per_thread = 16 // g.itemsize  # one 16-byte vector per thread and loop step
        self._launch(f"gpubp_backprop_{suffix}", -(-g.size // per_thread),
                     (np.int32(act), z, a, g, out, np.uint64(g.size)))
        return out

    def output_delta(self, cost: Cost, activation: Activation, z: Array, a: Array, target: Array,
                     out: Array, loss_sum: Array | None = None) -> Array:
        """δᴸ and Σₓ Cₓ (into ``loss_sum``) in one pass for the built-in costs (see Ops.output_delta)."""
        act = kernels.ACTIVATION_IDS.get(activation.name)
        if cost_id(cost) is None or (activation.elementwise and act is None):
            with self._on_device():
                return super().output_delta(cost, activation, z, a, target, out, loss_sum)
        stable = is_stable(cost, activation)
        if z is None and activation.needs_z and not stable:
            raise ValueError(f"the output delta through {activation.name}′ needs z; got z=None")
        # σ′ is applied in the kernel for elementwise σ; identity's σ′ = 1 leaves a − y or ∇ₐC as is
        self._output_kernel(cost, act if activation.elementwise and not stable else _IDENTITY, stable,
                            z, a, target, out, loss_sum)
        if not activation.elementwise and not stable:  # softmax with another cost: apply its Jacobian
            self.backprop_activation(activation, z, a, out, out)
        return out

    def cost_sum(self, cost: Cost, a: Array, target: Array) -> Array:
        """Σₓ Cₓ(a, y) as a 0-d array on this device (one pass for the built-in costs)."""
        if cost_id(cost) is None:
            with self._on_device():
                return super().cost_sum(cost, a, target)
        total = self.zeros((), a.dtype)
        self._output_kernel(cost, _IDENTITY, False, None, a, target, None, total)
        return total

    def _output_kernel(self, cost: Cost, act: int, stable: bool, z: Array | None, a: Array,
                       target: Array, out: Array | None, loss_sum: Array | None) -> None:
        """Launch gpubp_output_delta: out = cost_grad ⊙ σ′ (when ``out``), loss into ``loss_sum``."""
        suffix = self._suffix(a, *(x for x in (z, out) if x is not None))
        rows, cols = self._rows_cols(a)
        if out is not None and out.shape != a.shape:
            raise ValueError(f"output delta buffer {out.shape} does not match outputs {a.shape}")
        acc = suffix
        if loss_sum is not None:
            ok = isinstance(loss_sum, cupy.ndarray) and loss_sum.size == 1
            acc = _SUFFIX.get(loss_sum.dtype) if ok else None
            if acc is None or (suffix, acc) == ("f64", "f32"):
                raise ValueError(f"loss_sum must be a one-element CuPy array of float64 (or float32 for "
                                 f"a float32 network); got {type(loss_sum).__name__} "
                                 f"{getattr(loss_sum, 'dtype', '')}")
        with self._on_device():
            if target.ndim == 1 and a.ndim == 2:
                if target.shape[0] != rows or target.dtype.kind not in "iu":
                    raise ValueError(f"labels must be integers of shape ({rows},); got {target.dtype} "
                                     f"{target.shape}")
                labels, y = cupy.ascontiguousarray(self.asarray(target, dtype=np.int64)), _NULL
            else:
                if target.shape != a.shape:
                    raise ValueError(f"targets of shape {target.shape} do not match outputs {a.shape}")
                labels, y = _NULL, cupy.ascontiguousarray(self.asarray(target, dtype=a.dtype))
        eps = a.dtype.type(kernels.LOG_EPS.get(a.dtype, 1e-7))
        self._launch(f"gpubp_output_delta_{suffix}_{acc}", a.size,
                     (np.int32(act), np.int32(cost_id(cost)), np.int32(stable),
                      _NULL if z is None else z, a, y, labels, _NULL if out is None else out,
                      _NULL if loss_sum is None else loss_sum, eps, np.uint64(rows), np.uint64(cols)))

    # ---- optimizers over the flat parameter buffer ------------------------------------------------
    def sgd_update(self, params: Array, grad: Array, lr: float, grad_scale: float,
                   weight_decay: float, n_weights: int) -> None:
        """w ← w − η (s·g + λw) in one pass (``grad`` is left as it was)."""
        suffix, t = self._suffix(params, grad), params.dtype.type
        self._launch(f"gpubp_sgd_update_{suffix}", params.size,
                     (params, grad, np.uint64(params.size), np.uint64(n_weights),
                      *map(t, kernels.sgd_scalars(lr, grad_scale, weight_decay))))

    def velocity_update(self, kind: str, params: Array, grad: Array, velocity: Array, lr: float,
                        momentum: float, grad_scale: float, weight_decay: float, n_weights: int) -> None:
        """Momentum or Nesterov (see Ops.velocity_update) as the one-pass kernel gpubp_{kind}_update."""
        suffix, t = self._suffix(params, grad, velocity), params.dtype.type
        self._launch(f"gpubp_{kind}_update_{suffix}", params.size,
                     (params, grad, velocity, np.uint64(params.size), np.uint64(n_weights),
                      *map(t, kernels.velocity_scalars(lr, momentum, grad_scale, weight_decay))))

    def adam_update(self, params: Array, grad: Array, m: Array, v: Array, lr: float, beta1: float,
                    beta2: float, eps: float, step: int, grad_scale: float, weight_decay: float,
                    n_weights: int) -> None:
        """Adam (see Ops.adam_update) in one pass; the bias corrections are folded into α̂ and ε̂."""
        suffix, t = self._suffix(params, grad, m, v), params.dtype.type
        self._launch(f"gpubp_adam_update_{suffix}", params.size,
                     (params, grad, m, v, np.uint64(params.size), np.uint64(n_weights),
                      *map(t, kernels.adam_scalars(lr, beta1, beta2, eps, step, grad_scale, weight_decay))))

    # ---- compiled training: CUDA graphs (gpubp.backend.cuda_program) -------------------------------
    def graph_unavailable_reason(self) -> str | None:
        """None where chunks of training steps run as CUDA graphs on this GPU, else why not (then the trainer
        launches every kernel from Python). Checked once: a tiny capture, launched and its result read; env
        GPUBP_CUDA_GRAPHS=0 turns them off."""
        from .cuda_program import graph_unavailable_reason, graphs_turned_off

        off = graphs_turned_off()
        if off is None and self._graph_reason is _UNKNOWN:
            with self._on_device():
                self._graph_reason = graph_unavailable_reason(self)
        return off or self._graph_reason

    def training_program(self, plan: ProgramPlan) -> tuple[TrainingProgram | None, str]:
        """(a CUDA graph program for ``plan``, "") where its steps can be captured, else (None, why not)."""
        from .cuda_program import CudaGraphProgram, plan_unsupported_reason

        reason = self.graph_unavailable_reason() or plan_unsupported_reason(self, plan)
        if reason is not None:
            return None, reason
        try:
            with self._on_device():
                return CudaGraphProgram(self, plan), ""
        except Exception as exc:  # the CUDA driver, cuBLAS or CuPy refused the capture: run eagerly
            return None, f"capturing the training steps as a CUDA graph failed ({type(exc).__name__}: {exc})"

    # ---- data ---------------------------------------------------------------------------------------
    def take_rows(self, x: Array, index: Array, out: Array) -> Array:
        """out = x[index] on the device (cupy.take has no ``mode``; its indices wrap, as NumPy's "wrap")."""
        with self._on_device():
            return cupy.take(x, index, axis=0, out=out)

    def permutation(self, n: int, rng: np.random.Generator) -> Array:
        """A random order of 0…n−1 drawn on the device, seeded from ``rng`` (no host transfer)."""
        seed = int(rng.integers(2 ** 63))
        with self._on_device():
            return cupy.random.RandomState(seed).permutation(n)
