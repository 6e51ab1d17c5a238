"""scikit-learn estimators on gpubp: ``MLPClassifier`` and ``MLPRegressor``, drop-in for
``sklearn.neural_network``'s, on any gpubp device.

Same constructor parameters, defaults, fitted attributes and maths as scikit-learn 1.9's MLP, trained by
``Network.fit`` (one epoch loop, whose optimizer runs the schedule and the stopping rule; scikit-learn's
bookkeeping of each iteration runs in its epoch callback):

    L2             each batch minimises C + α/2 Σ‖W‖² / Σ wₓ, so ∇W gains αW / Σ wₓ (Σ wₓ = batch size
                   without sample weights): ``weight_decay=alpha`` with ``Optimizer.decay_per_sample``
    solver="sgd"   v ← μv − η∇; w ← w + v, or with Nesterov w ← w + μv − η∇ (gpubp's "nesterov")
    solver="adam"  scikit-learn's form: w ← w − η √(1−β₂ᵗ)/(1−β₁ᵗ) · m / (√v + ε)
    solver="lbfgs" scipy's L-BFGS-B on the full-batch f = Σₓ wₓCₓ / Σₓ wₓ + α/(2 Σₓ wₓ) Σ‖W‖², with
                   maxiter=max_iter, maxfun=max_fun, gtol=tol and scikit-learn's ConvergenceWarning
                   (``gpubp.lbfgs``: f and ∇f by backprop on the device, only θ and ∇f cross to the host);
                   ``n_iter_`` counts the fit's iterations, ``loss_`` is f at the end, ``t_`` stays as it was;
                   ``loss_curve_`` and ``best_loss_`` (per iteration) are gpubp's additions
    schedules      invscaling η = η₀ / (t + 1)^power_t (t = samples seen), adaptive η /= 5 after
                   ``n_iter_no_change`` epochs without a ``tol`` improvement: ``fit``'s ``lr_schedule``
    stopping       ``tol`` / ``n_iter_no_change`` on the training loss (with its L2 term), or with
                   ``early_stopping`` on the validation score (accuracy, R²) of a held-out
                   ``validation_fraction``, restoring the best parameters: ``fit``'s ``tol``, ``monitor``
                   and ``restore_best``; the running state (η, t, best, count) goes in and out through
                   ``optimizer_options`` and ``net.optimizer``, so ``partial_fit`` and ``warm_start`` go on
                   as scikit-learn's
    losses         log-loss (softmax + log-likelihood, or sigmoid + cross-entropy for binary and
                   multilabel targets), squared error ½ mean((y − ŷ)²), Poisson (log link)

Sparse X (SciPy CSR or CSC; other formats are converted to CSR) stays sparse: the network multiplies its first
layer by the CSR matrix and gathers each mini-batch's rows from it (see ``Network.fit``).

Differences from scikit-learn: arithmetic in ``dtype`` (float32 by default; scikit-learn computes in the
input's float dtype); the initial weights are scikit-learn's (the same draws from ``random_state``), but the
shuffling draws from other random streams (stochastic solvers match in distribution, not bitwise; L-BFGS in
float64 follows scikit-learn's path to rounding); ``loss_`` of the stochastic solvers adds the L2 term with
the weights at the end of the epoch; ``momentum`` must be < 1. For multi-output squared error scikit-learn's
L-BFGS sees the loss averaged over outputs with the gradient of their sum; gpubp's objective is consistent
(the sum over outputs), so the paths differ there; ``loss_`` is reported as scikit-learn's.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state, column_or_1d
from sklearn.utils._available_if import available_if
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.multiclass import _check_partial_fit_first_call, type_of_target, unique_labels
from sklearn.utils.optimize import _check_optimize_result
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from .activations import ALIASES, ACTIVATIONS
from .backend import DeviceError
from .backend.arrays import array_module, is_device_array, is_sparse, on_device_of, to_host
from .costs import Cost
from . import inputs
from .inputs import finite_checked
from .lbfgs import NotConvergedWarning, Objective
from .model_state import ModelState
from .network import EVAL_CHUNK, Network
from .schedules import NOTHING_MONITORED

__all__ = ["MLPClassifier", "MLPRegressor"]

#: scikit-learn's activation names that gpubp spells differently
SKLEARN_ACTIVATIONS = {"logistic": "sigmoid"}
#: the solvers that train in mini-batches (and so have partial_fit)
STOCHASTIC_SOLVERS = ("sgd", "adam")
#: the sparse formats X may have, as scikit-learn's MLP (check_array converts any other to the first)
SPARSE_FORMATS = ("csr", "csc")
#: more epochs than any run has: scikit-learn's n_iter_no_change=inf (count, never stop)
NEVER = 2 ** 62


class PoissonLogLink(Cost):
    """Half the Poisson deviance with a log link, on the linear output a = z (prediction eᵃ):
    Cₓ = Σⱼ eᵃʲ − yⱼaⱼ + yⱼ ln yⱼ − yⱼ, ∇ₐCₓ = eᵃ − y (scikit-learn's ``loss="poisson"``)."""

    name = "poisson"

    def fn(self, a, y):
        xp = array_module(a)
        y_log_y = xp.where(y > 0, y * xp.log(xp.where(y > 0, y, 1)), 0)
        return (xp.exp(a) - y * a + y_log_y - y).sum(axis=-1)

    def derivative(self, a, y):
        return array_module(a).exp(a) - y


class _BaseMLP(BaseEstimator):
    """What the classifier and the regressor share: parameters, fitting, the epoch callback, pickling."""

    _parameter_constraints: dict = {
        "hidden_layer_sizes": ["array-like", Interval(numbers.Integral, 1, None, closed="left")],
        "activation": [StrOptions({"identity", "logistic", "tanh", "relu"}
                                  | set(ACTIVATIONS) | set(ALIASES))],
        "solver": [StrOptions({"lbfgs", "sgd", "adam"})],
        "alpha": [Interval(numbers.Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(numbers.Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [Interval(numbers.Real, 0, None, closed="neither")],
        "power_t": [Interval(numbers.Real, 0, None, closed="left")],
        "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(numbers.Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(numbers.Real, 0, 1, closed="left")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(numbers.Real, 0, 1, closed="left")],
        "beta_1": [Interval(numbers.Real, 0, 1, closed="left")],
        "beta_2": [Interval(numbers.Real, 0, 1, closed="left")],
        "epsilon": [Interval(numbers.Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(numbers.Integral, 1, None, closed="left"), Options(numbers.Real, {np.inf})],
        "max_fun": [Interval(numbers.Integral, 1, None, closed="left")],
        "device": [str, None],
        "dtype": "no_validation",  # checked by gpubp.Network: float32, float64 or their NumPy dtypes
        "matmul_precision": "no_validation",  # checked by gpubp.Network: "fp32" or "tf32"
    }

    # ---- fitting ----------------------------------------------------------------------------------
    def _fit(self, X: Any, y: Any, sample_weight: Any, incremental: bool) -> "_BaseMLP":
        self._validate_params()
        hidden = self._hidden_layer_sizes()
        first_pass = not hasattr(self, "network_") or (not self.warm_start and not incremental)
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, _HostShape(X), dtype=np.float64)
        n_outputs = self._n_outputs(y)
        random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(X.shape[1], hidden, n_outputs, random_state)
        elif n_outputs != self.n_outputs_:
            raise ValueError(f"y has {n_outputs} outputs, but {type(self).__name__} was fitted with "
                             f"{self.n_outputs_}")
        if self.solver == "lbfgs":
            self._fit_lbfgs(X, y, sample_weight)
        else:
            self._fit_stochastic(X, y, sample_weight, random_state, incremental)
        return self

    def _check_solver(self) -> bool:
        """``partial_fit`` exists for the stochastic solvers only, as in scikit-learn (``available_if``)."""
        if self.solver not in STOCHASTIC_SOLVERS:
            raise AttributeError(f"partial_fit is only available for stochastic optimizers. {self.solver} is "
                                 "not stochastic.")
        return True

    def _hidden_layer_sizes(self) -> list[int]:
        sizes = self.hidden_layer_sizes
        sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
        if any(s <= 0 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {sizes}.")
        return [int(s) for s in sizes]

    def _initialize(self, n_features: int, hidden: list[int], n_outputs: int,
                    random_state: np.random.RandomState) -> None:
        """A new network with scikit-learn's Glorot-uniform initialisation (±√(6/(nᵢₙ+nₒᵤₜ)), ±√(2/…) for
        the logistic activation) for weights and biases, drawn from ``random_state`` in its order."""
        self.n_outputs_ = n_outputs
        sizes = [n_features] + hidden + [n_outputs]
        self.n_layers_ = len(sizes)
        activation = SKLEARN_ACTIVATIONS.get(self.activation, self.activation)
        net = Network(sizes, activation=activation, output=self._network_output(), cost=self._cost(),
                      device=self.device, dtype=self.dtype, matmul_precision=self.matmul_precision)
        factor = 2.0 if activation == "sigmoid" else 6.0
        for l, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            bound = np.sqrt(factor / (fan_in + fan_out))
            net.weights[l] = random_state.uniform(-bound, bound, (fan_in, fan_out)).T
            net.biases[l] = random_state.uniform(-bound, bound, fan_out)
        self.network_ = net
        self.n_iter_ = 0
        self.t_ = 0
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None

    def _fit_stochastic(self, X, y, sample_weight, random_state, incremental) -> None:
        net = self.network_
        if not incremental or not hasattr(self, "_learning_rate"):
            net.reset_optimizer()  # scikit-learn starts a fresh optimizer for every fit
            self._learning_rate = float(self.learning_rate_init)
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        X_train, y_train, sw_train, validation = self._split(X, y, sample_weight, random_state)
        n_train = X_train.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n_train)
        else:
            if self.batch_size > n_train:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to "
                              "be clipped")
            batch_size = int(np.clip(self.batch_size, 1, n_train))
        n_batches = -(-n_train // batch_size)
        total_weight = n_train if sw_train is None else float(np.sum(sw_train))
        epoch_end = _EpochEnd(self, validation, n_batches / total_weight, incremental)
        # scikit-learn stops when the count of epochs without improvement exceeds n_iter_no_change
        patience = NEVER if self.n_iter_no_change == np.inf else int(self.n_iter_no_change) + 1
        try:
            with finite_checked(X_train):  # X passed scikit-learn's NaN/inf check
                net.fit(X_train, self._network_targets(y_train), epochs=1 if incremental else self.max_iter,
                        batch_size=batch_size, lr=float(self.learning_rate_init), optimizer=self._optimizer_name(),
                        momentum=self._gpubp_momentum(), weight_decay=self.alpha, shuffle=self.shuffle,
                        progress=False, seed=int(random_state.randint(np.iinfo(np.int32).max)),
                        callbacks=[epoch_end], sample_weight=sw_train,
                        lr_schedule=self.learning_rate if self.solver == "sgd" else "constant", power_t=self.power_t,
                        tol=self.tol, n_iter_no_change=patience, monitor=epoch_end.monitored,
                        restore_best=self.early_stopping, optimizer_options=self._optimizer_options(),
                        on_divergence="continue")
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.")
        # as scikit-learn: a diverged run trains on; what counts is whether the parameters it ends with (with
        # early stopping, the best epoch's) are finite
        if not net.ops.all_finite(net.parameters()):
            raise ValueError("Solver produced non-finite parameter weights. The input data may contain "
                             "large values and need to be preprocessed.")

    def _fit_lbfgs(self, X: Any, y: np.ndarray, sample_weight: Any) -> None:
        """scikit-learn's ``_fit_lbfgs`` as ``Network.fit(optimizer="lbfgs")``: the full-batch objective
        mean cost + α/(2 Σ wₓ) Σ‖W‖² (``weight_decay=alpha`` with ``decay_per_sample``), scipy's L-BFGS-B with
        maxiter=max_iter, maxfun=max_fun, gtol=tol; scikit-learn's ConvergenceWarning where it stops short.
        ``n_iter_`` counts this fit's iterations; ``t_`` stays as it was."""
        net = self.network_
        record = _LBFGSIteration(self, X.shape[0] if sample_weight is None else float(np.sum(sample_weight)))
        targets = self._network_targets(y)
        with finite_checked(X), warnings.catch_warnings(record=True) as caught:  # X passed scikit-learn's check
            warnings.simplefilter("always", NotConvergedWarning)
            try:
                net.fit(X, targets, epochs=self.max_iter, batch_size=min(X.shape[0], EVAL_CHUNK),
                        lr=float(self.learning_rate_init), optimizer="lbfgs", weight_decay=self.alpha,
                        tol=self.tol, sample_weight=sample_weight, progress=False, callbacks=[record],
                        optimizer_options={"max_fun": self.max_fun, "decay_per_sample": True},
                        on_divergence="continue")
            except KeyboardInterrupt:
                warnings.warn("Training interrupted by user.")
        result = None
        for caught_warning in caught:
            if issubclass(caught_warning.category, NotConvergedWarning):
                result = caught_warning.message.result
            else:
                warnings.warn_explicit(caught_warning.message, caught_warning.category, caught_warning.filename,
                                       caught_warning.lineno)
        self.n_iter_ = record.iterations
        if result is not None:
            self.n_iter_ = _check_optimize_result("lbfgs", result, self.max_iter)
        if record.iterations == 0:  # converged where it started: scikit-learn's loss_ is f there
            record.record(net, self._objective_mean_cost(X, targets, sample_weight))
        self.loss_ = self.loss_curve_[-1]
        if not net.ops.all_finite(net.parameters()):
            raise ValueError("Solver produced non-finite parameter weights. The input data may contain "
                             "large values and need to be preprocessed.")

    def _objective_mean_cost(self, X: Any, targets: np.ndarray, sample_weight: Any) -> float:
        """The weighted mean cost Σₓ wₓCₓ / Σₓ wₓ at the network's parameters (the L-BFGS objective's data
        term)."""
        net = self.network_
        with net.ops.activate(), finite_checked(X):
            x, _ = inputs.check_inputs(X, net.sizes[0], net.ops, net.dtype)
            objective = Objective(net, x, net.check_targets(targets, x.shape[0]),
                                  inputs.check_sample_weight(sample_weight, x.shape[0], net.ops, net.dtype),
                                  0.0, False, EVAL_CHUNK)
            with net.ops.errstate():
                objective(net.ops.to_numpy(net.parameters()))
        return objective.mean_cost

    def _optimizer_options(self) -> dict[str, Any]:
        """scikit-learn's optimizer settings besides ``fit``'s own, and where its schedule stands: η (that of
        a fresh optimizer, or where ``partial_fit`` left it), t_, the best loss or score, the count."""
        best = -self.best_validation_score_ if self.early_stopping else self.best_loss_
        options = {"decay_per_sample": True, "current_lr": self._learning_rate, "samples_seen": self.t_,
                   "best": best, "no_improvement_count": self._no_improvement_count}
        if self.solver == "adam":
            options.update(beta1=self.beta_1, beta2=self.beta_2, eps=self.epsilon, eps_on_corrected_v=False)
        return options

    def _optimizer_name(self) -> str:
        if self.solver == "adam":
            return "adam"
        if self.momentum == 0:
            return "sgd"
        return "nesterov" if self.nesterovs_momentum else "momentum"

    def _gpubp_momentum(self) -> float:
        return float(self.momentum) if self.solver == "sgd" else 0.9

    def _split(self, X, y, sample_weight, random_state):
        """(X_train, y_train, sw_train, validation): with early stopping, scikit-learn's split (stratified
        for single-output classifiers) drawn from ``random_state``; validation = (X_val on the device,
        y_val for scoring, sw_val) or None."""
        if not self.early_stopping:
            return X, y, sample_weight, None
        stratify = y if self._stratify_early_stopping() else None
        train, val = train_test_split(np.arange(X.shape[0]), random_state=random_state,
                                      test_size=self.validation_fraction, stratify=stratify)
        if len(val) < 2:
            raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size "
                             "of your dataset.")
        ops = self.network_.ops

        def take(a, i):
            if not is_device_array(a):
                return a[i]
            with ops.activate():  # the rows taken on the network's device (the caller's may be another)
                return ops.asarray(a)[ops.asarray(i)]

        sw = (None, None) if sample_weight is None else (sample_weight[train], sample_weight[val])
        X_val, dtype = take(X, val), self.network_.dtype
        X_val = ops.sparse_rows(X_val, dtype) if is_sparse(X_val) else ops.asarray(X_val, dtype=dtype)
        return take(X, train), y[train], sw[0], (X_val, self._scoring_targets(y[val]), sw[1])

    # ---- prediction ---------------------------------------------------------------------------------
    def _forward(self, X: Any, check_input: bool = True) -> Any:
        """aᴸ for X (n, n_outputs_) as an array of X's kind (NumPy, or CuPy for CuPy input) and float
        dtype (float64 unless X is float32), as scikit-learn returns."""
        if check_input:
            X = self._validate_X(X)
        with finite_checked(X):  # checked by scikit-learn's validation, or a part of a checked X
            a = self.network_.forward(X)
        out_dtype = X.dtype if X.dtype.kind == "f" else np.float64
        if is_device_array(X):
            with self.network_.ops.activate():  # a is on the network's device
                return a.astype(out_dtype, copy=False)
        return self.network_.ops.to_numpy(a).astype(out_dtype, copy=False)

    def _validation_score(self, validation: tuple) -> float:
        X_val, y_val, sw_val = validation
        y_pred = to_host(self._predict(X_val, check_input=False))
        if np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all():
            return np.nan
        return self._score_function(y_val, y_pred, sample_weight=sw_val)

    # ---- input validation ---------------------------------------------------------------------------
    def _validate_X(self, X: Any, reset: bool = False) -> Any:
        if is_device_array(X):
            return _check_device_X(self, X, reset)
        return validate_data(self, X, accept_sparse=SPARSE_FORMATS, dtype=(np.float64, np.float32), reset=reset)

    def _validate_Xy(self, X: Any, y: Any, reset: bool, **y_options) -> tuple[Any, np.ndarray]:
        """X and y checked as scikit-learn does; a CuPy X stays on its device (y comes to the host)."""
        if is_device_array(X):
            X = _check_device_X(self, X, reset)
            y = validate_data(self, X="no_validation", y=to_host(y), multi_output=True, **y_options)
            if len(y) != X.shape[0]:
                raise ValueError(f"Found input variables with inconsistent numbers of samples: "
                                 f"[{X.shape[0]}, {len(y)}]")
            return X, y
        return validate_data(self, X, y, accept_sparse=SPARSE_FORMATS, multi_output=True,
                             dtype=(np.float64, np.float32), reset=reset, **y_options)

    # ---- pickling -----------------------------------------------------------------------------------
    def __getstate__(self) -> dict:
        """The estimator with its network as a ``ModelState`` (host arrays: device arrays cannot be
        pickled)."""
        state = dict(super().__getstate__())  # a copy: BaseEstimator may hand back __dict__ itself
        if "network_" in state:
            state["network_"] = state["network_"].state()
        return state

    def __setstate__(self, state: dict) -> None:
        """Rebuild the network on the estimator's ``device`` (the CPU, with a warning, where that device
        is not usable here)."""
        saved = state.get("network_")
        if isinstance(saved, ModelState):
            state = dict(state, network_=_network_from_state(saved, state.get("device")))
        super().__setstate__(state)

    # ---- scikit-learn's fitted attributes that live in the network --------------------------------
    @property
    def coefs_(self) -> list[np.ndarray]:
        """Weight matrices, scikit-learn's layout (n_in, n_out), as NumPy copies; assigning a list of
        them copies them into the network."""
        net = self._fitted_network("coefs_")
        return [net.ops.to_numpy(W).T.copy() for W in net.weights]

    @coefs_.setter
    def coefs_(self, coefs: list) -> None:
        net = self._fitted_network("coefs_")
        for l, W in enumerate(coefs):
            net.weights[l] = np.asarray(W).T

    @property
    def intercepts_(self) -> list[np.ndarray]:
        """Bias vectors per layer, as NumPy copies; assigning a list of them copies them in."""
        net = self._fitted_network("intercepts_")
        return [net.ops.to_numpy(b).copy() for b in net.biases]

    @intercepts_.setter
    def intercepts_(self, intercepts: list) -> None:
        net = self._fitted_network("intercepts_")
        for l, b in enumerate(intercepts):
            net.biases[l] = np.asarray(b)

    def _fitted_network(self, attribute: str) -> Network:
        net = self.__dict__.get("network_")
        if net is None:
            raise AttributeError(f"{type(self).__name__!r} has no attribute {attribute!r} before fit")
        return net

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


class _EpochEnd:
    """scikit-learn's end of an iteration around ``Network.fit``'s schedule and stopping rule: ``monitored``
    gives the rule the value scikit-learn watches; the callback then records what the optimizer decided in
    the fitted attributes, prints as scikit-learn's verbose mode does, and warns at ``max_iter``."""

    def __init__(self, estimator: _BaseMLP, validation: tuple | None, penalty_batches: float,
                 incremental: bool) -> None:
        self.estimator, self.validation = estimator, validation
        #: Σ over batches of 1 / Σ wₓ: how many times the epoch's loss holds α/2 ‖W‖² / Σ wₓ, per sample
        self.penalty_batches = penalty_batches
        self.incremental = incremental
        self.loss = self.score = np.nan
        estimator.n_iter_ = 0

    def monitored(self, net: Network, logs: dict) -> float:
        """The epoch's ``loss_`` (with the L2 term), or with early stopping minus its validation score."""
        est = self.estimator
        weights = net.parameters()[:net.n_weights]
        penalty = 0.5 * est.alpha * net.ops.item(weights.dot(weights)) * self.penalty_batches
        self.loss = est._sklearn_loss(logs["loss"]) + penalty
        if self.validation is None:
            return self.loss
        self.score = est._validation_score(self.validation)
        return -self.score

    def __call__(self, net: Network, epoch: int, logs: dict) -> None:
        est, optimizer = self.estimator, net.optimizer
        est.n_iter_ += 1
        est.loss_ = self.loss
        est.t_ = optimizer.samples_seen
        est.loss_curve_.append(est.loss_)
        if est.verbose:
            print("Iteration %d, loss = %.8f" % (est.n_iter_, est.loss_))
        best = -np.inf if optimizer.best == NOTHING_MONITORED else optimizer.best
        if self.validation is not None:
            est.validation_scores_.append(self.score)
            if est.verbose:
                print("Validation score: %f" % self.score)
            est.best_validation_score_ = -best
        else:
            est.best_loss_ = best
        est._no_improvement_count = optimizer.no_improvement_count
        reduced = optimizer.current_lr < est._learning_rate and optimizer.lr_schedule == "adaptive"
        est._learning_rate = optimizer.current_lr
        if est.verbose and (reduced or optimizer.stopped):
            self._print_decision(optimizer, reduced)
        if not optimizer.stopped and not self.incremental and est.n_iter_ == est.max_iter:
            warnings.warn("Stochastic Optimizer: Maximum iterations (%d) reached and the optimization "
                          "hasn't converged yet." % est.max_iter, ConvergenceWarning)

    def _print_decision(self, optimizer: Any, reduced: bool) -> None:
        """scikit-learn's message when the stopping rule fired."""
        est = self.estimator
        what = "Validation score" if self.validation is not None else "Training loss"
        message = (f"{what} did not improve more than tol={est.tol:f} for {est.n_iter_no_change} "
                   "consecutive epochs.")
        if reduced:
            print(message + " Setting learning rate to %f" % optimizer.current_lr)
        elif optimizer.lr_schedule == "adaptive":
            print(message + " Learning rate too small. Stopping.")
        else:
            print(message + " Stopping.")


class _LBFGSIteration:
    """The epoch callback of ``solver="lbfgs"``: per L-BFGS iteration, scikit-learn's loss (the mean cost
    as scikit-learn scales it, plus α/(2 Σ wₓ) Σ‖W‖²) into ``loss_curve_`` and ``best_loss_``, and
    scikit-learn's verbose line."""

    def __init__(self, estimator: _BaseMLP, total_weight: float) -> None:
        self.estimator, self.total_weight = estimator, total_weight
        self.iterations = 0
        estimator.loss_curve_ = []

    def __call__(self, net: Network, epoch: int, logs: dict) -> None:
        self.iterations += 1
        loss = self.record(net, logs["loss"])
        if self.estimator.verbose:
            print("Iteration %d, loss = %.8f" % (self.iterations, loss))

    def record(self, net: Network, mean_cost: float) -> float:
        """scikit-learn's loss at the network's parameters, given the mean cost there."""
        est = self.estimator
        weights = net.parameters()[:net.n_weights]
        loss = est._sklearn_loss(mean_cost) + 0.5 * est.alpha * net.ops.item(weights.dot(weights)) / self.total_weight
        est.loss_curve_.append(loss)
        est.best_loss_ = min(est.loss_curve_)
        return loss


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier on gpubp: scikit-learn's ``MLPClassifier`` on any device.

    Parameters, defaults and fitted attributes are scikit-learn 1.9's (see its documentation), plus
    ``device`` ("auto": a GPU when usable, else "cpu"; "cpu", "cuda", "cuda:N"), ``dtype`` ("float32" or
    "float64": the arithmetic's precision) and ``matmul_precision`` ("fp32" or "tf32": how a GPU computes
    the matmuls, as in ``gpubp.Network``). ``network_`` is the trained ``gpubp.Network``. ``activation``
    also takes gpubp's names (sigmoid, leaky_relu, softplus, swish, gelu, mish, elu, selu). ``solver`` is
    "adam", "sgd" or "lbfgs" (scipy's L-BFGS-B; ``partial_fit`` then does not exist). Binary targets train one sigmoid output
    with cross-entropy, multiclass targets (any label type) softmax with log-likelihood, multilabel
    indicator targets one sigmoid per label. Where the maths differs from scikit-learn's: see the module
    docstring (float32, initialisation and shuffling streams, ``loss_``'s L2 term, momentum < 1).
    """

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 device="auto", dtype="float32", matmul_precision="fp32"):
        _store_parameters(self, locals())

    # ---- the parts that make it a classifier --------------------------------------------------------
    def _validate_input(self, X, y, incremental, reset):
        X, y = self._validate_Xy(X, y, reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if (not hasattr(self, "classes_")) or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError("warm_start can only be used where `y` has the same classes as in the "
                                     f"previous call to fit. Previously got {self.classes_}, `y` has "
                                     f"{classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has "
                                 f"{self.classes_}. 'y' has {classes}.")
        return X, self._encode(y)

    def _encode(self, y: np.ndarray) -> np.ndarray:
        """Multiclass labels as class indices (n,), the position of each label in the sorted ``classes_``
        (where LabelBinarizer's one-hot row has its 1, found without building the rows); binary and
        multilabel targets as the 0/1 indicator (n, n_outputs) of booleans."""
        if not self._multiclass():
            return self._label_binarizer.transform(y).astype(bool)
        if y.ndim == 1:
            return np.searchsorted(self.classes_, y)
        return self._label_binarizer.transform(y).argmax(axis=1)

    def _n_outputs(self, y: np.ndarray) -> int:
        return len(self.classes_) if self._multiclass() else y.shape[1]

    def _multiclass(self) -> bool:
        return self._label_binarizer.y_type_ == "multiclass"

    @property
    def out_activation_(self) -> str:
        """"softmax" for multiclass targets, "logistic" for binary and multilabel ones."""
        self._fitted_network("out_activation_")
        return "softmax" if self._multiclass() else "logistic"

    def _network_output(self) -> str:
        return "softmax" if self._multiclass() else "sigmoid"

    def _cost(self) -> str:
        return "log_likelihood" if self._multiclass() else "cross_entropy"

    def _network_targets(self, y: np.ndarray) -> np.ndarray:
        """Class indices for multiclass (the fused softmax path), else the 0/1 indicator matrix."""
        return y if self._multiclass() else y.astype(np.float64)

    def _sklearn_loss(self, network_loss: float) -> float:
        return network_loss

    def _stratify_early_stopping(self) -> bool:
        return self.n_outputs_ == 1

    def _scoring_targets(self, y: np.ndarray) -> np.ndarray:
        return self.classes_[y] if self._multiclass() else self._label_binarizer.inverse_transform(y)

    def _score_function(self, y, y_pred, sample_weight=None) -> float:
        return accuracy_score(y, y_pred, sample_weight=sample_weight)

    # ---- public API ---------------------------------------------------------------------------------
    def fit(self, X, y, sample_weight=None) -> "MLPClassifier":
        """Fit the model to X (n_samples, n_features) and class labels (or a label indicator matrix) y."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    @available_if(_BaseMLP._check_solver)
    def partial_fit(self, X, y, sample_weight=None, classes=None) -> "MLPClassifier":
        """One epoch over X, y, continuing the optimizer's state; ``classes`` is required on the first call."""
        if _check_partial_fit_first_call(self, classes):
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def predict(self, X) -> np.ndarray:
        """Predicted class labels (or label indicator rows for multilabel targets)."""
        check_is_fitted(self)
        return self._predict(X)

    def _predict(self, X, check_input=True) -> np.ndarray:
        y_pred = to_host(self._forward(X, check_input))
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        return self._label_binarizer.inverse_transform(y_pred)

    def predict_proba(self, X) -> Any:
        """Class probabilities (n_samples, n_classes) in the order of ``classes_`` (CuPy for CuPy X)."""
        check_is_fitted(self)
        y_pred = self._forward(X)
        if self.n_outputs_ == 1:
            xp = array_module(y_pred)
            return xp.stack([1 - y_pred[:, 0], y_pred[:, 0]], axis=1)
        return y_pred

    def predict_log_proba(self, X) -> Any:
        """log(predict_proba(X))."""
        y_prob = self.predict_proba(X)
        return array_module(y_prob).log(y_prob, out=y_prob)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor on gpubp: scikit-learn's ``MLPRegressor`` on any device.

    Parameters, defaults and fitted attributes are scikit-learn 1.9's, plus ``device``, ``dtype`` and
    ``matmul_precision`` (see ``MLPClassifier``). ``loss="squared_error"`` trains an identity output with the
    quadratic cost (``loss_`` is scikit-learn's ½ mean((y − ŷ)²) over samples and outputs); ``loss="poisson"``
    a log-link output (predictions eᶻ, y ≥ 0) with half the Poisson deviance. Single and multi-output targets.
    """

    _parameter_constraints: dict = {**_BaseMLP._parameter_constraints,
                                    "loss": [StrOptions({"squared_error", "poisson"})]}

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True, random_state=None,
                 tol=1e-4, verbose=False, warm_start=False, momentum=0.9, nesterovs_momentum=True,
                 early_stopping=False, validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 n_iter_no_change=10, max_fun=15000, device="auto", dtype="float32", matmul_precision="fp32"):
        _store_parameters(self, locals())

    # ---- the parts that make it a regressor ---------------------------------------------------------
    def _validate_input(self, X, y, incremental, reset):
        X, y = self._validate_Xy(X, y, reset, y_numeric=True)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if self.loss == "poisson" and np.any(y < 0):
            raise ValueError("Some value(s) of y are negative which is not allowed for Poisson regression.")
        return X, y.reshape(len(y), -1)

    def _n_outputs(self, y: np.ndarray) -> int:
        return y.shape[1]

    @property
    def out_activation_(self) -> str:
        """"identity" (squared error) or "exp" (Poisson)."""
        self._fitted_network("out_activation_")
        return "exp" if self.loss == "poisson" else "identity"

    def _network_output(self) -> str:
        return "identity"  # Poisson's exp is applied to the network's linear output at prediction

    def _cost(self) -> Any:
        return PoissonLogLink() if self.loss == "poisson" else "quadratic"

    def _network_targets(self, y: np.ndarray) -> np.ndarray:
        return y

    def _sklearn_loss(self, network_loss: float) -> float:
        """Squared error: the network's ½‖y − a‖² per sample over scikit-learn's mean over outputs."""
        return network_loss if self.loss == "poisson" else network_loss / self.n_outputs_

    def _stratify_early_stopping(self) -> bool:
        return False

    def _scoring_targets(self, y: np.ndarray) -> np.ndarray:
        return y

    def _score_function(self, y, y_pred, sample_weight=None) -> float:
        return r2_score(y, y_pred, sample_weight=sample_weight)

    # ---- public API ---------------------------------------------------------------------------------
    def fit(self, X, y, sample_weight=None) -> "MLPRegressor":
        """Fit the model to X (n_samples, n_features) and targets y (n_samples,) or (n_samples, n_outputs)."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    @available_if(_BaseMLP._check_solver)
    def partial_fit(self, X, y, sample_weight=None) -> "MLPRegressor":
        """One epoch over X, y, continuing the optimizer's state."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def predict(self, X) -> Any:
        """Predicted targets, (n_samples,) or (n_samples, n_outputs) (CuPy for CuPy X)."""
        check_is_fitted(self)
        return self._predict(X)

    def _predict(self, X, check_input=True) -> Any:
        y_pred = self._forward(X, check_input)
        if self.loss == "poisson":
            y_pred = array_module(y_pred).exp(y_pred)
        return y_pred.ravel() if y_pred.shape[1] == 1 else y_pred

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


# ---- helpers ------------------------------------------------------------------------------------------
def _store_parameters(estimator: _BaseMLP, arguments: dict) -> None:
    """scikit-learn's __init__ contract: every constructor argument stored as it is, nothing else."""
    for name, value in arguments.items():
        if name not in ("self", "__class__"):
            setattr(estimator, name, value)


class _HostShape:
    """Stands in for a device X where scikit-learn only needs its number of samples."""

    def __init__(self, X: Any) -> None:
        self.shape = X.shape

    def __len__(self) -> int:
        return self.shape[0]


def _check_device_X(estimator: _BaseMLP, X: Any, reset: bool) -> Any:
    """scikit-learn's checks (and messages) for a CuPy X, done on its device: 2-D, real numbers, finite,
    non-empty, the fitted number of features."""
    name = type(estimator).__name__
    if X.ndim != 2:
        raise ValueError(f"Expected 2D array, got {X.ndim}D array instead. Reshape your data either using "
                         "array.reshape(-1, 1) if your data has a single feature or array.reshape(1, -1) if "
                         "it contains a single sample.")
    if X.dtype.kind == "c":
        raise ValueError("Complex data not supported")
    if X.dtype.kind not in "biuf":
        raise ValueError(f"{name} needs numeric X; got dtype {X.dtype}")
    if X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(f"Found array with {X.shape[0]} sample(s) and {X.shape[1]} feature(s) (shape="
                         f"{X.shape}) while a minimum of 1 is required by {name}.")
    with on_device_of(X):
        finite = X.dtype.kind != "f" or bool(array_module(X).isfinite(X).all())
    if not finite:
        raise ValueError(f"Input X contains NaN or infinity. {name} does not accept missing values encoded "
                         "as NaN natively.")
    if reset:
        estimator.n_features_in_ = X.shape[1]
        estimator.__dict__.pop("feature_names_in_", None)
    elif X.shape[1] != estimator.n_features_in_:
        raise ValueError(f"X has {X.shape[1]} features, but {name} is expecting "
                         f"{estimator.n_features_in_} features as input.")
    return X


def _network_from_state(state: ModelState, device: str | None) -> Network:
    """The network of ``state`` on ``device`` (the CPU, with a warning, if that device is not usable)."""
    try:
        return Network.from_state(state, device=device)
    except DeviceError as exc:
        warnings.warn(f"the pickled estimator's device {device!r} is not usable here ({exc}); its network "
                      "is loaded on the CPU", RuntimeWarning)
        return Network.from_state(state, device="cpu")
