"""Worked examples from the sources, and BP1–BP4 checked against a per-sample loop written by hand."""

import numpy as np
import pytest

import gpubp
from gpubp.activations import Activation
from gpubp.backend import get_ops


# every test here runs on each CPU backend (tests/conftest.py): NumPy's Ops, then the fused Numba one
pytestmark = pytest.mark.usefixtures("cpu_backend")


def test_single_sigmoid_neuron():
    """Inputs 2, 3, 4, weights 0.1, 0.5, 0.9, bias −2: z = 3.3, a = σ(3.3) = 0.9644."""
    net = gpubp.Network([3, 1], activation="sigmoid", device="cpu", dtype="float64")
    net.weights[0][...] = [[0.1, 0.5, 0.9]]
    net.biases[0][...] = [-2.0]
    x = np.array([2.0, 3.0, 4.0])
    z = net.weights[0] @ x + net.biases[0]
    assert z == pytest.approx([3.3])
    a = net.forward(x)
    assert a.shape == (1,)
    assert a[0] == pytest.approx(0.9644, abs=5e-5)


class HalfSquare(Activation):
    """σ(z) = z²/2, so σ′(z) = z: makes the Hadamard product in BP2 visible."""

    name = "half_square"

    def f(self, xp, z, out):
        xp.multiply(z, z, out=out)
        out *= 0.5
        return out

    def df(self, xp, z, a, out):
        xp.copyto(out, z)
        return out


def test_hadamard_product():
    """[1, 2] ⊙ [3, 4] = [3, 8], through the backend's σ′(z) ⊙ δ."""
    ops = get_ops("cpu")
    z = np.array([[1.0, 2.0]])
    delta = np.array([[3.0, 4.0]])
    out = np.empty_like(delta)
    ops.backprop_activation(HalfSquare(), z, None, delta, out)
    np.testing.assert_array_equal(out, [[3.0, 8.0]])


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def per_sample_backprop(weights, biases, x, y):
    """Nielsen's per-sample backprop with column vectors, for a quadratic cost and sigmoid layers."""
    activation, activations, zs = x.reshape(-1, 1), [x.reshape(-1, 1)], []
    for W, b in zip(weights, biases):
        z = W @ activation + b.reshape(-1, 1)
        zs.append(z)
        activation = sigmoid(z)
        activations.append(activation)
    sp = lambda z: sigmoid(z) * (1 - sigmoid(z))
    delta = (activations[-1] - y.reshape(-1, 1)) * sp(zs[-1])                    # BP1
    nabla_b = [None] * len(weights)
    nabla_w = [None] * len(weights)
    nabla_b[-1], nabla_w[-1] = delta.ravel(), delta @ activations[-2].T          # BP3, BP4
    for l in range(2, len(weights) + 1):
        delta = (weights[-l + 1].T @ delta) * sp(zs[-l])                          # BP2
        nabla_b[-l], nabla_w[-l] = delta.ravel(), delta @ activations[-l - 1].T
    return nabla_w, nabla_b


def test_bp1_to_bp4_match_per_sample_loop(rng):
    net = gpubp.Network([4, 3, 2, 2], activation="sigmoid", cost="quadratic", device="cpu",
                        dtype="float64", seed=3)
    X = rng.normal(size=(6, 4))
    Y = rng.random((6, 2))
    nabla_w, nabla_b = net.backprop(X, Y)
    sums_w = [np.zeros_like(w) for w in net.weights]
    sums_b = [np.zeros_like(b) for b in net.biases]
    for x, y in zip(X, Y):
        dw, db = per_sample_backprop(net.weights, net.biases, x, y)
        sums_w = [s + d for s, d in zip(sums_w, dw)]
        sums_b = [s + d for s, d in zip(sums_b, db)]
    for got, want in zip(nabla_w + nabla_b, sums_w + sums_b):
        np.testing.assert_allclose(got, want / len(X), rtol=1e-12, atol=1e-14)


def test_bp1_by_hand_for_one_output_neuron():
    """δᴸ = (a − y) σ′(z) for a [1, 1] net with w = 0.6, b = 0.9, x = 1, y = 0 (Nielsen's chapter-3 neuron)."""
    net = gpubp.Network([1, 1], device="cpu", dtype="float64")
    net.weights[0][...] = 0.6
    net.biases[0][...] = 0.9
    _, nabla_b, deltas = net.backprop(np.array([[1.0]]), np.array([[0.0]]), return_deltas=True)
    a = sigmoid(1.5)
    assert deltas[-1][0, 0] == pytest.approx(a * a * (1 - a))
    assert nabla_b[0][0] == pytest.approx(a * a * (1 - a))


def test_deltas_shapes_and_gradient_is_mean(rng):
    net = gpubp.Network([5, 4, 3], activation="tanh", output="softmax", cost="log_likelihood",
                        device="cpu", dtype="float64", seed=0)
    X, y = rng.normal(size=(7, 5)), rng.integers(0, 3, 7)
    nabla_w, nabla_b, deltas = net.backprop(X, y, return_deltas=True)
    assert [d.shape for d in deltas] == [(7, 4), (7, 3)]
    singles = [net.backprop(X[i:i + 1], y[i:i + 1]) for i in range(7)]
    for l in range(2):
        np.testing.assert_allclose(nabla_w[l], np.mean([s[0][l] for s in singles], axis=0), atol=1e-13)
        np.testing.assert_allclose(nabla_b[l], np.mean([s[1][l] for s in singles], axis=0), atol=1e-13)
        np.testing.assert_allclose(nabla_b[l], deltas[l].mean(axis=0), atol=1e-13)


def test_one_sample_as_1d_arrays():
    net = gpubp.Network([3, 4, 2], activation="tanh", output="softmax", cost="log_likelihood",
                        device="cpu", dtype="float64", seed=0)
    x = np.array([0.5, -1.0, 2.0])
    assert net.forward(x).shape == (2,)
    assert net.loss(x, 1) == pytest.approx(net.loss(x[None], np.array([1])))
    assert net.loss(x, np.array([0.0, 1.0])) == pytest.approx(net.loss(x[None], np.array([1])))
    nabla_w, _ = net.backprop(x, 1)
    np.testing.assert_allclose(nabla_w[0], net.backprop(x[None], [1])[0][0])
    assert net.evaluate(x, 1)["accuracy"] in (0.0, 1.0)
    assert net.predict(x) in (0, 1)
