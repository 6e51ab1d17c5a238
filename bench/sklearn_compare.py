"""gpubp.sklearn.MLPClassifier against scikit-learn's MLPClassifier on MNIST, same process, alternated rounds.

Both with scikit-learn's parameters: hidden_layer_sizes=(100,), relu, adam, learning_rate_init=1e-3,
alpha=1e-4, random_state=0, ``--batch-size`` ("auto", scikit-learn's default: min(200, n), or a number),
optionally ``--early-stopping``, on the book split (train 50,000, test 10,000) as float32 (gpubp computes in
float32 by default; scikit-learn computes in the input's float dtype, so float32 here too). A third contender,
``network``, runs the same epochs through ``gpubp.Network.fit`` directly (the estimator's network, layer sizes,
Adam settings and L2 as ``weight_decay`` with ``decay_per_sample``, on the labels): what the estimator costs
beyond it is its own overhead.

Two protocols:

- ``partial_fit`` (the default): a round is one epoch of each contender, ``partial_fit`` for the estimators
  (both continue their Adam state) and ``fit(epochs=1)`` for the network; ``--epochs`` rounds.
- ``fit``: a round is a fresh ``fit`` of ``--epochs`` epochs of each contender (``max_iter=epochs``; the
  default ``tol`` cannot stop ≤ 11 epochs early); ``--rounds`` rounds.

Contenders take turns within a round, the order rotating every round, each after an untimed 0.1 s rest
(BLAS threads of the previous one stop spinning). Before the timed rounds each contender fits 1,000 samples
once (the process's one-off costs: loading gpubp's compiled kernels), timed and reported apart. Seconds per
epoch are a round's seconds over its epochs; samples/s is the training samples over the median of that; each
ratio is the median of the per-round ratios. The process's CPU seconds (all its threads) are recorded too, with
their ratios: on a machine shared with other jobs they are steadier than the wall clock. Test accuracy is after
the last round. Writes the raw JSON to bench/results/.

    GPUBP_DATA=../shared/data python bench/sklearn_compare.py [--protocol fit] [--epochs 10] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
from sklearn import neural_network
from sklearn.exceptions import ConvergenceWarning

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gpubp  # noqa: E402
from gpubp.benchmark import machine_info  # noqa: E402
from gpubp.datasets import load_mnist  # noqa: E402
from gpubp.sklearn import MLPClassifier  # noqa: E402

PARAMS = dict(hidden_layer_sizes=(100,), activation="relu", solver="adam", learning_rate_init=1e-3, alpha=1e-4,
              random_state=0)
CLASSES = np.arange(10)
WARM_UP_SAMPLES = 1000


class Contender:
    """One of the three: ``train(X, y, n, fresh)`` trains n epochs (a fresh model when ``fresh``, else
    continuing the current one) and returns how many it ran, ``accuracy`` scores the model on the test set."""

    def __init__(self, name: str, make: Callable[[], Any], train: Callable[[Any, Any, Any, int, bool], int],
                 accuracy: Callable[[Any, Any, Any], float]) -> None:
        self.name, self.make, self._train, self._accuracy = name, make, train, accuracy
        self.model = make()

    def train(self, X: Any, y: Any, n: int, fresh: bool) -> int:
        if fresh:
            self.model = self.make()
        return self._train(self.model, X, y, n, fresh)

    def accuracy(self, X: Any, y: Any) -> float:
        return float(self._accuracy(self.model, X, y))


def estimator_epochs(est: Any, X: Any, y: Any, n: int, fresh: bool) -> int:
    """``fit`` with max_iter=n on a fresh estimator, else one ``partial_fit`` epoch."""
    if not fresh:
        est.partial_fit(X, y, classes=CLASSES)
        return 1
    est.set_params(max_iter=n).fit(X, y)
    return est.n_iter_


def contenders(params: dict, device: str, n_samples: int) -> list[Contender]:
    """scikit-learn's estimator, gpubp's, and gpubp's ``Network.fit`` doing the same epochs (``network``: the
    estimator's layers, Adam settings, L2 as ``weight_decay`` with ``decay_per_sample``, batch size and, with
    early stopping, training part and per-epoch validation pass, from gpubp's own initialisation)."""
    score = lambda est, X, y: est.score(X, y)  # noqa: E731
    validation = round(n_samples * params["validation_fraction"]) if params["early_stopping"] else 0
    batch_size = params["batch_size"]
    batch_size = min(200, n_samples - validation) if batch_size == "auto" else batch_size
    # the Adam settings gpubp.sklearn gives Network.fit for scikit-learn's defaults (``_optimizer_options``)
    options = {"decay_per_sample": True, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "eps_on_corrected_v": False}

    def network_epochs(net: gpubp.Network, X: Any, y: Any, n: int, fresh: bool) -> int:
        split = len(X) - round(len(X) * params["validation_fraction"]) if validation else len(X)
        net.fit(X[:split], y[:split], epochs=n, batch_size=min(batch_size, split), lr=params["learning_rate_init"],
                optimizer="adam", weight_decay=params["alpha"], optimizer_options=options, progress=False,
                validation_data=(X[split:], y[split:]) if validation else None)
        return len(net.history["loss"])

    network = lambda: gpubp.Network([784, 100, 10], activation="relu", output="softmax",  # noqa: E731
                                    cost="log_likelihood", device=device, seed=0)
    return [Contender("sklearn", lambda: neural_network.MLPClassifier(**params), estimator_epochs, score),
            Contender("gpubp", lambda: MLPClassifier(device=device, **params), estimator_epochs, score),
            Contender("network", network, network_epochs, lambda net, X, y: net.evaluate(X, y)["accuracy"])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=("partial_fit", "fit"), default="partial_fit")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the fit protocol (default 3)")
    parser.add_argument("--batch-size", default="auto", help='"auto" (min(200, n)) or a number')
    parser.add_argument("--early-stopping", action="store_true", help="with --protocol fit")
    parser.add_argument("--device", default="cpu", help="gpubp's device (default cpu)")
    parser.add_argument("--data-dir", default=None, help="folder holding mnist/ (default: env GPUBP_DATA)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--note", default=None, help="what tree was measured, stored in the JSON")
    args = parser.parse_args(argv)
    fit = args.protocol == "fit"
    if args.early_stopping and not fit:
        parser.error("--early-stopping needs --protocol fit (partial_fit does not support early stopping)")
    warnings.simplefilter("ignore", ConvergenceWarning)

    (X, y), _, (X_test, y_test) = load_mnist(args.data_dir, split="book")
    batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    params = {**PARAMS, "batch_size": batch_size, "early_stopping": args.early_stopping,
              "validation_fraction": 0.1}
    rounds, per_round = (args.rounds, args.epochs) if fit else (args.epochs, 1)
    runners = contenders(params, args.device, len(X))
    warm_up = {}
    for runner in runners:
        start = time.perf_counter()
        runner.train(X[:WARM_UP_SAMPLES], y[:WARM_UP_SAMPLES], 1, fresh=True)
        warm_up[runner.name] = time.perf_counter() - start
        runner.model = runner.make()
    names = [r.name for r in runners]
    seconds: dict[str, list[float]] = {name: [] for name in names}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        shift = round_ % len(runners)
        for runner in runners[shift:] + runners[:shift]:
            time.sleep(0.1)
            start, cpu_start = time.perf_counter(), time.process_time()
            done = runner.train(X, y, per_round, fresh=fit)
            seconds[runner.name].append((time.perf_counter() - start) / done)
            cpu_seconds[runner.name].append((time.process_time() - cpu_start) / done)
        print(f"round {round_ + 1}: " + "  ".join(f"{n} {seconds[n][-1]:.3f} s/epoch" for n in names), flush=True)
    n_train = len(X) - (round(len(X) * params["validation_fraction"]) if args.early_stopping else 0)
    rows = {}
    for runner in runners:
        median = statistics.median(seconds[runner.name])
        rows[runner.name] = {"seconds_per_epoch": seconds[runner.name], "median_seconds_per_epoch": median,
                             "cpu_seconds_per_epoch": cpu_seconds[runner.name],
                             "samples_per_s": n_train / median, "warm_up_seconds": warm_up[runner.name],
                             "test_accuracy": runner.accuracy(X_test, y_test)}
    ratio = lambda a, b: statistics.median(s / g for g, s in zip(seconds[a], seconds[b]))  # noqa: E731
    cpu_ratio = lambda a, b: statistics.median(s / g for g, s in zip(cpu_seconds[a], cpu_seconds[b]))  # noqa: E731
    overhead = statistics.median(g - n for g, n in zip(seconds["gpubp"], seconds["network"]))
    gpubp_net = runners[1].model.network_
    result = {
        "benchmark": "sklearn_compare", "protocol": args.protocol, "rounds": rounds, "epochs_per_round": per_round,
        "params": {**params, "hidden_layer_sizes": [100]}, "train_samples": n_train, "test_samples": len(X_test),
        "dtype": "float32", "gpubp_device": gpubp_net.device, "gpubp_cpu_backend": type(gpubp_net.ops).__name__,
        "gpubp_training_path": getattr(gpubp_net, "training_path", None), "results": rows,
        "sklearn/gpubp": ratio("gpubp", "sklearn"), "sklearn/network": ratio("network", "sklearn"),
        "network/gpubp": ratio("gpubp", "network"), "gpubp_overhead_seconds_per_epoch": overhead,
        "cpu_seconds": {"sklearn/gpubp": cpu_ratio("gpubp", "sklearn"),
                        "sklearn/network": cpu_ratio("network", "sklearn"),
                        "gpubp_overhead_per_epoch": statistics.median(
                            g - n for g, n in zip(cpu_seconds["gpubp"], cpu_seconds["network"]))},
        "accuracy_difference_points": 100 * (rows["gpubp"]["test_accuracy"] - rows["sklearn"]["test_accuracy"]),
        "gpubp": gpubp.__version__, "commit": _commit(), "note": args.note, "machine": machine_info(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    print(f"samples/s: gpubp {rows['gpubp']['samples_per_s']:.0f}, Network.fit {rows['network']['samples_per_s']:.0f}, "
          f"scikit-learn {rows['sklearn']['samples_per_s']:.0f}; sklearn/gpubp {result['sklearn/gpubp']:.2f}x, "
          f"sklearn/network {result['sklearn/network']:.2f}x, estimator overhead {1e3 * overhead:.1f} ms/epoch "
          f"(CPU seconds: sklearn/gpubp {result['cpu_seconds']['sklearn/gpubp']:.2f}x, sklearn/network "
          f"{result['cpu_seconds']['sklearn/network']:.2f}x); "
          f"test accuracy gpubp {rows['gpubp']['test_accuracy']:.4f}, network {rows['network']['test_accuracy']:.4f}, "
          f"scikit-learn {rows['sklearn']['test_accuracy']:.4f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    path = out / f"{stamp}-sklearn-compare-{args.protocol}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=ROOT, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
