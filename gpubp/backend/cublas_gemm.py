"""Every matmul on a GPU: out = a @ b by cuBLAS's gemmEx with the compute type of the network's
``matmul_precision`` (gpubp.backend.precision), so that the choice holds per network whatever CUPY_TF32 makes
of CuPy's own matmuls (CuPy's switch is process-wide).

cuBLAS is column-major, and a row-major (r, c) array is, in memory, the column-major (c, r) matrix of its
transpose. So out = a·b is computed as outᵀ = bᵀ·aᵀ: cuBLAS's A is our b, its B our a, its C our out (ldc = its
row length). An operand whose rows are contiguous is handed over as is ("N": memory holds xᵀ column by column,
ld = its row stride); one whose columns are contiguous, a transposed view such as Wᵀ or δᵀ, with "T" (memory
holds x column by column, ld = its column stride). Nothing is allocated for such operands, so the call can
be captured in a CUDA graph; α = 1 and β = 0 are read from host memory when the call is made (a captured
graph keeps their values).
"""

from __future__ import annotations

from typing import Any

import cupy
import numpy as np
from cupy_backends.cuda.libs import cublas

from .precision import FP32, TF32

Array = Any
#: cublasMath_t CUBLAS_TF32_TENSOR_OP_MATH (cublas_api.h; CuPy does not name it): a handle in this mode may
#: run CUBLAS_COMPUTE_32F on TF32 tensor cores. The low four bits of a math mode hold the mode, the others flags
TF32_TENSOR_OP_MATH, MODE_BITS = 3, 0xF
F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
#: the cuBLAS compute type of each (dtype, matmul_precision)
COMPUTE_TYPES = {(F32, FP32): cublas.CUBLAS_COMPUTE_32F, (F32, TF32): cublas.CUBLAS_COMPUTE_32F_FAST_TF32,
                 (F64, FP32): cublas.CUBLAS_COMPUTE_64F}
_DATA_TYPES = {F32: cupy.cuda.runtime.CUDA_R_32F, F64: cupy.cuda.runtime.CUDA_R_64F}
#: α = 1 and β = 0 in each compute type's scalar type (float for 32F, double for 64F: the arrays' dtype)
_ONE = {dtype: np.ones(1, dtype) for dtype in _DATA_TYPES}
_ZERO = {dtype: np.zeros(1, dtype) for dtype in _DATA_TYPES}


def gemm(a: Array, b: Array, out: Array, precision: str = FP32) -> Array:
    """out = a @ b for 2-D CuPy arrays of one dtype (float32, or float64 with "fp32") on the current device,
    in ``precision``; ``out`` is C-contiguous and overlaps neither operand. ValueError otherwise."""
    _check(a, b, out, precision)
    (m, k), n = a.shape, b.shape[1]
    if m == 0 or n == 0:
        return out
    if k == 0:
        out.fill(0)
        return out
    a, op_a, ld_a = _operand(a)
    b, op_b, ld_b = _operand(b)
    dtype, handle = out.dtype, cupy.cuda.device.get_cublas_handle()
    mode = cublas.getMathMode(handle)
    pin = precision == FP32 and mode & MODE_BITS == TF32_TENSOR_OP_MATH  # someone's TF32 mode on the handle
    if pin:
        cublas.setMathMode(handle, mode & ~MODE_BITS | cublas.CUBLAS_DEFAULT_MATH)
    try:
        data = _DATA_TYPES[dtype]
        cublas.gemmEx(handle, op_b, op_a, n, m, k, _ONE[dtype].ctypes.data, b.data.ptr, data, ld_b,
                      a.data.ptr, data, ld_a, _ZERO[dtype].ctypes.data, out.data.ptr, data, n,
                      COMPUTE_TYPES[dtype, precision], cublas.CUBLAS_GEMM_DEFAULT)
    finally:
        if pin:
            cublas.setMathMode(handle, mode)
    return out


def _check(a: Array, b: Array, out: Array, precision: str) -> None:
    """ValueError unless a (m, k) · b (k, n) → out (m, n) is a matmul ``gemm`` runs as asked."""
    arrays = (a, b, out)
    if not all(isinstance(x, cupy.ndarray) and x.ndim == 2 for x in arrays):
        raise ValueError(f"gemm multiplies 2-D CuPy arrays; got {', '.join(type(x).__name__ for x in arrays)}")
    if a.shape[1] != b.shape[0] or out.shape != (a.shape[0], b.shape[1]):
        raise ValueError(f"gemm: {a.shape} @ {b.shape} does not fit out {out.shape}")
    if not a.dtype == b.dtype == out.dtype or (out.dtype, precision) not in COMPUTE_TYPES:
        raise ValueError(f"gemm runs float32 (fp32, tf32) and float64 (fp32) arrays of one dtype; got "
                         f"{a.dtype}, {b.dtype} and {out.dtype} in {precision!r}")
    if not out.flags.c_contiguous:
        raise ValueError(f"gemm's out must be C-contiguous; got strides {out.strides} for shape {out.shape}")
    device = cupy.cuda.runtime.getDevice()
    if any(x.device.id != device for x in arrays):
        raise ValueError(f"gemm on cuda:{device} got arrays of "
                         f"{', '.join(f'cuda:{x.device.id}' for x in arrays)}")
    if out.size and any(x.size and _overlap(out, x) for x in (a, b)):
        raise ValueError("gemm's out overlaps an operand: cuBLAS would read what it writes")


def _operand(x: Array) -> tuple[Array, int, int]:
    """(x, op, ld) that make cuBLAS read xᵀ, column-major, from x's memory (see the module docstring); an
    operand with neither rows nor columns contiguous is first copied to a C-contiguous one."""
    (rows, cols), (s0, s1) = x.shape, (s // x.itemsize for s in x.strides)
    if (cols == 1 or s1 == 1) and (rows == 1 or s0 >= cols):
        return x, cublas.CUBLAS_OP_N, max(s0 if rows > 1 else cols, 1)
    if (rows == 1 or s0 == 1) and (cols == 1 or s1 >= rows):
        return x, cublas.CUBLAS_OP_T, max(s1 if cols > 1 else rows, 1)
    return _operand(cupy.ascontiguousarray(x))


def _overlap(x: Array, y: Array) -> bool:
    """Whether the memory spans of two non-empty arrays overlap."""
    return _span(x)[0] < _span(y)[1] and _span(y)[0] < _span(x)[1]


def _span(x: Array) -> tuple[int, int]:
    """[first byte, last byte + 1) that array ``x`` touches."""
    low = sum((n - 1) * s for n, s in zip(x.shape, x.strides) if s < 0)
    high = sum((n - 1) * s for n, s in zip(x.shape, x.strides) if s > 0)
    return x.data.ptr + low, x.data.ptr + high + x.itemsize
