"""Sparse input (issue 22): gpubp.sklearn's MLPClassifier against scikit-learn's on a TF-IDF-like CSR matrix,
each fit in a process of its own.

The data are drawn with a seed: 20,000 documents over a vocabulary of 100,000 words, 100 word draws per
document (0.1 % density before repeated words merge), 20 classes. Each class owns a slice of 5,000 words; a
document draws 3 % of its words from its class's slice and the rest from the whole vocabulary, both with a
Zipf-like word frequency. Values are tf-idf (term count times log inverse document frequency), rows
L2-normalised, float32, one CSR matrix for both contenders; a stratified split of 16,000 / 4,000.

Both contenders get the same parameters: hidden_layer_sizes=(100,), relu, solver="adam", batch_size=200,
learning_rate_init=1e-3, alpha=1e-4, ``--epochs`` epochs (max_iter, tol=0 and early_stopping=False: every
epoch runs), random_state=0; gpubp with its default float32 on the CPU (Numba backend), scikit-learn in the
input's float32.

A round runs each contender once, in a fresh process (imports and one-off costs outside the timed fit: an
untimed warm-up fit of one epoch on the first 1,000 training rows and 1,000 columns comes first, so that the
parameter-sized arrays are not allocated before the timed fit), the order alternating every round;
``--rounds`` rounds. The data are drawn once by the parent and read by each child from an .npz file, so the
child's memory holds only the matrix. Recorded per fit: wall and CPU seconds, test accuracy, and memory: the
process's peak resident set (``ru_maxrss``) after loading the data and the warm-up (the baseline, including
the libraries and Numba's compiled code) and after the timed fit, and the tracemalloc peak of a second fit of
one epoch (Python, NumPy and SciPy allocations made during that fit; Numba's own allocations are not traced). Ratios are medians of per-round ratios; the raw JSON
goes to bench/results/ with the load average before and after.

    python bench/sparse_compare.py [--rounds 2] [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N_SAMPLES, N_FEATURES, WORDS_PER_ROW, N_CLASSES, CLASS_SHARE = 20_000, 100_000, 100, 20, 0.03
PARAMS = dict(hidden_layer_sizes=(100,), activation="relu", solver="adam", batch_size=200, learning_rate_init=1e-3,
              alpha=1e-4, tol=0.0, early_stopping=False, random_state=0)
CONTENDERS = ("sklearn", "gpubp")


def tfidf_data(seed: int = 0) -> tuple[Any, Any, Any, Any]:
    """(X_train, X_test, y_train, y_test): the TF-IDF-like CSR matrix of the module docstring, float32."""
    import numpy as np
    from scipy import sparse
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(seed)
    y = rng.integers(N_CLASSES, size=N_SAMPLES)
    slice_size = N_FEATURES // N_CLASSES
    zipf = 1.0 / np.arange(1, slice_size + 1)
    in_class = rng.random((N_SAMPLES, WORDS_PER_ROW)) < CLASS_SHARE
    class_words = y[:, None] * slice_size + rng.choice(slice_size, size=in_class.shape, p=zipf / zipf.sum())
    weights = 1.0 / np.arange(1, N_FEATURES + 1) ** 0.5
    common_words = rng.permutation(N_FEATURES)[rng.choice(N_FEATURES, size=in_class.shape, p=weights / weights.sum())]
    words = np.where(in_class, class_words, common_words)
    rows = np.repeat(np.arange(N_SAMPLES), WORDS_PER_ROW)
    counts = sparse.csr_matrix((np.ones(words.size), (rows, words.ravel())), shape=(N_SAMPLES, N_FEATURES))
    counts.sum_duplicates()
    document_frequency = np.bincount(counts.indices, minlength=N_FEATURES)
    idf = np.log((1 + N_SAMPLES) / (1 + document_frequency)) + 1
    X = sparse.csr_matrix(counts.multiply(idf[None, :]))
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1))).ravel()
    X = sparse.csr_matrix(sparse.diags(1.0 / norms) @ X, dtype=np.float32)
    return train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)


def estimator(contender: str, epochs: int) -> Any:
    """The unfitted MLPClassifier of ``contender``."""
    if contender == "sklearn":
        from sklearn.neural_network import MLPClassifier
        return MLPClassifier(**PARAMS, max_iter=epochs)
    from gpubp.sklearn import MLPClassifier
    return MLPClassifier(**PARAMS, max_iter=epochs, device="cpu")


def max_rss_mib() -> float:
    """The process's peak resident set so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def save_data(path: Path) -> None:
    """Write ``tfidf_data()`` to the .npz file ``path``."""
    import numpy as np

    X_train, X_test, y_train, y_test = tfidf_data()
    np.savez(path, y_train=y_train, y_test=y_test,
             **{f"{name}_{part}": getattr(X, part) for name, X in (("train", X_train), ("test", X_test))
                for part in ("data", "indices", "indptr")})


def load_data(path: Path) -> tuple[Any, Any, Any, Any]:
    """(X_train, X_test, y_train, y_test) as ``save_data`` wrote them."""
    import numpy as np
    from scipy import sparse

    with np.load(path) as f:
        X_train, X_test = (sparse.csr_matrix((f[f"{name}_data"], f[f"{name}_indices"], f[f"{name}_indptr"]),
                                             shape=(len(f[f"y_{name}"]), N_FEATURES)) for name in ("train", "test"))
        return X_train, X_test, f["y_train"], f["y_test"]


def worker(contender: str, epochs: int, data: Path) -> dict:
    """One timed fit in this process after an untimed warm-up; then a traced fit of one epoch."""
    from sklearn.exceptions import ConvergenceWarning

    warnings.simplefilter("ignore", ConvergenceWarning)
    X_train, X_test, y_train, y_test = load_data(data)
    estimator(contender, 1).fit(X_train[:1000, :1000], y_train[:1000])
    rss_before = max_rss_mib()
    model = estimator(contender, epochs)
    start, cpu_start = time.perf_counter(), time.process_time()
    model.fit(X_train, y_train)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    rss_after = max_rss_mib()
    accuracy = float(model.score(X_test, y_test))
    del model
    tracemalloc.start()
    estimator(contender, 1).fit(X_train, y_train)
    traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "seconds_per_epoch": seconds / epochs,
            "test_accuracy": accuracy, "max_rss_before_fit_mib": rss_before, "max_rss_after_fit_mib": rss_after,
            "max_rss_growth_mib": rss_after - rss_before, "tracemalloc_peak_one_epoch_mib": traced_peak,
            "nnz_train": int(X_train.nnz), "density": X_train.nnz / (X_train.shape[0] * X_train.shape[1])}


def run_worker(contender: str, epochs: int, data: Path) -> dict:
    """``worker`` in a fresh process; its record with the load average after it."""
    out = subprocess.run([sys.executable, __file__, "--worker", contender, str(data), "--epochs", str(epochs)],
                         capture_output=True, text=True, check=True).stdout
    record = {**json.loads(out.strip().splitlines()[-1]), "load_average": os.getloadavg()}
    print(f"{contender:8s} {record['seconds']:7.2f} s  accuracy {record['test_accuracy']:.4f}  maxrss "
          f"{record['max_rss_before_fit_mib']:.0f} -> {record['max_rss_after_fit_mib']:.0f} MiB  tracemalloc "
          f"{record['tracemalloc_peak_one_epoch_mib']:.0f} MiB  load {record['load_average'][0]:.2f}", flush=True)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--worker", nargs=2, metavar=("CONTENDER", "DATA"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.epochs, Path(args.worker[1]))))
        return 0

    from gpubp.benchmark.records import write_results

    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {c: [] for c in CONTENDERS}
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "tfidf.npz"
        save_data(data)
        for round_ in range(args.rounds):
            for contender in CONTENDERS if round_ % 2 == 0 else CONTENDERS[::-1]:
                runs[contender].append(run_worker(contender, args.epochs, data))
    keys = ("seconds", "cpu_seconds", "seconds_per_epoch", "test_accuracy", "max_rss_before_fit_mib",
            "max_rss_after_fit_mib", "max_rss_growth_mib", "tracemalloc_peak_one_epoch_mib")
    summary: dict[str, Any] = {c: {k: statistics.median(r[k] for r in runs[c]) for k in keys} for c in CONTENDERS}
    summary["sklearn/gpubp"] = statistics.median(s["seconds"] / g["seconds"]
                                                 for s, g in zip(runs["sklearn"], runs["gpubp"]))
    print(f"sklearn/gpubp fit time {summary['sklearn/gpubp']:.2f}x")
    path = write_results(ROOT, "sparse-compare", {
        "benchmark": "sparse_compare", "params": {**PARAMS, "hidden_layer_sizes": [100], "max_iter": args.epochs},
        "data": {"n_samples": N_SAMPLES, "n_features": N_FEATURES, "words_per_row": WORDS_PER_ROW,
                 "n_classes": N_CLASSES, "class_share": CLASS_SHARE, "split": [16_000, 4_000]},
        "rounds": args.rounds, "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "runs": runs, "summary": summary})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
