"""gpubp's CPU training against JAX compiling a whole epoch (issue 21), on MNIST.

    python bench/jax_compare.py [--configs S,sklearn] [--rounds 3] [--epochs 2]

Contenders (``pip install -e ".[bench]"`` brings JAX):

- ``gpubp``: ``gpubp.Network(..., device="cpu")`` on its default CPU backend; an epoch is one
  ``net.fit(X, y, epochs=1, shuffle=True, seed=...)`` call.
- ``jax-scan``: the epoch as one ``jax.jit``-compiled ``lax.scan`` over the mini-batches, each batch
  gathered from X inside the scan (``gpubp.benchmark.jax_contenders.ScanEpoch``).
- ``jax-step``: one ``jax.jit``-compiled step per mini-batch, driven from a Python loop (``StepEpoch``).

Configs: ``S`` [784, 30, 10] sigmoid, quadratic cost, SGD lr 3, batch 10 (the book's); ``sklearn``
[784, 100, 10] relu, softmax + log-likelihood, Adam lr 1e-3, batch 32, L2 α = 1e-4 as gpubp's weight_decay
α/32 (bench/cpu_fused.py); ``M`` and ``L`` of ``gpubp.benchmark.configs`` (SGD). float32, MNIST's 60,000
training images (``$GPUBP_DATA/mnist``; the script says so and exits 0 where they are absent).

Same data, same start: every contender trains from the weights of ``gpubp.Network(seed=0)``, and epoch e
of every contender visits the samples in ``numpy.random.default_rng(e).permutation(60000)`` (what
``fit(seed=e)`` draws). The check: one epoch without shuffling from that start, per contender, in float32
and in float64, and the training loss, the test accuracy (of the 10,000 test images, by gpubp's
``evaluate``) and the largest parameter difference from gpubp's. In float64 the parameters agree to
rounding; in float32 a relu network's can part by much more, since a unit whose zˡ lies within rounding of
0 for some sample takes its gradient or not (a full δ·x) depending on the last bit, and the difference
grows from there; its loss and accuracy still agree.

Timing: each measurement is a fresh process (JAX's thread pool slows any BLAS in its process) that loads
the data, builds its contender (JAX's compile timed apart, ``compile_s``), trains a warm-up epoch
(``first_epoch_s``) and then ``--epochs`` timed epochs (the cost read back on the host each epoch; the
process's CPU time of each, all threads, is recorded too: ``epoch_cpu_s``). Per
round every contender runs once, the order rotating from round to round. Samples/s: the median over all
timed epochs of a contender; each ratio: the median over rounds of that round's ratio of median epochs.
``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` are unset for the measuring processes (bench/README.md).
Raw results: ``bench/results/<UTC time>-jax-compare.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpubp.benchmark import CONFIGS as SIZES_CONFIGS  # noqa: E402
from gpubp.benchmark import write_results  # noqa: E402
from gpubp.datasets import MissingDataError, load_mnist  # noqa: E402

CONTENDERS = ("gpubp", "jax-scan", "jax-step")
#: unset for the measuring processes: they force slower OpenBLAS kernels on this machine (bench/README.md)
BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
SKLEARN_ALPHA, SKLEARN_BATCH = 1e-4, 32


def recipes() -> dict:
    """Config name -> ``Recipe`` (imports JAX: call it in the measuring processes only)."""
    from gpubp.benchmark.jax_contenders import Recipe

    out = {"sklearn": Recipe("sklearn", (784, 100, 10), "relu", "softmax", "log_likelihood", SKLEARN_BATCH, 1e-3,
                             "adam", SKLEARN_ALPHA / SKLEARN_BATCH)}
    for c in SIZES_CONFIGS.values():
        out[c.name] = Recipe(c.name, c.sizes, c.activation, c.output, c.cost, c.batch_size, c.lr)
    return out


def contender(name: str, recipe, net, X: np.ndarray, y: np.ndarray):
    """Contender ``name`` starting from ``net``'s parameters: ``run(epoch_argument(...))`` trains one epoch
    and returns its mean training cost; ``compile_s`` is JAX's compile time (0 for gpubp)."""
    from gpubp.benchmark import jax_contenders as jc

    if name == "gpubp":
        return GpubpEpoch(recipe, net, X, y)
    state = jc.initial_state([np.array(w) for w in net.weights], [np.array(b) for b in net.biases])
    return {"jax-scan": jc.ScanEpoch, "jax-step": jc.StepEpoch}[name](recipe, state, X, y)


class GpubpEpoch:
    """gpubp's contender: one ``fit(epochs=1)`` call per epoch, shuffled by ``fit(seed=e)`` itself."""

    compile_s = 0.0

    def __init__(self, recipe, net, X: np.ndarray, y: np.ndarray) -> None:
        self.recipe, self.net, self.X, self.y = recipe, net, X, y

    def run(self, seed: int | None) -> float:
        history = self.net.fit(self.X, self.y, epochs=1, progress=False, shuffle=seed is not None, seed=seed,
                               **self.recipe.fit_kwargs())
        return history["loss"][-1]


def epoch_argument(name: str, seed: int | None, n: int):
    """What ``run`` takes for the epoch shuffled by ``seed`` (None: in order): gpubp its seed, JAX the
    permutation ``fit(seed=seed)`` draws."""
    if name == "gpubp":
        return seed
    return np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)


def network(recipe, dtype: str = "float32"):
    """gpubp's network of ``recipe`` on the CPU, initialised from seed 0: every contender's start."""
    import gpubp

    return gpubp.Network(**recipe.network_kwargs(), device="cpu", dtype=dtype, seed=0)


# ---- inside a measuring process ------------------------------------------------------------------------
def measure(name: str, config: str, epochs: int) -> dict:
    """Build ``name`` for ``config``, a warm-up epoch, then ``epochs`` timed epochs (seeds 1…)."""
    loadavg = os.getloadavg()
    recipe = recipes()[config]
    X, y = load_mnist(split="full").train
    net = network(recipe)
    trainer = contender(name, recipe, net, X, y)
    times, cpu, losses = [], [], []
    for seed in range(epochs + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        losses.append(trainer.run(epoch_argument(name, seed, len(X))))
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"compile_s": trainer.compile_s, "first_epoch_s": times[0], "epoch_s": times[1:],
            "epoch_cpu_s": cpu[1:], "loss": losses, "gpubp_cpu_backend": net.ops.name, "samples": len(X),
            "loadavg_before": loadavg}


def check(config: str) -> dict:
    """One epoch without shuffling from gpubp's start, per contender, in float32 and in float64: its loss,
    test accuracy and largest parameter difference from gpubp's (and how far gpubp's parameters moved)."""
    import jax

    recipe = recipes()[config]
    data = load_mnist(split="full")
    out: dict = {"recipe": dataclasses.asdict(recipe)}
    for dtype in ("float32", "float64"):
        with jax.enable_x64(dtype == "float64"):
            out[dtype] = check_epoch(recipe, dtype, data)
    return out


def check_epoch(recipe, dtype: str, data) -> dict:
    from gpubp.benchmark.jax_contenders import parameters

    (X, y), (Xt, yt) = data.train, data.test
    X = X.astype(dtype)
    start = network(recipe, dtype)
    initial = [np.array(p) for p in (*start.weights, *start.biases)]
    out: dict = {}
    finals = {}
    for name in CONTENDERS:
        net = network(recipe, dtype)
        trainer = contender(name, recipe, net, X, y)
        loss = trainer.run(epoch_argument(name, None, len(X)))
        if name != "gpubp":
            weights, biases = parameters(trainer.state)
            for l, (w, b) in enumerate(zip(weights, biases)):
                net.weights[l], net.biases[l] = w, b
        finals[name] = [np.array(p) for p in (*net.weights, *net.biases)]
        out[name] = {"loss": loss, "test_accuracy": net.evaluate(Xt, yt)["accuracy"]}
    for name in CONTENDERS:
        out[name]["max_abs_diff_from_gpubp"] = max(float(np.abs(a - b).max())
                                                   for a, b in zip(finals[name], finals["gpubp"]))
    out["max_abs_change_gpubp"] = max(float(np.abs(a - b).max()) for a, b in zip(finals["gpubp"], initial))
    return out


# ---- the driver ----------------------------------------------------------------------------------------
def child(task: str, *args: str) -> dict:
    """Run ``task`` in a fresh process, with ``BLAS_ENV`` unset; its result (the last line of stdout)."""
    env = {k: v for k, v in os.environ.items() if k not in BLAS_ENV}
    proc = subprocess.run([sys.executable, __file__, "--task", task, *args], env=env, capture_output=True,
                          text=True)
    if proc.returncode:
        raise RuntimeError(f"{task} {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout.splitlines()[-1])


def compare(config: str, rounds: int, epochs: int, log) -> dict:
    checked = child("check", config)
    for dtype in ("float32", "float64"):
        c = checked[dtype]
        log(f"{config} check, {dtype} (one epoch, no shuffle): " + "  ".join(
            f"{n} loss {c[n]['loss']:.7f} acc {c[n]['test_accuracy']:.4f} "
            f"max|Δθ| {c[n]['max_abs_diff_from_gpubp']:.1e}" for n in CONTENDERS)
            + f"  (gpubp's max|θ − θ₀| {c['max_abs_change_gpubp']:.2f})")
    runs: dict = {name: [] for name in CONTENDERS}
    for round_ in range(rounds):
        order = CONTENDERS[round_ % len(CONTENDERS):] + CONTENDERS[:round_ % len(CONTENDERS)]
        for name in order:
            time.sleep(0.2)  # the previous process's threads are gone
            runs[name].append(child("measure", name, config, str(epochs)))
        log(f"{config} round {round_ + 1}: " + "  ".join(
            f"{n} {statistics.median(runs[n][-1]['epoch_s']):.3f} s" for n in CONTENDERS))
    n = runs["gpubp"][0]["samples"]
    per_round = {name: [n / statistics.median(r["epoch_s"]) for r in rs] for name, rs in runs.items()}
    result = {
        "recipe": checked.pop("recipe"), "check": checked, "rounds": rounds, "epochs": epochs, "runs": runs,
        "samples_per_s": {name: n / statistics.median([t for r in rs for t in r["epoch_s"]])
                          for name, rs in runs.items()},
        "samples_per_s_per_round": per_round,
        "compile_s": {name: statistics.median(r["compile_s"] for r in rs) for name, rs in runs.items()},
        "first_epoch_s": {name: statistics.median(r["first_epoch_s"] for r in rs) for name, rs in runs.items()},
    }
    for other in CONTENDERS[1:]:
        result[f"gpubp/{other}"] = statistics.median(g / o for g, o in zip(per_round["gpubp"], per_round[other]))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="S,sklearn", help="comma-separated: S, sklearn, M, L")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per process, after a warm-up one")
    parser.add_argument("--task", nargs="+", help=argparse.SUPPRESS)  # inside a measuring process
    args = parser.parse_args(argv)
    if args.task:
        task, *rest = args.task
        result = check(*rest) if task == "check" else measure(rest[0], rest[1], int(rest[2]))
        print(json.dumps(result))
        return 0
    configs = [c.strip() for c in args.configs.split(",")]
    unknown = [c for c in configs if c not in ("sklearn", *SIZES_CONFIGS)]
    if unknown:
        parser.error(f"unknown config {', '.join(unknown)}; valid: sklearn, {', '.join(SIZES_CONFIGS)}")
    try:
        load_mnist(split="full", verify=False)
    except MissingDataError as error:
        print(f"skipped: the benchmark trains on MNIST. {error}", file=sys.stderr)
        return 0
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    results = {c: compare(c, args.rounds, args.epochs, log) for c in configs}
    for c, r in results.items():
        log(f"{c}: " + "  ".join(f"{n} {r['samples_per_s'][n]:,.0f}/s" for n in CONTENDERS)
            + "  " + "  ".join(f"gpubp/{o} {r[f'gpubp/{o}']:.2f}x" for o in CONTENDERS[1:]))
    unset = {k: os.environ[k] for k in BLAS_ENV if k in os.environ}
    path = write_results(ROOT, "jax-compare", {"unset_for_measuring": unset, "jax_compare": results})
    print(f"raw results: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
