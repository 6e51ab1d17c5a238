"""Training throughput on the CPU: gpubp's ``fit`` beside the plain NumPy backprop written by hand.

Both start from the same initial parameters (the plain loop copies a fresh gpubp net's) and train on the
same synthetic data with the same mini-batch size and learning rate, shuffling every epoch. One round is
``EPOCHS`` epochs; samples/s and the ratio gpubp/numpy land in each benchmark's extra_info and the JSON in
bench/results/. Targets (issue 3, a 2-core CPU): S >= 1.5, M >= 1.05, L >= 0.95.

    python -m pytest bench/test_bench_cpu.py            # all of S, M, L (L takes a few minutes)
    python -m pytest bench/test_bench_cpu.py -k "not L-"     # S and M only
"""

import pytest

from gpubp.benchmark import CONFIGS, GpubpTrainer, NumpyTrainer, synthetic_data
from gpubp.network import Network

#: per config: samples in the data set, epochs per round, timed rounds
SIZES = {"S": (10_000, 2, 7), "M": (4096, 1, 7), "L": (2048, 1, 3)}
TRAINERS = {"gpubp": GpubpTrainer, "numpy": NumpyTrainer}


@pytest.mark.parametrize("config, implementation",
                         [(c, i) for c in SIZES for i in TRAINERS], ids=lambda v: v)
def test_training_throughput(benchmark, training_results, config, implementation):
    cfg = CONFIGS[config]
    samples, epochs, rounds = SIZES[config]
    net = Network(list(cfg.sizes), activation=cfg.activation, output=cfg.output, cost=cfg.cost,
                  device="cpu", dtype="float32", seed=0)
    X, labels = synthetic_data(cfg, samples, seed=1)
    trainer = TRAINERS[implementation](net, cfg, X, labels, seed=2)
    benchmark.group = f"{config} {list(cfg.sizes)} batch {cfg.batch_size}"
    benchmark.pedantic(trainer.run, args=(epochs,), rounds=rounds, warmup_rounds=1, iterations=1)
    training_results.add(benchmark, config, implementation, samples * epochs, device="cpu")
