"""Training-step benchmarks: gpubp against plain NumPy backprop and PyTorch eager, same data and init.

Configs (fp32), from the core issue:

- ``S`` [784, 30, 10], sigmoid, quadratic cost, batch 10 (the book's chapter-1 network);
- ``M`` [784, 1024, 1024, 10], relu + softmax + log-likelihood, batch 256;
- ``L`` [784, 4096, 4096, 10], relu + softmax + log-likelihood, batch 1024.

Every contender trains one epoch of mini-batch SGD over the same synthetic data set (shuffled each epoch,
mini-batches gathered by index), starting from the same weights: the plain NumPy and PyTorch models copy
gpubp's freshly initialised ``net.weights`` and ``net.biases``; the runs are interleaved (``harness``).

Modules: ``configs`` (S, M, L and their data), ``plain_numpy`` (``PlainNumpyNet``, the hand-written
baseline), ``contenders`` (the trainers), ``harness`` (``compare``, ``run_benchmarks``: interleaved timing),
``report`` (the table), ``machine`` (what the figures were measured on), ``records`` (a run's JSON file
under bench/results/). ``jax_contenders`` (gpubp's step in JAX, for bench/jax_compare.py) imports JAX and
is not imported here.
"""

from __future__ import annotations

from .configs import CONFIGS, Config, get_config, one_hot, synthetic_data
from .contenders import (GpubpTrainer, NumpyTrainer, TorchTrainer, gpubp_network, on_cpu_backend,
                         torch_available)
from .harness import SETTLE_SECONDS, compare, run_benchmarks
from .machine import machine_info
from .plain_numpy import PlainNumpyNet
from .records import run_info, write_results
from .report import format_table

__all__ = ["CONFIGS", "SETTLE_SECONDS", "Config", "GpubpTrainer", "NumpyTrainer", "PlainNumpyNet", "TorchTrainer",
           "compare", "format_table", "get_config", "gpubp_network", "machine_info", "on_cpu_backend", "one_hot",
           "run_benchmarks", "run_info", "synthetic_data", "torch_available", "write_results"]
