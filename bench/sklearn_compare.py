"""gpubp.sklearn.MLPClassifier against scikit-learn's MLPClassifier on MNIST, same process, interleaved epochs.

Both with scikit-learn's parameters: hidden_layer_sizes=(100,), relu, adam, learning_rate_init=1e-3,
batch_size=32, random_state=0, on the book split (train 50,000, test 10,000) as float32 (gpubp computes in
float32 by default; scikit-learn computes in the input's float dtype, so float32 here too). Each epoch is
one ``partial_fit`` (both continue their Adam state), the two estimators alternating, so both see the same
machine load; samples/s is the training samples over the summed epoch times. Writes the raw JSON to
bench/results/.

    GPUBP_DATA=../shared/data python bench/sklearn_compare.py [--epochs 10] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from sklearn import neural_network

import gpubp
from gpubp.benchmark import machine_info
from gpubp.datasets import load_mnist
from gpubp.sklearn import MLPClassifier

PARAMS = dict(hidden_layer_sizes=(100,), activation="relu", solver="adam", learning_rate_init=1e-3,
              batch_size=32, random_state=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--device", default="cpu", help="gpubp's device (default cpu)")
    parser.add_argument("--data-dir", default=None, help="folder holding mnist/ (default: env GPUBP_DATA)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)

    (X, y), _, (X_test, y_test) = load_mnist(args.data_dir, split="book")
    classes = np.arange(10)
    estimators = {"gpubp": MLPClassifier(device=args.device, **PARAMS),
                  "sklearn": neural_network.MLPClassifier(**PARAMS)}
    seconds: dict[str, list[float]] = {name: [] for name in estimators}
    for epoch in range(1, args.epochs + 1):
        for name, est in estimators.items():
            start = time.perf_counter()
            est.partial_fit(X, y, classes=classes)
            seconds[name].append(time.perf_counter() - start)
        print(f"epoch {epoch}: " + "  ".join(f"{n} {s[-1]:.2f} s" for n, s in seconds.items()), flush=True)
    rows = {}
    for name, est in estimators.items():
        rows[name] = {"seconds_per_epoch": seconds[name],
                      "samples_per_s": len(X) * args.epochs / sum(seconds[name]),
                      "test_accuracy": float(est.score(X_test, y_test)), "final_loss": float(est.loss_)}
    ratios = [s / g for g, s in zip(seconds["gpubp"], seconds["sklearn"])]
    result = {
        "benchmark": "sklearn_compare", "params": {**PARAMS, "hidden_layer_sizes": [100]},
        "epochs": args.epochs, "train_samples": len(X), "test_samples": len(X_test), "dtype": "float32",
        "gpubp_device": estimators["gpubp"].network_.device,
        "gpubp_cpu_backend": type(estimators["gpubp"].network_.ops).__name__, "results": rows,
        "speedup": rows["gpubp"]["samples_per_s"] / rows["sklearn"]["samples_per_s"],
        "speedup_per_epoch": ratios, "speedup_median_epoch": float(np.median(ratios)),
        "accuracy_difference_points": 100 * (rows["gpubp"]["test_accuracy"] - rows["sklearn"]["test_accuracy"]),
        "gpubp": gpubp.__version__, "commit": _commit(), "machine": machine_info(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    print(f"samples/s: gpubp {rows['gpubp']['samples_per_s']:.0f}, scikit-learn {rows['sklearn']['samples_per_s']:.0f}"
          f" ({result['speedup']:.2f}x; per epoch {min(ratios):.2f}-{max(ratios):.2f}x, median "
          f"{np.median(ratios):.2f}x); test accuracy gpubp "
          f"{rows['gpubp']['test_accuracy']:.4f}, scikit-learn {rows['sklearn']['test_accuracy']:.4f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    path = out / f"{stamp}-sklearn-compare.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
