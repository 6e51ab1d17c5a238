"""Cost functions C and their gradients ∇ₐC, per sample; the network averages over the batch.

A cost gives, for outputs ``a`` (batch, k) and targets ``y`` (batch, k) or ``None``:
``fn(a, y)`` the per-sample costs Cₓ, shape (batch,), and ``derivative(a, y)`` ∇ₐCₓ, shape (batch, k).
The mean cost is C = (1/n) Σₓ Cₓ. Built-in costs also have fused paths in the backend, chosen by their
``kernel_id`` (the stable output deltas aᴸ − y for sigmoid + cross_entropy and softmax + log_likelihood); a
user-defined cost is any object with ``fn`` and ``derivative`` (see ``CustomCost``), computed with the
network's array module.
"""

from __future__ import annotations

from typing import Any, Callable

from .backend.arrays import array_module
from .backend.kernels import COST_IDS, LOG_EPS  # LOG_EPS: the clip of the logarithms' arguments, per dtype


class Cost:
    """A cost Cₓ(a, y) and its gradient ∇ₐCₓ."""

    name: str = ""
    #: whether the cost compares the output with a target y
    needs_target: bool = True
    #: id in the backends' fused kernels (kernels/costs.cuh); None: the backends run ``fn`` and ``derivative``
    kernel_id: int | None = None

    def fn(self, a: Any, y: Any) -> Any:
        raise NotImplementedError

    def derivative(self, a: Any, y: Any) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


def _clip(a: Any) -> Any:
    eps = LOG_EPS.get(a.dtype, 1e-7)
    return array_module(a).clip(a, eps, 1.0 - eps)


class Quadratic(Cost):
    """Cₓ = ½ ‖y − aᴸ‖², ∇ₐCₓ = aᴸ − y."""

    name = "quadratic"
    kernel_id = COST_IDS["quadratic"]

    def fn(self, a, y):
        return 0.5 * ((a - y) ** 2).sum(axis=-1)

    def derivative(self, a, y):
        return a - y


class CrossEntropy(Cost):
    """Cₓ = −Σⱼ [yⱼ ln aⱼ + (1 − yⱼ) ln(1 − aⱼ)], ∇ₐCₓ = (aᴸ − y) / (aᴸ(1 − aᴸ))."""

    name = "cross_entropy"
    kernel_id = COST_IDS["cross_entropy"]

    def fn(self, a, y):
        xp = array_module(a)
        a = _clip(a)
        return -(y * xp.log(a) + (1.0 - y) * xp.log(1.0 - a)).sum(axis=-1)

    def derivative(self, a, y):
        a = _clip(a)
        return (a - y) / (a * (1.0 - a))


class LogLikelihood(Cost):
    """Cₓ = −ln aᴸ_y (softmax output), ∇ₐCₓ = −y / aᴸ."""

    name = "log_likelihood"
    kernel_id = COST_IDS["log_likelihood"]

    def fn(self, a, y):
        return -(y * array_module(a).log(_clip(a))).sum(axis=-1)

    def derivative(self, a, y):
        return -y / _clip(a)


class CustomCost(Cost):
    """A user-defined cost from two callables: ``fn(a, y)`` -> (batch,) and ``derivative(a, y)`` -> like a.

    ``needs_target=False`` allows training without targets (``y`` is then None), e.g. the cost
    C = Σⱼ aⱼ² that simply pushes every output towards zero.
    """

    def __init__(self, fn: Callable[[Any, Any], Any], derivative: Callable[[Any, Any], Any],
                 needs_target: bool = True, name: str = "custom") -> None:
        if not callable(fn) or not callable(derivative):
            raise ValueError("CustomCost needs two callables: fn(a, y) and derivative(a, y)")
        self._fn, self._derivative = fn, derivative
        self.needs_target = bool(needs_target)
        self.name = name

    def fn(self, a, y):
        return self._fn(a, y)

    def derivative(self, a, y):
        return self._derivative(a, y)


COSTS: dict[str, Cost] = {c.name: c for c in (Quadratic(), CrossEntropy(), LogLikelihood())}


def get_cost(cost: str | Cost | Any) -> Cost:
    """The built-in cost called ``cost``, or a user object with ``fn`` and ``derivative``."""
    if isinstance(cost, str):
        key = cost.lower()
        if key not in COSTS:
            raise ValueError(f"unknown cost {cost!r}; valid names: {', '.join(COSTS)}, "
                             "or an object with fn(a, y) and derivative(a, y)")
        return COSTS[key]
    if isinstance(cost, Cost):
        return cost
    if callable(getattr(cost, "fn", None)) and callable(getattr(cost, "derivative", None)):
        return CustomCost(cost.fn, cost.derivative, getattr(cost, "needs_target", True),
                          getattr(cost, "name", type(cost).__name__))
    raise ValueError(f"cost must be one of {', '.join(COSTS)} or an object with fn(a, y) and "
                     f"derivative(a, y); got {cost!r}")
