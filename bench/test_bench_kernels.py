"""The backward kernel δ = σ′ ⊙ g on one GPU: fused vs the unfused CuPy expression vs a device copy.

For n fp32 elements (1M … 256M), three ways to reach the same bytes:
  fused     CupyOps.backprop_activation: one kernel reads a (or z) and g, writes δ: 3·4n bytes
  unfused   the reference expression on CuPy (Activation.df with xp=cupy, then cupy.multiply): the bytes
            of every intermediate pass; its GB/s is reported over the fused kernel's 3·4n bytes, i.e. as
            "effective" bandwidth for the same result
  copy      cudaMemcpyAsync device to device of g into δ: 2·4n bytes
GB/s comes from CUDA events around ``REPEATS`` back-to-back launches (medians of the pytest-benchmark
rounds are wall time with a synchronise, kept for reference). Targets (issue 4): fused ≥ 90 % of copy
bandwidth at ≥ 16M elements and ≥ 2.5× the unfused expression. Skipped where no usable GPU.

    python -m pytest bench/test_bench_kernels.py
"""

from __future__ import annotations

import numpy as np
import pytest

from gpubp.activations import ACTIVATIONS
from gpubp.backend import cuda_unavailable_reason, get_ops

SIZES = [1 << 20, 1 << 22, 1 << 24, 1 << 26, 1 << 28]
REPEATS = 20

pytestmark = pytest.mark.gpu


def _gpu_name(cupy) -> str:
    name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.runtime.getDevice())["name"]
    return name.decode() if isinstance(name, bytes) else name


def _event_seconds(cupy, fn) -> float:
    """Seconds per call of ``fn`` from CUDA events around REPEATS calls (after one warm-up call)."""
    fn()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    for _ in range(REPEATS):
        fn()
    stop.record()
    stop.synchronize()
    return cupy.cuda.get_elapsed_time(start, stop) / 1e3 / REPEATS


@pytest.mark.parametrize("variant", ["fused", "unfused", "copy"])
@pytest.mark.parametrize("activation", ["sigmoid", "relu", "gelu"])
@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"{n >> 20}M")
def test_backprop_kernel_bandwidth(benchmark, n, activation, variant):
    reason = cuda_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    import cupy

    ops = get_ops("cuda")
    act = ACTIVATIONS[activation]
    if cupy.cuda.Device().mem_info[0] < 7 * 4 * n:  # z, a, g, out, scratch and the check's temporaries
        pytest.skip(f"not enough free GPU memory for {n} fp32 elements")
    rng = cupy.random.default_rng(0)
    z = rng.standard_normal(n, dtype=np.float32)
    a = act.f(cupy, z, cupy.empty_like(z))
    g = rng.standard_normal(n, dtype=np.float32)
    out = cupy.empty_like(g)
    scratch = cupy.empty_like(g)
    if variant == "fused":
        def run():
            ops.backprop_activation(act, z, a, g, out)
        moved = 3 * 4 * n  # reads z (gelu) or a, and g; writes out
    elif variant == "unfused":
        def run():
            act.df(cupy, z, a, scratch)
            cupy.multiply(scratch, g, out=out)
        moved = 3 * 4 * n  # the fused kernel's bytes: effective bandwidth for the same result
    else:
        def run():
            out.data.copy_from_device_async(g.data, 4 * n)
        moved = 2 * 4 * n
    if variant != "copy":  # the timed variants agree with the reference
        run()
        expected = act.df(cupy, z, a, cupy.empty_like(z)) * g
        cupy.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    seconds = _event_seconds(cupy, run)

    def timed():
        run()
        cupy.cuda.get_current_stream().synchronize()

    benchmark.group = f"σ′⊙δ {activation} {n >> 20}M fp32"
    benchmark.pedantic(timed, rounds=10, warmup_rounds=1, iterations=1)
    benchmark.extra_info.update(gpu=_gpu_name(cupy), elements=n, activation=activation, variant=variant,
                                bytes=moved, event_seconds=seconds, gbps=moved / seconds / 1e9)
