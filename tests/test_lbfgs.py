"""optimizer="lbfgs": the full-batch objective against NumPy, Network.fit's iterations, warnings and refusals,
the estimators against scikit-learn's L-BFGS, the CLI, and the emulated GPU (only θ and ∇f cross)."""

from __future__ import annotations

import os
import signal
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("scipy.optimize")

from gpubp import Network, inputs  # noqa: E402
from gpubp.lbfgs import NotConvergedWarning, Objective  # noqa: E402


def _numpy_objective(params, sizes, X, y_onehot, sample_weight, decay):
    """f(θ) of gpubp.lbfgs written out independently: tanh hidden layers, softmax output, log-likelihood,
    weighted mean over samples, plus decay/2 Σ‖W‖²."""
    shapes = list(zip(sizes[1:], sizes[:-1]))  # Wˡ (n_out, n_in) of every layer, then every bˡ
    pieces = np.split(params, np.cumsum([o * i for o, i in shapes] + [o for o, _ in shapes])[:-1])
    weights = [piece.reshape(shape) for piece, shape in zip(pieces, shapes)]
    biases = pieces[len(shapes):]
    a = X
    for l, (W, b) in enumerate(zip(weights, biases)):
        z = a @ W.T + b
        a = np.tanh(z) if l < len(weights) - 1 else np.exp(z - z.max(axis=1, keepdims=True))
    a = a / a.sum(axis=1, keepdims=True)
    costs = -np.log((a * y_onehot).sum(axis=1))
    return costs @ sample_weight / sample_weight.sum() + 0.5 * decay * sum((W * W).sum() for W in weights)


def _problem(n=11, sizes=(5, 4, 3), seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, sizes[0]))
    y = rng.integers(0, sizes[-1], n)
    net = Network(list(sizes), activation="tanh", output="softmax", cost="log_likelihood", device="cpu",
                  dtype="float64", seed=seed)
    return net, X, y


def _objective(net, X, y, sample_weight=None, weight_decay=0.0, decay_per_sample=False, chunk=4):
    x, _ = inputs.check_inputs(X, net.sizes[0], net.ops, net.dtype)
    target = net.check_targets(y, len(x))
    weights = inputs.check_sample_weight(sample_weight, len(x), net.ops, net.dtype)
    return Objective(net, x, target, weights, weight_decay, decay_per_sample, chunk)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("decay_per_sample", [False, True])
def test_objective_and_gradient_match_numpy_with_l2_and_sample_weights(weighted, decay_per_sample):
    """f in chunks of 4 rows of 11 equals the NumPy formula; ∇f equals its central differences (BP1–BP4
    against finite differences); λ is weight_decay, or weight_decay / Σ wₓ per sample (scikit-learn's α)."""
    net, X, y = _problem()
    sw = np.random.default_rng(1).uniform(0.2, 3.0, len(y)) if weighted else None
    objective = _objective(net, X, y, sw, weight_decay=0.3, decay_per_sample=decay_per_sample)
    theta = np.random.default_rng(2).normal(scale=0.5, size=net.parameters().size)
    f, grad = objective(theta)
    w = np.ones(len(y)) if sw is None else sw
    decay = 0.3 / w.sum() if decay_per_sample else 0.3
    reference = lambda t: _numpy_objective(t, net.sizes, X, np.eye(3)[y], w, decay)  # noqa: E731
    assert f == pytest.approx(reference(theta), rel=1e-12)
    eps, numeric = 1e-6, np.empty_like(theta)
    for i in range(theta.size):
        step = np.zeros_like(theta)
        step[i] = eps
        numeric[i] = (reference(theta + step) - reference(theta - step)) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)
    assert grad.dtype == np.float64 and np.array_equal(net.ops.to_numpy(net.parameters()), theta)


def test_integer_sample_weights_equal_repeated_rows():
    net, X, y = _problem()
    counts = np.arange(len(y)) % 3 + 1
    theta = net.ops.to_numpy(net.parameters()).copy()
    f_weighted, g_weighted = _objective(net, X, y, counts.astype(float), weight_decay=0.1, decay_per_sample=True)(theta)
    f_repeated, g_repeated = _objective(net, np.repeat(X, counts, axis=0), np.repeat(y, counts),
                                        weight_decay=0.1, decay_per_sample=True)(theta)
    assert f_weighted == pytest.approx(f_repeated, rel=1e-13)
    np.testing.assert_allclose(g_weighted, g_repeated, rtol=1e-12, atol=1e-15)


def test_fit_records_each_iteration_and_calls_back_with_the_parameters_it_ends_on():
    net, X, y = _problem(n=60)
    seen = []

    def callback(net, epoch, logs):
        seen.append((epoch, net.ops.to_numpy(net.parameters()).copy(), dict(logs)))
        return epoch < 4  # stop after the fourth iteration

    history = net.fit(X, y, epochs=50, batch_size=16, lr=1.0, optimizer="lbfgs", callbacks=[callback],
                      validation_data=(X[:20], y[:20]), progress=False)
    assert [epoch for epoch, _, _ in seen] == [1, 2, 3, 4] and len(history["loss"]) == 4
    assert set(history) == {"loss", "val_loss", "val_accuracy"}
    assert np.all(np.diff(history["loss"]) < 0)  # the line search decreases f (no L2 here: f is the loss)
    np.testing.assert_array_equal(net.ops.to_numpy(net.parameters()), seen[-1][1])
    assert net.loss(X, y) == pytest.approx(history["loss"][-1], rel=1e-12)
    assert history["val_loss"][-1] == pytest.approx(net.loss(X[:20], y[:20]), rel=1e-12)


def test_ctrl_c_ends_after_the_iteration_with_parameters_and_history_consistent():
    net, X, y = _problem(n=60)

    def interrupt(net, epoch, logs):
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt, match="after L-BFGS iteration 3"):
        net.fit(X, y, epochs=50, batch_size=60, lr=1.0, optimizer="lbfgs", callbacks=[interrupt], progress=False)
    assert len(net.history["loss"]) == 3
    assert net.loss(X, y) == pytest.approx(net.history["loss"][-1], rel=1e-12)


def test_a_nan_iteration_raises_and_puts_back_the_last_finite_one(monkeypatch):
    net, X, y = _problem(n=30)
    original, calls = Objective.__call__, []

    def nan_from_the_fourth_call(self, theta):
        calls.append(1)
        f, grad = original(self, theta)
        if len(calls) >= 4:
            self.mean_cost = float("nan")
        return f, grad

    monkeypatch.setattr(Objective, "__call__", nan_from_the_fourth_call)
    history = []
    with pytest.raises(FloatingPointError, match="diverged in L-BFGS iteration"):
        net.fit(X, y, epochs=20, batch_size=30, lr=1.0, optimizer="lbfgs", progress=False,
                callbacks=[lambda net, epoch, logs: history.append(net.ops.to_numpy(net.parameters()).copy())])
    np.testing.assert_array_equal(net.ops.to_numpy(net.parameters()), history[-1])
    assert np.all(np.isfinite(net.history["loss"]))


def test_not_converged_warns_with_scipys_result_and_converged_does_not():
    net, X, y = _problem(n=60)
    with pytest.warns(NotConvergedWarning, match="did not converge after 3 iteration") as caught:
        net.fit(X, y, epochs=3, batch_size=60, lr=1.0, optimizer="lbfgs", progress=False)
    assert caught[0].message.result.status == 1 and caught[0].filename == __file__
    with pytest.warns(NotConvergedWarning, match="evaluations"):
        net.fit(X, y, epochs=100, batch_size=60, lr=1.0, optimizer="lbfgs", progress=False,
                optimizer_options={"max_fun": 2})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net.fit(X, y, epochs=500, batch_size=60, lr=1.0, optimizer="lbfgs", progress=False, tol=1e-2)
    assert len(net.history["loss"]) < 500


@pytest.mark.parametrize("arguments, message", [
    ({"lr_schedule": "invscaling"}, "lr_schedule='invscaling'"),
    ({"tol": 1e-3, "restore_best": True}, "restore_best"),
    ({"tol": 1e-3, "monitor": "loss"}, "monitor"),
    ({"compiled": True}, "compiled=True"),
    ({"checkpoint": "ckpt"}, "checkpoint"),
    ({"optimizer_options": {"beta1": 0.5}}, "no setting 'beta1'; the settings it takes there: decay_per_sample, "
                                            "max_fun"),
    ({"optimizer_options": {"max_fun": 0}}, "max_fun"),
    ({"tol": -1.0}, "tol"),
])
def test_what_lbfgs_cannot_do_is_refused_before_anything_changes(arguments, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    net, X, y = _problem()
    before, history = net.state(), dict(net.history)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        net.fit(X, y, epochs=5, batch_size=4, lr=1.0, optimizer="lbfgs", progress=False, **arguments)
    np.testing.assert_array_equal(net.state().params, before.params)
    assert net.history == history and not list(tmp_path.iterdir())


def test_without_scipy_the_error_names_the_extra(monkeypatch):
    net, X, y = _problem()
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)
    with pytest.raises(ImportError, match=r"gpubp\[fast\]"):
        net.fit(X, y, epochs=5, batch_size=4, lr=1.0, optimizer="lbfgs", progress=False)


def test_the_registry_entry_has_no_step():
    from gpubp.optimizers import OPTIMIZERS, make_optimizer

    assert OPTIMIZERS["lbfgs"].defaults["max_fun"] == 15000
    net, _, _ = _problem()
    with pytest.raises(ValueError, match="takes no steps"):
        make_optimizer("lbfgs", net.ops, net.parameters(), net.n_weights)


def test_lbfgs_leaves_the_kept_optimizer_alone():
    net, X, y = _problem(n=40)
    net.fit(X, y, epochs=2, batch_size=8, lr=0.01, optimizer="adam", progress=False)
    adam = net.optimizer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotConvergedWarning)
        net.fit(X, y, epochs=3, batch_size=40, lr=1.0, optimizer="lbfgs", progress=False)
    assert net.optimizer is adam and adam.t == 10


# ---- the estimators ------------------------------------------------------------------------------------
sklearn = pytest.importorskip("sklearn")
from sklearn import neural_network  # noqa: E402
from sklearn.datasets import load_diabetes, load_digits  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.preprocessing import MinMaxScaler, scale  # noqa: E402

from gpubp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402


def _largest_relative_difference(ours, theirs):
    return max(np.abs(a - b).max() / np.abs(b).max()
               for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_))


def test_float64_fit_follows_sklearns_lbfgs_path():
    """Same initial weights (scikit-learn's draws from random_state), same objective, same scipy: after 20
    iterations the weights agree to ~1e-13 (measured 9e-14: only the order of floating-point sums differs).
    Run to convergence, those rounding differences grow in the flat directions of the optimum (measured 3e-3
    on the weights) while the loss agrees to 4e-6 and the predictions are the same."""
    X, y = load_digits(n_class=3, return_X_y=True)
    X, y = MinMaxScaler().fit_transform(X[:200]), y[:200]
    params = dict(solver="lbfgs", hidden_layer_sizes=(15,), activation="tanh", alpha=1e-3, random_state=0,
                  tol=1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        theirs = neural_network.MLPClassifier(max_iter=20, **params).fit(X, y)
        ours = MLPClassifier(max_iter=20, device="cpu", dtype="float64", **params).fit(X, y)
    assert _largest_relative_difference(ours, theirs) < 1e-10
    assert ours.n_iter_ == theirs.n_iter_ == 20 and ours.loss_ == pytest.approx(theirs.loss_, rel=1e-12)
    assert ours.loss_curve_[-1] == ours.loss_ and ours.t_ == 0

    theirs = neural_network.MLPClassifier(max_iter=300, **params).fit(X, y)
    ours = MLPClassifier(max_iter=300, device="cpu", dtype="float64", **params).fit(X, y)
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-4)
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))


def test_float64_regression_with_sample_weights_follows_sklearn():
    X, y = load_diabetes(return_X_y=True)
    X, y = scale(X), scale(y)
    sw = np.random.default_rng(0).uniform(0.5, 2.0, len(y))
    params = dict(solver="lbfgs", hidden_layer_sizes=(10,), alpha=1e-2, random_state=0, max_iter=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        theirs = neural_network.MLPRegressor(**params).fit(X, y, sample_weight=sw)
        ours = MLPRegressor(device="cpu", dtype="float64", **params).fit(X, y, sample_weight=sw)
    assert _largest_relative_difference(ours, theirs) < 1e-10
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-12)


def test_estimators_warn_as_sklearn_and_hide_partial_fit():
    X, y = load_digits(n_class=2, return_X_y=True)
    clf = MLPClassifier(solver="lbfgs", hidden_layer_sizes=5, max_iter=2, random_state=0)
    with pytest.warns(ConvergenceWarning, match=r"lbfgs failed to converge after 2 iteration\(s\)") as caught:
        clf.fit(X / 16, y)
    assert "max_iter=2" in str(caught[0].message) and clf.n_iter_ == 2
    assert not any(issubclass(w.category, NotConvergedWarning) for w in caught)
    assert not hasattr(clf, "partial_fit") and hasattr(MLPClassifier(solver="sgd"), "partial_fit")
    assert not hasattr(MLPRegressor(solver="lbfgs"), "partial_fit")
    with pytest.raises(AttributeError, match="has no attribute 'partial_fit'"):
        MLPRegressor(solver="lbfgs").partial_fit


def test_a_fit_that_starts_converged_reports_sklearns_loss():
    X, y = load_diabetes(return_X_y=True)
    X, y = scale(X), scale(y)
    reg = MLPRegressor(solver="lbfgs", hidden_layer_sizes=4, max_iter=500, random_state=0, warm_start=True,
                       dtype="float64", device="cpu", tol=1e-3).fit(X, y)
    loss = reg.loss_
    reg.set_params(tol=10.0).fit(X, y)  # the gradient is below tol where it starts
    assert reg.n_iter_ == 0 and reg.loss_ == pytest.approx(loss, rel=1e-12)


def test_lbfgs_estimators_pass_sklearns_checks_in_float64():
    from sklearn.utils.estimator_checks import check_estimator

    for estimator in (MLPClassifier(solver="lbfgs", max_iter=100, random_state=0, dtype="float64"),
                      MLPRegressor(solver="lbfgs", max_iter=100, random_state=0, dtype="float64")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results = check_estimator(estimator, on_fail=None)
        failed = {r["check_name"] for r in results if r["status"] == "failed"}
        assert not failed, failed


# ---- the command line ------------------------------------------------------------------------------------
def test_cli_trains_with_lbfgs_and_refuses_what_it_cannot_do(capsys, tmp_path):
    from gpubp.cli import main

    model = tmp_path / "model.npz"
    status = main(["train", "--optimizer", "lbfgs", "--epochs", "5", "--device", "cpu", "--no-progress",
                   "--l2", "1", "--save", str(model)])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "at most 5 L-BFGS iterations, chunks of 8192 rows" in out and "epoch 5/5  loss" in out
    assert "validation accuracy" in out
    import gpubp

    assert gpubp.load(str(model)).history["loss"][-1] < gpubp.load(str(model)).history["loss"][0]
    status = main(["train", "--optimizer", "lbfgs", "--lr-schedule", "adaptive", "--epochs", "1"])
    out, err = capsys.readouterr()
    assert status == 2 and err.startswith("gpubp: error: optimizer='lbfgs' cannot be combined with lr_schedule")


# ---- the emulated GPU ----------------------------------------------------------------------------------
def test_on_the_emulated_gpu_only_the_flat_vector_crosses(gpus, monkeypatch):
    """Loss and gradient are computed on the device: per evaluation one upload of θ and one download of ∇f
    (n parameters each) and of two numbers; the result equals the CPU's."""
    net, X, y = _problem(n=50, sizes=(6, 5, 3))
    cpu = Network.from_state(net.state(), device="cpu")
    gpu = Network.from_state(net.state(), device="cuda:0")
    n = net.parameters().size
    uploads, downloads = [], []
    asarray, asnumpy = gpus.asarray, gpus.asnumpy

    def counted_asarray(x, dtype=None):
        if not isinstance(x, gpus.ndarray):
            uploads.append(np.size(x))
        return asarray(x, dtype)

    def counted_asnumpy(x):
        downloads.append(np.size(x))
        return asnumpy(x)

    monkeypatch.setattr(gpus, "asarray", counted_asarray)
    monkeypatch.setattr(gpus, "asnumpy", counted_asnumpy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotConvergedWarning)
        history = gpu.fit(X, y, epochs=8, batch_size=16, lr=1.0, optimizer="lbfgs", progress=False,
                          weight_decay=1e-3)
        monkeypatch.undo()
        expected = cpu.fit(X, y, epochs=8, batch_size=16, lr=1.0, optimizer="lbfgs", progress=False,
                           weight_decay=1e-3)
    first_theta = uploads.index(n)
    assert set(uploads[:first_theta]) <= {X.size, y.size}        # the data, once
    assert set(uploads[first_theta:]) == {n}                     # then θ per evaluation
    assert set(downloads) == {n, 2}                              # θ₀ once, then ∇f and (Σ wₓCₓ, Σ‖W‖²)
    assert downloads.count(n) == len(uploads[first_theta:]) + 1 == downloads.count(2) + 1
    np.testing.assert_allclose(history["loss"], expected["loss"], rtol=1e-10)
