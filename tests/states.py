"""Comparing model states part by part (their arrays make ``==`` ambiguous)."""

from __future__ import annotations

import numpy as np

from gpubp import ModelState


def same_arrays(a: dict, b: dict) -> bool:
    """Same keys, and equal arrays or lists under each (NaN equal to NaN)."""
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)


def same_state(a: ModelState, b: ModelState) -> bool:
    """Whether two states are equal in every part: description, parameters (values and dtype), optimizer
    (name, settings, steps, buffers), shuffle state, metadata and history."""
    if (a.optimizer is None) != (b.optimizer is None):
        return False
    if a.optimizer is not None:
        mine, theirs = a.optimizer, b.optimizer
        if (mine.name, mine.settings, mine.t) != (theirs.name, theirs.settings, theirs.t) or \
                not same_arrays(mine.buffers, theirs.buffers):
            return False
    return (a.description() == b.description() and a.params.dtype == b.params.dtype
            and np.array_equal(a.params, b.params) and a.shuffle == b.shuffle and a.metadata == b.metadata
            and same_arrays(a.history, b.history))
