"""Activation functions σ and their derivatives σ′: one record per activation, the registry ``ACTIVATIONS``.

An activation is one subclass of ``Activation`` that holds everything gpubp does with it; the backends, the
kernel id tables, the ONNX export and the initialisation all read these records:

- ``f(xp, z, out)`` writes σ(z) and ``df(xp, z, a, out)`` writes σ′(z), given z and a = σ(z) (several
  derivatives are cheapest from a: sigmoid a(1−a), tanh 1−a²), against an array module ``xp`` (NumPy or
  CuPy): the CPU implementation, and the reference that every kernel is tested against.
- ``scalar_f(z, t)`` and ``scalar_df(z, a, t)``: the same for one element in plain Python with ``math``,
  which the fused CPU backend compiles with Numba (``gpubp/backend/cpu_kernels.py``). ``t`` is the element's
  scalar type: every constant is rounded to it first (``t(0.01)``), as NumPy rounds a Python float against
  an array, so that both agree to an ulp or two; NaN propagates as in ``f``. They may call this module's
  plain functions (``scalar_sigmoid`` …), which are compiled with them. Numba caches the compiled kernels
  keyed on cpu_kernels.py alone: after editing a one-element form, delete
  ``gpubp/backend/__pycache__/cpu_kernels.*.nb[ci]``.
- ``kernel_id``: the activation's id in the CUDA kernels, ``enum Activation`` of ``kernels/activations.cuh``,
  whose ``act_f``/``act_df`` cases are its third implementation (tests/test_activation_registry.py checks
  the header against this registry, tests/test_kernels_host.py its maths against ``f`` and ``df``).
- ``init``: the family of its initial weights, "he", "xavier" or "lecun" (``gpubp/initializers.py``).
- ``onnx(graph, z)``: σ in standard ONNX operators (``gpubp/export.py``).

Adding an activation is one record here, in ``ACTIVATIONS``, and its case in ``kernels/activations.cuh``.
This module needs only NumPy-style array modules: Numba stays an optional extra.

GELU uses the tanh form of Hendrycks & Gimpel, ``gelu(z) = ½ z (1 + tanh(√(2/π) (z + 0.044715 z³)))``, the
same form as PyTorch's ``gelu(approximate="tanh")``. ELU (α = 1) and SELU (Klambauer et al.) are λz for
z > 0 and λα(eᶻ − 1) below, with λ = 1, α = 1 and PyTorch's λ ≈ 1.0507, α ≈ 1.6733 respectively; eᶻ − 1 is
computed as expm1(z), exact near 0.

Softmax is not elementwise: it is applied row-wise to the output layer only, and its backward pass
multiplies by its Jacobian (see ``Softmax``).
"""

from __future__ import annotations

import math
from typing import Any

LEAKY_SLOPE = 0.01
GELU_C = math.sqrt(2.0 / math.pi)
GELU_K = 0.044715
ELU_ALPHA = 1.0
#: SELU's α and λ (scale), as in PyTorch's torch.nn.SELU
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
LN2 = math.log(2.0)


def _sigmoid(xp: Any, z: Any, out: Any) -> Any:
    """σ(z) = 1 / (1 + e^−z), written as ½ tanh(z/2) + ½ so that it never overflows."""
    xp.multiply(z, 0.5, out=out)
    xp.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


# ---- one element (plain Python, compiled by the fused CPU backend) -------------------------------------
def scalar_sigmoid(z: Any, t: Any) -> Any:
    """1 / (1 + e^−z): the array form's ½ tanh(z/2) + ½ within an ulp or two (and closer to σ for very
    negative z, where the tanh form cancels), at a third of the cost (libm's expf against its tanhf, which
    was a tenth of a [784, 30, 10] training step). e^−z overflows to inf for z ≪ 0, giving σ = 0."""
    return t(1) / (t(1) + math.exp(-z))


def scalar_softplus(z: Any, t: Any) -> Any:
    """NumPy's logaddexp(0, z): ln 2 at 0, ln(1 + e^z) below, z + ln(1 + e^−z) above; NaN stays NaN."""
    if z == 0:
        return t(LN2)
    if z < 0:
        return math.log1p(math.exp(z))
    if z > 0:
        return z + math.log1p(math.exp(-z))
    return z


def scalar_gelu_tanh(z: Any, t: Any) -> Any:
    """tanh(√(2/π) (z + 0.044715 z³))."""
    return math.tanh(t(GELU_C) * (z + t(GELU_K) * z * z * z))


# ---- the records ------------------------------------------------------------------------------------
# Every record has the same shape on purpose (f, df, scalar_f, scalar_df, onnx): that is the registry's
# contract, so records look alike line for line while each holds its own formulas.
class Activation:
    """σ and σ′ for one activation; subclasses define ``f`` and ``df`` (and, to be built in, the rest of the
    record described in the module docstring)."""

    name: str = ""
    #: whether σ′ needs z (False: it is computed from a = σ(z) alone)
    needs_z: bool = True
    #: whether the activation is elementwise (all but softmax)
    elementwise: bool = True
    #: id in kernels/activations.cuh (enum Activation); None: no kernel, the backends run ``f`` and ``df``
    kernel_id: int | None = None
    #: family of the initial weights: "he", "xavier" or "lecun" (gpubp/initializers.py)
    init: str = "xavier"

    def f(self, xp: Any, z: Any, out: Any) -> Any:
        raise NotImplementedError

    def df(self, xp: Any, z: Any, a: Any, out: Any) -> Any:
        raise NotImplementedError

    def onnx(self, graph: Any, z: str) -> str:
        """σ(z) as ONNX nodes: ``graph.op(op_type, inputs, **attributes)`` adds a node and returns its output's
        name, ``graph.constant(name, value)`` a float32 initializer's; returns the name holding σ(z)."""
        raise ValueError(f"no ONNX form for activation {self.name!r}")

    def __repr__(self) -> str:
        return self.name


class Sigmoid(Activation):
    name = "sigmoid"
    needs_z = False
    kernel_id = 0

    def f(self, xp, z, out):
        return _sigmoid(xp, z, out)

    def df(self, xp, z, a, out):
        """σ′ = a(1 − a)."""
        xp.subtract(1.0, a, out=out)
        out *= a
        return out

    @staticmethod
    def scalar_f(z, t):
        return scalar_sigmoid(z, t)

    @staticmethod
    def scalar_df(z, a, t):
        return (t(1) - a) * a

    def onnx(self, graph, z):
        return graph.op("Sigmoid", [z])


class Tanh(Activation):
    name = "tanh"
    needs_z = False
    kernel_id = 1

    def f(self, xp, z, out):
        return xp.tanh(z, out=out)

    def df(self, xp, z, a, out):
        """tanh′ = 1 − a²."""
        xp.multiply(a, a, out=out)
        xp.subtract(1.0, out, out=out)
        return out

    @staticmethod
    def scalar_f(z, t):
        return math.tanh(z)

    @staticmethod
    def scalar_df(z, a, t):
        return t(1) - a * a

    def onnx(self, graph, z):
        return graph.op("Tanh", [z])


class ReLU(Activation):
    name = "relu"
    needs_z = False
    kernel_id = 2
    init = "he"

    def f(self, xp, z, out):
        return xp.maximum(z, 0.0, out=out)

    def df(self, xp, z, a, out):
        """relu′ = 1 where a > 0 else 0 (0 at z = 0)."""
        return xp.greater(a, 0.0, out=out, casting="unsafe")

    @staticmethod
    def scalar_f(z, t):
        return z if z >= 0 or z != z else t(0)                   # np.maximum(z, 0): NaN propagates

    @staticmethod
    def scalar_df(z, a, t):
        return t(1) if a > 0 else t(0)

    def onnx(self, graph, z):
        return graph.op("Relu", [z])


class LeakyReLU(Activation):
    name = "leaky_relu"
    needs_z = False
    kernel_id = 3
    init = "he"

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

    @staticmethod
    def scalar_f(z, t):
        return z if z >= 0 or z != z else z * t(LEAKY_SLOPE)

    @staticmethod
    def scalar_df(z, a, t):
        return (t(1) if a > 0 else t(0)) * t(1.0 - LEAKY_SLOPE) + t(LEAKY_SLOPE)

    def onnx(self, graph, z):
        return graph.op("LeakyRelu", [z], alpha=LEAKY_SLOPE)


class Softplus(Activation):
    name = "softplus"
    kernel_id = 4
    init = "he"

    def f(self, xp, z, out):
        """ln(1 + e^z), computed stably as logaddexp(0, z)."""
        return xp.logaddexp(0.0, z, out=out)

    def df(self, xp, z, a, out):
        """softplus′ = σ(z)."""
        return _sigmoid(xp, z, out)

    @staticmethod
    def scalar_f(z, t):
        return scalar_softplus(z, t)

    @staticmethod
    def scalar_df(z, a, t):
        return scalar_sigmoid(z, t)

    def onnx(self, graph, z):
        return graph.op("Softplus", [z])


class Swish(Activation):
    name = "swish"
    kernel_id = 5
    init = "he"

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

    @staticmethod
    def scalar_f(z, t):
        return scalar_sigmoid(z, t) * z

    @staticmethod
    def scalar_df(z, a, t):
        s = scalar_sigmoid(z, t)
        return ((t(1) - s) * z + t(1)) * s

    def onnx(self, graph, z):
        return graph.op("Mul", [z, graph.op("Sigmoid", [z])])


class GELU(Activation):
    name = "gelu"
    kernel_id = 6
    init = "he"

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

    @staticmethod
    def scalar_f(z, t):
        return (scalar_gelu_tanh(z, t) + t(1)) * t(0.5) * z

    @staticmethod
    def scalar_df(z, a, t):
        th = scalar_gelu_tanh(z, t)
        du = t(GELU_C) * (t(1) + t(3.0 * GELU_K) * z * z)
        return t(0.5) * z * (t(1) - th * th) * du + t(0.5) * (t(1) + th)

    def onnx(self, graph, z):
        """½ z (1 + tanh(√(2/π) (z + 0.044715 z³))) in Mul, Add and Tanh."""
        cube = graph.op("Mul", [graph.op("Mul", [z, z]), z])
        inner = graph.op("Add", [z, graph.op("Mul", [cube, graph.constant("gelu_k", GELU_K)])])
        t = graph.op("Tanh", [graph.op("Mul", [inner, graph.constant("gelu_c", GELU_C)])])
        one_plus = graph.op("Add", [t, graph.constant("one", 1.0)])
        half_z = graph.op("Mul", [z, graph.constant("half", 0.5)])
        return graph.op("Mul", [half_z, one_plus])


class Mish(Activation):
    name = "mish"
    kernel_id = 7
    init = "he"

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

    @staticmethod
    def scalar_f(z, t):
        return math.tanh(scalar_softplus(z, t)) * z

    @staticmethod
    def scalar_df(z, a, t):
        th = math.tanh(scalar_softplus(z, t))
        return (t(1) - th * th) * z * scalar_sigmoid(z, t) + th

    def onnx(self, graph, z):
        return graph.op("Mul", [z, graph.op("Tanh", [graph.op("Softplus", [z])])])


class Identity(Activation):
    name = "identity"
    needs_z = False
    kernel_id = 8

    def f(self, xp, z, out):
        xp.copyto(out, z)
        return out

    def df(self, xp, z, a, out):
        out.fill(1.0)
        return out

    @staticmethod
    def scalar_f(z, t):
        return z

    @staticmethod
    def scalar_df(z, a, t):
        return t(1)

    def onnx(self, graph, z):
        return graph.op("Identity", [z])


class _ExponentialLinear(Activation):
    """σ(z) = λz for z > 0, else λα(eᶻ − 1), computed as λα expm1(z); σ′ = λ where a > 0, else a + λα
    (= λα eᶻ): a has z's sign, so σ′ needs a alone. A subclass sets λ (``scale``) and α (``alpha``), and its
    one-element forms are made with them."""

    needs_z = False
    scale: float = 1.0
    alpha: float = 1.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        scale, scale_alpha = cls.scale, cls.scale * cls.alpha

        def scalar_f(z, t):
            return t(scale) * z if z > 0 else t(scale_alpha) * math.expm1(z)   # NaN: the second, NaN

        def scalar_df(z, a, t):
            return t(scale) if a > 0 else a + t(scale_alpha)

        cls.scalar_f, cls.scalar_df = staticmethod(scalar_f), staticmethod(scalar_df)

    def f(self, xp, z, out):
        """λα expm1(min(z, 0)) + λ max(z, 0): the exponential of the negative part only, never overflowing."""
        xp.minimum(z, 0.0, out=out)
        xp.expm1(out, out=out)
        out *= self.scale * self.alpha
        out += self.scale * xp.maximum(z, 0.0)
        return out

    def df(self, xp, z, a, out):
        xp.add(a, self.scale * self.alpha, out=out)
        xp.copyto(out, self.scale, where=a > 0)
        return out

    def onnx(self, graph, z):
        """Elu(α) where λ = 1, else Selu(α, γ = λ)."""
        if self.scale == 1.0:
            return graph.op("Elu", [z], alpha=self.alpha)
        return graph.op("Selu", [z], alpha=self.alpha, gamma=self.scale)


class ELU(_ExponentialLinear):
    name = "elu"
    kernel_id = 9
    init = "he"
    alpha = ELU_ALPHA


class SELU(_ExponentialLinear):
    name = "selu"
    kernel_id = 10
    init = "lecun"
    scale, alpha = SELU_SCALE, SELU_ALPHA


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

    def onnx(self, graph, z):
        return graph.op("Softmax", [z], axis=-1)


#: the built-in elementwise activations by name, in kernel id order
ACTIVATIONS: dict[str, Activation] = {
    act.name: act
    for act in (Sigmoid(), Tanh(), ReLU(), LeakyReLU(), Softplus(), Swish(), GELU(), Mish(), Identity(), ELU(),
                SELU())
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
