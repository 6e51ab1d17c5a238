"""What a model's ``metadata`` may hold under the keys gpubp's own loaders write (``Dataset.model_metadata``),
checked when a model file is read: a damaged or hostile value fails there, naming its key, rather than later
in ``predict`` or ``evaluate``. Other keys belong to their writer (a user, the scikit-learn estimators) and
pass unchecked; every key may be null."""

from __future__ import annotations

from typing import Any, Callable

from .datasets.dataset import TASKS
from .datasets.standardize import Standardization

Rule = tuple[Callable[[Any], bool], str]


def _integer(minimum: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _list_of(*types: type) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and all(isinstance(x, types) for x in v)


#: key -> (is its value valid, what it must be)
KEYS: dict[str, Rule] = {
    "task": (lambda v: v in TASKS, f"one of {', '.join(map(repr, TASKS))}"),
    "class_names": (_list_of(str, int, float), "a list of class names (text or numbers)"),
    "feature_names": (_list_of(str), "a list of column names (text)"),
    "target": (lambda v: isinstance(v, str), "a column name (text)"),
    "input_width": (_integer(1), "a positive integer"),
    "standardization": (lambda v: isinstance(v, dict), "an object {\"mean\": [...], \"std\": [...]}"),
    "data": (lambda v: isinstance(v, dict), "an object describing the training data"),
}
#: the keys of metadata["data"] that ``gpubp evaluate`` and ``gpubp predict`` use
DATA_KEYS: dict[str, Rule] = {
    "path": (lambda v: isinstance(v, str), "a path (text)"),
    "split_seed": (_integer(0), "a non-negative integer"),
    "test_fraction": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "input_shape": (lambda v: isinstance(v, list) and all(map(_integer(1), v)), "a list of positive integers"),
}


def check_metadata(metadata: Any, width: int) -> None:
    """ValueError naming the first key of ``metadata`` (parsed JSON, of a model taking ``width`` inputs)
    whose value is not what gpubp's loaders write there."""
    if not isinstance(metadata, dict):
        raise ValueError(f"metadata is not a JSON object but {_short(metadata)}")
    _check_keys(metadata, KEYS, "")
    if metadata.get("data") is not None:
        _check_keys(metadata["data"], DATA_KEYS, "data.")
    if metadata.get("standardization") is not None:
        Standardization.from_json(metadata["standardization"], width)


def _check_keys(values: dict, rules: dict[str, Rule], prefix: str) -> None:
    for key, (valid, expected) in rules.items():
        value = values.get(key)
        if value is not None and not valid(value):
            raise ValueError(f"metadata {prefix + key!r} must be {expected} or null; got {_short(value)}")


def _short(value: Any) -> str:
    """``value``'s repr, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"
