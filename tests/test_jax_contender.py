"""The JAX contenders of bench/jax_compare.py train exactly as gpubp does.

From gpubp's initial weights, one epoch without shuffling, on a few mini-batches of synthetic data (the
last one short), must end at gpubp's own ``fit``'s parameters and loss: for the book's maths (sigmoid,
quadratic cost, SGD) and scikit-learn's (relu, softmax + log-likelihood, Adam with L2), for the compiled
``lax.scan`` epoch and the compiled step per batch in float64 (to 1e-12: the same maths), and the scan in
float32 too (what is timed; the step shares its arithmetic). Each case compiles (about half a second). No
timing is asserted here.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="the JAX contenders need JAX (pip install -e '.[bench]')")

from gpubp.benchmark.jax_contenders import Recipe, ScanEpoch, StepEpoch, initial_state, parameters  # noqa: E402
from gpubp.network import Network  # noqa: E402

RECIPES = [
    Recipe("S", (784, 30, 10), "sigmoid", "sigmoid", "quadratic", batch_size=10, lr=3.0),
    Recipe("sklearn", (784, 100, 10), "relu", "softmax", "log_likelihood", batch_size=32, lr=1e-3,
           optimizer="adam", weight_decay=1e-4 / 32),
]
TOL = {"float32": 2e-5, "float64": 1e-12}


@pytest.mark.parametrize("contender, dtype", [(ScanEpoch, "float32"), (ScanEpoch, "float64"),
                                              (StepEpoch, "float64")], ids=lambda c: getattr(c, "name", c))
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.name)
def test_one_epoch_gives_gpubps_parameters(recipe, contender, dtype):
    rng = np.random.default_rng(3)
    n = 3 * recipe.batch_size + 5
    X = rng.random((n, recipe.sizes[0])).astype(dtype)
    labels = rng.integers(0, recipe.sizes[-1], n)
    net = Network(**recipe.network_kwargs(), device="cpu", dtype=dtype, seed=11)
    start = [np.array(p) for p in (*net.weights, *net.biases)]
    history = net.fit(X, labels, epochs=1, shuffle=False, progress=False, **recipe.fit_kwargs())
    with jax.enable_x64(dtype == "float64"):
        trainer = contender(recipe, initial_state(start[:len(net.weights)], start[len(net.weights):]), X, labels)
        loss = trainer.run(np.arange(n))
        weights, biases = parameters(trainer.state)
    tol = TOL[dtype]
    mine, gpubps = [*weights, *biases], [np.asarray(p) for p in (*net.weights, *net.biases)]
    assert all(m.dtype == np.dtype(dtype) for m in mine)
    assert max(np.abs(p - p0).max() for p, p0 in zip(gpubps, start)) > 100 * tol  # training moved them
    for m, g in zip(mine, gpubps):
        np.testing.assert_allclose(m, g, rtol=tol, atol=tol)
    assert loss == pytest.approx(history["loss"][0], rel=tol)


def test_float64_weights_need_jax_x64():
    with jax.enable_x64(False), pytest.raises(ValueError, match="jax_enable_x64"):
        initial_state([np.zeros((3, 2))], [np.zeros(3)])


@pytest.mark.parametrize("change, message", [
    (dict(activation="tanh"), "activations"),
    (dict(cost="log_likelihood"), "softmax output"),
    (dict(output="softmax"), "softmax output"),
    (dict(optimizer="momentum"), "optimizers"),
])
def test_recipe_names_what_the_contenders_cannot_do(change, message):
    fields = dict(name="x", sizes=(4, 3, 2), activation="sigmoid", output="sigmoid", cost="quadratic",
                  batch_size=2, lr=0.1)
    with pytest.raises(ValueError, match=message):
        Recipe(**{**fields, **change})
