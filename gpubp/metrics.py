"""What a model's results are measured by, by task: accuracy (and the confusion matrix) for
classification; mean squared error, mean absolute error and R² for regression, never an accuracy.

How a network knows its task: ``net.metadata["task"]`` when set (gpubp's loaders and the CLI set it),
else regression exactly when the output activation is the identity.
"""

from __future__ import annotations

import numpy as np

#: the results ``Network.evaluate`` reports besides "loss", per task
METRICS = {"classification": ("accuracy",), "regression": ("mse", "mae", "r2")}


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """The fraction of samples whose predicted class is their label."""
    return float(np.mean(predicted == labels)) if len(labels) else float("nan")


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    """counts[i, j] = how many samples of class i were predicted as j."""
    return np.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)


def regression_metrics(predicted: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """MSE = mean (ŷ − y)², MAE = mean |ŷ − y| over samples and outputs, and R² = 1 − Σ(ŷ − y)² / Σ(y − ȳ)²
    per output, averaged over the outputs (an output whose targets are constant counts 1 if predicted
    exactly, else 0, as in scikit-learn)."""
    predicted = np.asarray(predicted, dtype=np.float64).reshape(len(predicted), -1)
    target = np.asarray(target, dtype=np.float64).reshape(len(target), -1)
    if len(target) == 0:
        return {name: float("nan") for name in METRICS["regression"]}
    error = predicted - target
    residual = (error ** 2).sum(axis=0)
    total = ((target - target.mean(axis=0)) ** 2).sum(axis=0)
    r2 = np.where(total > 0, 1.0 - residual / np.where(total > 0, total, 1.0), (residual == 0).astype(float))
    return {"mse": float(np.mean(error ** 2)), "mae": float(np.mean(np.abs(error))), "r2": float(r2.mean())}
