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


def most_frequent_confusions(labels: np.ndarray, predicted: np.ndarray, top: int) -> list[tuple[int, int, int]]:
    """The ``top`` most frequent (true class, predicted class, samples) pairs with true ≠ predicted, most
    frequent first; computed from the pairs that occur, never a k × k matrix."""
    wrong = labels != predicted
    pairs, counts = np.unique(np.stack([labels[wrong], predicted[wrong]], axis=1), axis=0, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:top]
    return [(int(pairs[i, 0]), int(pairs[i, 1]), int(counts[i])) for i in order]


def recall_per_class(labels: np.ndarray, predicted: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(correct, samples) per class: how many samples of each class were predicted as that class, of how
    many there are."""
    return np.bincount(labels[labels == predicted], minlength=k), np.bincount(labels, minlength=k)


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
