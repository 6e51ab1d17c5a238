"""matmul_precision ("fp32" | "tf32"), a per-network choice: cuBLAS called with an explicit compute type on a
GPU (under the emulated CuPy, whose gemmEx rounds TF32 operands as tensor cores do), whatever CUPY_TF32 says;
recorded in the model (state, file, checkpoint, ``to``); float32 arithmetic on the CPU backends."""

from __future__ import annotations

import importlib
import itertools
import re
import sys

import numpy as np
import pytest

import gpubp
from gpubp import model_file
from gpubp.cli import main

F32_TOL = dict(rtol=1e-5, atol=1e-6)


def tf32(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to TF32 (11 significant bits, to nearest even), computed independently of the
    emulation: frexp's mantissa in [0.5, 1) scaled to [1024, 2048) and rounded."""
    mantissa, exponent = np.frexp(np.asarray(x, np.float64))
    return np.ldexp(np.round(mantissa * 2 ** 11) / 2 ** 11, exponent).astype(np.float32)


def cublas_gemm():
    """gpubp's cuBLAS helper, imported on the emulated CuPy."""
    return importlib.import_module("gpubp.backend.cublas_gemm")


def data(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6)).astype(np.float32)
    return X, (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 0.5)


def network(precision: str = "fp32", device: str = "cuda:0", **kwargs) -> gpubp.Network:
    return gpubp.Network([6, 8, 3], activation="sigmoid", output="softmax", cost="log_likelihood", device=device,
                         seed=3, matmul_precision=precision, **kwargs)


def tf32_forward(net: gpubp.Network, X: np.ndarray) -> np.ndarray:
    """aᴸ with every zˡ = aˡ⁻¹Wˡᵀ + bˡ multiplied from TF32 operands, in float64 (the reference)."""
    a = X.astype(np.float64)
    for l, (W, b) in enumerate(zip(net.weights, net.biases)):
        z = tf32(a) @ tf32(net.ops.to_numpy(W)).T.astype(np.float64) + net.ops.to_numpy(b)
        a = 1 / (1 + np.exp(-z)) if l < net.num_layers - 1 else np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return a


# ---- the cuBLAS helper and the emulated gemmEx ------------------------------------------------------------
@pytest.mark.parametrize("precision, dtype", [("fp32", np.float32), ("tf32", np.float32), ("fp32", np.float64)])
def test_gemm_is_a_times_b_for_every_operand_layout(gpus, precision, dtype):
    """Row-major operands as they are, transposed views (Wᵀ, δᵀ: cuBLAS's "T") and a strided one (copied),
    single rows and columns: out = a·b, TF32 operands for "tf32" (and then visibly not the float32 product)."""
    gemm, rng, off = cublas_gemm().gemm, np.random.default_rng(1), 0.0
    for (m, k, n), a_t, b_t in itertools.product([(5, 7, 3), (1, 4, 6), (6, 4, 1), (3, 1, 2), (1, 1, 1)],
                                                 (False, True), (False, True)):
        A, B = rng.normal(size=(m, k)).astype(dtype), rng.normal(size=(k, n)).astype(dtype)
        a = gpus.asarray(np.ascontiguousarray(A.T)).T if a_t else gpus.asarray(A)
        b = gpus.asarray(np.ascontiguousarray(B.T)).T if b_t else gpus.asarray(B)
        out = gpus.empty((m, n), dtype)
        out.fill(np.nan)
        gemm(a, b, out, precision)
        read = tf32 if precision == "tf32" else np.asarray
        expected = read(A).astype(np.float64) @ read(B).astype(np.float64)
        np.testing.assert_allclose(out.get(), expected, **(F32_TOL if dtype == np.float32 else dict(rtol=1e-13)))
        off = max(off, np.abs(out.get() - A.astype(np.float64) @ B).max())
    assert (off > 1e-4) == (precision == "tf32"), off
    strided = gpus.asarray(rng.normal(size=(4, 10)).astype(dtype))[:, ::2]
    out = gpus.empty((4, 4), dtype)
    gemm(strided, gpus.asarray(np.eye(5, 4, dtype=dtype)), out, precision)
    np.testing.assert_array_equal(out.get(), (tf32 if precision == "tf32" else np.asarray)(strided.get()[:, :4]))


def test_gemm_refuses_what_cublas_would_get_wrong(gpus):
    """ValueError for an out that is not C-contiguous or overlaps an operand, mixed dtypes, TF32 on float64,
    shapes that do not fit, and an array on another GPU."""
    gemm = cublas_gemm().gemm
    a, b = gpus.ones((4, 4), np.float32), gpus.ones((4, 4), np.float32)
    cases = {"C-contiguous": lambda: gemm(a, b, gpus.empty((4, 4), np.float32).T),
             "overlaps": lambda: gemm(a, b, a),
             "one dtype": lambda: gemm(a, b, gpus.empty((4, 4), np.float64)),
             "float64 (fp32)": lambda: gemm(a.astype(np.float64), b.astype(np.float64),
                                            gpus.empty((4, 4), np.float64), "tf32"),
             "does not fit": lambda: gemm(a, b[:3], gpus.empty((4, 4), np.float32))}
    for words, call in cases.items():
        with pytest.raises(ValueError, match=re.escape(words)):
            call()
    with gpus.cuda.Device(1):
        elsewhere = gpus.empty((4, 4), np.float32)
    with pytest.raises(ValueError, match="cuda:1"):
        gemm(a, b, elsewhere)


# ---- fp32 and tf32 networks on a GPU ------------------------------------------------------------------------
def test_an_fp32_network_computes_float32_under_cupy_tf32(gpus, monkeypatch):
    """CUPY_TF32=1 makes CuPy's own float32 matmuls TF32 (as on a GPU, the emulation too), but an fp32
    network's cuBLAS calls name CUBLAS_COMPUTE_32F: its outputs, gradients and training match the CPU's
    float32 within float32's tolerance, eagerly and as CUDA graphs."""
    monkeypatch.setenv("CUPY_TF32", "1")
    X, y = data()
    gpu, cpu = network("fp32"), network("fp32", device="cpu")
    W = gpu.weights[0]
    cupy_error = np.abs(gpubp.to_numpy(gpus.asarray(X) @ W.T) - X @ gpubp.to_numpy(W).T).max()
    assert cupy_error > 1e-4, "CuPy's own matmul is TF32 here: the control"
    np.testing.assert_allclose(gpubp.to_numpy(gpu.forward(X)), cpu.forward(X), **F32_TOL)
    for got, ref in zip(gpu.backprop(X, y), cpu.backprop(X, y)):
        for g, r in zip(got, ref):
            np.testing.assert_allclose(gpubp.to_numpy(g), r, **F32_TOL)
    for compiled in (None, False):
        gpu, cpu = network("fp32"), network("fp32", device="cpu")
        for net in (gpu, cpu):
            net.fit(X, y, epochs=3, batch_size=8, lr=0.5, shuffle=False, progress=False, compiled=compiled)
        assert gpu.training_path.startswith("compiled" if compiled is None else "eager")
        np.testing.assert_allclose(gpubp.to_numpy(gpu.parameters()), cpu.parameters(), rtol=1e-4, atol=1e-5)


def test_a_tf32_network_multiplies_tf32_operands_and_trains(gpus):
    """A tf32 network's zˡ are products of TF32-rounded operands summed in float32 (1e-3-sized differences
    from fp32); it trains, and its CUDA graphs replay the eager steps' TF32 arithmetic."""
    X, y = data()
    net = network("tf32")
    assert net.ops.matmul_precision == "tf32" and net.ops is not network("fp32").ops
    got = gpubp.to_numpy(net.forward(X))
    np.testing.assert_allclose(got, tf32_forward(net, X), **F32_TOL)
    assert 1e-5 < np.abs(got - gpubp.to_numpy(network("fp32").forward(X))).max() < 1e-2
    nets = [network("tf32") for _ in range(2)]
    histories = [net.fit(X, y, epochs=6, batch_size=8, lr=1.0, seed=0, progress=False, compiled=compiled)["loss"]
                 for net, compiled in zip(nets, (None, False))]
    assert nets[0].training_path == "compiled" and nets[1].training_path.startswith("eager")
    assert histories[0][-1] < 0.8 * histories[0][0]
    np.testing.assert_allclose(histories[0], histories[1], rtol=1e-6)
    np.testing.assert_allclose(gpubp.to_numpy(nets[0].parameters()), gpubp.to_numpy(nets[1].parameters()),
                               rtol=1e-6, atol=1e-7)


def test_an_fp32_network_overrides_a_tf32_math_mode_on_cupys_handle(gpus, monkeypatch):
    """Code that sets CUBLAS_TF32_TENSOR_OP_MATH on CuPy's cuBLAS handle would make CUBLAS_COMPUTE_32F use
    TF32: an fp32 network's matmul sets the default mode for its call and puts the caller's mode back."""
    cublas, helper = sys.modules["cupy_backends.cuda.libs.cublas"], cublas_gemm()
    X, _ = data()
    handle = gpus.cuda.device.get_cublas_handle()
    cublas.setMathMode(handle, helper.TF32_TENSOR_OP_MATH | 16)  # with a flag bit
    expected = network("fp32", device="cpu").forward(X)
    np.testing.assert_allclose(gpubp.to_numpy(network("fp32").forward(X)), expected, **F32_TOL)
    assert cublas.getMathMode(handle) == helper.TF32_TENSOR_OP_MATH | 16
    monkeypatch.setattr(helper, "MODE_BITS", 0)  # the mode left as it is: the emulated cuBLAS rounds
    assert np.abs(gpubp.to_numpy(network("fp32").forward(X)) - expected).max() > 1e-5


def test_nvidia_tf32_override_and_info(gpus, monkeypatch, capsys):
    """``gpubp info`` says per GPU what fp32 and tf32 networks get here; NVIDIA_TF32_OVERRIDE=0 turns cuBLAS's
    TF32 off, so tf32 networks compute float32 (and info says so); CUPY_TF32 is named as CuPy's own."""
    X, _ = data()
    assert main(["info"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("matmuls:"))
    assert line == ("matmuls:   cuda:0 fp32 networks float32, tf32 networks TF32 tensor cores (10-bit mantissa, "
                    "results to ~1e-3); cuda:1 fp32 networks float32, tf32 networks TF32 tensor cores (10-bit "
                    "mantissa, results to ~1e-3); CUPY_TF32 unset or 0: CuPy's own float32 matmuls in float32"), line
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")
    monkeypatch.setenv("CUPY_TF32", "1")
    np.testing.assert_array_equal(gpubp.to_numpy(network("tf32").forward(X)),
                                  gpubp.to_numpy(network("fp32").forward(X)))
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "cuda:0 fp32 networks float32, tf32 networks float32 (NVIDIA_TF32_OVERRIDE=0 turns TF32 off)" in out
    assert "CUPY_TF32=1: CuPy's own float32 matmuls in TF32; gpubp's follow each network's matmul_precision" in out


# ---- recorded with the model ---------------------------------------------------------------------------------
def test_precision_survives_save_load_state_and_moves(gpus, tmp_path):
    """repr, description, the model file, ``from_state`` and ``to`` keep "tf32": on the CPU the network
    computes float32 (as an fp32 one does); back on a GPU it runs TF32 again."""
    X, y = data()
    net = network("tf32")
    net.fit(X, y, epochs=1, batch_size=8, lr=0.5, progress=False)
    assert "matmul_precision='tf32'" in repr(net) and net.description()["matmul_precision"] == "tf32"
    net.save(tmp_path / "m.npz")
    loaded = gpubp.load(tmp_path / "m.npz", device="cuda:1")
    assert (loaded.matmul_precision, loaded.ops.matmul_precision, loaded.device) == ("tf32", "tf32", "cuda:1")
    np.testing.assert_allclose(gpubp.to_numpy(loaded.forward(X)), gpubp.to_numpy(net.forward(X)), rtol=1e-6)
    twin = gpubp.Network.from_state(net.state(), device="cuda:0")
    assert twin.ops is net.ops
    fp32_twin = network("fp32", device="cpu")
    fp32_twin.weights[0], fp32_twin.weights[1] = (gpubp.to_numpy(w) for w in net.weights)
    fp32_twin.biases[0], fp32_twin.biases[1] = (gpubp.to_numpy(b) for b in net.biases)
    net.to("cpu")
    assert net.matmul_precision == "tf32" and net.device == "cpu" and net.state().matmul_precision == "tf32"
    np.testing.assert_array_equal(net.forward(X), fp32_twin.forward(X))
    net.fit(X, y, epochs=1, batch_size=8, lr=0.5, progress=False)
    net.to("cuda:1")
    assert net.ops.matmul_precision == "tf32" and net.device == "cuda:1"
    np.testing.assert_allclose(gpubp.to_numpy(net.forward(X)), tf32_forward(net, X), **F32_TOL)
    with pytest.raises(ValueError, match="matmul_precision 'tf32' there, 'fp32' here"):
        network("fp32").load_state(net.state())


def test_old_and_damaged_model_files(tmp_path):
    """A model file without the field (older gpubp) holds an fp32 model; a damaged value, or "tf32" for a
    float64 model, is refused naming the file and the field."""
    state = gpubp.Network([3, 2], device="cpu", matmul_precision="tf32", seed=0).state()
    arrays = model_file.state_arrays(state)
    assert str(arrays["matmul_precision"]) == "tf32"
    del arrays["matmul_precision"]
    model_file.write_npz(tmp_path / "old.npz", arrays)
    assert gpubp.load(tmp_path / "old.npz", device="cpu").matmul_precision == "fp32"
    for value, dtype in (("bf16", "float32"), ("tf32", "float64")):
        arrays = model_file.state_arrays(state)
        arrays.update(matmul_precision=np.array(value), dtype=np.array(dtype))
        model_file.write_npz(tmp_path / "bad.npz", arrays)
        with pytest.raises(ValueError, match="bad.npz' is damaged: field 'matmul_precision'"):
            gpubp.load(tmp_path / "bad.npz", device="cpu")


def test_a_checkpoint_resumes_only_at_its_precision(gpus, tmp_path):
    """A tf32 run's checkpoints hold "tf32"; a tf32 network resumes them, an fp32 one is told the runs differ."""
    X, y = data()
    network("tf32").fit(X, y, epochs=2, batch_size=8, lr=0.5, seed=0, progress=False, checkpoint=tmp_path)
    with pytest.raises(ValueError, match="matmul_precision 'tf32' there, 'fp32' here"):
        network("fp32").fit(X, y, epochs=3, batch_size=8, lr=0.5, seed=0, progress=False, checkpoint=tmp_path)
    resumed = network("tf32")
    history = resumed.fit(X, y, epochs=3, batch_size=8, lr=0.5, seed=0, progress=False, checkpoint=tmp_path)
    assert len(history["loss"]) == 3
    whole = network("tf32")
    whole.fit(X, y, epochs=3, batch_size=8, lr=0.5, seed=0, progress=False)
    np.testing.assert_array_equal(gpubp.to_numpy(resumed.parameters()), gpubp.to_numpy(whole.parameters()))


# ---- the choice itself, and the CPU ----------------------------------------------------------------------------
def test_bad_choices_name_the_choices():
    for bad in ("bf16", None, 32, ""):
        with pytest.raises(ValueError, match="matmul_precision must be one of 'fp32', 'tf32'"):
            gpubp.Network([3, 2], device="cpu", matmul_precision=bad)
    with pytest.raises(ValueError, match="applies to float32 networks only"):
        gpubp.Network([3, 2], device="cpu", dtype="float64", matmul_precision="tf32")
    assert gpubp.Network([3, 2], device="cpu", matmul_precision=" TF32 ").matmul_precision == "tf32"


def test_the_cpu_backends_compute_tf32_networks_in_float32(cpu_backend):
    """The CPUs have no TF32: a tf32 network there trains exactly as an fp32 one, and keeps its choice."""
    X, y = data()
    nets = [network(precision, device="cpu") for precision in ("tf32", "fp32")]
    for net in nets:
        net.fit(X, y, epochs=2, batch_size=8, lr=0.5, seed=0, progress=False)
    np.testing.assert_array_equal(nets[0].parameters(), nets[1].parameters())
    assert nets[0].matmul_precision == "tf32" and nets[0].ops is nets[1].ops


def test_the_sklearn_estimators_pass_it_on(gpus):
    """``matmul_precision`` is an estimator parameter (get_params, clone, pickling) given to its network."""
    import pickle

    from sklearn.base import clone

    from gpubp.sklearn import MLPClassifier

    X, y = data()
    clf = MLPClassifier(hidden_layer_sizes=(5,), max_iter=3, device="cuda:0", matmul_precision="tf32")
    assert clone(clf).get_params()["matmul_precision"] == "tf32"
    with pytest.warns(Warning):  # ConvergenceWarning: 3 iterations
        clf.fit(X, y)
    assert clf.network_.matmul_precision == "tf32" and clf.network_.ops.matmul_precision == "tf32"
    assert pickle.loads(pickle.dumps(clf)).network_.ops is clf.network_.ops
    with pytest.raises(ValueError, match="applies to float32 networks only"):
        MLPClassifier(max_iter=1, device="cpu", dtype="float64", matmul_precision="tf32").fit(X, y)


def test_gpubp_train_takes_it(tmp_path, capsys):
    """``gpubp train --matmul-precision tf32`` trains such a model (shown in its repr line) and saves it so."""
    rows = [f"{x:.3f},{x * x:.3f},{int(x > 0)}" for x in np.linspace(-1, 1, 30)]
    (tmp_path / "data.csv").write_text("a,b,label\n" + "\n".join(rows) + "\n")
    assert main(["train", "--data", str(tmp_path / "data.csv"), "--epochs", "1", "--no-progress", "--device", "cpu",
                 "--matmul-precision", "tf32", "--save", str(tmp_path / "m.npz")]) == 0
    assert "matmul_precision='tf32'" in capsys.readouterr().out
    assert gpubp.load(tmp_path / "m.npz", device="cpu").matmul_precision == "tf32"
