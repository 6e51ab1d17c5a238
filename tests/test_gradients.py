"""Backprop against central finite differences for every activation × cost, and against torch autograd."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import gpubp
from gpubp.activations import ACTIVATIONS


# every test here runs on each CPU backend (tests/conftest.py): NumPy's Ops, then the fused Numba one
pytestmark = pytest.mark.usefixtures("cpu_backend")

HIDDEN = sorted(ACTIVATIONS) + ["silu"]
# (output activation, cost) pairs that the library accepts
OUTPUT_COSTS = [(None, "quadratic"), ("softmax", "quadratic"), ("sigmoid", "cross_entropy"),
                ("softmax", "cross_entropy"), ("softmax", "log_likelihood"), ("tanh", "quadratic"),
                ("identity", "quadratic")]


def jitter_biases(net, rng):
    """Non-zero biases, so that no z sits exactly on relu's kink at 0."""
    for b in net.biases:
        b[...] = rng.normal(scale=0.3, size=b.shape)


def data(rng, n=8, width=5, k=3, labels=True):
    X = rng.normal(size=(n, width)) * 0.8
    return X, (rng.integers(0, k, n) if labels else rng.random((n, k)))


@pytest.mark.parametrize("activation", HIDDEN)
@pytest.mark.parametrize("output,cost", OUTPUT_COSTS)
@pytest.mark.parametrize("labels", [True, False])
def test_backprop_matches_finite_differences(activation, output, cost, labels, rng):
    net = gpubp.Network([5, 4, 3], activation=activation, output=output, cost=cost, device="cpu",
                        dtype="float64", seed=7)
    jitter_biases(net, rng)
    X, Y = data(rng, labels=labels)
    if cost == "log_likelihood" and not labels:
        Y = np.eye(3)[rng.integers(0, 3, len(X))]
    assert gpubp.gradcheck(net, X, Y) < 1e-5


def test_user_defined_cost_without_target(rng):
    """The lecture's cost C = Σⱼ aⱼ² needs no target: ∇ₐC = 2a."""
    cost = gpubp.CustomCost(lambda a, y: (a * a).sum(axis=1), lambda a, y: 2 * a, needs_target=False)
    net = gpubp.Network([4, 6, 2], activation="tanh", cost=cost, device="cpu", dtype="float64", seed=1)
    X = rng.normal(size=(5, 4))
    assert gpubp.gradcheck(net, X, None) < 1e-6
    before = net.loss(X)
    net.fit(X, None, epochs=20, batch_size=5, lr=0.5, progress=False)
    assert net.loss(X) < before


def test_user_cost_object_with_fn_and_derivative(rng):
    class Abs:
        def fn(self, a, y):
            return np.abs(a - y).sum(axis=1)

        def derivative(self, a, y):
            return np.sign(a - y)

    net = gpubp.Network([3, 4, 2], activation="tanh", output="identity", cost=Abs(), device="cpu",
                        dtype="float64", seed=2)
    X, Y = rng.normal(size=(6, 3)), rng.normal(size=(6, 2)) + 5
    assert gpubp.gradcheck(net, X, Y) < 1e-6


def test_gradcheck_catches_a_wrong_gradient(rng, monkeypatch, cpu_backend):
    """The checker itself must fail on a broken backward pass (σ′ = a planted in the backend's BP2)."""
    from gpubp.activations import Sigmoid

    net = gpubp.Network([3, 3, 2], device="cpu", dtype="float64", seed=0)
    X, Y = data(rng, width=3, k=2)
    monkeypatch.setattr(Sigmoid, "df", lambda self, xp, z, a, out: xp.multiply(a, 1.0, out=out))
    if cpu_backend == "numba":
        from gpubp.backend import cpu_kernels

        def bp2_with_a_for_sigma_prime(delta, w, z, a, out):
            np.multiply(np.dot(delta, w), a, out=out)
            return True

        planted = cpu_kernels.KERNELS["sigmoid"]._replace(
            backprop_activation=lambda z, a, g, out: np.multiply(a, g, out=out),
            layer_backward=bp2_with_a_for_sigma_prime)
        monkeypatch.setitem(cpu_kernels.KERNELS, "sigmoid", planted)
    assert gpubp.gradcheck(net, X, Y) > 1e-2


def test_float32_close_to_float64(rng):
    X, y = data(rng, n=16)
    nets = {dt: gpubp.Network([5, 8, 3], activation="relu", output="softmax", cost="log_likelihood",
                              device="cpu", dtype=dt, seed=11) for dt in ("float32", "float64")}
    w32, b32 = nets["float32"].backprop(X, y)
    w64, b64 = nets["float64"].backprop(X, y)
    assert w32[0].dtype == np.float32 and w64[0].dtype == np.float64
    for g32, g64 in zip(w32 + b32, w64 + b64):
        np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-6)


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(1, 6), min_size=2, max_size=4), batch=st.integers(1, 9),
       activation=st.sampled_from(["sigmoid", "tanh", "softplus", "gelu", "swish", "mish", "elu"]),
       seed=st.integers(0, 2**16))
def test_property_random_shapes(sizes, batch, activation, seed):
    rng = np.random.default_rng(seed)
    net = gpubp.Network(sizes, activation=activation, device="cpu", dtype="float64", seed=seed)
    X, Y = rng.normal(size=(batch, sizes[0])), rng.random((batch, sizes[-1]))
    assert net.forward(X).shape == (batch, sizes[-1])
    nabla_w, nabla_b = net.backprop(X, Y)
    assert [w.shape for w in nabla_w] == [w.shape for w in net.weights]
    assert [b.shape for b in nabla_b] == [b.shape for b in net.biases]
    assert gpubp.gradcheck(net, X, Y, max_params=12, seed=seed) < 1e-3  # bugs give O(1) errors




#: torch.nn.functional's names where they differ from gpubp's
TORCH_NAMES = {"swish": "silu"}


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("output,cost", [(None, "quadratic"), ("sigmoid", "cross_entropy"),
                                         ("softmax", "log_likelihood")])
def test_against_torch_autograd(activation, output, cost, rng):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    F = torch.nn.functional
    net = gpubp.Network([6, 5, 4, 3], activation=activation, output=output, cost=cost, device="cpu",
                        dtype="float64", seed=5)
    jitter_biases(net, rng)
    X, y = rng.normal(size=(9, 6)), rng.integers(0, 3, 9)
    Ws = [torch.tensor(w.copy(), requires_grad=True) for w in net.weights]
    bs = [torch.tensor(b.copy(), requires_grad=True) for b in net.biases]
    special = {"gelu": lambda t: F.gelu(t, approximate="tanh"), "identity": lambda t: t}
    act = special.get(activation) or getattr(F, TORCH_NAMES.get(activation, activation))
    a = torch.tensor(X)
    for l, (W, b) in enumerate(zip(Ws, bs)):
        z = a @ W.T + b
        last = l == len(Ws) - 1
        a = act(z) if not last or output is None else (torch.sigmoid(z) if output == "sigmoid"
                                                         else torch.softmax(z, dim=1))
    onehot = torch.tensor(np.eye(3)[y])
    if cost == "quadratic":
        C = 0.5 * ((a - onehot) ** 2).sum(dim=1).mean()
    elif cost == "cross_entropy":
        C = F.binary_cross_entropy(a, onehot, reduction="sum") / len(X)
    else:
        C = -torch.log(a[torch.arange(len(X)), torch.tensor(y)]).mean()
    C.backward()
    assert net.loss(X, y) == pytest.approx(C.item(), rel=1e-10)
    nabla_w, nabla_b = net.backprop(X, y)
    for ours, theirs in zip(nabla_w + nabla_b, Ws + bs):
        np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=1e-9, atol=1e-12)
