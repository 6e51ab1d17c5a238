"""Everything a network is, on the host: the one form in which a model is snapshotted, saved, checkpointed,
pickled, moved between devices and rebuilt (``Network.state()``, ``Network.from_state``, ``load_state``).

A leaf module (the standard library and NumPy only): the file formats (``gpubp.model_file``,
``gpubp.checkpoint``) and the network build on it, it on none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: what an optimizer setting may be (a JSON scalar)
Setting = bool | int | float | str


@dataclass(eq=False)
class OptimizerState:
    """An optimizer as it stands: its name, its hyper-parameters by name (``Optimizer.settings()``), its state
    buffers by name (host arrays shaped like the flat parameters) and the steps it has taken."""

    name: str
    settings: dict[str, Setting]
    buffers: dict[str, np.ndarray]
    t: int


@dataclass(eq=False)
class ModelState:
    """A network's description, flat parameters (weights then biases, a host array in its dtype), optimizer
    of the last ``fit`` (None: none yet), shuffle generator state (``bit_generator.state``; None: none yet),
    metadata and history. Its arrays make ``==`` ambiguous: states are compared part by part.

    ``cost`` is the cost's name, or the Cost object itself for a user-defined cost (a file stores only its
    name: loading such a file needs the object again). ``matmul_precision`` is "fp32" or "tf32"
    (``gpubp.backend.precision``)."""

    sizes: list[int]
    activation: str
    output: str
    cost: Any
    dtype: str
    params: np.ndarray
    optimizer: OptimizerState | None = None
    shuffle: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    history: dict[str, list] = field(default_factory=dict)
    matmul_precision: str = "fp32"

    def description(self) -> dict[str, Any]:
        """sizes, activation, output, cost, dtype and matmul_precision, each by name: what two models must
        share for one's state to go into the other (``Network.description()`` gives the same for a network)."""
        cost = self.cost if isinstance(self.cost, str) else self.cost.name
        return {"sizes": list(self.sizes), "activation": self.activation, "output": self.output, "cost": cost,
                "dtype": self.dtype, "matmul_precision": self.matmul_precision}


def shuffle_generator(state: Any) -> np.random.Generator:
    """A generator in the given ``bit_generator.state``; ValueError when ``state`` is not one."""
    rng = np.random.default_rng()
    try:
        rng.bit_generator.state = state
    except (TypeError, KeyError, OverflowError, ValueError) as exc:
        raise ValueError(f"not a generator state ({exc})") from exc
    return rng
