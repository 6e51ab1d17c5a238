"""fit(sample_weight=...): each batch's cost is the weighted mean Σ wₓCₓ / Σ wₓ; the optimizers'
per-sample L2 (``decay_per_sample``) and Nesterov's momentum."""

import numpy as np
import pytest

import gpubp

CONFIGS = [("sigmoid", None, "quadratic"), ("relu", "softmax", "log_likelihood"),
           ("tanh", "sigmoid", "cross_entropy")]


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam"])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c[2])
def test_integer_weights_equal_repeated_samples(config, optimizer):
    activation, output, cost = config
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((12, 4)), rng.integers(0, 3, 12)
    w = rng.integers(0, 4, 12)
    w[0] = 2
    nets = [gpubp.Network([4, 6, 3], activation, output, cost, device="cpu", dtype="float64", seed=1)
            for _ in range(2)]
    kw = dict(epochs=4, lr=0.1, optimizer=optimizer, weight_decay=0.01, shuffle=False, progress=False)
    weighted = nets[0].fit(X, y, batch_size=12, sample_weight=w, **kw)
    repeated = nets[1].fit(X.repeat(w, axis=0), y.repeat(w), batch_size=int(w.sum()), **kw)
    np.testing.assert_allclose(nets[0].parameters(), nets[1].parameters(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(weighted["loss"], repeated["loss"], rtol=1e-12)


def test_weighted_loss_is_the_weighted_mean_and_mini_batches_divide_by_their_weight():
    rng = np.random.default_rng(1)
    X, Y = rng.standard_normal((10, 3)), rng.standard_normal((10, 2))
    w = rng.random(10) + 0.1
    net = gpubp.Network([3, 2], "identity", cost="quadratic", device="cpu", dtype="float64", seed=0)
    start = net.parameters().copy()
    history = net.fit(X, Y, epochs=1, batch_size=4, lr=0.1, shuffle=False, progress=False, sample_weight=w)
    # replay by hand: three steps, each the gradient of the batch's weighted mean cost
    params, weighted_costs = start.copy(), 0.0
    for lo, hi in ((0, 4), (4, 8), (8, 10)):
        W, b = params[:6].reshape(2, 3), params[6:]
        error = X[lo:hi] @ W.T + b - Y[lo:hi]
        weighted_costs += np.dot(w[lo:hi], 0.5 * (error ** 2).sum(axis=1))
        delta = error * w[lo:hi, None]
        grad = np.concatenate([(delta.T @ X[lo:hi]).ravel(), delta.sum(axis=0)]) / w[lo:hi].sum()
        params = params - 0.1 * grad
    np.testing.assert_allclose(net.parameters(), params, rtol=1e-12)
    assert history["loss"][0] == pytest.approx(weighted_costs / w.sum(), rel=1e-12)


def test_decay_per_sample_scales_l2_by_the_batch():
    rng = np.random.default_rng(2)
    X, Y = rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
    nets = [gpubp.Network([3, 2], "identity", device="cpu", dtype="float64", seed=0) for _ in range(2)]
    nets[0].optimizer_for("sgd", decay_per_sample=True)
    nets[0].fit(X, Y, epochs=1, batch_size=6, lr=0.1, weight_decay=0.6, shuffle=False, progress=False)
    nets[1].fit(X, Y, epochs=1, batch_size=6, lr=0.1, weight_decay=0.1, shuffle=False, progress=False)
    np.testing.assert_allclose(nets[0].parameters(), nets[1].parameters(), rtol=1e-14)


def test_bad_sample_weights_are_refused():
    net = gpubp.Network([2, 2], device="cpu")
    X, y = np.zeros((3, 2)), np.array([0, 1, 0])
    for bad, match in (([1, 2], "vector of 3"), ([1, -1, 1], ">= 0"), ([0, 0, 0], "positive"),
                       ([1, np.nan, 1], "NaN")):
        with pytest.raises(ValueError, match=match):
            net.fit(X, y, epochs=1, batch_size=2, lr=0.1, sample_weight=bad, progress=False)


def test_nesterov_is_sklearns_update():
    """v ← μv − η∇; w ← w + μv − η∇, as scikit-learn's SGDOptimizer(nesterov=True)."""
    from gpubp.backend.numpy_ops import NumpyOps

    rng = np.random.default_rng(3)
    params, velocity = rng.standard_normal(7), rng.standard_normal(7)
    grads = [rng.standard_normal(7) for _ in range(3)]
    w, v = params.copy(), velocity.copy()
    for g in grads:
        NumpyOps().nesterov_update(params, g.copy() * 4, velocity, lr=0.05, momentum=0.9, grad_scale=0.25,
                                   weight_decay=0.0, n_weights=7)
        v = 0.9 * v - 0.05 * g
        w = w + 0.9 * v - 0.05 * g
    np.testing.assert_allclose(params, w, rtol=1e-13)
    np.testing.assert_allclose(velocity, v, rtol=1e-13)
