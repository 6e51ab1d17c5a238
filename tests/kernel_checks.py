"""Comparisons shared by the kernel tests (host emulation and real GPU)."""

import numpy as np


def assert_delta_close(got, expected, cost, a, y, rtol, atol):
    """δᴸ within rtol, and atol scaled by |∇ₐC|: σ′'s own rounding (GELU′ cancels near z ≈ −0.75,
    σ = ½ tanh(z/2) + ½ for z ≪ 0) is multiplied by ∇ₐC, up to 1/ε where cross-entropy clips a to ε."""
    if y.ndim == 1:
        y = np.eye(a.shape[1], dtype=a.dtype)[y]
    with np.errstate(all="ignore"):
        grad = np.abs(cost.derivative(a, y))
    excess = np.abs(got - expected) - (rtol * np.abs(expected) + atol * (1 + grad))
    assert not (excess > 0).any(), f"δᴸ differs at {np.argwhere(excess > 0)[:5].tolist()}"


def apply_update(backend, method, params, grad, state1, state2, hyper):
    """One SGD, momentum or Nesterov step, or two Adam steps, of ``backend`` on the given buffers."""
    if method == "sgd":
        backend.sgd_update(params, grad, **hyper)
    elif method in ("momentum", "nesterov"):
        getattr(backend, f"{method}_update")(params, grad, state1, momentum=0.9, **hyper)
    else:
        for step in (1, 2):
            backend.adam_update(params, grad.copy(), state1, state2, beta1=0.9, beta2=0.999, eps=1e-8,
                                step=step, **hyper)
