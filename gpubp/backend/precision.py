"""The precision of a network's matmuls: the products of zˡ = aˡ⁻¹Wˡᵀ (forward), BP2's δˡ⁺¹Wˡ⁺¹ and BP4's
δᵀa, chosen per network (``Network(..., matmul_precision=...)``):

- "fp32" (the default): full precision of the network's dtype. On a GPU, gpubp calls cuBLAS with an explicit
  compute type (CUBLAS_COMPUTE_32F, or 64F for float64) whatever the environment says.
- "tf32": a float32 network's GPU matmuls on TF32 tensor cores (CUBLAS_COMPUTE_32F_FAST_TF32): each operand
  keeps 10 of float32's 23 mantissa bits, sums stay float32. Faster on GPUs of compute capability 8.0 and
  later (older ones compute in float32 anyway); float64 networks refuse it. The CPU backends compute float32
  products in float32 whatever the choice (the choice is kept with the model, so a "tf32" model moved to the
  CPU and back trains in TF32 again).

The environment changes neither choice: CUPY_TF32 switches only CuPy's own float32 matmuls (``cupy.matmul``,
``@``) to TF32, for the whole process (``tf32_matmuls``), and NVIDIA_TF32_OVERRIDE=0 makes cuBLAS compute
"tf32" networks' matmuls in float32 too.
"""

from __future__ import annotations

import os
from typing import Any

TF32_ENV = "CUPY_TF32"
#: NVIDIA's switch: "0" turns TF32 off in cuBLAS for the whole process, whatever a program asks for
OVERRIDE_ENV = "NVIDIA_TF32_OVERRIDE"
FP32, TF32 = "fp32", "tf32"
MATMUL_PRECISIONS = (FP32, TF32)
#: TF32 tensor cores came with Ampere (compute capability 8.0)
TF32_MIN_CAPABILITY = 80


def check_matmul_precision(precision: Any, dtype: Any) -> str:
    """``precision`` ("fp32" or "tf32", any case) for a network of ``dtype`` (a NumPy dtype); ValueError naming
    the choices, or why "tf32" does not apply to a float64 network."""
    name = precision.strip().lower() if isinstance(precision, str) else None
    if name not in MATMUL_PRECISIONS:
        raise ValueError(f"matmul_precision must be one of {', '.join(map(repr, MATMUL_PRECISIONS))}; "
                         f"got {precision!r}")
    if name == TF32 and dtype.name != "float32":
        raise ValueError(f"matmul_precision='tf32' applies to float32 networks only (TF32 tensor cores read "
                         f"float32 operands); a {dtype.name} network computes its matmuls in {dtype.name}: "
                         "use matmul_precision='fp32' or dtype='float32'")
    return name


def tf32_matmuls() -> bool:
    """Whether CuPy's own float32 matmuls run in TF32: CuPy's rule (``int(CUPY_TF32) > 0``, read at its first
    float32 matmul, for the whole process). gpubp's matmuls do not follow it: each network has its own
    ``matmul_precision``."""
    value = os.environ.get(TF32_ENV, "0").strip()
    return value.lstrip("+-").isdigit() and int(value) > 0


def tf32_turned_off() -> bool:
    """Whether env NVIDIA_TF32_OVERRIDE=0 keeps cuBLAS from using TF32 in this process."""
    return os.environ.get(OVERRIDE_ENV, "").strip() == "0"


def describe_gpu_matmuls(device: str, capability: int) -> str:
    """What "fp32" and "tf32" networks get on GPU ``device`` of compute ``capability`` (e.g. 90) under the
    current environment (``gpubp info``)."""
    if tf32_turned_off():
        tf32 = f"float32 ({OVERRIDE_ENV}=0 turns TF32 off)"
    elif capability < TF32_MIN_CAPABILITY:
        tf32 = f"float32 (compute capability {capability / 10:.1f}: TF32 needs 8.0)"
    else:
        tf32 = "TF32 tensor cores (10-bit mantissa, results to ~1e-3)"
    return f"{device} fp32 networks float32, tf32 networks {tf32}"


def describe_cupy_matmuls() -> str:
    """What CUPY_TF32 does here: it changes CuPy's own float32 matmuls, not gpubp's."""
    if tf32_matmuls():
        return (f"{TF32_ENV}={os.environ[TF32_ENV].strip()}: CuPy's own float32 matmuls in TF32; gpubp's follow "
                "each network's matmul_precision")
    return f"{TF32_ENV} unset or 0: CuPy's own float32 matmuls in float32"
