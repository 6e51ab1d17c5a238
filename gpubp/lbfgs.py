"""L-BFGS over the flat parameter buffer: scipy's L-BFGS-B minimising the full-batch objective, whose value and
gradient come from the network's own backpropagation on its device.

For parameters θ (all weights Wˡ, then all biases bˡ: ``Network.parameters()``), sample weights wₓ (1 without
``sample_weight``) and W = Σₓ wₓ:

    f(θ)   = Σₓ wₓ Cₓ / W  +  λ/2 Σₗ ‖Wˡ‖²
    ∇f(θ)  = Σₓ wₓ ∂Cₓ/∂θ / W  +  λ (Wˡ for the weights, 0 for the biases)

with λ = ``weight_decay``, or ``weight_decay`` / W under ``decay_per_sample`` (scikit-learn's ``alpha``:
f = mean cost + α/(2W) Σ‖Wˡ‖², ∇W += αWˡ / W). Σₓ wₓ ∂Cₓ/∂θ is ``Network.backprop_sum`` (BP1 δᴸ, BP2 δˡ,
BP3 ∂C/∂bˡ = Σδˡ, BP4 ∂C/∂Wˡ = δˡᵀaˡ⁻¹) over row chunks of the data, added up on the device, so memory
stays that of one chunk. Per evaluation θ goes to the device (cast to the network's dtype) and ∇f comes back
(as float64 for scipy) with two numbers, the summed cost and Σ‖Wˡ‖²; the data stays where it is.

SciPy is an optional dependency (``pip install gpubp[fast]`` or ``gpubp[sklearn]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

Array = Any
#: scipy's default for L-BFGS-B's gtol, the ``tol`` of a fit that gives none
DEFAULT_GTOL = 1e-5
#: what to install where scipy is missing
SCIPY_EXTRA = "pip install 'gpubp[fast]' (or gpubp[sklearn]), which brings scipy"


class NotConvergedWarning(UserWarning):
    """L-BFGS stopped before its gradient test was met: at the iteration limit (``epochs``), at the limit of
    evaluations (``max_fun``), or where its line search found no decrease. ``result`` is scipy's
    ``OptimizeResult``."""

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


def require_scipy() -> Any:
    """``scipy.optimize``; ImportError naming the extra to install where scipy is missing."""
    try:
        import scipy.optimize
    except ImportError as exc:
        raise ImportError(f"optimizer='lbfgs' runs scipy's L-BFGS-B, and scipy is not installed: "
                          f"{SCIPY_EXTRA}") from exc
    return scipy.optimize


class Objective:
    """f(θ) and ∇f(θ) of the module docstring for one network and data set (checked device arrays: ``x``,
    ``target`` and optional per-sample ``weights``), evaluated in row chunks of ``chunk`` samples.

    Calling it with a float64 host vector θ loads θ into the network and returns (f, ∇f) for scipy. ``theta``
    and ``mean_cost`` are those of the last evaluation (the network's parameters are that θ)."""

    def __init__(self, net: Any, x: Array, target: Array, weights: Array | None, weight_decay: float,
                 decay_per_sample: bool, chunk: int) -> None:
        self.net, self.x, self.target, self.weights = net, x, target, weights
        ops = net.ops
        self.total = float(x.shape[0]) if weights is None else ops.item(weights.sum(dtype=np.float64))
        if self.total <= 0:
            raise ValueError("the sample weights sum to 0: the weighted mean cost is undefined")
        self.decay = weight_decay / self.total if decay_per_sample else weight_decay
        self.chunks = [(start, min(start + chunk, x.shape[0])) for start in range(0, x.shape[0], chunk)]
        with ops.activate():
            self.grad = ops.empty(net.parameters().shape, net.dtype)
            #: Σₓ wₓCₓ, then Σ‖Wˡ‖²: read back together
            self.terms = ops.zeros((2,), net.dtype)
        self.theta: np.ndarray | None = None
        self.mean_cost = float("nan")
        self.evaluations = 0

    def __call__(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        self.load(theta)
        net, ops, grad, terms = self.net, self.net.ops, self.grad, self.terms
        with ops.activate():
            terms.fill(0)
            for i, (start, stop) in enumerate(self.chunks):
                rows = slice(start, stop)
                net.backprop_sum(self.x[rows], None if self.target is None else self.target[rows], terms[:1],
                                 weights=None if self.weights is None else self.weights[rows])  # BP1–BP4
                if i == 0:
                    ops.copy(net.gradient(), out=grad)
                else:
                    grad += net.gradient()
            W = net.parameters()[:net.n_weights]
            terms[1:] = W.dot(W)
            grad *= 1.0 / self.total                      # ∇ of the weighted mean cost
            if self.decay:
                grad[:net.n_weights] += self.decay * W    # + λWˡ
            cost_sum, squares = (float(v) for v in ops.to_numpy(terms))
            host_grad = np.asarray(ops.to_numpy(grad), dtype=np.float64)
        self.evaluations += 1
        self.mean_cost = cost_sum / self.total
        return self.mean_cost + 0.5 * self.decay * squares, host_grad

    def load(self, theta: np.ndarray) -> None:
        """The network's parameters set to θ (one upload, in the network's dtype)."""
        net = self.net
        with net.ops.activate():
            net.parameters()[...] = net.ops.asarray(np.asarray(theta, dtype=net.dtype))
        self.theta = np.array(theta, dtype=np.float64)


class _Stop(Exception):
    """Raised from the iteration callback to end the minimisation early (a callback asked to stop)."""


@dataclass
class Outcome:
    """How a minimisation ended: scipy's result (None when ``iteration`` stopped it), and θ at its end, which
    the network holds."""

    result: Any
    theta: np.ndarray


def minimize(objective: Objective, theta0: np.ndarray, max_iter: int, max_fun: int, gtol: float,
             iteration: Callable[[np.ndarray, float], bool]) -> Outcome:
    """scipy's L-BFGS-B on ``objective`` from θ₀ with scikit-learn's options (``maxiter``, ``maxfun``,
    ``gtol``). After each iteration ``iteration(θ, mean cost)`` runs with the network holding that θ; it
    returns True to stop there. The network ends holding scipy's final θ, or where ``iteration`` stopped it;
    when an exception ends the minimisation (Ctrl-C, or ``iteration`` raising on a NaN cost), θ of the last
    iteration whose cost was finite (θ₀ before any)."""
    optimize = require_scipy()
    finite = np.array(theta0, dtype=np.float64)

    def callback(theta: np.ndarray) -> None:
        nonlocal finite
        if objective.theta is None or not np.array_equal(theta, objective.theta):
            objective(theta)  # L-BFGS-B's new iterate is its last evaluation; this is a safeguard
        if np.isfinite(objective.mean_cost):
            finite = np.array(theta, dtype=np.float64)
        if iteration(objective.theta, objective.mean_cost):
            raise _Stop

    try:
        result = optimize.minimize(objective, np.array(theta0, dtype=np.float64), method="L-BFGS-B", jac=True,
                                   callback=callback,
                                   options={"maxiter": max_iter, "maxfun": max_fun, "gtol": gtol})
    except _Stop:
        return Outcome(None, objective.theta)
    except BaseException:
        objective.load(finite)
        raise
    if not np.array_equal(result.x, objective.theta):  # scipy ends on its last evaluation, as a rule
        objective.load(result.x)
    return Outcome(result, objective.theta)


def not_converged(result: Any) -> NotConvergedWarning | None:
    """The warning for scipy's ``result`` when it did not converge (status ≠ 0), else None."""
    if result is None or result.status == 0:
        return None
    return NotConvergedWarning(
        f"L-BFGS did not converge after {result.nit} iteration(s), {result.nfev} evaluations (scipy: "
        f"{result.message}); raise epochs (its iteration limit) or optimizer_options max_fun, or loosen tol",
        result)
