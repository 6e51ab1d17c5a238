"""The kernels on the host, no GPU needed.

1. Their maths: kernels/activations.cuh and kernels/costs.cuh, compiled with a C++ compiler into
   tests/cpp/kernels_host.cpp, give the same σ, σ′, cost terms and cost gradients as the NumPy backend, in
   float64 and float32, and use the same ids as gpubp/backend/kernels.py.
2. The kernels themselves and CupyOps: the .cu sources run on CPU threads under tests/cpp/emulated_cupy.py
   (a stand-in for CuPy) and match NumpyOps, up to whole ``Network`` training runs.

Under CI (env CI set) a missing C++ compiler is a failure, not a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from emulated_gpu import emulated_gpus
from kernel_checks import apply_update, assert_delta_close
from states import same_state

import gpubp
from gpubp.activations import ACTIVATIONS, SOFTMAX
from gpubp.checkpoint import read_checkpoint
from gpubp.backend import get_ops
from gpubp.backend import kernels
from gpubp.backend.numpy_ops import NumpyOps
from gpubp.costs import COSTS, LOG_EPS

SOURCE = Path(__file__).parent / "cpp" / "kernels_host.cpp"
DTYPES = (np.float64, np.float32)
#: (rtol, atol) against NumPy: libm and NumPy's own tanh/exp/log1p may differ by an ulp or two, and
#: GELU′ at z ≈ −5 cancels (1 + tanh u ≈ 0), amplifying one ulp of tanh by about |½ z du| ≈ 10
TOLERANCE = {np.float64: (1e-12, 1e-14), np.float32: (1e-5, 5e-6)}

_grid = np.linspace(-10.0, 10.0, 81)
_special = [0.0, -0.0, 1e-8, -1e-8, 0.5, -0.5, 15.0, -15.0, 20.0, -20.0, 40.0, -40.0, 100.0, -100.0,
            1e3, -1e3, 1e4, -1e4]
Z = np.concatenate([_grid, _special])


@pytest.fixture(scope="module")
def host_program(tmp_path_factory) -> Path:
    compiler = os.environ.get("CXX") or next(
        (c for c in ("g++", "c++", "clang++") if shutil.which(c)), None)
    if compiler is None:
        if os.environ.get("CI"):
            pytest.fail("CI must test the kernels' maths on the host, but no C++ compiler was found")
        pytest.skip("no C++ compiler (g++, c++, clang++ or $CXX) to build the host test program")
    exe = tmp_path_factory.mktemp("kernels_host") / "kernels_host"
    # -std=c++17 (not gnu++17) keeps a*b+c from being contracted into an FMA, like NumPy
    result = subprocess.run([compiler, "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror",
                             "-I", str(kernels.kernel_dir()), str(SOURCE), "-o", str(exe)],
                            capture_output=True, text=True)
    assert result.returncode == 0, f"building {SOURCE.name} failed:\n{result.stderr}"
    return exe


def run(exe: Path, args: list[str], values: np.ndarray) -> dict[str, tuple[int, np.ndarray]]:
    """name -> (id, rows of floats) from the program's output."""
    stdin = " ".join(float(v).hex() for v in values)
    result = subprocess.run([str(exe), *args], input=stdin, capture_output=True, text=True, check=True)
    tables: dict[str, tuple[int, list]] = {}
    for line in result.stdout.splitlines():
        fields = line.split()
        if fields[0] in ("act", "cost"):
            rows: list = []
            tables[fields[2]] = (int(fields[1]), rows)
        else:
            rows.append([float.fromhex(f) for f in fields])
    return {name: (ident, np.array(rows)) for name, (ident, rows) in tables.items()}


def test_activation_ids_agree(host_program):
    table = run(host_program, ["act", "f64"], Z[:1])
    assert {name: ident for name, (ident, _) in table.items()} == kernels.ACTIVATION_IDS
    assert set(kernels.ACTIVATION_IDS) == set(ACTIVATIONS)


def test_cost_ids_agree(host_program):
    table = run(host_program, ["cost", "f64", "1e-7"], np.array([0.5, 1.0]))
    assert {name: ident for name, (ident, _) in table.items()} == kernels.COST_IDS
    assert set(kernels.COST_IDS) == set(COSTS)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_activations_match_numpy(host_program, dtype):
    z = Z.astype(dtype)
    table = run(host_program, ["act", "f32" if dtype is np.float32 else "f64"], z)
    rtol, atol = TOLERANCE[dtype]
    for name, act in ACTIVATIONS.items():
        with np.errstate(all="ignore"):
            a = act.f(np, z, np.empty_like(z))
            da = act.df(np, z, a, np.empty_like(z))
        got = table[name][1]
        np.testing.assert_allclose(got[:, 0], a, rtol=rtol, atol=atol, err_msg=f"{name} f")
        np.testing.assert_allclose(got[:, 1], da, rtol=rtol, atol=atol, err_msg=f"{name} f'")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_costs_match_numpy(host_program, dtype):
    a = np.array([0.0, 1e-12, 1e-3, 0.2, 0.5, 0.7, 0.999, 1.0 - 1e-12, 1.0, 1.5, -0.25], dtype=dtype)
    a, y = [m.ravel().astype(dtype) for m in np.meshgrid(a, np.array([0.0, 0.3, 1.0]))]
    eps = LOG_EPS[np.dtype(dtype)]
    table = run(host_program, ["cost", "f32" if dtype is np.float32 else "f64", repr(eps)],
                np.stack([a, y], axis=1).ravel())
    rtol, atol = TOLERANCE[dtype]
    ops = NumpyOps()
    one = y == 1.0
    for name, cost in COSTS.items():
        got = table[name][1]
        col_a, col_y = a[:, None], y[:, None]  # one-element rows: the row cost is the element's term
        with np.errstate(all="ignore"):
            term = cost.fn(col_a, col_y)
            grad = cost.derivative(col_a, col_y)[:, 0]
            labelled = [ops.cost_sum(cost, col_a[i:i + 1], np.array([0])) for i in np.flatnonzero(one)]
        np.testing.assert_allclose(got[:, 0], term, rtol=rtol, atol=atol, err_msg=f"{name} term")
        np.testing.assert_allclose(got[:, 2], grad, rtol=rtol, atol=atol, err_msg=f"{name} gradient")
        np.testing.assert_allclose(got[:, 3], a - y, rtol=rtol, atol=atol, err_msg=f"{name} stable")
        # an integer label means y = 1 in its column; Ops.cost_sum gathers that column
        np.testing.assert_allclose(got[one, 1], labelled, rtol=rtol, atol=atol,
                                   err_msg=f"{name} labelled term")


# ---- the kernels themselves, emulated on CPU threads ---------------------------------------------------
# tests/cpp/emulated_cupy.py stands in for CuPy: the .cu sources (as NVRTC gets them) are built with g++
# and run on CPU threads, and every launch is checked against the kernel's C signature. So CupyOps, its
# launch arguments and the kernels' indexing (grid-stride loops, vector path and scalar tail, row/column
# tracking, warp-per-row softmax, the loss reduction) run here against NumpyOps; tests/test_gpu.py does the
# same on a real GPU.
@pytest.fixture(scope="module")
def emulated(host_program, tmp_path_factory):
    """(fake cupy module, CupyOps of emulated cuda:0); ``get_ops("cuda:0")`` gives that CupyOps meanwhile."""
    with emulated_gpus(tmp_path_factory.mktemp("emulated_kernels")) as fake_cupy:
        from gpubp.backend import cupy_ops  # bound to the emulated CuPy

        with pytest.MonkeyPatch.context() as mp:
            # at most 3 blocks of 64 threads: the grid-stride loops go round several times
            mp.setattr(cupy_ops, "BLOCK", 64)
            mp.setattr(cupy_ops, "BLOCKS_PER_SM", 3)
            yield fake_cupy, get_ops("cuda:0")


def _dev(fake_cupy, host: np.ndarray, offset: int = 0):
    """``host`` as an emulated device array starting ``offset`` elements into a buffer (unaligned if > 0)."""
    buf = fake_cupy.empty(host.size + offset, dtype=host.dtype)
    view = buf[offset:].reshape(host.shape)
    view.set(host)  # CuPy refuses a host array in an assignment
    return view


EMU_OUTPUTS = list(ACTIVATIONS.values()) + [SOFTMAX]


@pytest.mark.parametrize("shape, offset", [((0, 5), 0), ((1, 1), 1), ((3, 7), 1), ((37, 33), 0)])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("act", EMU_OUTPUTS, ids=str)
def test_emulated_bias_activation(emulated, rng, act, dtype, shape, offset):
    fake_cupy, ops = emulated
    z = (rng.standard_normal(shape) * 4).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    z_ref, a_ref = z.copy(), np.empty_like(z)
    NumpyOps().bias_activation(z_ref, b, act, a_ref)
    z_dev, a_dev = _dev(fake_cupy, z, offset), _dev(fake_cupy, np.zeros_like(z), offset)
    assert ops.bias_activation(z_dev, _dev(fake_cupy, b, offset), act, a_dev) is a_dev
    rtol, atol = TOLERANCE[dtype]
    np.testing.assert_allclose(z_dev.get(), z_ref, rtol=rtol, atol=atol)
    np.testing.assert_allclose(a_dev.get(), a_ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("n", [0, 1, 5, 1027])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("act", list(ACTIVATIONS.values()), ids=str)
def test_emulated_backprop_activation(emulated, rng, act, dtype, n):
    fake_cupy, ops = emulated
    z = (rng.standard_normal(n) * 4).astype(dtype)
    a = act.f(np, z, np.empty_like(z))
    g = rng.standard_normal(n).astype(dtype)
    expected = NumpyOps().backprop_activation(act, z, a, g.copy(), np.empty_like(g))
    rtol, atol = TOLERANCE[dtype]
    for offset, in_place in ((0, False), (0, True), (1, False)):  # vector path, in place, scalar path
        g_dev = _dev(fake_cupy, g, offset)
        out = g_dev if in_place else _dev(fake_cupy, np.zeros_like(g), offset)
        ops.backprop_activation(act, _dev(fake_cupy, z, offset), _dev(fake_cupy, a, offset), g_dev, out)
        np.testing.assert_allclose(out.get(), expected, rtol=rtol, atol=atol,
                                   err_msg=f"offset {offset}, in place {in_place}")


@pytest.mark.parametrize("shape", [(0, 3), (1, 1), (5, 7), (9, 70)])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_emulated_softmax_backward(emulated, rng, dtype, shape):
    fake_cupy, ops = emulated
    a = SOFTMAX.f(np, rng.standard_normal(shape).astype(dtype), np.empty(shape, dtype))
    g = rng.standard_normal(shape).astype(dtype)
    expected = NumpyOps().backprop_activation(SOFTMAX, None, a, g.copy(), np.empty_like(g))
    g_dev = _dev(fake_cupy, g)
    ops.backprop_activation(SOFTMAX, None, _dev(fake_cupy, a), g_dev, g_dev)
    np.testing.assert_allclose(g_dev.get(), expected, *TOLERANCE[dtype])


@pytest.mark.parametrize("labels", [False, True], ids=["dense", "labels"])
@pytest.mark.parametrize("dtype, acc", [(np.float32, np.float32), (np.float32, np.float64),
                                        (np.float64, np.float64)], ids=["f32", "f32-f64sum", "f64"])
@pytest.mark.parametrize("cost", list(COSTS.values()), ids=str)
@pytest.mark.parametrize("act", EMU_OUTPUTS, ids=str)
def test_emulated_output_delta_and_loss(emulated, rng, act, cost, dtype, acc, labels):
    fake_cupy, ops = emulated
    shape = (13, 5)
    z = (rng.standard_normal(shape) * 3).astype(dtype)
    a = act.f(np, z, np.empty_like(z))
    y = rng.integers(0, shape[1], size=shape[0]) if labels else rng.random(shape).astype(dtype)
    delta, loss = np.empty_like(a), np.zeros((1,), dtype)
    with np.errstate(all="ignore"):
        NumpyOps().output_delta(cost, act, z, a, y, delta, loss)
    out, loss_dev = _dev(fake_cupy, np.zeros_like(a)), fake_cupy.zeros((1,), acc)
    a_dev, y_dev = _dev(fake_cupy, a), _dev(fake_cupy, y)
    ops.output_delta(cost, act, _dev(fake_cupy, z), a_dev, y_dev, out, loss_dev)
    rtol, atol = TOLERANCE[dtype]
    assert_delta_close(out.get(), delta, cost, a, y, rtol, atol)
    np.testing.assert_allclose(loss_dev.get(), loss, rtol=rtol + 65 * np.finfo(dtype).eps, atol=65 * atol,
                               err_msg="summed loss")
    total = ops.cost_sum(cost, a_dev, y_dev)
    np.testing.assert_allclose(total.get(), loss[0], rtol=rtol + 65 * np.finfo(dtype).eps, atol=65 * atol)


@pytest.mark.parametrize("n", [0, 7, 1001])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("method", ["sgd", "momentum", "nesterov", "adam"])
def test_emulated_optimizer_updates(emulated, rng, method, dtype, weight_decay, n):
    fake_cupy, ops = emulated
    host = [rng.standard_normal(n).astype(dtype) for _ in range(4)]
    host[3] = np.abs(host[3])  # Adam's v ≥ 0
    dev = [_dev(fake_cupy, x) for x in host]
    hyper = dict(lr=0.05, grad_scale=0.25, weight_decay=weight_decay, n_weights=(2 * n) // 3)
    for backend, (p, g, s1, s2) in ((NumpyOps(), host), (ops, dev)):
        apply_update(backend, method, p, g, s1, s2, hyper)
    rtol, atol = TOLERANCE[dtype]
    for i in (0, 2, 3):  # params and optimizer state (the reference scales grad in place; kernels don't)
        np.testing.assert_allclose(dev[i].get(), host[i], rtol=rtol, atol=atol)


def test_emulated_launch_checks_the_signature(emulated):
    fake_cupy, _ = emulated
    function = kernels.get_function(0, "gpubp_sgd_update_f32")
    p = fake_cupy.zeros(4, np.float32)
    with pytest.raises(TypeError, match="size_t"):  # a Python int would be packed as 8-byte long long
        function((1,), (32,), (p, p, 4, np.uint64(0), np.float32(1), np.float32(1)))
    with pytest.raises(TypeError, match="float"):
        function((1,), (32,), (p, p.astype(np.float64), np.uint64(4), np.uint64(0), np.float32(1),
                               np.float32(1)))


CONFIGS = [  # (sizes, activation, output, cost, labels)
    ([6, 9, 7, 4], "sigmoid", None, "quadratic", True),
    ([6, 9, 4], "relu", "sigmoid", "cross_entropy", True),
    ([6, 9, 4], "tanh", "softmax", "log_likelihood", True),
    ([6, 9, 4], "gelu", "softmax", "quadratic", False),
]


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam"])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c[1]}-{c[2]}-{c[3]}")
def test_emulated_network_trains_like_numpy(emulated, rng, config, optimizer):
    """Network on "cuda:0" (the emulated CupyOps) vs "cpu": same batches (no shuffle), same parameters."""
    sizes, activation, output, cost, labels = config
    X = rng.standard_normal((40, sizes[0]))
    Y = rng.integers(0, sizes[-1], 40) if labels else rng.random((40, sizes[-1]))
    nets = [gpubp.Network(sizes, activation=activation, output=output, cost=cost, device=device,
                          dtype="float64", seed=3) for device in ("cpu", "cuda:0")]
    assert nets[1].ops is emulated[1]
    grads = [net.backprop(X, Y, return_deltas=True) for net in nets]
    for host, dev in zip(*grads):
        for h, d in zip(host, dev):
            np.testing.assert_allclose(gpubp.to_numpy(d), h, rtol=1e-10, atol=1e-12)
    histories = [net.fit(X, Y, epochs=3, batch_size=16, lr=0.05, optimizer=optimizer, weight_decay=0.01,
                         shuffle=False, progress=False) for net in nets]
    np.testing.assert_allclose(histories[1]["loss"], histories[0]["loss"], rtol=1e-10)
    np.testing.assert_allclose(gpubp.to_numpy(nets[1].parameters()), nets[0].parameters(), rtol=1e-9,
                               atol=1e-12)
    assert nets[1].evaluate(X, Y)["loss"] == pytest.approx(nets[0].evaluate(X, Y)["loss"], rel=1e-10)


def test_emulated_permutation(emulated):
    fake_cupy, ops = emulated
    order = ops.permutation(50, np.random.default_rng(1))
    assert isinstance(order, fake_cupy.ndarray)
    np.testing.assert_array_equal(np.sort(order.get()), np.arange(50))


def test_emulated_network_takes_host_inputs_and_shuffles_on_device(emulated, rng, tmp_path):
    """NumPy inputs to a "cuda:0" net: checked (NaN too) and uploaded; fit shuffles and gathers on the device."""
    net = gpubp.Network([5, 8, 3], activation="tanh", output="softmax", cost="log_likelihood",
                        device="cuda:0", dtype="float64", seed=1)
    X, y = rng.standard_normal((30, 5)), rng.integers(0, 3, 30)
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="X contains NaN"):
        net.forward(bad)
    history = net.fit(X, y, epochs=3, batch_size=8, lr=0.1, seed=2, progress=False, validation_data=(X, y))
    assert len(history["val_accuracy"]) == 3 and np.isfinite(history["loss"]).all()
    assert isinstance(net.forward(X), emulated[0].ndarray)
    net.save(tmp_path / "gpu.npz")
    cpu = gpubp.load(tmp_path / "gpu.npz", device="cpu")
    np.testing.assert_allclose(cpu.forward(X), gpubp.to_numpy(net.forward(X)), rtol=1e-12)


def test_emulated_state_moves_between_devices_and_checkpoints_from_the_device(emulated, rng, tmp_path):
    """state() of a "cuda:0" network holds host copies; from_state and to() move it both ways and training goes
    on alike; the checkpoint of an epoch before a divergence comes from the device's copy of that moment."""
    X, y = rng.standard_normal((30, 5)), rng.integers(0, 3, 30)
    fit = dict(batch_size=8, lr=0.1, optimizer="adam", progress=False)
    gpu = gpubp.Network([5, 8, 3], activation="tanh", output="softmax", cost="log_likelihood",
                        device="cuda:0", dtype="float64", seed=1)
    gpu.fit(X, y, epochs=2, seed=2, **fit)
    gpu.optimizer.configure(beta1=0.8)
    state = gpu.state()
    assert type(state.params) is np.ndarray
    assert all(type(b) is np.ndarray for b in state.optimizer.buffers.values())
    cpu = gpubp.Network.from_state(state, device="cpu")
    back = gpubp.Network.from_state(cpu.state(), device="cuda:0")
    assert back.ops is emulated[1] and same_state(back.state(), state)
    assert gpu.to("cpu").device == "cpu" and same_state(gpu.state(), state)
    assert gpu.to("cuda:0").ops is emulated[1] and same_state(gpu.state(), state)
    for net in (cpu, back):  # no shuffle: a GPU draws its own orders from the shuffle generator
        net.fit(X, y, epochs=1, shuffle=False, **fit)
    np.testing.assert_allclose(gpubp.to_numpy(back.parameters()), cpu.parameters(), rtol=1e-10)

    def explode(net, epoch, logs):
        net.optimizer.current_lr = 1e308  # epoch 2 diverges

    with pytest.raises(FloatingPointError, match="epoch 2"):
        back.fit(X, y, epochs=3, checkpoint=tmp_path, checkpoint_every=10, callbacks=[explode], **fit)
    saved = read_checkpoint(tmp_path / "ckpt-000001.npz")
    np.testing.assert_array_equal(saved.state.params, gpubp.to_numpy(back.parameters()))  # epoch 1's end
    np.testing.assert_array_equal(saved.state.optimizer.buffers["m"], gpubp.to_numpy(back.optimizer.m))
    assert saved.state.optimizer.t == back.optimizer.t and len(saved.history["loss"]) == 1


@pytest.mark.parametrize("config", CONFIGS[:3], ids=lambda c: f"{c[1]}-{c[2]}-{c[3]}")
def test_emulated_weighted_fit_like_numpy(emulated, rng, config):
    """fit(sample_weight=...) on the emulated CupyOps (weighted δᴸ rows and loss, device shuffle of the
    weights) matches the CPU."""
    sizes, activation, output, cost, labels = config
    X = rng.standard_normal((30, sizes[0]))
    Y = rng.integers(0, sizes[-1], 30) if labels else rng.random((30, sizes[-1]))
    w = rng.random(30) * 2
    nets = [gpubp.Network(sizes, activation=activation, output=output, cost=cost, device=device,
                          dtype="float64", seed=3) for device in ("cpu", "cuda:0")]
    histories = [net.fit(X, Y, epochs=2, batch_size=8, lr=0.05, optimizer="nesterov", shuffle=False,
                         progress=False, sample_weight=w) for net in nets]
    np.testing.assert_allclose(histories[1]["loss"], histories[0]["loss"], rtol=1e-10)
    np.testing.assert_allclose(gpubp.to_numpy(nets[1].parameters()), nets[0].parameters(), rtol=1e-9,
                               atol=1e-12)


def test_emulated_sklearn_estimator(emulated):
    """gpubp.sklearn on the emulated GPU: trains there, predicts like its CPU twin, pickles to the host."""
    pytest.importorskip("sklearn")
    import pickle
    import warnings

    from gpubp.sklearn import MLPClassifier

    X = np.random.default_rng(0).standard_normal((40, 5))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    kw = dict(hidden_layer_sizes=(6,), max_iter=5, random_state=0, dtype="float64", shuffle=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gpu = MLPClassifier(device="cuda:0", **kw).fit(X, y, sample_weight=np.arange(40) % 3)
        cpu = MLPClassifier(device="cpu", **kw).fit(X, y, sample_weight=np.arange(40) % 3)
    assert gpu.network_.ops is emulated[1]
    np.testing.assert_allclose(gpu.predict_proba(X), cpu.predict_proba(X), rtol=1e-9)
    state = gpu.__getstate__()["network_"]
    assert type(state.params) is np.ndarray
    assert all(type(v) is np.ndarray for v in state.optimizer.buffers.values())
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(gpu)).predict(X), gpu.predict(X))
