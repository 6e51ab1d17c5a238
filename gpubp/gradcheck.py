"""Checking backprop against central finite differences, in float64 on the CPU."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

#: gradients smaller than this are compared absolutely (relative error is noise there)
TINY = 1e-8


def gradcheck(net: Any, X: Any, Y: Any = None, eps: float = 1e-6, max_params: int | None = None,
              seed: int = 0) -> float:
    """max over parameters θᵢ of |gᵢ − nᵢ| / max(|gᵢ|, |nᵢ|, 1e-8), where g is backprop's gradient and
    nᵢ = (C(θ + eps·eᵢ) − C(θ − eps·eᵢ)) / (2 eps). ``max_params`` checks a random subset instead of all.

    Runs on a float64 CPU copy of ``net``; ``net`` itself is not changed.
    """
    if not (isinstance(eps, (float, int)) and 0 < eps < 1):
        raise ValueError(f"eps must be a small positive number; got {eps!r}")
    twin = type(net).from_state(replace(net.state(), dtype="float64", matmul_precision="fp32", optimizer=None),
                                device="cpu")
    nabla_w, nabla_b = twin.backprop(X, Y)
    analytic = np.concatenate([g.ravel() for g in nabla_w + nabla_b])
    size = twin.parameters().size
    indices = np.arange(size)
    if max_params is not None and max_params < size:
        indices = np.random.default_rng(seed).choice(size, size=max_params, replace=False)
    worst = 0.0
    for i in indices:
        numeric = central_difference(twin, i, X, Y, eps)
        err = abs(analytic[i] - numeric) / max(abs(analytic[i]), abs(numeric), TINY)
        worst = max(worst, err)
    return float(worst)


def central_difference(net: Any, i: int, X: Any, Y: Any, eps: float) -> float:
    """(C(θ + eps·eᵢ) − C(θ − eps·eᵢ)) / (2 eps) for parameter i of ``net``'s flat parameters (put back
    after)."""
    theta = net.parameters()
    saved = theta[i]
    theta[i] = saved + eps
    plus = net.loss(X, Y)
    theta[i] = saved - eps
    minus = net.loss(X, Y)
    theta[i] = saved
    return (plus - minus) / (2 * eps)
