"""The fused CPU backend (NumbaOps) against the NumPy reference, kernel by kernel, and how it is chosen.

The same cases as the CUDA kernel tests (tests/test_gpu.py): every activation and cost, float32 and
float64, empty, one-element, odd and larger shapes, in place; and what falls back to the reference
(user-defined activations and costs, non-contiguous arrays, mixed dtypes).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from kernel_checks import apply_update, assert_delta_close

import gpubp
from gpubp.activations import ACTIVATIONS, SOFTMAX
from gpubp.backend import DeviceError, device, get_ops
from gpubp.backend.numpy_ops import NumpyOps
from gpubp.costs import COSTS, CustomCost

if device.numba_unavailable_reason() is not None and not os.environ.get("CI"):
    pytest.skip(device.numba_unavailable_reason(), allow_module_level=True)

from gpubp.backend.numba_ops import NumbaOps  # noqa: E402

DTYPES = (np.float32, np.float64)
#: Numba's libm tanh/exp/log1p against NumPy's own: an ulp or two, amplified by GELU′'s cancellation
TOL = {np.float32: dict(rtol=1e-5, atol=5e-6), np.float64: dict(rtol=1e-12, atol=1e-14)}
OUTPUTS = list(ACTIVATIONS.values()) + [SOFTMAX]
SHAPES = [(0, 5), (1, 1), (3, 7), (37, 33)]


def dtype_id(d) -> str:
    return np.dtype(d).name


@pytest.fixture(scope="module")
def fused():
    return NumbaOps()


@pytest.fixture(scope="module")
def ref():
    return NumpyOps()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("act", OUTPUTS, ids=str)
def test_bias_activation(fused, ref, rng, act, dtype, shape):
    z = (rng.standard_normal(shape) * 4).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    z_ref, a_ref = z.copy(), np.empty_like(z)
    ref.bias_activation(z_ref, b, act, a_ref)
    a = np.zeros_like(z)
    assert fused.bias_activation(z, b, act, a) is a
    np.testing.assert_allclose(z, z_ref, **TOL[dtype])
    np.testing.assert_allclose(a, a_ref, **TOL[dtype])


@pytest.mark.parametrize("n", [0, 1, 5, 1027])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("act", list(ACTIVATIONS.values()), ids=str)
def test_backprop_activation(fused, ref, rng, act, dtype, n):
    z = (rng.standard_normal((n, 3)) * 4).astype(dtype)
    a = act.f(np, z, np.empty_like(z))
    g = rng.standard_normal(z.shape).astype(dtype)
    expected = ref.backprop_activation(act, z, a, g.copy(), np.empty_like(g))
    out = np.zeros_like(g)
    assert fused.backprop_activation(act, z, a, g, out) is out
    np.testing.assert_allclose(out, expected, **TOL[dtype])
    fused.backprop_activation(act, None if not act.needs_z else z, a, g, g)  # in place, z unused or given
    np.testing.assert_allclose(g, expected, **TOL[dtype])


@pytest.mark.parametrize("shape", [(0, 3), (1, 1), (5, 7), (9, 70)])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_softmax_backward(fused, ref, rng, dtype, shape):
    a = SOFTMAX.f(np, rng.standard_normal(shape).astype(dtype), np.empty(shape, dtype))
    g = rng.standard_normal(shape).astype(dtype)
    expected = ref.backprop_activation(SOFTMAX, None, a, g.copy(), np.empty_like(g))
    fused.backprop_activation(SOFTMAX, None, a, g, g)
    np.testing.assert_allclose(g, expected, **TOL[dtype])


# ---- whole layers: Numba's BLAS call and the fused pass ---------------------------------------------
LAYER_SHAPES = [(0, 4, 3), (1, 1, 1), (5, 7, 3), (37, 33, 9)]


def layer_data(rng, dtype, shape):
    """x = aˡ⁻¹ (m, n_in), W (n_out, n_in), b (n_out,) and δ (m, n_out) of one layer."""
    m, n_in, n_out = shape
    return (rng.standard_normal((m, n_in)).astype(dtype), rng.standard_normal((n_out, n_in)).astype(dtype),
            rng.standard_normal(n_out).astype(dtype), rng.standard_normal((m, n_out)).astype(dtype))


@pytest.mark.parametrize("shape", LAYER_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("act", OUTPUTS, ids=str)
def test_layer_forward(fused, ref, rng, act, dtype, shape):
    x, W, b, _ = layer_data(rng, dtype, shape)
    z_ref, a_ref = np.empty((shape[0], shape[2]), dtype), np.empty((shape[0], shape[2]), dtype)
    ref.layer_forward(x, W, b, act, z_ref, a_ref)
    z, a = np.zeros_like(z_ref), np.zeros_like(a_ref)
    assert fused.layer_forward(x, W, b, act, z, a) is a
    np.testing.assert_allclose(z, z_ref, **TOL[dtype])
    np.testing.assert_allclose(a, a_ref, **TOL[dtype])


@pytest.mark.parametrize("shape", LAYER_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("act", list(ACTIVATIONS.values()), ids=str)
def test_layer_backward(fused, ref, rng, act, dtype, shape):
    """BP2 from δˡ⁺¹ (m, n_out) and Wˡ⁺¹ (n_out, n_in) into δˡ (m, n_in); z may be omitted where σ′ needs
    only a."""
    _, W, _, delta = layer_data(rng, dtype, shape)
    z = (rng.standard_normal((shape[0], shape[1])) * 3).astype(dtype)
    a = act.f(np, z, np.empty_like(z))
    expected = ref.layer_backward(delta, W, act, z, a, np.empty_like(z))
    out = np.zeros_like(z)
    assert fused.layer_backward(delta, W, act, z, a, out) is out
    np.testing.assert_allclose(out, expected, **TOL[dtype])
    if not act.needs_z:
        out[...] = 0
        fused.layer_backward(delta, W, act, None, a, out)
        np.testing.assert_allclose(out, expected, **TOL[dtype])


@pytest.mark.parametrize("shape", LAYER_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_layer_gradients(fused, ref, rng, dtype, shape):
    x, W, b, delta = layer_data(rng, dtype, shape)
    nabla_w, nabla_b = np.empty_like(W), np.empty_like(b)
    ref.layer_gradients(delta, x, nabla_w, nabla_b)
    got_w, got_b = np.full_like(W, np.nan), np.full_like(b, np.nan)
    fused.layer_gradients(delta, x, got_w, got_b)
    np.testing.assert_allclose(got_w, nabla_w, **TOL[dtype])
    np.testing.assert_array_equal(got_b, nabla_b)  # rows added in NumPy's order


def test_only_small_layers_call_blas_from_numba(fused, rng, monkeypatch):
    """Up to cpu_kernels.SMALL_MATMUL multiply-adds (what OpenBLAS runs on one thread) a layer call is one
    compiled call; above it the matmul is NumPy's, so that SciPy's BLAS threads never take turns with
    NumPy's."""
    from gpubp.backend import cpu_kernels

    shapes = []

    def numpy_gemm(self, a, b, out):
        shapes.append(a.shape)
        return np.matmul(a, b, out=out)

    monkeypatch.setattr(NumbaOps, "gemm", numpy_gemm)
    relu = ACTIVATIONS["relu"]
    for (m, n_in, n_out), numpy_calls in [((8, 64, 512), 0), ((8, 64, 513), 3)]:
        shapes.clear()
        x, W, b, delta = layer_data(rng, np.float64, (m, n_in, n_out))
        assert (m * n_in * n_out > cpu_kernels.SMALL_MATMUL) == bool(numpy_calls)
        z, a = np.empty((m, n_out)), np.empty((m, n_out))
        fused.layer_forward(x, W, b, relu, z, a)
        fused.layer_backward(delta, W, relu, None, x.copy(), np.empty_like(x))
        fused.layer_gradients(delta, x, np.empty_like(W), np.empty_like(b))
        assert len(shapes) == numpy_calls


def test_layers_outside_the_kernels_run_the_reference(fused, ref, rng, monkeypatch):
    """Strided or mixed-dtype operands, a user-defined activation, wrong shapes (NumPy's error, nothing
    written), and no SciPy (no BLAS for Numba): the results and errors of Ops."""
    from gpubp.backend import numba_ops

    x, W, b, delta = layer_data(rng, np.float64, (6, 8, 4))
    tanh = ACTIVATIONS["tanh"]

    def forward(ops, x, W, b, act=tanh):
        z, a = np.empty((len(x), len(W))), np.empty((len(x), len(W)))
        ops.layer_forward(x, W, b, act, z, a)
        return z, a

    wide = rng.standard_normal((6, 16))
    for args in [(wide[:, ::2], W, b), (x, W.astype(np.float32), b), (x, W, b.astype(np.float32))]:
        for got, expected in zip(forward(fused, *args), forward(ref, *args)):
            np.testing.assert_allclose(got, expected, **TOL[np.float64])  # σ: the elementwise kernel

    class Cube(type(tanh)):
        name = "cube"

        def f(self, xp, z, out):
            return xp.power(z, 3, out=out)

    for got, expected in zip(forward(fused, x, W, b, Cube()), forward(ref, x, W, b, Cube())):
        np.testing.assert_array_equal(got, expected)
    narrow, z, a = np.ascontiguousarray(W[:, :5]), np.zeros((6, 4)), np.zeros((6, 4))
    with pytest.raises(ValueError, match="matmul"):
        fused.layer_forward(x, narrow, b, tanh, z, a)
    assert not z.any() and not a.any()
    out = np.zeros((6, 7))
    with pytest.raises(ValueError):
        fused.layer_backward(delta, W, tanh, out, out, out)
    assert not out.any()
    with pytest.raises(ValueError):
        fused.layer_gradients(delta, x[:5], np.empty_like(W), np.empty_like(b))
    square, d = rng.standard_normal((6, 6)), rng.standard_normal((6, 6))
    expected = ref.layer_backward(d, square, tanh, None, np.tanh(d), np.empty_like(d))
    same = d.copy()
    np.testing.assert_allclose(fused.layer_backward(same, square, tanh, None, np.tanh(d), same), expected,
                               **TOL[np.float64])  # out is δˡ⁺¹ itself: NumPy's matmul, which buffers
    monkeypatch.setattr(numba_ops, "_NUMBA_BLAS", False)
    for got, expected in zip(forward(fused, x, W, b), forward(ref, x, W, b)):
        np.testing.assert_allclose(got, expected, **TOL[np.float64])


@pytest.mark.parametrize("labels", [False, True], ids=["dense", "labels"])
@pytest.mark.parametrize("dtype, acc", [(np.float32, np.float32), (np.float32, np.float64),
                                        (np.float64, np.float64)], ids=["f32", "f32-f64sum", "f64"])
@pytest.mark.parametrize("cost", list(COSTS.values()), ids=str)
@pytest.mark.parametrize("act", OUTPUTS, ids=str)
def test_output_delta_and_loss(fused, ref, rng, act, cost, dtype, acc, labels):
    z = (rng.standard_normal((13, 5)) * 3).astype(dtype)
    a = act.f(np, z, np.empty_like(z))
    y = rng.integers(0, 5, size=13) if labels else rng.random(z.shape).astype(dtype)
    delta, loss = np.empty_like(a), np.zeros((1,), dtype)
    with np.errstate(all="ignore"):
        ref.output_delta(cost, act, z, a, y, delta, loss)
        out, got_loss = np.zeros_like(a), np.full((1,), 0.25, acc)
        assert fused.output_delta(cost, act, z, a, y, out, got_loss) is out
        total = fused.cost_sum(cost, a, y)
    rtol, atol = TOL[dtype]["rtol"], TOL[dtype]["atol"]
    assert_delta_close(out, delta, cost, a, y, rtol, atol)
    np.testing.assert_allclose(got_loss - 0.25, loss, rtol=rtol + 65 * np.finfo(dtype).eps, atol=65 * atol)
    np.testing.assert_allclose(total, loss[0], rtol=rtol + 65 * np.finfo(dtype).eps, atol=65 * atol)
    assert np.asarray(total).dtype == dtype


@pytest.mark.parametrize("n", [0, 7, 1001])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("method", ["sgd", "momentum", "nesterov", "adam"])
def test_optimizer_updates_equal_the_reference(fused, ref, rng, method, dtype, weight_decay, n):
    """The fused updates do NumPy's arithmetic in NumPy's order: equal to the last bit, except float32 Adam,
    whose bias-corrected step and ε are rounded to float32 before use (NumPy: after), an ulp apart."""
    host = [rng.standard_normal(n).astype(dtype) for _ in range(4)]
    host[3] = np.abs(host[3])  # Adam's v ≥ 0
    mine = [x.copy() for x in host]
    grad = host[1].copy()
    hyper = dict(lr=0.05, grad_scale=0.25, weight_decay=weight_decay, n_weights=(2 * n) // 3)
    apply_update(ref, method, *host, hyper)
    apply_update(fused, method, *mine, hyper)
    for i in (0, 2, 3):
        if method == "adam" and dtype is np.float32:
            np.testing.assert_allclose(mine[i], host[i], rtol=4 * np.finfo(dtype).eps, atol=1e-7)
        else:
            np.testing.assert_array_equal(mine[i], host[i])
    np.testing.assert_array_equal(mine[1], grad)  # the fused kernels only read the gradient


def test_what_the_kernels_do_not_cover_runs_the_reference(fused, ref, rng):
    """Non-contiguous views, mixed dtypes, user-defined activations and costs: the results of Ops."""
    z = rng.standard_normal((6, 8))
    strided, b = z[:, ::2], rng.standard_normal(4)
    a_ref, a = np.empty((6, 4)), np.empty((6, 4))
    ref.bias_activation(strided.copy(), b, ACTIVATIONS["tanh"], a_ref)
    fused.bias_activation(strided, b, ACTIVATIONS["tanh"], a)
    np.testing.assert_array_equal(a, a_ref)
    mixed = fused.bias_activation(z.copy(), b.repeat(2).astype(np.float32), ACTIVATIONS["relu"],
                                  np.empty_like(z))
    np.testing.assert_array_equal(mixed, np.maximum(z + b.repeat(2).astype(np.float32), 0))
    cost = CustomCost(lambda a, y: (a * a).sum(1), lambda a, y: 2 * a, needs_target=False)
    out, expected = np.empty_like(z), np.empty_like(z)
    zs = ACTIVATIONS["tanh"].f(np, z, np.empty_like(z))
    fused.output_delta(cost, ACTIVATIONS["tanh"], z, zs, None, out)
    ref.output_delta(cost, ACTIVATIONS["tanh"], z, zs, None, expected)
    np.testing.assert_array_equal(out, expected)
    assert fused.cost_sum(cost, zs, None) == ref.cost_sum(cost, zs, None)


def test_a_training_step_allocates_nothing_in_the_kernels(fused, rng):
    """The fused steps write into the given buffers: no temporaries at all (NumPy's reference has some)."""
    import tracemalloc

    z, b, a = rng.standard_normal((256, 300)), rng.standard_normal(300), np.empty((256, 300))
    x, W, delta = rng.standard_normal((256, 50)), rng.standard_normal((300, 50)), np.empty((256, 50))
    nabla_w, gelu = np.empty_like(W), ACTIVATIONS["gelu"]

    def step():
        fused.bias_activation(z, b, gelu, a)
        fused.backprop_activation(gelu, z, a, a, a)
        fused.layer_forward(x, W, b, gelu, z, a)
        fused.layer_gradients(a, x, nabla_w, b)
        fused.layer_backward(a, W, ACTIVATIONS["relu"], None, x, delta)

    step()
    tracemalloc.start()
    step()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4096, f"{peak} bytes allocated"


# ---- which backend device="cpu" gets ----------------------------------------------------------------
def test_cpu_uses_the_fused_backend_when_numba_is_installed(monkeypatch):
    monkeypatch.delenv("GPUBP_CPU_BACKEND", raising=False)
    assert isinstance(gpubp.Network([2, 2], device="cpu").ops, NumbaOps)
    assert get_ops("cpu").name == "numba" and get_ops("cpu") is get_ops("CPU")


def test_env_forces_either_backend(monkeypatch):
    monkeypatch.setenv("GPUBP_CPU_BACKEND", "numpy")
    assert type(get_ops("cpu")) is NumpyOps
    monkeypatch.setenv("GPUBP_CPU_BACKEND", "Numba")
    assert type(get_ops("cpu")) is NumbaOps
    monkeypatch.setenv("GPUBP_CPU_BACKEND", "fortran")
    with pytest.raises(ValueError, match="GPUBP_CPU_BACKEND='fortran' is not a CPU backend; expected one "
                                         "of numba, numpy or auto"):
        gpubp.Network([2, 2], device="cpu")


def test_without_numba_cpu_falls_back_to_numpy(monkeypatch):
    monkeypatch.setattr(device, "numba_unavailable_reason", lambda: "No module named 'numba'")
    monkeypatch.delenv("GPUBP_CPU_BACKEND", raising=False)
    assert type(get_ops("cpu")) is NumpyOps
    monkeypatch.setenv("GPUBP_CPU_BACKEND", "numba")
    with pytest.raises(DeviceError, match=r"GPUBP_CPU_BACKEND=numba: .*No module named 'numba'"):
        get_ops("cpu")


def test_info_names_the_cpu_backend(monkeypatch, capsys):
    from gpubp.cli import main

    monkeypatch.delenv("GPUBP_CPU_BACKEND", raising=False)
    assert main(["info"]) == 0
    assert "cpu:       numba " in capsys.readouterr().out
    monkeypatch.setenv("GPUBP_CPU_BACKEND", "numpy")
    assert main(["info"]) == 0
    assert "cpu:       numpy: the NumPy reference (GPUBP_CPU_BACKEND=numpy)" in capsys.readouterr().out
