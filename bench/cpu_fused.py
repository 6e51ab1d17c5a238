"""CPU benchmarks of the fused backend (issue 14): gpubp against scikit-learn, plain NumPy and PyTorch.

    python bench/cpu_fused.py sklearn [--epochs 10]          # MLPClassifier's configuration, MNIST
    python bench/cpu_fused.py configs [--configs S,M,L]       # gpubp bench's configs, and the GEMM share
    python bench/cpu_fused.py compiled [--configs S,sklearn,M,L]  # compiled chunks against step by step

``sklearn``: [784, 100, 10] relu, softmax + log-likelihood, Adam (lr 1e-3), batch 32, L2 α = 1e-4 (sklearn's
default; gpubp's weight_decay α/32 is the same per-step decay, since sklearn adds α·W to the batch-summed
gradient before dividing by the batch), on MNIST's 60,000 training images (``$GPUBP_DATA/mnist``), test
accuracy on the 10,000 test images. Contenders run one epoch each in turn, rotating the order every round:
gpubp on the fused backend, gpubp on NumPy's reference ``Ops``, ``MLPClassifier.partial_fit`` (one epoch,
shuffled). gpubp's epochs are whole ``fit(epochs=1)`` calls, one-off costs included. Each ratio is the
median over rounds of the per-round ratio.

``configs``: ``gpubp.benchmark.compare`` (gpubp, the hand-written NumPy loop, PyTorch eager, interleaved) on
each backend in turn, and the GEMM share: the GEMMs of an epoch's steps (forward aWᵀ, BP2 δW, BP4 δᵀa, with
gpubp's operand layouts) timed alone in NumPy, as one more contender interleaved with the others, divided by
gpubp's epoch time (the median of the per-repeat ratios). The recorded runs use one
process per config (``--configs S``, then M, then L).

Raw results go to ``bench/results/<UTC time>-cpu-fused-<suite>.json`` with the machine (CPU, BLAS and its
threads, NumPy, Numba, PyTorch), the commit and the date. Run with ``OPENBLAS_CORETYPE`` and
``OPENBLAS_L2_SIZE`` unset on this machine (bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gpubp  # noqa: E402
from gpubp.benchmark import compare, on_cpu_backend, write_results  # noqa: E402

SKLEARN_SIZES = [784, 100, 10]
SKLEARN_BATCH, SKLEARN_LR, SKLEARN_ALPHA = 32, 1e-3, 1e-4


def cpu_network(backend: str, *args: Any, **kwargs: Any) -> gpubp.Network:
    """A ``device="cpu"`` network on ``backend`` ("numba" or "numpy")."""
    net = on_cpu_backend(gpubp.Network(*args, device="cpu", **kwargs), backend)
    assert net.ops.name == backend, f"asked for the {backend} backend, got {net.ops.name}"
    return net


# ---- scikit-learn's configuration ---------------------------------------------------------------------
def sklearn_compare(epochs: int, log: Callable[[str], None]) -> dict:
    from sklearn.neural_network import MLPClassifier

    from gpubp.datasets import load_mnist

    data = load_mnist(split="full")
    (X, y), (Xt, yt) = data.train, data.test
    classes = np.arange(10)
    contenders: dict[str, Callable[[], None]] = {}
    nets = {backend: cpu_network(backend, SKLEARN_SIZES, activation="relu", output="softmax",
                                 cost="log_likelihood", seed=0) for backend in ("numba", "numpy")}
    for backend, net in nets.items():
        def epoch(net=net, seed=iter(range(10 ** 6))) -> None:
            net.fit(X, y, epochs=1, batch_size=SKLEARN_BATCH, lr=SKLEARN_LR, optimizer="adam",
                    weight_decay=SKLEARN_ALPHA / SKLEARN_BATCH, progress=False, seed=next(seed))
        contenders[f"gpubp-{backend}"] = epoch
    mlp = MLPClassifier(hidden_layer_sizes=(100,), activation="relu", solver="adam",
                        learning_rate_init=SKLEARN_LR, batch_size=SKLEARN_BATCH, alpha=SKLEARN_ALPHA,
                        shuffle=True, random_state=0)
    contenders["sklearn"] = lambda: mlp.partial_fit(X, y, classes=classes)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for round_ in range(epochs):
        order = names[round_ % len(names):] + names[:round_ % len(names)]
        for name in order:
            time.sleep(0.1)  # BLAS threads of the previous contender stop spinning
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
        log(f"epoch {round_ + 1}: " + "  ".join(f"{n} {times[n][-1]:.2f} s" for n in names))
    accuracy = {f"gpubp-{b}": net.evaluate(Xt, yt)["accuracy"] for b, net in nets.items()}
    accuracy["sklearn"] = float(mlp.score(Xt, yt))
    n = len(X)
    result = {"samples": n, "epochs": epochs, "seconds": times, "test_accuracy": accuracy,
              "samples_per_s": {k: n / statistics.median(v) for k, v in times.items()}}
    for name in ("gpubp-numba", "gpubp-numpy"):
        result[f"{name}/sklearn"] = statistics.median(s / g for g, s in zip(times[name], times["sklearn"]))
    result["gpubp-numba/gpubp-numpy"] = statistics.median(
        b / a for a, b in zip(times["gpubp-numba"], times["gpubp-numpy"]))
    return result


# ---- S, M, L: against plain NumPy and PyTorch; the GEMM share ----------------------------------------
def step_gemms(config: Any) -> list[tuple[tuple[int, ...], tuple[int, ...], bool, bool]]:
    """The matmuls of one training step as (a shape, b shape, a transposed, b transposed), with gpubp's
    layouts: forward aˡ⁻¹ @ Wˡᵀ, BP2 δˡ⁺¹ @ Wˡ⁺¹ (layers above the first), BP4 δˡᵀ @ aˡ⁻¹."""
    sizes, m = config.sizes, config.batch_size
    gemms = []
    for l, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        gemms.append(((m, n_in), (n_out, n_in), False, True))      # z = a Wᵀ
        gemms.append(((m, n_out), (m, n_in), True, False))         # ∂C/∂W = δᵀ a
        if l > 0:
            gemms.append(((m, n_out), (n_out, n_in), False, False))  # δ W
    return gemms


class StepGemms:
    """A contender for ``compare``: the GEMMs of an epoch's steps alone (NumPy, float32, gpubp's operand
    layouts, preallocated outputs), so that the GEMM share is a ratio of epochs timed in one run."""

    name = "gemms"

    def __init__(self, net: Any, config: Any, X: np.ndarray, labels: np.ndarray, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.steps = -(-len(X) // config.batch_size)
        self.calls = []
        for a_shape, b_shape, ta, tb in step_gemms(config):
            a = rng.random(a_shape, dtype=np.float32)
            b = rng.random(b_shape, dtype=np.float32)
            a, b = (a.T if ta else a), (b.T if tb else b)
            self.calls.append((a, b, np.empty((a.shape[0], b.shape[1]), np.float32)))

    def run(self) -> float:
        start = time.perf_counter()
        for _ in range(self.steps):
            for a, b, out in self.calls:
                np.matmul(a, b, out=out)
        return time.perf_counter() - start


def configs_compare(names: list[str], seconds: float, repeats: int, log: Callable[[str], None]) -> list[dict]:
    rows = []
    for name in names:
        for backend in ("numba", "numpy"):
            row = compare(name, "cpu", seconds=seconds, repeats=repeats, log=log, extra=[StepGemms],
                          cpu_backend=backend)
            row["backend"] = backend
            row["gemm_share"] = row.pop("gpubp/gemms")
            row["gpubp/best_baseline"] = min(row["gpubp/numpy"], row.get("gpubp/torch", float("inf")))
            log(f"{name} {backend}: gpubp {row['gpubp']:,.0f}/s  /numpy {row['gpubp/numpy']:.2f}x  "
                f"/torch {row.get('gpubp/torch', float('nan')):.2f}x  GEMM share {row['gemm_share']:.0%}")
            rows.append(row)
    return rows


# ---- compiled chunks against the step-by-step loop -------------------------------------------------------
#: per config: Network arguments, fit arguments, training samples (M and L on part of MNIST: GEMM-bound epochs)
COMPILED_CONFIGS = {
    "S": ({"sizes": [784, 30, 10], "activation": "sigmoid", "cost": "quadratic"},
          {"batch_size": 10, "lr": 3.0, "optimizer": "sgd"}, 60000),
    "sklearn": ({"sizes": SKLEARN_SIZES, "activation": "relu", "output": "softmax", "cost": "log_likelihood"},
                {"batch_size": SKLEARN_BATCH, "lr": SKLEARN_LR, "optimizer": "adam",
                 "weight_decay": SKLEARN_ALPHA / SKLEARN_BATCH}, 60000),
    "M": ({"sizes": [784, 1024, 1024, 10], "activation": "relu", "output": "softmax", "cost": "log_likelihood"},
          {"batch_size": 256, "lr": 0.01, "optimizer": "sgd"}, 15360),
    "L": ({"sizes": [784, 4096, 4096, 10], "activation": "relu", "output": "softmax", "cost": "log_likelihood"},
          {"batch_size": 1024, "lr": 0.01, "optimizer": "sgd"}, 4096),
}


def compiled_compare(names: list[str], rounds: int, log: Callable[[str], None]) -> dict:
    """Epochs of ``fit(compiled=False)`` (the step-by-step loop) and of ``fit()`` (compiled chunks) on the
    fused backend, alternated ``rounds`` times after one warm-up epoch each (compiling included there), on
    MNIST's training images; samples/s medians and the median per-round ratio compiled ÷ step by step."""
    from gpubp.datasets import load_mnist

    data = load_mnist(split="full")
    X, y = data.train
    result = {}
    for name in names:
        network, fit, n = COMPILED_CONFIGS[name]
        onehot = network["cost"] == "quadratic"
        target = np.eye(10, dtype=np.float32)[y[:n]] if onehot else y[:n]
        nets = {path: cpu_network("numba", network["sizes"], **{k: v for k, v in network.items() if k != "sizes"},
                                  seed=0) for path in ("eager", "compiled")}
        seeds = iter(range(10 ** 6))

        def epoch(path: str) -> float:
            start = time.perf_counter()
            nets[path].fit(X[:n], target, epochs=1, progress=False, seed=next(seeds),
                           compiled=False if path == "eager" else True, **fit)
            return time.perf_counter() - start

        for path in nets:
            epoch(path)
        times: dict[str, list[float]] = {path: [] for path in nets}
        for round_ in range(rounds):
            for path in (("eager", "compiled") if round_ % 2 == 0 else ("compiled", "eager")):
                time.sleep(0.1)
                times[path].append(epoch(path))
            log(f"{name} round {round_ + 1}: " + "  ".join(f"{p} {n / times[p][-1]:,.0f}/s" for p in times))
        result[name] = {"samples": n, "seconds": times,
                        "samples_per_s": {p: n / statistics.median(v) for p, v in times.items()},
                        "compiled/eager": statistics.median(e / c for e, c in zip(times["eager"],
                                                                                times["compiled"]))}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="suite", required=True)
    sk = sub.add_parser("sklearn")
    sk.add_argument("--epochs", type=int, default=10)
    cf = sub.add_parser("configs")
    cf.add_argument("--configs", default="S,M,L")
    cf.add_argument("--seconds", type=float, default=20.0)
    cf.add_argument("--repeats", type=int, default=7)
    co = sub.add_parser("compiled")
    co.add_argument("--configs", default="S,sklearn,M,L")
    co.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    if args.suite == "sklearn":
        result = sklearn_compare(args.epochs, log)
    elif args.suite == "compiled":
        result = compiled_compare([c.strip() for c in args.configs.split(",")], args.rounds, log)
    else:
        result = configs_compare([c.strip() for c in args.configs.split(",")], args.seconds, args.repeats, log)
    print(json.dumps(result, indent=1, default=str))
    path = write_results(ROOT, f"cpu-fused-{args.suite}", {args.suite: result})
    print(f"raw results: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
