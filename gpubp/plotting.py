"""Training curves as a PNG: loss, accuracy, and each layer's learning speed ‖∂C/∂bˡ‖ by epoch.

‖∂C/∂bˡ‖ = ‖δˡ averaged over a fixed batch‖ (BP3) is the book's measure of how fast layer l learns
(chapter 5: in deep sigmoid networks the early layers learn much more slowly). Drawn with matplotlib's
object API on the Agg canvas, so no display and no global backend switch are needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from .files import write_atomically


def require_matplotlib() -> None:
    """ImportError naming the extra to install when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ImportError("plotting needs matplotlib, which is not installed; "
                          "run: pip install gpubp[cli]") from exc


def plot_training(history: Mapping[str, Sequence[float]], path: str | Path,
                  grad_norms: Sequence[tuple[int, Sequence[float]]] = (), title: str = "",
                  monitor: str = "validation") -> None:
    """Write a PNG to ``path`` (atomically, see ``gpubp.files``): the loss ("loss", "val_loss"), the accuracy ("val_accuracy"; for a regression
    R², "val_r2") and, when
    given, ``grad_norms`` as (epoch, [‖∂C/∂b¹‖, …, ‖∂C/∂bᴸ‖]) pairs on a log scale. ``monitor`` names the
    held-out set behind the val_ entries."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = 3 if grad_norms else 2
    fig = Figure(figsize=(5 * panels, 4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels)
    if title:
        fig.suptitle(title)

    loss_ax = axes[0]
    for key, label in (("loss", "training"), ("val_loss", monitor)):
        values = history.get(key) or []
        loss_ax.plot(_epochs(values), values, marker=".", label=label)
    loss_ax.set(xlabel="epoch", ylabel="cost C", title="loss")
    loss_ax.legend()

    acc_ax = axes[1]
    if "val_r2" in history:  # a regression: R², never an accuracy
        r2 = list(history["val_r2"])
        acc_ax.plot(_epochs(r2), r2, marker=".", color="tab:green")
        acc_ax.set(xlabel="epoch", ylabel="R²", title=f"{monitor} R²")
    else:
        accuracy = [100.0 * v for v in history.get("val_accuracy") or []]
        acc_ax.plot(_epochs(accuracy), accuracy, marker=".", color="tab:green")
        acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title=f"{monitor} accuracy")

    if grad_norms:
        speed_ax = axes[2]
        epochs = [epoch for epoch, _ in grad_norms]
        n_layers = len(grad_norms[0][1])
        for layer in range(n_layers):
            speed_ax.plot(epochs, [norms[layer] for _, norms in grad_norms], marker=".",
                          label="output" if layer == n_layers - 1 else f"hidden {layer + 1}")
        speed_ax.set(xlabel="epoch", ylabel=r"$\|\partial C / \partial b^l\|$", yscale="log",
                     title="learning speed per layer")
        speed_ax.legend()

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=100))


def _epochs(values: Sequence[Any]) -> list[int]:
    return list(range(1, len(values) + 1))
