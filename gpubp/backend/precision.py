"""The precision of float32 matmuls on the GPU: CuPy runs them on TF32 tensor cores where the environment
says so (CUPY_TF32), which keeps 10 of float32's 23 mantissa bits in the products of zˡ = aˡ⁻¹Wˡᵀ (BP2's
δˡ⁺¹Wˡ⁺¹ and BP4's δᵀa as well)."""

from __future__ import annotations

import os

TF32_ENV = "CUPY_TF32"


def tf32_matmuls() -> bool:
    """Whether CuPy's float32 matmuls run in TF32: CuPy's own rule (``int(CUPY_TF32) > 0``, read at its first
    float32 matmul, so set the variable before training)."""
    value = os.environ.get(TF32_ENV, "0").strip()
    return value.lstrip("+-").isdigit() and int(value) > 0


def describe_matmul_precision() -> str:
    """What ``gpubp info`` says about float32 matmuls on the GPU."""
    if tf32_matmuls():
        return (f"float32 GPU matmuls in TF32 ({TF32_ENV}={os.environ[TF32_ENV].strip()}: 10-bit mantissa, "
                f"results to ~1e-3); unset {TF32_ENV} for full float32")
    return f"float32 GPU matmuls in full float32 ({TF32_ENV} unset or 0)"
