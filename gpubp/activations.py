"""Activation functions σ and their derivatives σ′, each defined once.

Every activation is written against an array module ``xp`` (NumPy or CuPy), so the same lines are the
CPU implementation and the reference that the CUDA kernels in ``kernels/activations.cuh`` are tested
against. ``f(xp, z, out)`` writes σ(z); ``df(xp, z, a, out)`` writes σ′(z), given z and a = σ(z) (several
derivatives are cheapest from a: sigmoid a(1−a), tanh 1−a²).

GELU uses the tanh form of Hendrycks & Gimpel,
``gelu(z) = ½ z (1 + tanh(√(2/π) (z + 0.044715 z³)))``, the same form as PyTorch's
``gelu(approximate="tanh")``.

Softmax is not elementwise: it is applied row-wise to the output layer only, and its backward pass
multiplies by its Jacobian (see ``Softmax``).
"""

from __future__ import annotations

import math
from typing import Any

LEAKY_SLOPE = 0.01
GELU_C = math.sqrt(2.0 / math.pi)
GELU_K = 0.044715


def _sigmoid(xp: Any, z: Any, out: Any) -> Any:
    """σ(z) = 1 / (1 + e^−z), written as ½ tanh(z/2) + ½ so that it never overflows."""
    xp.multiply(z, 0.5, out=out)
    xp.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


class Activation:
    """σ and σ′ for one activation; subclasses define ``f`` and ``df``."""

    name: str = ""
    #: whether σ′ needs z (False: it is computed from a = σ(z) alone)
    needs_z: bool = True
    #: whether the activation is elementwise (all but softmax)
    elementwise: bool = True

    def f(self, xp: Any, z: Any, out: Any) -> Any:
        raise NotImplementedError

    def df(self, xp: Any, z: Any, a: Any, out: Any) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


class Sigmoid(Activation):
    name = "sigmoid"
    needs_z = False

    def f(self, xp, z, out):
        return _sigmoid(xp, z, out)

    def df(self, xp, z, a, out):
        """σ′ = a(1 − a)."""
        xp.subtract(1.0, a, out=out)
        out *= a
        return out


class Tanh(Activation):
    name = "tanh"
    needs_z = False

    def f(self, xp, z, out):
        return xp.tanh(z, out=out)

    def df(self, xp, z, a, out):
        """tanh′ = 1 − a²."""
        xp.multiply(a, a, out=out)
        xp.subtract(1.0, out, out=out)
        return out


class ReLU(Activation):
    name = "relu"
    needs_z = False

    def f(self, xp, z, out):
        return xp.maximum(z, 0.0, out=out)

    def df(self, xp, z, a, out):
        """relu′ = 1 where a > 0 else 0 (0 at z = 0)."""
        return xp.greater(a, 0.0, out=out, casting="unsafe")


class LeakyReLU(Activation):
    name = "leaky_relu"
    needs_z = False

    def f(self, xp, z, out):
        """max(z, 0.01 z)."""
        xp.multiply(z, LEAKY_SLOPE, out=out)
        return xp.maximum(z, out, out=out)

    def df(self, xp, z, a, out):
        """1 where a > 0 else 0.01 (a has z's sign)."""
        xp.greater(a, 0.0, out=out, casting="unsafe")
        out *= 1.0 - LEAKY_SLOPE
        out += LEAKY_SLOPE
        return out


class Softplus(Activation):
    name = "softplus"

    def f(self, xp, z, out):
        """ln(1 + e^z), computed stably as logaddexp(0, z)."""
        return xp.logaddexp(0.0, z, out=out)

    def df(self, xp, z, a, out):
        """softplus′ = σ(z)."""
        return _sigmoid(xp, z, out)


class Swish(Activation):
    name = "swish"

    def f(self, xp, z, out):
        """z σ(z) (also called SiLU)."""
        _sigmoid(xp, z, out)
        out *= z
        return out

    def df(self, xp, z, a, out):
        """swish′ = s (1 + z (1 − s)) with s = σ(z)."""
        s = _sigmoid(xp, z, xp.empty_like(z))
        xp.subtract(1.0, s, out=out)
        out *= z
        out += 1.0
        out *= s
        return out


class GELU(Activation):
    name = "gelu"

    def f(self, xp, z, out):
        """½ z (1 + tanh(u)), u = √(2/π) (z + 0.044715 z³)."""
        u = GELU_C * (z + GELU_K * z * z * z)
        xp.tanh(u, out=out)
        out += 1.0
        out *= 0.5
        out *= z
        return out

    def df(self, xp, z, a, out):
        """gelu′ = ½ (1 + t) + ½ z (1 − t²) √(2/π) (1 + 3·0.044715 z²), t = tanh(u)."""
        t = xp.tanh(GELU_C * (z + GELU_K * z * z * z))
        du = GELU_C * (1.0 + 3.0 * GELU_K * z * z)
        xp.multiply(0.5 * z * (1.0 - t * t), du, out=out)
        out += 0.5 * (1.0 + t)
        return out


class Mish(Activation):
    name = "mish"

    def f(self, xp, z, out):
        """z tanh(softplus(z))."""
        xp.logaddexp(0.0, z, out=out)
        xp.tanh(out, out=out)
        out *= z
        return out

    def df(self, xp, z, a, out):
        """mish′ = t + z (1 − t²) σ(z), t = tanh(softplus(z))."""
        t = xp.tanh(xp.logaddexp(0.0, z))
        s = _sigmoid(xp, z, xp.empty_like(z))
        xp.multiply(t, t, out=out)
        xp.subtract(1.0, out, out=out)
        out *= z
        out *= s
        out += t
        return out


class Identity(Activation):
    name = "identity"
    needs_z = False

    def f(self, xp, z, out):
        xp.copyto(out, z)
        return out

    def df(self, xp, z, a, out):
        out.fill(1.0)
        return out


class Softmax(Activation):
    """Row-wise softmax aⱼ = e^zⱼ / Σₖ e^zₖ (output layer only).

    Its Jacobian is ∂aⱼ/∂zᵢ = aⱼ(δᵢⱼ − aᵢ), so δ = aᵀ-weighted: δ = a ⊙ (g − Σⱼ gⱼ aⱼ) for ∇ₐC = g.
    With the log-likelihood cost this simplifies to δ = a − y.
    """

    name = "softmax"
    needs_z = False
    elementwise = False

    def f(self, xp, z, out):
        xp.subtract(z, z.max(axis=-1, keepdims=True), out=out)
        xp.exp(out, out=out)
        out /= out.sum(axis=-1, keepdims=True)
        return out

    def df(self, xp, z, a, out):
        raise TypeError("softmax has no elementwise derivative; use Softmax.backward")

    def backward(self, xp, a, g, out):
        """δ = a ⊙ (g − Σⱼ gⱼ aⱼ), the softmax Jacobian applied to g = ∇ₐC."""
        dot = (g * a).sum(axis=-1, keepdims=True)
        xp.subtract(g, dot, out=out)
        out *= a
        return out


ACTIVATIONS: dict[str, Activation] = {
    act.name: act
    for act in (Sigmoid(), Tanh(), ReLU(), LeakyReLU(), Softplus(), Swish(), GELU(), Mish(), Identity())
}
ALIASES = {"silu": "swish", "linear": "identity"}
HIDDEN_NAMES = tuple(ACTIVATIONS) + tuple(ALIASES)
OUTPUT_NAMES = HIDDEN_NAMES + ("softmax",)
SOFTMAX = Softmax()


def get_activation(name: str, *, output: bool = False) -> Activation:
    """The activation called ``name`` (softmax only where ``output`` is true); ValueError otherwise."""
    if not isinstance(name, str):
        raise ValueError(f"activation must be a name (str), got {type(name).__name__}")
    key = ALIASES.get(name.lower(), name.lower())
    if key == "softmax":
        if output:
            return SOFTMAX
        raise ValueError("softmax is only available for the output layer (output='softmax')")
    if key not in ACTIVATIONS:
        valid = ", ".join(OUTPUT_NAMES if output else HIDDEN_NAMES)
        raise ValueError(f"unknown activation {name!r}; valid names: {valid}")
    return ACTIVATIONS[key]
