"""gpubp.sklearn: scikit-learn's conformance suite, the ecosystem (pipelines, search, cloning, pickling,
pandas, string labels) and the maths against scikit-learn's own MLP."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

import joblib  # noqa: E402  (comes with scikit-learn)
from sklearn import neural_network  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits, make_classification, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import check_estimator, parametrize_with_checks  # noqa: E402

from gpubp.activations import HIDDEN_NAMES, get_activation  # noqa: E402
from gpubp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

# scikit-learn's checks compare float64 results at rtol 1e-7, below float32's resolution (6e-8 per
# rounding): they run on float64 instances, as scikit-learn's own MLP computes in float64 for float64 data.
CONFORMANCE = [MLPClassifier(max_iter=100, random_state=0, dtype="float64"),
               MLPRegressor(max_iter=100, random_state=0, dtype="float64")]


@parametrize_with_checks(CONFORMANCE)
def test_sklearn_conformance(estimator, check):
    check(estimator)


@pytest.mark.parametrize("estimator", [MLPClassifier(max_iter=50, random_state=0),
                                       MLPRegressor(max_iter=50, random_state=0)], ids=lambda e: type(e).__name__)
def test_float32_default_passes_every_check_but_the_1e7_equivalence(estimator):
    """The float32 default passes the suite too, except fitting with integer weights vs repeated rows
    (dense and sparse) compared at rtol 1e-7 (one float32 rounding is 6e-8); that equivalence holds to float32
    precision in test_sample_weight_equals_repetition_in_float32."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(estimator, on_fail=None)
    failed = {r["check_name"] for r in results if r["status"] == "failed"}
    assert failed <= {"check_sample_weight_equivalence_on_dense_data",
                      "check_sample_weight_equivalence_on_sparse_data"}, failed


def test_sample_weight_equals_repetition_in_float32():
    rng = np.random.RandomState(42)
    X, y = rng.rand(15, 30), rng.randint(0, 3, size=15)
    sw = rng.randint(0, 5, size=15)
    kw = dict(max_iter=100, random_state=0)
    repeated = MLPClassifier(**kw).fit(X.repeat(sw, axis=0), y.repeat(sw))
    weighted = MLPClassifier(**kw).fit(X, y, sample_weight=sw)
    np.testing.assert_allclose(weighted.predict_proba(X), repeated.predict_proba(X), rtol=2e-5, atol=1e-6)


# ---- the maths, against scikit-learn's MLP ------------------------------------------------------------
# One full batch per epoch: the same initial weights (drawn from random_state in scikit-learn's order), the
# same batches; only the order of the sums differs, so float64 runs agree closely.
SOLVERS = [dict(solver="adam"), dict(solver="sgd", learning_rate_init=0.05),
           dict(solver="sgd", nesterovs_momentum=False, learning_rate_init=0.05),
           dict(solver="sgd", momentum=0.0, learning_rate_init=0.1),
           dict(solver="sgd", learning_rate="invscaling", learning_rate_init=0.5, power_t=0.25),
           dict(solver="sgd", learning_rate="adaptive", learning_rate_init=0.05, tol=1e-3, n_iter_no_change=2),
           dict(solver="adam", early_stopping=True, n_iter_no_change=3, tol=1e-3),
           dict(solver="adam", alpha=0.5, activation="tanh", beta_1=0.8, beta_2=0.99, epsilon=1e-3),
           dict(solver="adam", activation="logistic", hidden_layer_sizes=(7, 5))]


def _compare(ours, theirs, X, method):
    np.testing.assert_allclose(np.concatenate([c.ravel() for c in ours.coefs_ + ours.intercepts_]),
                               np.concatenate([c.ravel() for c in theirs.coefs_ + theirs.intercepts_]),
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(getattr(ours, method)(X), getattr(theirs, method)(X), rtol=1e-6, atol=1e-8)
    assert ours.n_iter_ == theirs.n_iter_ and ours.t_ == theirs.t_
    # loss_ adds the L2 term with the epoch's final weights, scikit-learn with the weights it started from
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-3)


@pytest.mark.parametrize("params", SOLVERS, ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()))
def test_classifier_maths_match_sklearn(params):
    X, y = make_classification(120, 6, n_informative=4, n_classes=3, random_state=1)
    kw = dict(dict(hidden_layer_sizes=(9,), max_iter=40, batch_size=120, random_state=3), **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = MLPClassifier(dtype="float64", device="cpu", **kw).fit(X, y)
        theirs = neural_network.MLPClassifier(**kw).fit(X, y)
    _compare(ours, theirs, X, "predict_proba")
    if params.get("early_stopping"):
        assert ours.validation_scores_ == theirs.validation_scores_
        assert ours.best_validation_score_ == theirs.best_validation_score_ and ours.best_loss_ is None


@pytest.mark.parametrize("loss", ["squared_error", "poisson"])
@pytest.mark.parametrize("n_targets", [1, 3])
def test_regressor_maths_match_sklearn(loss, n_targets):
    X, y = make_regression(80, 5, n_targets=n_targets, noise=1.0, random_state=0)
    y = np.abs(y) / 50 if loss == "poisson" else y
    kw = dict(loss=loss, hidden_layer_sizes=(8,), max_iter=30, random_state=0, learning_rate_init=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = MLPRegressor(dtype="float64", device="cpu", **kw).fit(X, y)
        theirs = neural_network.MLPRegressor(**kw).fit(X, y)
    _compare(ours, theirs, X, "predict")
    assert ours.out_activation_ == theirs.out_activation_
    assert ours.predict(X).shape == theirs.predict(X).shape


def test_partial_fit_continues_adam_like_sklearn():
    X, y = make_classification(60, 4, random_state=0)
    ours = MLPClassifier(hidden_layer_sizes=(5,), random_state=0, dtype="float64")
    theirs = neural_network.MLPClassifier(hidden_layer_sizes=(5,), random_state=0)
    for _ in range(3):
        ours.partial_fit(X, y, classes=[0, 1])
        theirs.partial_fit(X, y, classes=[0, 1])
    _compare(ours, theirs, X, "predict_proba")
    assert ours.network_.optimizer.t == 3


def test_string_labels_train_as_sklearn_in_batches_missing_classes_and_with_early_stopping():
    """The class indices the network trains on are the positions in the sorted ``classes_`` (where
    scikit-learn's one-hot rows have their 1), also for batches holding some of the classes only, and the
    validation split scores the labels themselves."""
    X, y = make_classification(90, 5, n_informative=3, n_classes=3, random_state=0)
    names = np.array(["emu", "cat", "dog"])[y]
    kw = dict(hidden_layer_sizes=(6,), random_state=0, batch_size=90, shuffle=False)
    ours, theirs = MLPClassifier(dtype="float64", **kw), neural_network.MLPClassifier(**kw)
    for rows in (names != "dog", names != "cat", names == "emu", slice(None)):
        ours.partial_fit(X[rows], names[rows], classes=["emu", "dog", "cat"])
        theirs.partial_fit(X[rows], names[rows], classes=["emu", "dog", "cat"])
    _compare(ours, theirs, X, "predict_proba")
    assert list(ours.predict(X)) == list(theirs.predict(X))

    kw.update(early_stopping=True, max_iter=12, n_iter_no_change=3, tol=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = MLPClassifier(dtype="float64", **kw).fit(X, names)
        theirs = neural_network.MLPClassifier(**kw).fit(X, names)
    _compare(ours, theirs, X, "predict_proba")
    assert ours.validation_scores_ == theirs.validation_scores_


def test_the_network_does_not_check_x_for_nan_again(monkeypatch):
    """scikit-learn's validation has checked X for NaN and inf; training and predicting do not read it again
    for that (a pass over the data set per fit and per partial_fit epoch)."""
    import gpubp.inputs

    checked = []
    real = gpubp.inputs._all_finite
    monkeypatch.setattr(gpubp.inputs, "_all_finite", lambda arr, ops: checked.append(arr.shape) or real(arr, ops))
    X, y = make_classification(60, 5, n_informative=3, n_classes=3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        MLPClassifier(max_iter=3, early_stopping=True, random_state=0).fit(X, y).predict(X)
        MLPClassifier(random_state=0).partial_fit(X, y, classes=[0, 1, 2]).partial_fit(X, y).predict_proba(X)
    assert checked == []


def test_sample_weights_match_sklearn():
    X, y = make_classification(50, 4, random_state=0)
    sw = np.random.RandomState(0).rand(50) * 3
    kw = dict(hidden_layer_sizes=(6,), max_iter=20, random_state=0, alpha=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = MLPClassifier(dtype="float64", **kw).fit(X, y, sample_weight=sw)
        theirs = neural_network.MLPClassifier(**kw).fit(X, y, sample_weight=sw)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-6, atol=1e-9)


def test_minibatch_training_reaches_sklearn_accuracy():
    X, y = load_digits(return_X_y=True)
    X = X / 16
    kw = dict(hidden_layer_sizes=(32,), max_iter=15, batch_size=32, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = MLPClassifier(**kw).fit(X[:1200], y[:1200])
        theirs = neural_network.MLPClassifier(**kw).fit(X[:1200], y[:1200])
    assert abs(ours.score(X[1200:], y[1200:]) - theirs.score(X[1200:], y[1200:])) < 0.03
    assert len(ours.loss_curve_) == 15 and ours.loss_curve_[-1] < ours.loss_curve_[0] / 5


# ---- behaviour -----------------------------------------------------------------------------------------
def test_convergence_warning_and_stopping_as_sklearn():
    X, y = make_classification(40, 4, random_state=0)
    with pytest.warns(ConvergenceWarning, match=r"Maximum iterations \(2\) reached"):
        MLPClassifier(max_iter=2, random_state=0).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        clf = MLPClassifier(max_iter=2, random_state=0).partial_fit(X, y, classes=[0, 1])
        stopped = MLPClassifier(max_iter=500, tol=10.0, n_iter_no_change=2, random_state=0).fit(X, y)
    assert clf.n_iter_ == 1
    # the first epoch sets best_loss_; the next three do not improve by tol: more than n_iter_no_change
    assert stopped.n_iter_ == 4 == len(stopped.loss_curve_)


def test_binary_multiclass_multilabel_and_string_labels():
    X, y = make_classification(90, 5, n_informative=3, n_classes=3, random_state=0)
    names = np.array(["cat", "dog", "emu"])[y]
    clf = MLPClassifier(hidden_layer_sizes=(10,), max_iter=300, random_state=0).fit(X, names)
    assert list(clf.classes_) == ["cat", "dog", "emu"] and clf.out_activation_ == "softmax"
    assert clf.predict(X).dtype == names.dtype and clf.score(X, names) > 0.8
    assert clf.predict_proba(X).shape == (90, 3)
    np.testing.assert_allclose(clf.predict_log_proba(X), np.log(clf.predict_proba(X)), rtol=1e-6)

    binary = MLPClassifier(hidden_layer_sizes=(10,), max_iter=200, random_state=0).fit(X, names == "dog")
    assert binary.n_outputs_ == 1 and binary.out_activation_ == "logistic"
    assert binary.network_.cost.name == "cross_entropy" and binary.network_.sizes[-1] == 1
    proba = binary.predict_proba(X)
    assert proba.shape == (90, 2) and np.allclose(proba.sum(axis=1), 1)

    Y = np.stack([y == 0, y == 1, (y == 2) | (y == 0)], axis=1).astype(int)
    multilabel = MLPClassifier(hidden_layer_sizes=(10,), max_iter=300, random_state=0).fit(X, Y)
    assert multilabel.out_activation_ == "logistic" and multilabel.predict(X).shape == (90, 3)
    assert set(np.unique(multilabel.predict(X))) <= {0, 1} and multilabel.score(X, Y) > 0.5


def test_gpubp_activation_names_and_devices():
    X, y = make_classification(60, 4, random_state=0)
    clf = MLPClassifier(hidden_layer_sizes=(6,), activation="gelu", max_iter=5, device="cpu",
                        random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    assert clf.network_.activation.name == "gelu" and clf.network_.device == "cpu"
    assert clf.network_.dtype == np.float32 and clf.predict_proba(X).dtype == np.float64


@pytest.mark.parametrize("name", HIDDEN_NAMES)
def test_every_registered_activation_is_a_valid_parameter(name):
    """``activation=`` takes every name of gpubp's registry (ELU and SELU included), as a hidden layer."""
    X, y = make_classification(40, 4, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier(hidden_layer_sizes=(5,), activation=name, max_iter=3, random_state=0).fit(X, y)
    assert clf.network_.activation is get_activation(name)
    assert clf.predict_proba(X).shape == (40, 2)


def test_unsupported_inputs_and_parameters_say_what_to_do():
    X, y = make_classification(30, 4, random_state=0)
    with pytest.raises(ValueError, match=r"activation"):
        MLPClassifier(activation="softmax").fit(X, y)
    with pytest.raises(ValueError, match=r"dtype"):
        MLPRegressor(dtype="float16").fit(X, y)
    with pytest.raises(ValueError, match=r"negative"):
        MLPRegressor(loss="poisson").fit(X, y - 1.0)
    with pytest.raises(ValueError, match=r"early_stopping"):
        MLPClassifier(early_stopping=True).partial_fit(X, y, classes=[0, 1])


def test_warm_start_continues_from_the_fitted_weights():
    X, y = make_regression(50, 3, random_state=0)
    reg = MLPRegressor(hidden_layer_sizes=(5,), max_iter=3, warm_start=True, random_state=0,
                       learning_rate_init=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        first = reg.fit(X, y).loss_
        second = reg.fit(X, y).loss_
    assert second < first and reg.n_iter_ == 3 and reg.t_ == 300


# ---- the ecosystem ---------------------------------------------------------------------------------------
def test_pipeline_in_grid_search_with_two_jobs_on_digits():
    X, y = load_digits(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(16,), max_iter=8, batch_size=32,
                                                         learning_rate_init=0.01, random_state=0))
    search = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1e-1]}, cv=2, n_jobs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(X[:600], y[:600])
    assert search.best_score_ > 0.8
    assert search.score(X[600:900], y[600:900]) > 0.8


def test_cross_val_score_and_clone():
    X, y = make_classification(120, 6, random_state=0)
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=30, batch_size=16, learning_rate_init=0.01,
                        random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = cross_val_score(clf, X, y, cv=3)
        clf.fit(X, y)
    assert scores.shape == (3,) and scores.mean() > 0.7
    copy = clone(clf)
    assert copy.get_params() == clf.get_params() and not hasattr(copy, "network_")


def test_joblib_round_trip_predicts_identically_and_keeps_training(tmp_path):
    X, y = make_classification(80, 5, random_state=0)
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    joblib.dump(clf, tmp_path / "model.joblib")
    loaded = joblib.load(tmp_path / "model.joblib")
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))
    assert loaded.network_ is not clf.network_ and loaded.network_.optimizer.t == clf.network_.optimizer.t
    for est in (clf, loaded):  # the Adam state came along: both continue identically
        est.partial_fit(X, y)
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    assert "network_" in pickle.loads(pickle.dumps(clf)).__dict__ and "network_" in clf.__dict__


def test_unpickling_onto_an_unusable_device_falls_back_to_the_cpu(monkeypatch):
    from gpubp.backend import DeviceError
    import gpubp.sklearn as gsk

    X, y = make_classification(30, 4, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, device="cpu").fit(X, y)
    blob = pickle.dumps(clf.set_params(device="cuda:7"))
    real = gsk.Network.from_state

    def from_state(state, device=None):
        if device == "cuda:7":
            raise DeviceError("device 'cuda:7' is not usable: no such GPU")
        return real(state, device=device)

    monkeypatch.setattr(gsk.Network, "from_state", staticmethod(from_state))
    with pytest.warns(RuntimeWarning, match="loaded on the CPU"):
        loaded = pickle.loads(blob)
    assert loaded.network_.device == "cpu"
    np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))


def test_dataframe_with_column_names_and_series_target():
    pd = pytest.importorskip("pandas")
    X, y = make_regression(60, 3, random_state=0)
    frame = pd.DataFrame(X, columns=["age", "height", "weight"])
    reg = MLPRegressor(hidden_layer_sizes=(6,), max_iter=50, random_state=0, learning_rate_init=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reg.fit(frame, pd.Series(y, name="target"))
    assert list(reg.feature_names_in_) == ["age", "height", "weight"] and reg.n_features_in_ == 3
    np.testing.assert_allclose(reg.predict(frame), reg.predict(X), rtol=1e-6)
    with pytest.raises(ValueError, match="Feature names"):
        reg.predict(frame[["weight", "age", "height"]].rename(columns={"weight": "mass"}))
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        reg.predict(X)


def test_a_diverging_run_with_early_stopping_finishes_as_scikit_learns():
    """scikit-learn's test_mlp_diverging_loss: the fit trains on through NaN, records NaN as the last
    validation score and ends with the best epoch's (finite) parameters."""
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    kwargs = dict(hidden_layer_sizes=100, activation="identity", solver="sgd", learning_rate_init=1, max_iter=20,
                  random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = MLPRegressor(early_stopping=True, **kwargs).fit(X, y)
        reference = neural_network.MLPRegressor(early_stopping=True, **kwargs).fit(X, y)
        assert mlp.n_iter_ == reference.n_iter_ == 20
        assert str(mlp.validation_scores_[-1]) == str(np.nan) and isinstance(mlp.validation_scores_[-1], float)
        assert np.isfinite(mlp.predict(X)).all()
        with pytest.raises(ValueError, match="Solver produced non-finite parameter weights"):
            MLPRegressor(early_stopping=False, **kwargs).fit(X, y)  # no best epoch to go back to
