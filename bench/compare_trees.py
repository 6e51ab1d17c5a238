"""Training time on the fused CPU backend of two gpubp source trees (before/after a change), and its Numba
cache: each run is a fresh process, the two trees' runs interleaved.

    python bench/compare_trees.py BEFORE_ROOT AFTER_ROOT [--rounds 5] [--epochs 3]

Configs, both float32 on random data (10,000 × 784 uniform [0, 1) inputs, random labels of 10 classes):
``S`` [784, 30, 10] sigmoid / sigmoid / quadratic, SGD lr 3, batch 10; ``sk`` [784, 100, 10] relu / softmax /
log-likelihood, Adam lr 1e-3, batch 32 (scikit-learn's MLPClassifier set-up). A run imports gpubp from its
root, builds the net (seed 0), times its first one-batch ``fit`` (the kernels' compile or on-disk cache
load: ``first_call_s``), then ``--epochs`` whole ``fit(epochs=1)`` calls, of which the fastest counts (on a
shared machine the others measure its neighbours). Per round and config the trees run in turn (order
alternating); each ratio after/before is the median over rounds of the per-round ratio of those fastest
epochs. Run with ``OPENBLAS_CORETYPE`` unset (bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

CONFIGS = {
    "S": dict(sizes=[784, 30, 10], activation="sigmoid", output="sigmoid", cost="quadratic",
              fit=dict(batch_size=10, lr=3.0, optimizer="sgd")),
    "sk": dict(sizes=[784, 100, 10], activation="relu", output="softmax", cost="log_likelihood",
               fit=dict(batch_size=32, lr=1e-3, optimizer="adam")),
}

RUN = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
os.environ["GPUBP_CPU_BACKEND"] = "numba"
import numpy as np
import gpubp
assert gpubp.__file__.startswith(sys.argv[1]), gpubp.__file__
config, epochs = json.loads(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
X = rng.random((10000, 784), dtype=np.float32)
y = rng.integers(0, 10, 10000)
net = gpubp.Network(config["sizes"], activation=config["activation"], output=config["output"],
                    cost=config["cost"], device="cpu", dtype="float32", seed=0)
assert net.ops.name == "numba"
fit = config["fit"]
start = time.perf_counter()
net.fit(X[:fit["batch_size"]], y[:fit["batch_size"]], epochs=1, progress=False, **fit)
first = time.perf_counter() - start
times = []
for epoch in range(epochs):
    start = time.perf_counter()
    net.fit(X, y, epochs=1, progress=False, seed=epoch, **fit)
    times.append(time.perf_counter() - start)
print(json.dumps({"first_call_s": first, "epoch_s": times}))
"""


def run(root: str, config: dict, epochs: int) -> dict:
    result = subprocess.run([sys.executable, "-c", RUN, root, json.dumps(config), str(epochs)],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    trees = {"before": args.before, "after": args.after}
    runs: dict = {name: {tree: [] for tree in trees} for name in CONFIGS}
    for round_ in range(args.rounds):
        for name, config in CONFIGS.items():
            order = list(trees) if round_ % 2 == 0 else list(trees)[::-1]
            for tree in order:
                time.sleep(0.2)
                runs[name][tree].append(run(trees[tree], config, args.epochs))
            line = "  ".join(f"{tree} {min(runs[name][tree][-1]['epoch_s']):.4f} s "
                             f"(first call {runs[name][tree][-1]['first_call_s']:.3f} s)" for tree in trees)
            print(f"round {round_ + 1} {name}: {line}", flush=True)
    summary = {}
    for name, by_tree in runs.items():
        epoch = {tree: [min(r["epoch_s"]) for r in rs] for tree, rs in by_tree.items()}
        summary[name] = {
            "epoch_s": {tree: statistics.median(e) for tree, e in epoch.items()},
            "first_call_s": {tree: statistics.median(r["first_call_s"] for r in rs) for tree, rs in by_tree.items()},
            "after/before": statistics.median(a / b for a, b in zip(epoch["after"], epoch["before"])),
            "after/before per round": [a / b for a, b in zip(epoch["after"], epoch["before"])],
        }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
