"""The CUDA backend against the NumPy reference: every kernel, full backprop, training, devices.

All tests need a usable CUDA GPU with CuPy (``@pytest.mark.gpu``; tests/conftest.py skips them with the
reason otherwise). Kernel tests run each CupyOps step and the same NumpyOps step on the same data, for every
activation and cost, float32 and float64, sizes 0, 1, odd, 16-byte-unaligned (offset views) and large.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from kernel_checks import apply_update, assert_delta_close

import gpubp
from gpubp.activations import ACTIVATIONS, SOFTMAX
from gpubp.backend import DeviceError, get_ops
from gpubp.backend import kernels
from gpubp.backend.numpy_ops import NumpyOps
from gpubp.costs import COSTS, CustomCost

pytestmark = pytest.mark.gpu

DTYPES = (np.float32, np.float64)
#: kernel vs NumPy, elementwise: the GPU's tanhf/expf are within 2 ulp, float32 flushes denormals
KERNEL_TOL = {np.float32: dict(rtol=2e-5, atol=5e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}
#: whole backprop (sums in different orders, cuBLAS): the issue's tolerances
BACKPROP_TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}
OUTPUTS = list(ACTIVATIONS.values()) + [SOFTMAX]
SHAPES = [(0, 5), (1, 1), (3, 7), (37, 33), (513, 129)]
SIZES = [0, 1, 2, 3, 5, 7, 8, 1023, 4099, (1 << 20) + 3]


def dtype_id(d) -> str:
    return np.dtype(d).name


@pytest.fixture(scope="module")
def cupy():
    import cupy

    return cupy


@pytest.fixture(scope="module")
def gpu():
    return get_ops("cuda:0")


@pytest.fixture(scope="module")
def cpu():
    return NumpyOps()


def on_gpu(cupy, host: np.ndarray, offset: int = 0):
    """``host`` on the GPU, as a view starting ``offset`` elements into a larger buffer (unaligned if > 0)."""
    buf = cupy.empty(host.size + offset, dtype=host.dtype)
    view = buf[offset:].reshape(host.shape)
    view.set(np.ascontiguousarray(host))
    return view


def close(gpu_array, expected, dtype, tol=KERNEL_TOL, what=""):
    np.testing.assert_allclose(gpubp.to_numpy(gpu_array), expected, err_msg=what, **tol[dtype])


# ---- forward --------------------------------------------------------------------------------------
@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("act", OUTPUTS, ids=str)
def test_bias_activation(cupy, gpu, cpu, rng, act, dtype, shape, offset):
    z = (rng.standard_normal(shape) * 4).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    z_cpu, a_cpu = z.copy(), np.empty_like(z)
    with np.errstate(all="ignore"):
        cpu.bias_activation(z_cpu, b, act, a_cpu)
    z_gpu, b_gpu = on_gpu(cupy, z, offset), on_gpu(cupy, b, offset)
    a_gpu = on_gpu(cupy, np.zeros_like(z), offset)
    assert gpu.bias_activation(z_gpu, b_gpu, act, a_gpu) is a_gpu
    close(z_gpu, z_cpu, dtype, what="z += b")
    close(a_gpu, a_cpu, dtype, what=f"{act}(z)")


# ---- backward -------------------------------------------------------------------------------------
@pytest.mark.parametrize("in_place", [False, True], ids=["out", "in_place"])
@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("act", list(ACTIVATIONS.values()), ids=str)
def test_backprop_activation(cupy, gpu, cpu, rng, act, dtype, n, offset, in_place):
    z = (rng.standard_normal(n) * 4).astype(dtype)
    with np.errstate(all="ignore"):
        a = act.f(np, z, np.empty_like(z))
    g = rng.standard_normal(n).astype(dtype)
    expected = cpu.backprop_activation(act, z, a, g.copy(), np.empty_like(g))
    # z aligned, a and g offset: the kernel must fall back to scalar loads when any pointer is unaligned
    z_gpu, a_gpu, g_gpu = on_gpu(cupy, z), on_gpu(cupy, a, offset), on_gpu(cupy, g, offset)
    out = g_gpu if in_place else on_gpu(cupy, np.zeros_like(g), offset)
    assert gpu.backprop_activation(act, z_gpu, a_gpu, g_gpu, out) is out
    close(out, expected, dtype, what=f"{act}′ ⊙ g")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", SHAPES)
def test_softmax_backward(cupy, gpu, cpu, rng, dtype, shape):
    z = rng.standard_normal(shape).astype(dtype)
    a = SOFTMAX.f(np, z, np.empty_like(z))
    g = rng.standard_normal(shape).astype(dtype)
    expected = cpu.backprop_activation(SOFTMAX, z, a, g.copy(), np.empty_like(g))
    g_gpu = on_gpu(cupy, g)
    gpu.backprop_activation(SOFTMAX, on_gpu(cupy, z), on_gpu(cupy, a), g_gpu, g_gpu)
    close(g_gpu, expected, dtype, what="softmax Jacobian ⊙ g")


def test_backprop_beyond_2_to_31_elements(cupy, gpu):
    """Grid-stride indexing in size_t: an array of more than 2³¹ float32, vector and scalar paths."""
    n = (1 << 31) + 4099
    if cupy.cuda.Device(0).mem_info[0] < 2 * 4 * (n + 1) + (1 << 30):
        pytest.skip("needs about 18 GB of free GPU memory")
    relu = ACTIVATIONS["relu"]
    pattern = cupy.ElementwiseKernel("", "float32 a", "a = (float)(i % 3) - 1.0f", "gpubp_test_pattern")
    buf = cupy.empty(n + 1, dtype=np.float32)
    g = cupy.empty(n + 1, dtype=np.float32)
    probe = np.array([0, 1, 2, (1 << 31) - 1, 1 << 31, (1 << 31) + 1, n - 2, n - 1])
    for offset in (0, 1):  # 16-byte aligned (float4 loads), then unaligned (scalar loads)
        a = buf[offset:offset + n]
        pattern(a)  # a[i] = i % 3 − 1: relu′ is 1 where i % 3 == 2, else 0
        out = g[offset:offset + n]
        out.fill(2.0)
        gpu.backprop_activation(relu, None, a, out, out)
        np.testing.assert_array_equal(out[cupy.asarray(probe)].get(), np.where(probe % 3 == 2, 2.0, 0.0))
        assert int(cupy.count_nonzero(out)) == len(range(2, n, 3))


# ---- output layer ---------------------------------------------------------------------------------
@pytest.mark.parametrize("labels", [False, True], ids=["dense", "labels"])
@pytest.mark.parametrize("shape", [(0, 4), (1, 1), (1, 10), (33, 10), (1000, 7)])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("cost", list(COSTS.values()), ids=str)
@pytest.mark.parametrize("act", OUTPUTS, ids=str)
def test_output_delta_and_loss(cupy, gpu, cpu, rng, act, cost, dtype, shape, labels):
    z = (rng.standard_normal(shape) * 3).astype(dtype)
    with np.errstate(all="ignore"):
        a = act.f(np, z, np.empty_like(z))
    y = rng.integers(0, shape[1], size=shape[0]) if labels else rng.random(shape).astype(dtype)
    delta = np.empty_like(a)
    loss = np.zeros((1,), dtype)
    with np.errstate(all="ignore"):
        cpu.output_delta(cost, act, z.copy(), a, y, delta, loss)
    # the loss adds a.size terms in another order: rounding grows with their number
    sum_tol = dict(rtol=KERNEL_TOL[dtype]["rtol"] + np.finfo(dtype).eps * a.size,
                   atol=KERNEL_TOL[dtype]["atol"] * max(1, a.size))
    for acc in sorted({np.dtype(dtype), np.dtype(np.float64)}, key=str):
        out, loss_gpu = on_gpu(cupy, np.zeros_like(a)), cupy.zeros((1,), acc)
        y_gpu = cupy.asarray(y)
        assert gpu.output_delta(cost, act, on_gpu(cupy, z), on_gpu(cupy, a), y_gpu, out, loss_gpu) is out
        assert_delta_close(gpubp.to_numpy(out), delta, cost, a, y, **KERNEL_TOL[dtype])
        np.testing.assert_allclose(loss_gpu.get(), loss, err_msg=f"Σ C for {act} + {cost} ({acc} sum)",
                                   **sum_tol)
        cost_total = gpu.cost_sum(cost, on_gpu(cupy, a), y_gpu)
        assert cost_total.shape == () and isinstance(cost_total, cupy.ndarray)
        np.testing.assert_allclose(cost_total.get(), loss[0], err_msg=f"cost_sum {act} + {cost}", **sum_tol)


def test_output_delta_without_loss_and_custom_cost(cupy, gpu, cpu, rng):
    """loss_sum=None writes only δ; a user-defined cost runs the reference code on CuPy arrays."""
    act = ACTIVATIONS["tanh"]
    z = rng.standard_normal((9, 4))
    a = np.tanh(z)
    cost = CustomCost(lambda a, y: (a ** 4).sum(axis=-1), lambda a, y: 4 * a ** 3, needs_target=False)
    for c in (cost, COSTS["quadratic"]):
        y = rng.random((9, 4))
        expected = cpu.output_delta(c, act, z, a, y, np.empty_like(a))
        out = cupy.empty((9, 4))
        gpu.output_delta(c, act, cupy.asarray(z), cupy.asarray(a), cupy.asarray(y), out)
        close(out, expected, np.float64)
    np.testing.assert_allclose(gpu.cost_sum(cost, cupy.asarray(a), None).get(),
                               cpu.cost_sum(cost, a, None), rtol=1e-12)


def test_output_delta_rejects_mismatched_arrays(cupy, gpu):
    quadratic, sigmoid = COSTS["quadratic"], ACTIVATIONS["sigmoid"]
    a = cupy.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="labels must be integers"):
        gpu.output_delta(quadratic, sigmoid, a, a, cupy.zeros(5, np.int64), cupy.empty_like(a))
    with pytest.raises(ValueError, match="share a dtype"):
        gpu.output_delta(quadratic, sigmoid, a, a, a, cupy.empty((4, 3), np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        gpu.backprop_activation(sigmoid, a.T, a.T, a.T, a.T)


# ---- optimizers -----------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 7, 4099])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("method", ["sgd", "momentum", "nesterov", "adam"])
def test_optimizer_updates(cupy, gpu, cpu, rng, method, dtype, weight_decay, n):
    params = rng.standard_normal(n).astype(dtype)
    grad = rng.standard_normal(n).astype(dtype)
    state = [rng.standard_normal(n).astype(dtype) for _ in range(2)]
    state[1] = np.abs(state[1])  # Adam's v ≥ 0
    n_weights = (2 * n) // 3
    hyper = dict(lr=0.05, grad_scale=0.25, weight_decay=weight_decay, n_weights=n_weights)
    host = [params.copy(), grad.copy(), *(s.copy() for s in state)]
    dev = [cupy.asarray(x) for x in (params, grad, *state)]
    for ops, (p, g, s1, s2) in ((cpu, host), (gpu, dev)):
        apply_update(ops, method, p, g, s1, s2, hyper)
    used = {"sgd": 1, "momentum": 3, "nesterov": 3, "adam": 4}[method]
    for name, d, h in zip(("params", "grad", "m/velocity", "v"), dev[:used], host[:used]):
        if name != "grad":  # the reference scales grad in place; the kernels leave it as it was
            close(d, h, dtype, what=f"{method} {name}")


# ---- data ---------------------------------------------------------------------------------------------
def test_permutation_on_device(cupy, gpu):
    first = gpu.permutation(1000, np.random.default_rng(3))
    assert isinstance(first, cupy.ndarray) and first.device.id == 0
    np.testing.assert_array_equal(np.sort(first.get()), np.arange(1000))
    np.testing.assert_array_equal(gpu.permutation(1000, np.random.default_rng(3)).get(), first.get())
    assert not np.array_equal(gpu.permutation(1000, np.random.default_rng(4)).get(), first.get())


# ---- kernels module -------------------------------------------------------------------------------
def test_compile_error_names_file_and_log(cupy, monkeypatch):
    monkeypatch.setattr(kernels, "_modules", {})
    monkeypatch.setattr(kernels, "_functions", {})
    monkeypatch.setattr(kernels, "module_source", lambda file: "this is not CUDA;\n")
    with pytest.raises(kernels.KernelCompileError, match=r"optim\.cu(.|\n)*error"):
        kernels.get_function(0, "gpubp_sgd_update_f32")


# ---- whole network ------------------------------------------------------------------------------
CONFIGS = [  # (sizes, activation, output, cost, labels)
    ([12, 16, 10, 5], "sigmoid", None, "quadratic", False),
    ([12, 16, 10, 5], "sigmoid", None, "quadratic", True),
    ([12, 16, 5], "relu", "sigmoid", "cross_entropy", True),
    ([12, 16, 10, 5], "tanh", "softmax", "log_likelihood", True),
    ([12, 9, 5], "gelu", "softmax", "quadratic", False),
    ([12, 9, 5], "mish", "identity", "quadratic", False),
    ([12, 9, 5], "leaky_relu", "softmax", "cross_entropy", True),
    ([12, 9, 5], "swish", "softplus", "quadratic", True),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c[1]}-{c[2]}-{c[3]}-{'labels' if c[4] else 'dense'}")
def test_backprop_cpu_vs_gpu(cupy, rng, config, dtype):
    sizes, activation, output, cost, labels = config
    X = rng.standard_normal((64, sizes[0]))
    Y = rng.integers(0, sizes[-1], 64) if labels else rng.random((64, sizes[-1]))
    nets = [gpubp.Network(sizes, activation=activation, output=output, cost=cost, device=device,
                          dtype=np.dtype(dtype).name, seed=7) for device in ("cpu", "cuda:0")]
    cpu_w, cpu_b, cpu_d = nets[0].backprop(X, Y, return_deltas=True)
    gpu_w, gpu_b, gpu_d = nets[1].backprop(cupy.asarray(X), cupy.asarray(Y), return_deltas=True)
    for name, host, dev in (("nabla_w", cpu_w, gpu_w), ("nabla_b", cpu_b, gpu_b), ("delta", cpu_d, gpu_d)):
        for layer, (h, d) in enumerate(zip(host, dev)):
            assert isinstance(d, cupy.ndarray)
            close(d, h, dtype, tol=BACKPROP_TOL, what=f"{name}[{layer}]")
    np.testing.assert_allclose(nets[1].loss(X, Y), nets[0].loss(X, Y), **BACKPROP_TOL[dtype])


def blobs(rng, n=1500, features=10, classes=3):
    centres = rng.standard_normal((classes, features)) * 2.5
    y = rng.integers(0, classes, n)
    return rng.standard_normal((n, features)) + centres[y], y


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam"])
def test_fit_on_gpu_matches_cpu_accuracy(cupy, rng, optimizer):
    X, y = blobs(rng)
    results = []
    for device in ("cpu", "cuda:0"):
        net = gpubp.Network([10, 24, 3], activation="tanh", output="softmax", cost="log_likelihood",
                            device=device, seed=11)
        lr = 0.01 if optimizer == "adam" else 0.1
        history = net.fit(X[:1200], y[:1200], epochs=8, batch_size=32, lr=lr, optimizer=optimizer,
                          weight_decay=1e-4, validation_data=(X[1200:], y[1200:]), seed=5, progress=False)
        results.append((history["val_accuracy"][-1], history["loss"][-1]))
    (cpu_acc, cpu_loss), (gpu_acc, gpu_loss) = results
    assert cpu_acc > 0.9 and gpu_acc > 0.9  # the task is learnable: both reach it
    assert abs(gpu_acc - cpu_acc) <= 0.03
    assert abs(gpu_loss - cpu_loss) <= 0.05  # different shuffles, same convergence


def test_forward_stays_on_device_and_accepts_numpy(cupy, rng):
    net = gpubp.Network([6, 5, 3], device="cuda", seed=1)
    X = rng.standard_normal((4, 6))
    out = net.forward(X)
    assert isinstance(out, cupy.ndarray)
    assert isinstance(net.forward(cupy.asarray(X)), cupy.ndarray)
    np.testing.assert_allclose(gpubp.to_numpy(out), gpubp.Network([6, 5, 3], device="cpu", seed=1).forward(X),
                               rtol=1e-5, atol=1e-6)


def test_training_step_allocates_nothing(cupy, rng):
    """After the first step builds its buffers, a step (backprop + update) allocates no device memory."""
    net = gpubp.Network([20, 32, 4], device="cuda:0", seed=2)
    ops = net.ops
    with ops.activate():
        x = cupy.asarray(rng.standard_normal((16, 20)), dtype=np.float32)
        y = cupy.asarray(rng.integers(0, 4, 16))
        loss_sum = cupy.zeros((1,), np.float32)
        net.backprop_sum(x, y, loss_sum)
        ops.sgd_update(net.parameters(), net.gradient(), 0.1, 1 / 16, 0.0, net.n_weights)
        pool = cupy.get_default_memory_pool()
        calls = []
        cupy.cuda.set_allocator(lambda size: calls.append(size) or pool.malloc(size))
        try:
            for _ in range(3):
                net.backprop_sum(x, y, loss_sum)
                ops.sgd_update(net.parameters(), net.gradient(), 0.1, 1 / 16, 0.0, net.n_weights)
        finally:
            cupy.cuda.set_allocator(pool.malloc)
    assert calls == [], f"device allocations of {calls} bytes in a training step"


def test_save_on_gpu_load_on_cpu(cupy, rng, tmp_path):
    net = gpubp.Network([8, 6, 3], activation="relu", output="softmax", cost="log_likelihood",
                        device="cuda:0", seed=4)
    X, y = rng.standard_normal((50, 8)), rng.integers(0, 3, 50)
    net.fit(X, y, epochs=2, batch_size=10, lr=0.1, seed=1, progress=False)
    path = tmp_path / "net.npz"
    net.save(path)
    loaded = gpubp.load(path, device="cpu")
    assert loaded.device == "cpu"
    for w_gpu, w_cpu in zip(list(net.weights) + list(net.biases), list(loaded.weights) + list(loaded.biases)):
        np.testing.assert_array_equal(gpubp.to_numpy(w_gpu), w_cpu)
    np.testing.assert_allclose(loaded.forward(X), gpubp.to_numpy(net.forward(X)), rtol=1e-5, atol=1e-6)


def test_cuda_device_selection(cupy, rng):
    count = cupy.cuda.runtime.getDeviceCount()
    with pytest.raises(DeviceError, match=f"cuda:{count} does not exist"):
        gpubp.Network([3, 2], device=f"cuda:{count}")
    last = count - 1  # another GPU than the current one (cuda:0) when there are several
    net = gpubp.Network([3, 4, 2], device=f"cuda:{last}", seed=0)
    assert net.device == f"cuda:{last}" and net.parameters().device.id == last
    X = rng.standard_normal((5, 3))
    expected = gpubp.Network([3, 4, 2], device="cpu", seed=0).forward(X)
    with cupy.cuda.Device(0):
        out = net.forward(X)
        assert out.device.id == last
        np.testing.assert_allclose(gpubp.to_numpy(out), expected, rtol=1e-5, atol=1e-6)
        net.fit(X, rng.random((5, 2)), epochs=1, batch_size=2, lr=0.1, progress=False)
        assert net.parameters().device.id == last
        assert cupy.cuda.runtime.getDevice() == 0


@pytest.mark.parametrize("precision, dtype", [("fp32", np.float32), ("tf32", np.float32), ("fp32", np.float64)],
                         ids=["fp32-float32", "tf32-float32", "fp32-float64"])
def test_cublas_gemm_for_every_operand_layout(cupy, rng, precision, dtype):
    """gpubp's cuBLAS call (gemmEx, explicit compute type) is a·b for row-major operands, transposed views and
    a strided one, single rows and columns; fp32 to float32's rounding whatever CUPY_TF32 says, tf32 to TF32's."""
    from gpubp.backend.cublas_gemm import gemm

    for (m, k, n), a_t, b_t in itertools.product([(37, 33, 5), (1, 64, 9), (65, 17, 1), (3, 1, 2), (513, 129, 65)],
                                                 (False, True), (False, True)):
        A, B = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
        a = cupy.asarray(np.ascontiguousarray(A.T)).T if a_t else cupy.asarray(A)
        b = cupy.asarray(np.ascontiguousarray(B.T)).T if b_t else cupy.asarray(B)
        out = cupy.full((m, n), np.nan, dtype=dtype)
        gemm(a, b, out, precision)
        # TF32: each product off by ≤ 2⁻¹⁰ relative, k of them summed with random signs (a layout bug: O(1))
        tol = BACKPROP_TOL[dtype] if precision == "fp32" else dict(rtol=1e-2, atol=1e-2 * np.sqrt(k))
        np.testing.assert_allclose(out.get(), A.astype(np.float64) @ B, err_msg=f"{(m, k, n)} {a_t} {b_t}", **tol)
    strided = cupy.asarray(rng.standard_normal((4, 10)).astype(dtype))[:, ::2]
    out = cupy.empty((4, 4), dtype=dtype)
    gemm(strided, cupy.asarray(np.eye(5, 4, dtype=dtype)), out, precision)
    tol = BACKPROP_TOL[dtype] if precision == "fp32" else dict(rtol=1e-3)  # one TF32 rounding: ≤ 2⁻¹⁰
    np.testing.assert_allclose(out.get(), strided.get()[:, :4], **tol)


def test_matmul_precision_on_the_gpu(rng):
    """An fp32 network computes float32 (CUBLAS_COMPUTE_32F, whatever CUPY_TF32 made of CuPy's own matmuls);
    a tf32 one stays within TF32's rounding of it and trains, eagerly and as CUDA graphs."""
    X = rng.standard_normal((256, 64)).astype(np.float32)
    y = (X[:, :5].sum(axis=1) > 0).astype(np.int64)
    nets = {p: gpubp.Network([64, 128, 2], output="softmax", cost="log_likelihood", device="cuda:0", seed=4,
                             matmul_precision=p) for p in ("fp32", "tf32")}
    cpu = gpubp.Network([64, 128, 2], output="softmax", cost="log_likelihood", device="cpu", seed=4)
    fp32, tf32 = (gpubp.to_numpy(nets[p].forward(X)) for p in ("fp32", "tf32"))
    np.testing.assert_allclose(fp32, cpu.forward(X), **BACKPROP_TOL[np.float32])
    assert np.abs(tf32 - fp32).max() < 1e-2
    for compiled in (None, False):
        net = gpubp.Network([64, 128, 2], output="softmax", cost="log_likelihood", device="cuda:0", seed=4,
                            matmul_precision="tf32")
        losses = net.fit(X, y, epochs=5, batch_size=32, lr=0.5, progress=False, compiled=compiled)["loss"]
        assert losses[-1] < 0.5 * losses[0], (compiled, losses)
