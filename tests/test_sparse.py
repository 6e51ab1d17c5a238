"""Sparse X (SciPy CSR/CSC, cupyx CSR on a GPU): the first layer's forward z¹ = a⁰W¹ᵀ + b and its BP4
∂C/∂W¹ = δ¹ᵀa⁰ as sparse products, mini-batches gathered from the CSR matrix; results equal the dense ones to
rounding on every backend (NumPy reference, fused Numba, emulated GPU), and the dense matrix is never built."""

import tracemalloc
import warnings

import numpy as np
import pytest

sparse = pytest.importorskip("scipy.sparse")

import gpubp  # noqa: E402
from gpubp.backend.device import CPU_BACKEND_ENV, numba_unavailable_reason  # noqa: E402

N, FEATURES, HIDDEN, CLASSES = 120, 40, 7, 3


@pytest.fixture(params=["numpy", "numba", "emulated-gpu"])
def device(request, monkeypatch) -> str:
    """The device string of each backend: the CPU with NumPy's Ops, then the fused Numba one, then an
    emulated GPU (tests/emulated_gpu.py)."""
    if request.param == "emulated-gpu":
        request.getfixturevalue("gpus")
        return "cuda:0"
    if request.param == "numba" and numba_unavailable_reason() is not None:
        pytest.skip(numba_unavailable_reason())
    monkeypatch.setenv(CPU_BACKEND_ENV, request.param)
    return "cpu"


def _data(seed: int = 0, n: int = N, features: int = FEATURES, density: float = 0.15):
    """A sparse CSR X with some empty rows and columns, and labels that depend on it."""
    rng = np.random.default_rng(seed)
    X = sparse.random(n, features, density=density, format="csr", random_state=seed, dtype=np.float64)
    X = sparse.csr_matrix(sparse.diags((np.arange(n) % 9 != 0).astype(float)) @ X)  # every 9th row empty
    X.eliminate_zeros()
    X.sort_indices()  # canonical, as CSC → CSR conversion makes it: the same sums in the same order
    y = (np.asarray(X[:, :CLASSES].sum(axis=1)).ravel() * 10 + rng.integers(0, 2, n)).astype(np.int64) % CLASSES
    return X, y


def _net(device: str, dtype: str = "float64") -> gpubp.Network:
    return gpubp.Network([FEATURES, HIDDEN, CLASSES], activation="tanh", output="softmax", cost="log_likelihood",
                         device=device, dtype=dtype, seed=3)


def _host(net: gpubp.Network, arrays) -> list[np.ndarray]:
    return [net.ops.to_numpy(a) for a in arrays]


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_forward_backprop_loss_evaluate_and_predict_equal_the_dense_results(device, fmt):
    X, y = _data()
    Xs = X.asformat(fmt)
    net = _net(device)
    dense_out, sparse_out = net.ops.to_numpy(net.forward(X.toarray())), net.ops.to_numpy(net.forward(Xs))
    np.testing.assert_allclose(sparse_out, dense_out, rtol=1e-13, atol=1e-15)
    dense_w, dense_b, dense_deltas = net.backprop(X.toarray(), y, return_deltas=True)
    sparse_w, sparse_b, sparse_deltas = net.backprop(Xs, y, return_deltas=True)
    for got, want in zip(_host(net, sparse_w + sparse_b + sparse_deltas), _host(net, dense_w + dense_b + dense_deltas)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    assert net.loss(Xs, y) == pytest.approx(net.loss(X.toarray(), y), rel=1e-13)
    dense_eval, sparse_eval = net.evaluate(X.toarray(), y), net.evaluate(Xs, y)
    assert sparse_eval["accuracy"] == dense_eval["accuracy"]
    assert sparse_eval["loss"] == pytest.approx(dense_eval["loss"], rel=1e-13)
    np.testing.assert_array_equal(net.predict(Xs), net.predict(X.toarray()))


def test_csc_and_other_formats_are_converted_to_csr_with_bitwise_equal_results(device):
    X, y = _data()
    net = _net(device)
    want_out = net.ops.to_numpy(net.forward(X))
    want_grad = _host(net, net.backprop(X, y)[0])
    for other in (X.tocsc(), X.tocoo(), X.tolil(), sparse.csr_array(X), X.astype(np.float32)):
        if other.dtype == np.float32:  # the network's float64 of float32 values: another input, same path
            want_out = net.ops.to_numpy(net.forward(sparse.csr_matrix(other, dtype=np.float64)))
        np.testing.assert_array_equal(net.ops.to_numpy(net.forward(other)), want_out)
    for other in (X.tocsc(), X.tocoo(), X.tolil()):
        for got, want in zip(_host(net, net.backprop(other, y)[0]), want_grad):
            np.testing.assert_array_equal(got, want)


def test_integer_and_boolean_sparse_input_train_as_their_float_values(device):
    X, y = _data()
    counts = sparse.csr_matrix((np.arange(1, X.nnz + 1) % 4, X.indices, X.indptr), shape=X.shape)
    net = _net(device)
    np.testing.assert_array_equal(net.ops.to_numpy(net.forward(counts)),
                                  net.ops.to_numpy(net.forward(counts.astype(np.float64))))
    np.testing.assert_array_equal(net.ops.to_numpy(net.forward(counts.astype(bool))),
                                  net.ops.to_numpy(net.forward(counts.astype(bool).astype(np.float64))))


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_fit_on_sparse_equals_fit_on_dense(device, optimizer):
    X, y = _data()
    Xv, yv = _data(seed=1, n=30)
    weights = np.random.default_rng(2).random(N) + 0.5
    results = []
    for train, val in ((X, Xv), (X.tocsc(), Xv.tocsc()), (X.toarray(), Xv.toarray())):
        net = _net(device)
        history = net.fit(train, y, epochs=3, batch_size=16, lr=0.05, optimizer=optimizer, weight_decay=1e-3,
                          seed=5, progress=False, validation_data=(val, yv), sample_weight=weights)
        results.append((net.ops.to_numpy(net.parameters()), history, net.training_path))
    (csr_params, csr_history, path), (csc_params, csc_history, _), (dense_params, dense_history, _) = results
    assert path == "eager: sample_weight is given (the compiled steps weigh every sample equally)"
    np.testing.assert_array_equal(csc_params, csr_params)
    assert csc_history == csr_history
    np.testing.assert_allclose(csr_params, dense_params, rtol=1e-9, atol=1e-12)
    for key in dense_history:
        np.testing.assert_allclose(csr_history[key], dense_history[key], rtol=1e-9)


def test_sparse_fit_runs_step_by_step_and_says_why(device):
    X, y = _data()
    net = _net(device, dtype="float32")
    net.fit(X, y, epochs=2, batch_size=32, lr=0.1, optimizer="adam", progress=False, seed=0)
    assert net.training_path == "eager: X is sparse (the compiled steps gather rows of a dense X)"
    start = net.ops.to_numpy(net.parameters()).copy()
    with pytest.raises(ValueError, match=r"compiled=True, but this fit cannot run compiled: X is sparse"):
        net.fit(X, y, epochs=1, batch_size=32, lr=0.1, compiled=True)
    np.testing.assert_array_equal(net.ops.to_numpy(net.parameters()), start)


def test_unshuffled_float32_fit_equals_dense(device):
    X, y = _data()
    nets = [_net(device, dtype="float32") for _ in range(2)]
    for net, train in zip(nets, (X, X.toarray())):
        net.fit(train, y, epochs=2, batch_size=20, lr=0.05, optimizer="adam", shuffle=False, progress=False)
    got, want = (net.ops.to_numpy(net.parameters()) for net in nets)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6)


def test_bad_sparse_input_is_refused_as_dense_input_is(device):
    X, y = _data()
    net = _net(device)
    start = net.ops.to_numpy(net.parameters()).copy()
    for bad in (np.nan, np.inf):
        broken = X.copy()
        broken.data[5] = bad
        for call in (lambda: net.fit(broken, y, epochs=1, batch_size=8, lr=0.1), lambda: net.forward(broken),
                     lambda: net.fit(X, y, epochs=1, batch_size=8, lr=0.1, validation_data=(broken, y))):
            with pytest.raises(ValueError, match=r"contains NaN or infinite values"):
                call()
    wide = sparse.random(N, FEATURES + 1, density=0.1, format="csr", random_state=0)
    with pytest.raises(ValueError, match=rf"X must have shape \(batch, {FEATURES}\); got a sparse matrix of shape"):
        net.fit(wide, y, epochs=1, batch_size=8, lr=0.1)
    with pytest.raises(ValueError, match=r"len\(X\) != len\(Y\): X has 120 samples, Y has 119"):
        net.fit(X, y[:-1], epochs=1, batch_size=8, lr=0.1)
    with pytest.raises(ValueError, match=r"X is empty"):
        net.fit(X[:0], y[:0], epochs=1, batch_size=8, lr=0.1)
    np.testing.assert_array_equal(net.ops.to_numpy(net.parameters()), start)


def test_a_cupyx_csr_matrix_trains_on_its_gpu(gpus):
    import cupyx.scipy.sparse

    X, y = _data()
    on_gpu = cupyx.scipy.sparse.csr_matrix(X)
    net = _net("cuda:0")
    np.testing.assert_array_equal(net.ops.to_numpy(net.forward(on_gpu)), net.ops.to_numpy(net.forward(X)))
    history = net.fit(on_gpu, y, epochs=2, batch_size=16, lr=0.1, progress=False)
    assert np.isfinite(history["loss"]).all()
    with pytest.raises(ValueError, match="Only bool, float32, float64"):  # the emulation refuses ints, as CuPy
        cupyx.scipy.sparse.csr_matrix(X.astype(np.int64))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_sparse_fit_never_builds_the_dense_matrix(backend, monkeypatch):
    """On a wide matrix (its dense form 2 GB in float32) the peak of host allocations during fit, predict and
    evaluate stays a small fraction of it: O(nnz + parameters), not n × features."""
    if backend == "numba" and numba_unavailable_reason() is not None:
        pytest.skip(numba_unavailable_reason())
    monkeypatch.setenv(CPU_BACKEND_ENV, backend)
    n, features = 1000, 500_000
    rng = np.random.default_rng(0)
    per_row = 10
    X = sparse.csr_matrix((rng.random(n * per_row, np.float32), rng.integers(0, features, n * per_row),
                           np.arange(0, n * per_row + 1, per_row)), shape=(n, features))
    y = rng.integers(0, 2, n)
    net = gpubp.Network([features, 2, 2], activation="relu", output="softmax", cost="log_likelihood",
                        device="cpu", seed=0)
    net.fit(X[:100], y[:100], epochs=1, batch_size=50, lr=0.1, progress=False)  # imports and compiles untraced
    tracemalloc.start()
    try:
        net.fit(X, y, epochs=2, batch_size=50, lr=0.1, optimizer="adam", progress=False,
                validation_data=(X[:100], y[:100]))
        net.predict(X)
        net.evaluate(X.tocsc(), y)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    dense_bytes = n * features * 4
    assert peak < dense_bytes / 20, f"peak {peak / 1e6:.0f} MB during a sparse fit"


# ---- the estimators ---------------------------------------------------------------------------------------
sklearn = pytest.importorskip("sklearn")
from sklearn.compose import ColumnTransformer  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import OneHotEncoder, StandardScaler  # noqa: E402

from gpubp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402


def _fit(estimator, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(*args, **kwargs)


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
@pytest.mark.parametrize("early_stopping", [False, True])
def test_the_estimators_fit_and_predict_sparse_as_dense(fmt, early_stopping):
    X, y = _data()
    weights = np.random.default_rng(0).random(N) + 0.5
    kw = dict(hidden_layer_sizes=(9,), max_iter=15, random_state=0, dtype="float64", device="cpu",
              early_stopping=early_stopping, validation_fraction=0.2)
    dense = _fit(MLPClassifier(**kw), X.toarray(), y, sample_weight=weights)
    sparse_clf = _fit(MLPClassifier(**kw), X.asformat(fmt), y, sample_weight=weights)
    np.testing.assert_allclose(sparse_clf.predict_proba(X.asformat(fmt)), dense.predict_proba(X.toarray()),
                               rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(sparse_clf.predict(X), dense.predict(X.toarray()))
    np.testing.assert_allclose(sparse_clf.loss_curve_, dense.loss_curve_, rtol=1e-9)
    if early_stopping:
        np.testing.assert_allclose(sparse_clf.validation_scores_, dense.validation_scores_)
    regressor = dict(kw, early_stopping=False)
    targets = np.asarray(X.sum(axis=1)).ravel()
    dense_reg = _fit(MLPRegressor(**regressor), X.toarray(), targets)
    sparse_reg = _fit(MLPRegressor(**regressor), X.asformat(fmt), targets)
    np.testing.assert_allclose(sparse_reg.predict(X), dense_reg.predict(X.toarray()), rtol=1e-9, atol=1e-12)
    assert MLPClassifier().__sklearn_tags__().input_tags.sparse is True


def test_partial_fit_on_sparse_batches_equals_dense():
    X, y = _data()
    kw = dict(hidden_layer_sizes=(9,), random_state=0, dtype="float64", device="cpu")
    dense, sparse_clf = MLPClassifier(**kw), MLPClassifier(**kw)
    for lo in range(0, N, 40):
        dense.partial_fit(X[lo:lo + 40].toarray(), y[lo:lo + 40], classes=np.arange(CLASSES))
        sparse_clf.partial_fit(X[lo:lo + 40], y[lo:lo + 40], classes=np.arange(CLASSES))
    np.testing.assert_allclose(sparse_clf.predict_proba(X), dense.predict_proba(X.toarray()), rtol=1e-9)


def test_a_pipeline_with_a_sparse_one_hot_encoder_trains_on_the_sparse_matrix(monkeypatch):
    rng = np.random.default_rng(0)
    n = 300
    categories = rng.integers(0, 40, (n, 2))
    numbers = rng.standard_normal((n, 2))
    X = np.column_stack([categories, numbers]).astype(object)
    y = (categories[:, 0] % 2 == 0).astype(int) ^ (numbers[:, 0] > 1.5)
    seen = []
    fit = gpubp.Network.fit

    def recording_fit(net, X, *args, **kwargs):
        seen.append(sparse.issparse(X))
        return fit(net, X, *args, **kwargs)

    monkeypatch.setattr(gpubp.Network, "fit", recording_fit)
    pipelines = []
    for sparse_output in (True, False):
        columns = ColumnTransformer([("onehot", OneHotEncoder(sparse_output=sparse_output, handle_unknown="ignore"),
                                      [0, 1]), ("scale", StandardScaler(), [2, 3])], sparse_threshold=1.0)
        clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=30, random_state=0, dtype="float64", device="cpu")
        pipelines.append(_fit(make_pipeline(columns, clf), X, y))
    assert sparse.issparse(pipelines[0][0].transform(X[:5])) and not sparse.issparse(pipelines[1][0].transform(X[:5]))
    assert seen == [True, False]
    np.testing.assert_allclose(pipelines[0].predict_proba(X), pipelines[1].predict_proba(X), rtol=1e-9, atol=1e-12)
    assert pipelines[0].score(X, y) > 0.8


def test_the_estimators_refuse_nan_and_wrong_widths_in_sparse_x():
    X, y = _data()
    broken = X.copy()
    broken.data[0] = np.nan
    with pytest.raises(ValueError, match=r"Input X contains NaN"):
        MLPClassifier(max_iter=1).fit(broken, y)
    clf = _fit(MLPClassifier(max_iter=2, random_state=0), X, y)
    with pytest.raises(ValueError, match=rf"X has {FEATURES + 1} features, but MLPClassifier is expecting {FEATURES}"):
        clf.predict(sparse.random(5, FEATURES + 1, density=0.2, format="csr", random_state=0))


def test_an_estimator_on_the_emulated_gpu_takes_sparse_x_with_early_stopping(gpus):
    X, y = _data()
    kw = dict(hidden_layer_sizes=(9,), max_iter=10, random_state=0, dtype="float64", early_stopping=True,
              validation_fraction=0.2)
    on_gpu = _fit(MLPClassifier(device="cuda:0", **kw), X, y)
    on_gpu_dense = _fit(MLPClassifier(device="cuda:0", **kw), X.toarray(), y)
    assert on_gpu.network_.device == "cuda:0"
    np.testing.assert_allclose(on_gpu.predict_proba(X), on_gpu_dense.predict_proba(X.toarray()), rtol=1e-9,
                               atol=1e-12)
    np.testing.assert_allclose(on_gpu.validation_scores_, on_gpu_dense.validation_scores_)
