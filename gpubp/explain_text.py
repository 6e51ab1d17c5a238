"""An ``Explanation`` written out as a textbook works backpropagation by hand: each weighted sum term by term,
the bias, σ(z) in closed form, the cost and its gradient, then BP1, BP2 term by term, BP3 and BP4 with the
finite difference beside each gradient, and one SGD step; and, for a notebook, as HTML tables per layer.

Numbers are written with 4 significant digits (2.0, 5.3, 0.9644, 1.5e−05) and a real minus sign; layers
and sums are abbreviated as the explanation chose (``LayerExplanation.shown`` and ``terms``).
User-defined activations and costs are written with their values only: there is no closed form to show.
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from .activations import SELU_ALPHA, SELU_SCALE
from .costs import CrossEntropy, LogLikelihood, Quadratic

if TYPE_CHECKING:
    from .explain import Explanation, LayerExplanation

#: layers of at most this many neurons are written out whole; wider ones show the first FIRST_NEURONS and
#: the LARGEST_DELTAS others with the largest |δ|
MAX_NEURONS = 10
FIRST_NEURONS = 3
LARGEST_DELTAS = 3
#: sums of at most this many terms are written out whole; longer ones show their LARGEST_TERMS largest terms
MAX_TERMS = 10
LARGEST_TERMS = 4
#: significant digits of the parameters and costs after the SGD step, whose changes can be small
STEP_DIGITS = 6
SUPERSCRIPTS = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")
SUBSCRIPTS = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


# ---- numbers ----------------------------------------------------------------------------------------
def num(value: float, digits: int = 4) -> str:
    """``digits`` significant digits, at least one decimal (2.0, 5.3, 0.9644, 1.5e−05 → 1.5e−5), a real
    minus."""
    value = float(value)
    if not math.isfinite(value):
        return str(value).replace("-", "−")
    text = f"{value:.{digits}g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    elif "." not in text:
        text += ".0"
    return text.replace("-", "−")


def factor(value: float) -> str:
    """``num`` in parentheses when negative, as a factor of a product: (−0.3)."""
    text = num(value)
    return f"({text})" if text.startswith("−") else text


def sup(n: int) -> str:
    return str(n).translate(SUPERSCRIPTS)


def sub(n: int) -> str:
    return str(n).translate(SUBSCRIPTS)


def vector(values: Sequence[float], shown: Sequence[int] | None = None) -> str:
    """(v₀, v₁, …): every value, or only those at ``shown`` (index: value) with a count of the rest."""
    values = np.asarray(values).ravel()
    if shown is None or len(shown) == len(values):
        return "(" + ", ".join(num(v) for v in values) + ")"
    listed = ", ".join(f"[{int(k)}] {num(values[k])}" for k in shown)
    return f"({listed}, … {len(values) - len(shown)} more of {len(values)})"


def sum_of(products: Sequence[str], total: float, rest: int) -> str:
    """"p₁ + p₂ + … = total", with "+ … (rest more terms)" where some terms are left out."""
    text = " + ".join(products) if products else "0.0"
    if rest:
        text += f" + … ({rest} more terms)"
    return f"{text} = {num(total)}"


def check(gradient: float, numeric: float) -> str:
    """The finite difference beside a gradient, with their relative error."""
    if not math.isfinite(numeric):
        return ""
    error = abs(gradient - numeric) / max(abs(gradient), abs(numeric), 1e-8)
    return f"   [finite difference {num(numeric)}, relative error {error:.1e}]".replace("-", "−")


# ---- activations ------------------------------------------------------------------------------------
#: name -> (σ(z) in closed form, z ↦ that form with z written in)
CLOSED_FORMS: dict[str, tuple[str, Callable[[float], str]]] = {
    "sigmoid": ("σ(z) = 1/(1 + e^−z)", lambda z: f"σ({num(z)}) = 1/(1 + e^{num(-z)})"),
    "tanh": ("tanh(z) = (e^z − e^−z)/(e^z + e^−z)",
             lambda z: f"tanh({num(z)}) = (e^{num(z)} − e^{num(-z)})/(e^{num(z)} + e^{num(-z)})"),
    "relu": ("relu(z) = max(0, z)", lambda z: f"relu({num(z)}) = max(0, {num(z)})"),
    "leaky_relu": ("leaky_relu(z) = max(0.01·z, z)",
                   lambda z: f"leaky_relu({num(z)}) = max(0.01·{factor(z)}, {num(z)})"),
    "softplus": ("softplus(z) = ln(1 + e^z)", lambda z: f"softplus({num(z)}) = ln(1 + e^{num(z)})"),
    "swish": ("swish(z) = z/(1 + e^−z)", lambda z: f"swish({num(z)}) = {factor(z)}/(1 + e^{num(-z)})"),
    "gelu": ("gelu(z) = ½z(1 + tanh(√(2/π)(z + 0.044715z³)))",
             lambda z: f"gelu({num(z)}) = ½·{factor(z)}·(1 + tanh(√(2/π)·({num(z)} + "
                       f"0.044715·{factor(z)}³)))"),
    "mish": ("mish(z) = z·tanh(ln(1 + e^z))", lambda z: f"mish({num(z)}) = {factor(z)}·tanh(ln(1 + e^{num(z)}))"),
    "identity": ("identity(z) = z", lambda z: f"identity({num(z)})"),
    "elu": ("elu(z) = z for z > 0, e^z − 1 otherwise",
            lambda z: f"elu({num(z)}) = " + (num(z) if z > 0 else f"e^{num(z)} − 1")),
    "selu": (f"selu(z) = λz for z > 0, λα(e^z − 1) otherwise (λ ≈ {num(SELU_SCALE)}, α ≈ {num(SELU_ALPHA)})",
             lambda z: f"selu({num(z)}) = " + (f"λ·{factor(z)}" if z > 0 else f"λα(e^{num(z)} − 1)")),
}
#: softmax is not elementwise: each aⱼ is written as e^zⱼ over the sum
SOFTMAX_FORM = "softmax(z)ⱼ = e^zⱼ / Σₖ e^zₖ"
#: the activations whose closed form is exact arithmetic (no exponential)
EXACT = ("relu", "leaky_relu", "identity")
#: name -> (σ′ in closed form, (z, a) ↦ that form with z and a written in)
DERIVATIVES: dict[str, tuple[str, Callable[[float, float], str]]] = {
    "sigmoid": ("σ′(z) = σ(z)(1 − σ(z))", lambda z, a: f"{num(a)}·(1 − {num(a)})"),
    "tanh": ("tanh′(z) = 1 − tanh(z)²", lambda z, a: f"1 − {factor(a)}²"),
    "relu": ("relu′(z) = 1 for z > 0, else 0", lambda z, a: "1" if a > 0 else "0"),
    "leaky_relu": ("leaky_relu′(z) = 1 for z > 0, else 0.01", lambda z, a: "1" if a > 0 else "0.01"),
    "softplus": ("softplus′(z) = σ(z) = 1/(1 + e^−z)", lambda z, a: f"1/(1 + e^{num(-z)})"),
    "swish": ("swish′(z) = s(1 + z(1 − s)), s = σ(z)", lambda z, a: ""),
    "gelu": ("gelu′(z) = ½(1 + t) + ½z(1 − t²)√(2/π)(1 + 3·0.044715z²), "
             "t = tanh(√(2/π)(z + 0.044715z³))",
             lambda z, a: ""),
    "mish": ("mish′(z) = t + z(1 − t²)σ(z), t = tanh(ln(1 + e^z))", lambda z, a: ""),
    "identity": ("identity′(z) = 1", lambda z, a: "1"),
    "elu": ("elu′(z) = 1 for z > 0, else e^z = a + 1", lambda z, a: "1" if a > 0 else f"{factor(a)} + 1"),
    "selu": ("selu′(z) = λ for z > 0, else λαe^z = a + λα",
             lambda z, a: "λ" if a > 0 else f"{factor(a)} + λα"),
}


def activation_value(name: str, z: float, a: float) -> str:
    """"σ(3.3) = 1/(1 + e^−3.3) ≈ 0.9644" ("=" where the form is exact arithmetic, as relu's), or for an
    activation without a closed form "name(z) = a"."""
    form = CLOSED_FORMS.get(name)
    if form is None:
        return f"{name}({num(z)}) = {num(a)}"
    return f"{form[1](z)} {'=' if name in EXACT else '≈'} {num(a)}"


def derivative_value(name: str, z: float, a: float, value: float) -> str:
    """"σ′(3.3) = 0.9644·(1 − 0.9644) = 0.03431", or "σ′(z) = value" without a closed form."""
    form = DERIVATIVES.get(name)
    written = form[1](z, a) if form is not None else ""
    if written.replace(".", "").isdigit():  # a constant such as relu′'s 1: its value says it all
        written = ""
    symbol = "σ" if name == "sigmoid" else name
    return f"{symbol}′({num(z)}) = " + (f"{written} = " if written else "") + num(value)


# ---- the explanation ---------------------------------------------------------------------------------
def render(e: "Explanation") -> str:
    """The whole explanation as text."""
    layers, m = e.layers, len(e.x)
    out = [f"Network {e.sizes}: " + ", ".join(f"layer {l.index} {l.activation.name}" for l in layers)
           + f"; cost {e.cost_function.name}; {e.dtype} on {e.device}",
           f"{'one sample' if m == 1 else f'a batch of {m} samples; C is their mean'}; "
           f"η = {num(e.lr)} for the SGD step", ""]
    for s in range(m):
        if m > 1:
            out += [f"======== sample {s + 1} of {m} ========"]
        out += _sample(e, s)
    if m > 1:
        out += ["", f"C = (1/{m}) Σₓ Cₓ = (1/{m})(" + " + ".join(num(c) for c in e.costs) + f") = {num(e.cost)}"]
    out += _gradients(e)
    out += _step(e)
    return "\n".join(out)


def _sample(e: "Explanation", s: int) -> list[str]:
    layers = e.layers
    last = layers[-1]
    x = e.x[s]
    out = [f"input x = a⁰ = {vector(x)}" if len(x) <= MAX_TERMS else
           f"input x = a⁰: {len(x)} values, {np.count_nonzero(x)} of them nonzero, from {num(x.min())} to "
           f"{num(x.max())} (the sums below show those that weigh most)"]
    if e.y is not None:
        out.append(f"target y = {vector(e.y[s], None if last.width <= MAX_NEURONS else last.shown)}")
    out += ["", "Forward pass: zˡ = Wˡ aˡ⁻¹ + bˡ (neuron j: zⱼ = Σₖ wⱼₖ aₖ + bⱼ), aˡ = σ(zˡ)"]
    for layer in layers:
        out += _forward_layer(layer, s)
    out += [""] + _cost(e, s)
    out += ["", f"BP1, the output error: {_bp1_equation(e)}"]
    out += _bp1(e, s)
    if len(layers) > 1:
        out += ["", "BP2, the error one layer back: δˡ = ((Wˡ⁺¹)ᵀ δˡ⁺¹) ⊙ σ′(zˡ), "
                    "i.e. δˡⱼ = (Σₖ wˡ⁺¹ₖⱼ δˡ⁺¹ₖ)·σ′(zˡⱼ)"]
        for below, above in zip(reversed(layers[:-1]), reversed(layers[1:])):
            out += _bp2_layer(below, above, s)
    return out


def _layer_title(layer: "LayerExplanation") -> str:
    name = layer.activation.name
    form = SOFTMAX_FORM if name == "softmax" else CLOSED_FORMS.get(name, (name, None))[0]
    return f"layer {layer.index} ({layer.a_prev.shape[1]} → {layer.width}, {form})"


def _more(layer: "LayerExplanation") -> list[str]:
    rest = layer.width - len(layer.shown)
    return [f"  … {rest} more neurons not shown (shown: the first {FIRST_NEURONS} and the {LARGEST_DELTAS} "
            "others with the largest |δ|)"] if rest else []


def _forward_layer(layer: "LayerExplanation", s: int) -> list[str]:
    out = [_layer_title(layer)]
    a_prev, z, a = layer.a_prev[s], layer.z[s], layer.a[s]
    softmax = layer.activation.name == "softmax"
    if softmax:
        exps = np.exp(z.astype(np.float64))
        denominator = float(exps.sum())
    for j in layer.shown:
        terms = layer.terms[int(j)]
        w, b = layer.weights[j], layer.biases[j]
        products = [f"{factor(a_prev[k])}·{factor(w[k])}" for k in terms]
        line = f"  neuron {j}: {sum_of(products, z[j] - b, len(w) - len(terms))}, + bias {num(b)} → z = {num(z[j])}, "
        if softmax:
            line += f"a = e^{num(z[j])}/Σₖ e^zₖ = {num(exps[j])}/{num(denominator)} ≈ {num(a[j])}"
        else:
            line += activation_value(layer.activation.name, z[j], a[j])
        out.append(line)
    return out + _more(layer)


def _cost(e: "Explanation", s: int) -> list[str]:
    last = e.layers[-1]
    a, cost, grad = last.a[s], e.costs[s], e.cost_gradient[s]
    y = None if e.y is None else e.y[s]
    shown = None if last.width <= MAX_NEURONS else last.shown
    label = "C" if len(e.x) == 1 else f"C{sub(s + 1)}"
    function = e.cost_function
    if isinstance(function, Quadratic):
        squares = [f"({num(y[j])} − {num(a[j])})²" for j in (range(len(a)) if shown is None else shown)]
        rest = "" if shown is None else f" + … ({len(a) - len(shown)} more)"
        lines = [f"Cost: {label} = ½‖y − aᴸ‖² = ½({' + '.join(squares)}{rest}) = {num(cost)}",
                 f"its gradient: ∇ₐC = aᴸ − y = {vector(grad, shown)}"]
    elif isinstance(function, CrossEntropy):
        parts = [f"{num(y[j])}·ln {num(a[j])} + {num(1 - y[j])}·ln(1 − {num(a[j])})"
                 for j in (range(len(a)) if shown is None else shown)]
        rest = "" if shown is None else f" + … ({len(a) - len(shown)} more)"
        lines = [f"Cost: {label} = −Σⱼ [yⱼ ln aⱼ + (1 − yⱼ) ln(1 − aⱼ)] = "
                 f"−({' + '.join(parts)}{rest}) = {num(cost)}",
                 f"its gradient: ∇ₐC = (aᴸ − y)/(aᴸ(1 − aᴸ)) = {vector(grad, shown)}"]
    elif isinstance(function, LogLikelihood):
        hot = np.flatnonzero(y)
        written = f"−ln aᴸ{sub(int(hot[0]))} = −ln {num(a[hot[0]])}" if len(hot) == 1 and y[hot[0]] == 1 else \
            "−Σⱼ yⱼ ln aⱼ"
        lines = [f"Cost: {label} = −Σⱼ yⱼ ln aᴸⱼ = {written} = {num(cost)}",
                 f"its gradient: ∇ₐC = −y/aᴸ = {vector(grad, shown)}"]
    else:  # user-defined: values only
        lines = [f"Cost: {label} = {function.name}(aᴸ{', y' if y is not None else ''}) = {num(cost)} "
                 "(user-defined)", f"its gradient: ∇ₐC = {vector(grad, shown)}"]
    return lines + [f"  (output aᴸ = {vector(a, shown)})"]


def _stable_pair(e: "Explanation") -> bool:
    """Whether BP1 is computed as δᴸ = aᴸ − y (sigmoid with cross-entropy, softmax with log-likelihood)."""
    name, function = e.layers[-1].activation.name, e.cost_function
    return (name == "sigmoid" and isinstance(function, CrossEntropy)) or \
        (name == "softmax" and isinstance(function, LogLikelihood))


def _bp1_equation(e: "Explanation") -> str:
    name = e.layers[-1].activation.name
    if _stable_pair(e):
        return (f"δᴸ = ∇ₐC ⊙ σ′(zᴸ) = aᴸ − y ({name} with {e.cost_function.name}: the "
                f"{'σ′' if name == 'sigmoid' else 'Jacobian'} cancels)")
    if name == "softmax":
        return "δᴸ = Jᵀ∇ₐC through the softmax Jacobian: δⱼ = aⱼ(gⱼ − Σₖ gₖaₖ), g = ∇ₐC"
    derivative = DERIVATIVES.get(name, (f"{name}′(z)", None))[0]
    if isinstance(e.cost_function, Quadratic):
        return f"δᴸ = ∇ₐC ⊙ σ′(zᴸ) = (aᴸ − y) ⊙ σ′(zᴸ), {derivative}"
    return f"δᴸ = ∇ₐC ⊙ σ′(zᴸ), {derivative}"


def _bp1(e: "Explanation", s: int) -> list[str]:
    last = e.layers[-1]
    L, a, z, delta, grad = last.index, last.a[s], last.z[s], last.delta[s], e.cost_gradient[s]
    out = []
    if last.activation.name == "softmax" and not _stable_pair(e):
        dot = float(np.dot(grad, a))
        out.append(f"  Σₖ gₖaₖ = {num(dot)}")
    for j in last.shown:
        head = f"  δ{sup(L)}{sub(j)} = "
        if _stable_pair(e):
            out.append(f"{head}{num(a[j])} − {num(e.y[s][j])} = {num(delta[j])}")
        elif last.activation.name == "softmax":
            out.append(f"{head}{num(a[j])}·({num(grad[j])} − {factor(dot)}) = {num(delta[j])}")
        else:
            sp = last.sigma_prime[s][j]
            gradient = f"({num(a[j])} − {num(e.y[s][j])})" if isinstance(e.cost_function, Quadratic) else \
                factor(grad[j])
            out.append(f"{head}{gradient}·{factor(sp)} = {num(delta[j])}   "
                       f"({derivative_value(last.activation.name, z[j], a[j], sp)})")
    return out + _more(last)


def _bp2_layer(layer: "LayerExplanation", above: "LayerExplanation", s: int) -> list[str]:
    out = [f"layer {layer.index}"]
    delta_above = above.delta[s].astype(np.float64)
    for j in layer.shown:
        column = above.weights[:, j].astype(np.float64)
        terms = np.arange(len(column)) if len(column) <= MAX_TERMS else \
            np.sort(np.argsort(-np.abs(column * delta_above), kind="stable")[:LARGEST_TERMS])
        products = [f"{factor(column[k])}·{factor(delta_above[k])}" for k in terms]
        back = float(np.dot(column, delta_above))
        sp = layer.sigma_prime[s][j]
        out.append(f"  δ{sup(layer.index)}{sub(j)} = ({sum_of(products, back, len(column) - len(terms))})"
                   f"·{factor(sp)} = {num(layer.delta[s][j])}   "
                   f"({derivative_value(layer.activation.name, layer.z[s][j], layer.a[s][j], sp)})")
    return out + _more(layer)


def _gradients(e: "Explanation") -> list[str]:
    m = len(e.x)
    mean = "" if m == 1 else f"(1/{m}) Σₓ "
    out = ["", f"BP3, the bias gradients: ∂C/∂bˡⱼ = {mean}δˡⱼ"]
    for layer in e.layers:
        out.append(f"layer {layer.index}")
        for j in layer.shown:
            l, deltas = layer.index, layer.delta[:, j]
            written = f"δ{sup(l)}{sub(j)}" if m == 1 else f"(1/{m})(" + " + ".join(num(d) for d in deltas) + ")"
            out.append(f"  ∂C/∂b{sup(l)}{sub(j)} = {written} = {num(layer.nabla_b[j])}"
                       + check(layer.nabla_b[j], layer.numeric_b[j]))
        out += _more(layer)
    out += ["", f"BP4, the weight gradients: ∂C/∂wˡⱼₖ = {mean}aˡ⁻¹ₖ δˡⱼ"]
    for layer in e.layers:
        out.append(f"layer {layer.index}")
        l = layer.index
        for j in layer.shown:
            terms = layer.terms[int(j)]
            for k in terms:
                pairs = [f"{factor(a)}·{factor(d)}" for a, d in zip(layer.a_prev[:, k], layer.delta[:, j])]
                written = pairs[0] if m == 1 else f"(1/{m})(" + " + ".join(pairs) + ")"
                out.append(f"  ∂C/∂w{sup(l)}[{j},{k}] = a{sup(l - 1)}{sub(k)}·δ{sup(l)}{sub(j)} = {written} = "
                           f"{num(layer.nabla_w[j, k])}" + check(layer.nabla_w[j, k], layer.numeric_w[j, k]))
            rest = layer.weights.shape[1] - len(terms)
            if rest:
                out.append(f"  … {rest} more weights of neuron {j} not shown (its largest terms aₖwₖ are)")
        out += _more(layer)
    checked, total = e.checked, e.n_parameters
    out += ["", f"Finite differences (C(θ + ε) − C(θ − ε))/2ε, ε = {num(e.eps)}, in float64: {checked} of "
                f"{total} gradients checked, worst relative error {e.max_relative_error:.1e}".replace("e-", "e−")]
    return out


def _step(e: "Explanation") -> list[str]:
    out = ["", f"One SGD step, η = {num(e.lr)}: w ← w − η ∂C/∂w, b ← b − η ∂C/∂b"]
    for layer in e.layers:
        l = layer.index
        out.append(f"layer {l}")
        for j in layer.shown:
            for k in layer.terms[int(j)]:
                out.append(f"  w{sup(l)}[{j},{k}]: {num(layer.weights[j, k])} − {num(e.lr)}·"
                           f"{factor(layer.nabla_w[j, k])} = {num(layer.new_weights[j, k], STEP_DIGITS)}")
            out.append(f"  b{sup(l)}{sub(j)}: {num(layer.biases[j])} − {num(e.lr)}·{factor(layer.nabla_b[j])} = "
                       f"{num(layer.new_biases[j], STEP_DIGITS)}")
        out += _more(layer)
    change = e.cost_after - e.cost
    out.append(f"cost before the step C = {num(e.cost, STEP_DIGITS)}, after it {num(e.cost_after, STEP_DIGITS)} "
               f"(change {num(change)})")
    return out


# ---- HTML tables ---------------------------------------------------------------------------------------
TABLE_COLUMNS = ("neuron", "z", "a = σ(z)", "δ", "∂C/∂b", "finite difference", "b after the step")


def render_html(e: "Explanation") -> str:
    """Per layer, a table of the neurons written out (the first sample's z, a, δ; ∂C/∂b beside its finite
    difference; b after the SGD step), and the cost before and after the step."""
    head = "".join(f"<th>{html.escape(name)}</th>" for name in TABLE_COLUMNS)
    out = []
    for layer in e.layers:
        l = layer.index
        rows = []
        for j in layer.shown:
            cells = (str(j), num(layer.z[0, j]), num(layer.a[0, j]), num(layer.delta[0, j]), num(layer.nabla_b[j]),
                     num(layer.numeric_b[j]), num(layer.new_biases[j], STEP_DIGITS))
            rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
        rest = layer.width - len(layer.shown)
        caption = f"layer {l} ({html.escape(layer.activation.name)})" + (f", {rest} more neurons not shown"
                                                                          if rest else "")
        out.append(f"<table><caption>{caption}</caption><tr>{head}</tr>{''.join(rows)}</table>")
    out.append(f"<p>C = {num(e.cost, STEP_DIGITS)}; after one SGD step (η = {num(e.lr)}): "
               f"{num(e.cost_after, STEP_DIGITS)}</p>")
    return "\n".join(out)
