"""Feature standardisation x′ = (x − μ) / s, with μ and s the per-feature mean and standard deviation of
the training split only (a feature constant there gets s = 1). Stored with a model, it is applied again to
whatever the model is later asked to predict."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .dataset import Dataset, map_splits


@dataclass(frozen=True)
class Standardization:
    """x′ = (x − mean) / std per feature column."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> "Standardization":
        """μ and s of the columns of the host array X (n, features); s = 1 where a column is constant."""
        X = np.asarray(X, dtype=np.float64)
        mean, std = X.mean(axis=0), X.std(axis=0)
        return cls(mean, np.where(std > 0, std, 1.0))

    def apply(self, X: np.ndarray) -> np.ndarray:
        """(X − mean) / std as a new host array of X's float dtype; ValueError if the widths differ."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != len(self.mean):
            raise ValueError(f"standardisation is for {len(self.mean)} features; got shape {X.shape}")
        dtype = X.dtype if X.dtype.kind == "f" else np.float64
        return ((X - self.mean) / self.std).astype(dtype, copy=False)

    def to_json(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_json(cls, value: Any, width: int) -> "Standardization":
        """The standardisation stored in a model's metadata, for ``width`` inputs (ValueError if damaged)."""
        try:
            mean = np.asarray(value["mean"], dtype=np.float64)
            std = np.asarray(value["std"], dtype=np.float64)
        except (TypeError, KeyError, ValueError) as exc:
            raise ValueError(f"metadata 'standardization' is damaged ({exc})") from exc
        if mean.shape != (width,) or std.shape != (width,) or not (np.isfinite(mean).all()
                                                                   and np.isfinite(std).all() and (std > 0).all()):
            raise ValueError(f"metadata 'standardization' is damaged: expected {width} finite means and "
                             "positive standard deviations")
        return cls(mean, std)


def standardized(data: Dataset) -> Dataset:
    """``data`` (host arrays) with every split standardised by the training split's mean and standard
    deviation; unchanged when it already is."""
    if data.standardization is not None:
        return data
    scaling = Standardization.fit(data.train[0])
    return map_splits(data, lambda split: (scaling.apply(split[0]), split[1]), standardization=scaling)
