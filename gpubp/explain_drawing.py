"""An ``Explanation`` drawn layer by layer: one circle per neuron, labelled with its z, a and δ (the input
layer with x), and one line per weight, red where ∂C/∂w > 0 (the step lowers w), blue where ∂C/∂w < 0, as
wide as |∂C/∂w| relative to the largest of its layer; a small layer's lines also carry w.

SVG is written as text (every neuron a ``<circle class="neuron">``, every weight a ``<line class="edge">``,
each with a ``<title>`` holding its numbers); PNG is drawn with matplotlib (the ``cli`` extra). With a batch,
the labels are the first sample's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

import numpy as np

from .explain_text import MAX_NEURONS, num, sup
from .files import write_atomically

if TYPE_CHECKING:
    from .explain import Explanation

#: pixels between layers, the tallest column of a wide layer (a narrow one's neurons are NEURON_GAP apart,
#: room for their labels), the gap between labelled neurons and the largest radius
LAYER_GAP = 260
MAX_COLUMN = 720
NEURON_GAP = 110
RADIUS = 24
MARGIN = 70
#: layers connected by at most this many weights have w written on their lines
LABELLED_EDGES = 16
#: a white outline under text, so that labels stay readable over lines
HALO = 'paint-order="stroke" stroke="#ffffff" stroke-width="3"'
POSITIVE, NEGATIVE, ZERO = "#d62728", "#1f77b4", "#999999"


@dataclass(frozen=True)
class Neuron:
    x: float
    y: float
    r: float
    label: list[str]   # the lines written beside it (empty in wide layers)
    title: str         # the tooltip: all its numbers


@dataclass(frozen=True)
class Edge:
    x1: float
    y1: float
    x2: float
    y2: float
    width: float
    color: str
    opacity: float
    label: str         # w on the line ("" where not written)
    title: str


def layout(e: "Explanation") -> tuple[float, float, list[Neuron], list[Edge]]:
    """(width, height, neurons, edges) of the drawing, in pixels."""
    sizes = e.sizes
    height = max(_gap(n) * n for n in sizes) + 2 * MARGIN
    width = (len(sizes) - 1) * LAYER_GAP + 2 * MARGIN + 120
    columns = []
    for i, n in enumerate(sizes):
        gap = _gap(n)
        top = height / 2 - gap * (n - 1) / 2
        columns.append([(MARGIN + i * LAYER_GAP, top + gap * j) for j in range(n)])
    neurons = []
    for j, (x, y) in enumerate(columns[0]):
        value = e.x[0, j]
        neurons.append(Neuron(x, y, _radius(sizes[0]), [f"x = {num(value)}"] if sizes[0] <= MAX_NEURONS else [],
                              f"input {j}: x = {num(value)}"))
    edges = []
    for layer, left, right in zip(e.layers, columns[:-1], columns[1:]):
        l = layer.index
        for j, (x, y) in enumerate(right):
            numbers = [f"z = {num(layer.z[0, j])}", f"a = {num(layer.a[0, j])}", f"δ = {num(layer.delta[0, j])}"]
            neurons.append(Neuron(x, y, _radius(layer.width), numbers if layer.width <= MAX_NEURONS else [],
                                  f"layer {l} neuron {j}: " + ", ".join(numbers)))
        largest = float(np.abs(layer.nabla_w).max()) or 1.0
        labelled = layer.weights.size <= LABELLED_EDGES
        opacity = 0.9 if layer.weights.size <= 400 else 0.25
        for j, (x2, y2) in enumerate(right):
            for k, (x1, y1) in enumerate(left):
                g, w = float(layer.nabla_w[j, k]), float(layer.weights[j, k])
                edges.append(Edge(x1, y1, x2, y2, 0.5 + 5.5 * abs(g) / largest,
                                  POSITIVE if g > 0 else NEGATIVE if g < 0 else ZERO, opacity,
                                  f"w = {num(w)}" if labelled else "",
                                  f"w{sup(l)}[{j},{k}] = {num(w)}, ∂C/∂w = {num(g)}"))
    return width, height, neurons, edges


def _label_at(edge: Edge) -> tuple[float, float]:
    """Where a line's w is written: a quarter of the way along it."""
    return edge.x1 + 0.25 * (edge.x2 - edge.x1), edge.y1 + 0.25 * (edge.y2 - edge.y1)


def _gap(n: int) -> float:
    """Pixels between the neurons of a layer of n: room for their labels where they have them."""
    return NEURON_GAP if n <= MAX_NEURONS else min(NEURON_GAP, MAX_COLUMN / n)


def _radius(n: int) -> float:
    return max(1.0, min(RADIUS, 0.4 * _gap(n)))


def svg(e: "Explanation") -> str:
    """The drawing as an SVG document."""
    width, height, neurons, edges = layout(e)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="sans-serif" font-size="12">',
           f'<text x="{MARGIN}" y="24" font-size="14">{escape(_caption(e))}</text>']
    for edge in edges:
        out.append(f'<line class="edge" x1="{edge.x1:.1f}" y1="{edge.y1:.1f}" x2="{edge.x2:.1f}" '
                   f'y2="{edge.y2:.1f}" stroke="{edge.color}" stroke-width="{edge.width:.2f}" '
                   f'stroke-opacity="{edge.opacity}"><title>{escape(edge.title)}</title></line>')
        if edge.label:
            x, y = _label_at(edge)
            out.append(f'<text x="{x:.1f}" y="{y:.1f}" fill="{edge.color}" text-anchor="middle" {HALO}>'
                       f'{escape(edge.label)}</text>')
    for neuron in neurons:
        out.append(f'<circle class="neuron" cx="{neuron.x:.1f}" cy="{neuron.y:.1f}" r="{neuron.r:.1f}" '
                   f'fill="#ffffff" stroke="#333333"><title>{escape(neuron.title)}</title></circle>')
        for i, line in enumerate(neuron.label):
            out.append(f'<text x="{neuron.x:.1f}" y="{neuron.y + neuron.r + 13 * (i + 1):.1f}" '
                       f'text-anchor="middle" {HALO}>{escape(line)}</text>')
    out.append(f'<text x="{MARGIN}" y="{height - 16:.0f}">{escape(_legend(e))}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _caption(e: "Explanation") -> str:
    sample = "" if len(e.x) == 1 else f" (labels: sample 1 of {len(e.x)})"
    return f"{e.sizes} {e.layers[-1].activation.name} network, cost {e.cost_function.name}: C = {num(e.cost)}" \
           f"{sample}"


def _legend(e: "Explanation") -> str:
    return f"lines: red ∂C/∂w > 0, blue ∂C/∂w < 0, width |∂C/∂w|; one SGD step (η = {num(e.lr)}) " \
           f"takes C from {num(e.cost)} to {num(e.cost_after)}"


def png(e: "Explanation", path: str | Path) -> None:
    """The same drawing as a PNG, with matplotlib (ImportError naming the extra when it is missing)."""
    from .plotting import require_matplotlib

    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib import patheffects
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    width, height, neurons, edges = layout(e)
    fig = Figure(figsize=(width / 100, height / 100), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    ax.add_collection(LineCollection([((d.x1, d.y1), (d.x2, d.y2)) for d in edges],
                                     colors=[d.color for d in edges], linewidths=[d.width * 0.75 for d in edges],
                                     alpha=edges[0].opacity if edges else 1.0))
    halo = [patheffects.withStroke(linewidth=3, foreground="white")]
    for d in edges:
        if d.label:
            ax.text(*_label_at(d), d.label, color=d.color, fontsize=8, ha="center", va="center", zorder=4,
                    path_effects=halo)
    for n in neurons:
        ax.add_patch(Circle((n.x, n.y), n.r, facecolor="white", edgecolor="#333333", zorder=3))
        if n.label:
            ax.text(n.x, n.y + n.r + 2, "\n".join(n.label), fontsize=8, ha="center", va="top", zorder=4,
                    path_effects=halo)
    ax.text(MARGIN, 24, _caption(e), fontsize=10)
    ax.text(MARGIN, height - 16, _legend(e), fontsize=8)
    write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=100))


def draw(e: "Explanation", path: str | Path) -> None:
    """Write the drawing to ``path``, as SVG or PNG by its suffix (ValueError for any other)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".svg":
        write_atomically(path, svg(e).encode("utf-8"))
    elif suffix == ".png":
        png(e, path)
    else:
        raise ValueError(f"cannot draw to {str(path)!r}: the name must end in .svg or .png")
