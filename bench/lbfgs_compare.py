"""solver="lbfgs": gpubp.sklearn's estimators against scikit-learn's, each fit in a process of its own.

Two data sets: the 8x8 digits (``MLPClassifier``, 1,797 samples, 64 features scaled to [0, 1], a stratified
train/test split of 1,437/360) and a regression set drawn with a seed (``MLPRegressor``, make_regression with
10,000 samples, 40 features, 25 informative, noise 10, random_state=0, y standardised, split 8,000/2,000).
Both contenders get scikit-learn's parameters: hidden_layer_sizes=(100,), relu, solver="lbfgs", alpha=1e-4,
max_iter=200, tol=1e-4, max_fun=15000, random_state=0. Each contender runs in float64 (scikit-learn computes
in the input's dtype; gpubp with dtype="float64") and in float32 (float32 input; gpubp's default dtype).

A round runs every contender once, in a fresh process each (imports and one-off costs are outside the timed
fit: a warm-up fit of 10 iterations on the same data comes first in that process), the order rotating every
round; ``--rounds`` rounds. Recorded per fit: wall and CPU seconds of ``fit``, n_iter_, loss_, and the test
score (accuracy, R²). Ratios are medians of per-round ratios; the raw JSON goes to bench/results/.

    python bench/lbfgs_compare.py [--rounds 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARAMS = dict(hidden_layer_sizes=(100,), activation="relu", solver="lbfgs", alpha=1e-4, max_iter=200, tol=1e-4,
              max_fun=15000, random_state=0)
DATA_SETS = ("digits", "regression")
CONTENDERS = ("sklearn-float64", "gpubp-float64", "sklearn-float32", "gpubp-float32")


def load(name: str) -> tuple[Any, Any, Any, Any]:
    """(X_train, X_test, y_train, y_test) of data set ``name``, float64."""
    from sklearn.datasets import load_digits, make_regression
    from sklearn.model_selection import train_test_split

    if name == "digits":
        X, y = load_digits(return_X_y=True)
        return train_test_split(X / 16.0, y, test_size=0.2, random_state=0, stratify=y)
    X, y = make_regression(n_samples=10_000, n_features=40, n_informative=25, noise=10.0, random_state=0)
    return train_test_split(X, (y - y.mean()) / y.std(), test_size=0.2, random_state=0)


def estimator(contender: str, data: str, device: str) -> Any:
    """The unfitted estimator of ``contender`` for data set ``data``."""
    library, dtype = contender.split("-")
    if library == "sklearn":
        from sklearn import neural_network as module
        extra = {}
    else:
        from gpubp import sklearn as module
        extra = {"dtype": dtype, "device": device}
    kind = module.MLPClassifier if data == "digits" else module.MLPRegressor
    return kind(**PARAMS, **extra)


def worker(contender: str, data: str, device: str) -> dict:
    """One timed fit in this process (after an untimed warm-up fit of 10 iterations)."""
    from sklearn.exceptions import ConvergenceWarning

    warnings.simplefilter("ignore", ConvergenceWarning)
    X_train, X_test, y_train, y_test = load(data)
    dtype = contender.split("-")[1]
    X_train, X_test = X_train.astype(dtype), X_test.astype(dtype)
    estimator(contender, data, device).set_params(max_iter=10).fit(X_train, y_train)
    model = estimator(contender, data, device)
    start, cpu_start = time.perf_counter(), time.process_time()
    model.fit(X_train, y_train)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "n_iter": int(model.n_iter_),
            "loss": float(model.loss_), "test_score": float(model.score(X_test, y_test)),
            "seconds_per_iteration": seconds / max(int(model.n_iter_), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="gpubp's device (default cpu)")
    parser.add_argument("--worker", nargs=2, metavar=("CONTENDER", "DATA"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker, args.device)))
        return 0

    from gpubp.benchmark.records import write_results

    runs: dict[str, dict[str, list[dict]]] = {data: {c: [] for c in CONTENDERS} for data in DATA_SETS}
    for round_ in range(args.rounds):
        shift = round_ % len(CONTENDERS)
        for data in DATA_SETS:
            for contender in CONTENDERS[shift:] + CONTENDERS[:shift]:
                out = subprocess.run([sys.executable, __file__, "--worker", contender, data, "--device", args.device],
                                     capture_output=True, text=True, check=True).stdout
                runs[data][contender].append(json.loads(out.strip().splitlines()[-1]))
                last = runs[data][contender][-1]
                print(f"round {round_ + 1} {data:10s} {contender:15s} {last['seconds']:7.2f} s  "
                      f"{last['n_iter']:3d} iterations  score {last['test_score']:.4f}", flush=True)
    summary = {}
    for data in DATA_SETS:
        rows = {c: {key: statistics.median(r[key] for r in runs[data][c])
                    for key in ("seconds", "cpu_seconds", "seconds_per_iteration", "n_iter", "test_score")}
                for c in CONTENDERS}
        for dtype in ("float64", "float32"):
            pairs = zip(runs[data][f"sklearn-{dtype}"], runs[data][f"gpubp-{dtype}"])
            rows[f"sklearn/gpubp-{dtype}"] = statistics.median(s["seconds"] / g["seconds"] for s, g in pairs)
        summary[data] = rows
        print(f"{data}: " + "  ".join(f"{c} {rows[c]['seconds']:.2f} s ({rows[c]['n_iter']:.0f} it, score "
                                      f"{rows[c]['test_score']:.4f})" for c in CONTENDERS)
              + "  ".join(f"  sklearn/gpubp {d} {rows[f'sklearn/gpubp-{d}']:.2f}x" for d in ("float64", "float32")))
    path = write_results(ROOT, "lbfgs-compare", {
        "benchmark": "lbfgs_compare", "params": {**PARAMS, "hidden_layer_sizes": [100]}, "rounds": args.rounds,
        "device": args.device, "runs": runs, "summary": summary})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
