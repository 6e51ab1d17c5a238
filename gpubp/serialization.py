"""Saving and loading networks: ``Network.save`` writes its ``state()`` as a model file (``gpubp.model_file``:
.npz, named arrays only, no pickle, written atomically); ``load`` reads one, checked whole, into a new
network (``Network.from_state``)."""

from __future__ import annotations

import os
from typing import Any

from .costs import Cost
from .model_file import model_state, read_npz, user_defined_cost
from .network import Network


def save(net: Network, path: str | os.PathLike) -> None:
    """Write ``net`` to ``path`` exactly (no suffix is added), atomically: ``net.save(path)``."""
    net.save(path)


def load(path: str | os.PathLike, device: str | None = None, cost: Cost | Any = None) -> Network:
    """The network saved at ``path``, on ``device`` (None: env GPUBP_DEVICE, else "auto").

    A network saved with a user-defined cost needs that cost object again: ``load(path, cost=my_cost)``.
    A file that is not a complete gpubp model raises ValueError.
    """
    path = os.fspath(path)
    if not os.path.exists(path) and os.path.exists(path + ".npz"):
        path += ".npz"  # as numpy.load would find what numpy.savez("name") wrote
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such model file: {path!r}")
    fields = read_npz(path, repr(path))
    state = model_state(fields, repr(path), cost)
    if cost is None and user_defined_cost(fields):
        raise ValueError(f"{path!r} was saved with a user-defined cost {state.cost!r}; "
                         "pass it again: gpubp.load(path, cost=...)")
    try:
        return Network.from_state(state, device=device)
    except ValueError as exc:
        raise ValueError(f"{path!r} holds an invalid model description: {exc}") from exc
