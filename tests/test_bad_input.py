"""Every wrong argument gets a ValueError (or DeviceError) that names the problem; nothing is modified."""

import numpy as np
import pytest

import gpubp
from gpubp.backend import cuda_unavailable_reason


# every test here runs on each CPU backend (tests/conftest.py): NumPy's Ops, then the fused Numba one
pytestmark = pytest.mark.usefixtures("cpu_backend")


@pytest.fixture
def net():
    return gpubp.Network([4, 3, 2], device="cpu", seed=0)


@pytest.mark.parametrize("sizes,match", [
    ([4], "at least 2"), ([], "at least 2"), ([4, 0, 2], "positive integers"), ([4, -1], "positive"),
    ([4, 2.5], "positive integers"), ("784,30", "positive integers"), (None, "list of layer widths"),
    ([True, 3], "positive integers")])
def test_bad_sizes(sizes, match):
    with pytest.raises(ValueError, match=match):
        gpubp.Network(sizes, device="cpu")


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown activation 'sigmoidd'.*sigmoid, tanh"):
        gpubp.Network([2, 2], activation="sigmoidd", device="cpu")
    with pytest.raises(ValueError, match=r"softmax is only available for the output layer"):
        gpubp.Network([2, 2, 2], activation="softmax", device="cpu")
    with pytest.raises(ValueError, match=r"unknown cost 'mse'.*quadratic, cross_entropy, log_likelihood"):
        gpubp.Network([2, 2], cost="mse", device="cpu")
    with pytest.raises(ValueError, match=r"unknown optimizer 'rmsprop'.*sgd, momentum, nesterov, adam"):
        gpubp.Network([2, 2], device="cpu").fit(np.zeros((2, 2)), [0, 1], 1, 1, 0.1, optimizer="rmsprop")


def test_cost_output_pairs():
    with pytest.raises(ValueError, match="log_likelihood cost needs a softmax output"):
        gpubp.Network([2, 2], activation="sigmoid", cost="log_likelihood", device="cpu")
    with pytest.raises(ValueError, match="cross_entropy cost needs outputs in"):
        gpubp.Network([2, 2], output="tanh", cost="cross_entropy", device="cpu")


def test_dtype_seed_device():
    with pytest.raises(ValueError, match="dtype must be one of float32, float64"):
        gpubp.Network([2, 2], dtype="int8", device="cpu")
    with pytest.raises(ValueError, match="dtype must be one of float32, float64"):
        gpubp.Network([2, 2], dtype="nonsense", device="cpu")
    assert gpubp.Network([2, 2], dtype=np.float64, device="cpu").dtype == np.float64
    with pytest.raises(ValueError, match="seed must be an int"):
        gpubp.Network([2, 2], seed=1.5, device="cpu")
    with pytest.raises(ValueError, match="seed must be an integer >= 0 or None; got -1"):
        gpubp.Network([2, 2], seed=-1, device="cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        gpubp.Network([2, 2], device="tpu")
    with pytest.raises(ValueError, match="unknown device"):
        gpubp.Network([2, 2], device="cuda:x")


@pytest.mark.skipif(cuda_unavailable_reason() is None, reason="a GPU is present here")
def test_cuda_without_gpu_raises_device_error():
    with pytest.raises(gpubp.DeviceError, match="not usable") as info:
        gpubp.Network([2, 2], device="cuda")
    assert isinstance(info.value, RuntimeError)
    assert gpubp.Network([2, 2], device="auto").device == "cpu"


def test_device_env_default(monkeypatch):
    monkeypatch.setenv("GPUBP_DEVICE", "cpu")
    assert gpubp.Network([2, 2], device=None).device == "cpu"
    monkeypatch.setenv("GPUBP_DEVICE", "gpu9")
    with pytest.raises(ValueError, match="unknown device 'gpu9'"):
        gpubp.Network([2, 2], device=None)


def test_shape_errors_say_the_expected_shape(net):
    with pytest.raises(ValueError, match=r"X must have shape \(batch, 4\).*got \(5, 3\)"):
        net.forward(np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"X must have shape \(batch, 4\)"):
        net.forward(np.zeros((2, 2, 4)))
    with pytest.raises(ValueError, match=r"Y must have shape \(5, 2\).*got \(5, 3\)"):
        net.loss(np.zeros((5, 4)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"len\(X\) != len\(Y\): X has 5 samples, Y has 4"):
        net.fit(np.zeros((5, 4)), np.zeros(4, dtype=int), 1, 2, 0.1)
    with pytest.raises(ValueError, match="must hold numbers"):
        net.forward(np.array([["a", "b", "c", "d"]]))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_rejected(net, bad):
    X = np.zeros((3, 4))
    X[1, 2] = bad
    with pytest.raises(ValueError, match="X contains NaN or infinite"):
        net.forward(X)
    Y = np.zeros((3, 2))
    Y[0, 0] = bad
    with pytest.raises(ValueError, match="Y contains NaN or infinite"):
        net.backprop(np.zeros((3, 4)), Y)
    with pytest.raises(ValueError, match="validation X contains NaN"):
        net.fit(np.zeros((3, 4)), [0, 1, 0], 1, 1, 0.1, validation_data=(X, [0, 1, 0]))


def test_finite_checked_trusts_only_the_vouched_arrays_inside_the_block(net):
    """``inputs.finite_checked`` (for callers that have checked X themselves, as gpubp.sklearn) skips the
    NaN/inf pass for those very arrays, not for copies of them, and not after the block."""
    from gpubp.inputs import finite_checked

    X = np.zeros((3, 4))
    X[1, 2] = np.nan
    with finite_checked(X):
        assert net.forward(X).shape == (3, 2)
        with pytest.raises(ValueError, match="X contains NaN"):
            net.forward(X.copy())
    with pytest.raises(ValueError, match="X contains NaN"):
        net.forward(X)


def test_huge_but_finite_inputs_are_accepted(net):
    """The quick finiteness check sums X; a sum that overflows must not be mistaken for an inf."""
    X = np.full((4, 4), 3e38, dtype=np.float32)
    assert net.forward(X).shape == (4, 2)


def test_labels_out_of_range(net):
    X = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"labels, which must lie in 0..1; found label 2"):
        net.loss(X, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="negative label -1"):
        net.fit(X, np.array([0, -1, 1]), 1, 1, 0.1)
    with pytest.raises(ValueError, match="1-D|shape"):
        net.loss(X, np.array([0.5, 1.0, 0.0]))


@pytest.mark.parametrize("kwargs,match", [
    ({"batch_size": 0}, "batch_size must be an integer >= 1"), ({"batch_size": -3}, "batch_size"),
    ({"batch_size": 2.0}, "batch_size"), ({"lr": 0}, "lr must be a finite number > 0"),
    ({"lr": -0.1}, "lr must be"), ({"lr": float("nan")}, "lr must be"), ({"epochs": -1}, "epochs must be"),
    ({"momentum": 1.0}, "momentum must be"), ({"weight_decay": -1e-3}, "weight_decay must be"),
    ({"validation_data": (np.zeros((2, 4)),)}, "validation_data must be a pair"),
    ({"callbacks": [1]}, "callbacks must be callables"), ({"seed": "x"}, "seed must be an int"),
    ({"seed": -1}, "seed must be an integer >= 0 or None; got -1")])
def test_fit_arguments(net, kwargs, match):
    args = dict(epochs=1, batch_size=2, lr=0.1)
    args.update(kwargs)
    before = net.parameters().copy()
    with pytest.raises(ValueError, match=match):
        net.fit(np.zeros((4, 4)), [0, 1, 1, 0], **args)
    np.testing.assert_array_equal(net.parameters(), before)


def test_inputs_are_never_modified(net, rng):
    X = rng.normal(size=(6, 4)).astype(np.float32)
    Y = rng.integers(0, 2, 6)
    X0, Y0 = X.copy(), Y.copy()
    net.fit(X, Y, epochs=2, batch_size=4, lr=0.5, progress=False, validation_data=(X, Y))
    net.backprop(X, Y)
    net.evaluate(X, Y)
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(Y, Y0)


def test_weights_are_writable_views(net):
    net.weights[0][...] = 0.0
    net.weights[1][...] = 0.0
    net.biases[1][...] = 5.0
    np.testing.assert_allclose(net.forward(np.ones((1, 4))), 1 / (1 + np.exp(-5.0)) * np.ones((1, 2)),
                               rtol=1e-6)
    net.weights[1] = np.ones((2, 3))
    assert (net.weights[1] == 1).all() and (net.parameters()[12:18] == 1).all()
    with pytest.raises(ValueError, match=r"layer 0 has shape \(3, 4\)"):
        net.weights[0] = np.ones((4, 3))
