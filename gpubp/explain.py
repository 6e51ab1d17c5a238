"""Teach mode: one sample (or a tiny batch) through the network, every number of backpropagation kept.

``explain(net, x, y)`` runs the network's own forward pass (``ops.layer_forward``, layer by layer) and its
own backprop (``net.backprop(x, y, return_deltas=True)``) and keeps, for every layer l,

    forward    zˡ = aˡ⁻¹ Wˡᵀ + bˡ,   aˡ = σ(zˡ)
    BP1        δᴸ = ∇ₐC ⊙ σ′(zᴸ)
    BP2        δˡ = (δˡ⁺¹ Wˡ⁺¹) ⊙ σ′(zˡ)
    BP3        ∂C/∂bˡ = (1/m) Σₓ δˡ
    BP4        ∂C/∂Wˡ = (1/m) δˡᵀ aˡ⁻¹

with the cost C and its gradient ∇ₐC, a central finite difference of C beside each gradient (on a float64
CPU copy, as ``gradcheck``), and the effect of one SGD step θ ← θ − η ∂C/∂θ (the new parameters and C
after it, computed by a copy of the network). The ``Explanation`` prints the arithmetic term by term
(``gpubp.explain_text``), draws the network (``gpubp.explain_drawing``) and shows both in a notebook.

Wide layers are abbreviated as ``gpubp.explain_text`` writes them (the first neurons and those with the
largest |δ|; the largest terms of a long sum); in networks of more than ``CHECK_ALL`` parameters only the
gradients written out are checked by finite differences.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import explain_drawing, inputs
from .activations import Activation
from .costs import Cost
from .explain_text import FIRST_NEURONS, LARGEST_DELTAS, LARGEST_TERMS, MAX_NEURONS, MAX_TERMS, render, render_html
from .gradcheck import central_difference

#: the most samples an explanation takes (every sample's arithmetic is written out)
MAX_SAMPLES = 16
#: networks with at most this many parameters have every gradient checked by finite differences
CHECK_ALL = 5000
#: the central difference's step, on the float64 copy
EPS = 1e-6
#: η of the SGD step when none is given
DEFAULT_LR = 0.5
#: relative errors are taken against max(|g|, |n|, TINY), as in ``gradcheck``
TINY = 1e-8


@dataclass(frozen=True)
class LayerExplanation:
    """Layer l (1 … L) of an explanation: host arrays, rows per sample (m of them).

    ``numeric_w``/``numeric_b`` hold the finite differences of C, NaN where a parameter was not checked
    (only in networks of more than ``CHECK_ALL`` parameters). ``shown`` are the neurons written out, and
    ``terms[j]`` the inputs k whose terms are written out in neuron j's sums (``shown_terms``)."""

    index: int
    activation: Activation
    weights: np.ndarray        # Wˡ (nₗ, nₗ₋₁)
    biases: np.ndarray         # bˡ (nₗ,)
    a_prev: np.ndarray         # aˡ⁻¹ (m, nₗ₋₁), the input x for l = 1
    z: np.ndarray              # zˡ (m, nₗ)
    a: np.ndarray              # aˡ (m, nₗ)
    sigma_prime: np.ndarray | None  # σ′(zˡ) (m, nₗ); None for softmax, which has a Jacobian instead
    delta: np.ndarray          # δˡ (m, nₗ)
    nabla_w: np.ndarray        # ∂C/∂Wˡ (nₗ, nₗ₋₁)
    nabla_b: np.ndarray        # ∂C/∂bˡ (nₗ,)
    numeric_w: np.ndarray      # finite differences of C by Wˡ, NaN where not checked
    numeric_b: np.ndarray
    new_weights: np.ndarray    # Wˡ − η ∂C/∂Wˡ
    new_biases: np.ndarray
    shown: np.ndarray          # the neurons written out
    terms: dict[int, np.ndarray]  # neuron j -> the inputs k written out in its sums

    @property
    def width(self) -> int:
        return self.z.shape[1]


@dataclass(frozen=True, repr=False)
class Explanation:
    """Everything backpropagation computes for one sample (or a tiny batch): ``print(expl)`` writes it out,
    ``expl.draw(path)`` draws it (.svg or .png), a notebook shows both."""

    sizes: list[int]
    dtype: str
    device: str
    cost_function: Cost
    x: np.ndarray                  # a⁰ (m, n₀)
    y: np.ndarray | None           # target vectors (m, n_L); None for a cost without targets
    layers: list[LayerExplanation]
    costs: np.ndarray              # Cₓ per sample (m,)
    cost: float                    # C = (1/m) Σₓ Cₓ
    cost_gradient: np.ndarray      # ∇ₐCₓ per sample (m, n_L)
    lr: float                      # η of the SGD step
    cost_after: float              # C after the step
    eps: float                     # the finite differences' step

    # ---- the arrays by equation ---------------------------------------------------------------------
    @property
    def zs(self) -> list[np.ndarray]:
        return [layer.z for layer in self.layers]

    @property
    def activations(self) -> list[np.ndarray]:
        return [layer.a for layer in self.layers]

    @property
    def deltas(self) -> list[np.ndarray]:
        return [layer.delta for layer in self.layers]

    @property
    def nabla_w(self) -> list[np.ndarray]:
        return [layer.nabla_w for layer in self.layers]

    @property
    def nabla_b(self) -> list[np.ndarray]:
        return [layer.nabla_b for layer in self.layers]

    @property
    def numeric_w(self) -> list[np.ndarray]:
        return [layer.numeric_w for layer in self.layers]

    @property
    def numeric_b(self) -> list[np.ndarray]:
        return [layer.numeric_b for layer in self.layers]

    @property
    def new_weights(self) -> list[np.ndarray]:
        return [layer.new_weights for layer in self.layers]

    @property
    def new_biases(self) -> list[np.ndarray]:
        return [layer.new_biases for layer in self.layers]

    @property
    def checked(self) -> int:
        """How many gradients were checked by finite differences."""
        return sum(int(np.isfinite(l.numeric_w).sum() + np.isfinite(l.numeric_b).sum()) for l in self.layers)

    @property
    def n_parameters(self) -> int:
        return sum(l.weights.size + l.biases.size for l in self.layers)

    @property
    def max_relative_error(self) -> float:
        """max |g − n| / max(|g|, |n|, 1e-8) over the checked gradients g and their finite differences n."""
        worst = 0.0
        for layer in self.layers:
            for g, n in ((layer.nabla_w, layer.numeric_w), (layer.nabla_b, layer.numeric_b)):
                checked = np.isfinite(n)
                if checked.any():
                    worst = max(worst, float(relative_error(g[checked], n[checked]).max()))
        return worst

    # ---- showing it ---------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return (f"<Explanation of a {self.sizes} network on {len(self.x)} sample{'s' * (len(self.x) > 1)}: "
                f"C = {self.cost:.6g}, after one SGD step (lr {self.lr:g}) {self.cost_after:.6g}; print() it>")

    def __str__(self) -> str:
        return render(self)

    def draw(self, path: str | Path) -> None:
        """Write the drawing to ``path``: ``.svg`` (SVG text) or ``.png`` (needs matplotlib, the ``cli``
        extra); neurons labelled with z, a and δ, edges coloured by the sign of ∂C/∂w, as wide as |∂C/∂w|."""
        explain_drawing.draw(self, path)

    def svg(self) -> str:
        """The drawing as SVG text."""
        return explain_drawing.svg(self)

    def _repr_html_(self) -> str:
        """What a notebook shows: the drawing, the tables per layer, and the arithmetic (folded)."""
        return (f"<div>{self.svg()}{render_html(self)}<details><summary>the arithmetic, term by term</summary>"
                f"<pre>{html.escape(str(self))}</pre></details></div>")


def relative_error(g: np.ndarray, n: np.ndarray) -> np.ndarray:
    """|g − n| / max(|g|, |n|, 1e-8), elementwise."""
    g, n = np.asarray(g, dtype=np.float64), np.asarray(n, dtype=np.float64)
    return np.abs(g - n) / np.maximum(np.maximum(np.abs(g), np.abs(n)), TINY)


def explain(net: Any, x: Any, y: Any = None, lr: float = DEFAULT_LR, eps: float = EPS) -> Explanation:
    """The explanation of ``net`` on ``x`` — one sample (1-D) or a batch of at most ``MAX_SAMPLES`` rows —
    and targets ``y`` (as ``net.backprop`` takes them), with one SGD step of learning rate ``lr``."""
    lr = inputs.positive_float(lr, "lr")
    if not (isinstance(eps, (float, int)) and 0 < eps < 1):
        raise ValueError(f"eps must be a small positive number; got {eps!r}")
    ops = net.ops
    with ops.activate():
        checked, single = inputs.check_inputs(x, net.sizes[0], ops, net.dtype)
        target = net.check_targets(y, len(checked), single=single)
    if not 1 <= len(checked) <= MAX_SAMPLES:
        raise ValueError(f"explain takes one sample or a tiny batch of at most {MAX_SAMPLES} samples; "
                         f"x has {len(checked)}")
    nabla_w, nabla_b, deltas = net.backprop(x, y, return_deltas=True)             # BP1–BP4
    zs, activations = _forward(net, checked)                                       # forward
    host = ops.to_numpy
    a_last = host(activations[-1])
    y_vectors = None if target is None else inputs.target_vectors(target, net.sizes[-1], ops).astype(net.dtype)
    cost_fn = net.cost
    with np.errstate(all="ignore"):
        costs = np.asarray(host(cost_fn.fn(a_last, y_vectors)), dtype=np.float64).reshape(-1)
        cost_gradient = np.asarray(host(cost_fn.derivative(a_last, y_vectors)), dtype=np.float64)
    weights = [host(W).copy() for W in net.weights]
    biases = [host(b).copy() for b in net.biases]
    nabla_w = [host(g) for g in nabla_w]
    nabla_b = [host(g) for g in nabla_b]
    new_weights = [W - lr * g for W, g in zip(weights, nabla_w)]                    # θ ← θ − η ∂C/∂θ
    new_biases = [b - lr * g for b, g in zip(biases, nabla_b)]

    layers_in = [host(checked)] + [host(a) for a in activations[:-1]]
    zs, activations, deltas = [host(z) for z in zs], [host(a) for a in activations], [host(d) for d in deltas]
    shown = [shown_neurons(d) for d in deltas]
    terms = [{int(j): shown_terms(a_prev, W[j]) for j in s} for a_prev, W, s in zip(layers_in, weights, shown)]
    numeric_w, numeric_b = _finite_differences(net, x, y, shown, terms, eps)
    layers = []
    for l, act in enumerate(net.layer_activations):
        sigma_prime = None
        if act.elementwise:
            with np.errstate(all="ignore"):
                sigma_prime = act.df(np, zs[l], activations[l], np.empty_like(zs[l]))
        layers.append(LayerExplanation(
            index=l + 1, activation=act, weights=weights[l], biases=biases[l], a_prev=layers_in[l], z=zs[l],
            a=activations[l], sigma_prime=sigma_prime, delta=deltas[l], nabla_w=nabla_w[l],
            nabla_b=nabla_b[l], numeric_w=numeric_w[l], numeric_b=numeric_b[l], new_weights=new_weights[l],
            new_biases=new_biases[l], shown=shown[l], terms=terms[l]))
    return Explanation(sizes=list(net.sizes), dtype=net.dtype.name, device=net.device, cost_function=cost_fn,
                       x=layers_in[0], y=y_vectors, layers=layers, costs=costs, cost=net.loss(x, y),
                       cost_gradient=cost_gradient, lr=lr,
                       cost_after=_cost_after_step(net, new_weights, new_biases, x, y), eps=float(eps))


def _forward(net: Any, x: Any) -> tuple[list, list]:
    """zˡ and aˡ of every layer, by the network's own forward step ``ops.layer_forward``."""
    ops, a = net.ops, x
    zs, activations = [], []
    with ops.activate(), ops.errstate():
        for W, b, act in zip(net.weights, net.biases, net.layer_activations):
            z = ops.empty((len(x), W.shape[0]), net.dtype)
            a = ops.layer_forward(a, W, b, act, z, ops.empty((len(x), W.shape[0]), net.dtype))
            zs.append(z)
            activations.append(a)
    return zs, activations


def shown_neurons(delta: np.ndarray) -> np.ndarray:
    """The neurons of a layer written out: all of at most ``MAX_NEURONS``, else the first ``FIRST_NEURONS``
    and the ``LARGEST_DELTAS`` others with the largest |δ| (over the samples), in order."""
    width = delta.shape[1]
    if width <= MAX_NEURONS:
        return np.arange(width)
    size = np.abs(delta).max(axis=0)
    rest = np.arange(FIRST_NEURONS, width)
    largest = rest[np.argsort(-size[rest], kind="stable")[:LARGEST_DELTAS]]
    return np.sort(np.concatenate([np.arange(FIRST_NEURONS), largest]))


def shown_terms(a_prev: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The inputs k of a neuron whose terms aₖ wₖ are written out: all of at most ``MAX_TERMS``, else the
    ``LARGEST_TERMS`` largest |aₖ wₖ| (over the samples), in order."""
    if len(w) <= MAX_TERMS:
        return np.arange(len(w))
    size = np.abs(a_prev * w).max(axis=0)
    return np.sort(np.argsort(-size, kind="stable")[:LARGEST_TERMS])


def _finite_differences(net: Any, X: Any, Y: Any, shown: list[np.ndarray], terms: list[dict[int, np.ndarray]],
                        eps: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(C(θ + eps·eᵢ) − C(θ − eps·eᵢ)) / (2 eps) for every parameter θᵢ, on a float64 CPU copy of
    ``net``; in networks of more than ``CHECK_ALL`` parameters only for the weights and biases written out, NaN
    elsewhere."""
    twin = _copy(net, replace(net.state(), dtype="float64", matmul_precision="fp32", optimizer=None), device="cpu")
    every = twin.parameters().size <= CHECK_ALL
    numeric_w = [np.full(W.shape, np.nan) for W in twin.weights]
    numeric_b = [np.full(b.shape, np.nan) for b in twin.biases]
    w_offset, b_offset = 0, twin.n_weights
    for l, (W, b) in enumerate(zip(twin.weights, twin.biases)):
        if every:
            entries = [(j, k) for j in range(W.shape[0]) for k in range(W.shape[1])]
            neurons = range(W.shape[0])
        else:
            entries = [(int(j), int(k)) for j in shown[l] for k in terms[l][int(j)]]
            neurons = [int(j) for j in shown[l]]
        for j, k in entries:
            numeric_w[l][j, k] = central_difference(twin, w_offset + j * W.shape[1] + k, X, Y, eps)
        for j in neurons:
            numeric_b[l][j] = central_difference(twin, b_offset + j, X, Y, eps)
        w_offset += W.size
        b_offset += b.size
    return numeric_w, numeric_b


def _cost_after_step(net: Any, new_weights: list[np.ndarray], new_biases: list[np.ndarray], X: Any,
                     Y: Any) -> float:
    """C after the SGD step, computed by a copy of ``net`` (same device and dtype) holding the new
    parameters; ``net`` itself is not changed."""
    params = np.concatenate([p.ravel() for p in new_weights + new_biases]).astype(net.dtype)
    stepped = _copy(net, replace(net.state(), params=params, optimizer=None), device=net.ops)
    return stepped.loss(X, Y)


def _copy(net: Any, state: Any, device: Any) -> Any:
    """A network of ``state`` on ``device`` computing with ``net``'s activations (a user-defined one, set in
    ``layer_activations``, is not part of the state)."""
    copy = type(net).from_state(state, device=device)
    copy.layer_activations = net.layer_activations
    return copy
