"""Training throughput on one GPU: gpubp (device "cuda") beside PyTorch eager on the same GPU.

Same sizes, initial parameters (PyTorch copies a fresh gpubp net's), synthetic data, mini-batch size,
learning rate and fp32; every round ends with a device synchronise, so wall time is GPU time. Skipped
where no usable GPU (or no CUDA PyTorch for its half). Targets (issue 4): M >= 1.2x, L >= 1.0x PyTorch.
``gpubp-eager`` is gpubp with CUDA graphs turned off (env GPUBP_CUDA_GRAPHS=0: every kernel launched from
Python), so ``gpubp/gpubp-eager`` is what one graph launch per chunk of mini-batches gains.

    python -m pytest bench/test_bench_gpu.py
"""

import pytest

from gpubp.backend import cuda_unavailable_reason
from gpubp.backend.cuda_program import GRAPHS_ENV
from gpubp.benchmark import CONFIGS, GpubpTrainer, TorchTrainer, synthetic_data
from gpubp.network import Network

#: per config: samples in the data set (one epoch per round), timed rounds
SIZES = {"S": (60_000, 5), "M": (60_000, 5), "L": (60_000, 5)}


def _gpu_name() -> str:
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.runtime.getDevice())
    name = props["name"]
    return name.decode() if isinstance(name, bytes) else name


def _torch_cuda_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    return None if torch.cuda.is_available() else "PyTorch sees no CUDA GPU"


@pytest.mark.gpu
@pytest.mark.parametrize("config, implementation",
                         [(c, i) for c in SIZES for i in ("gpubp", "gpubp-eager", "torch")], ids=lambda v: v)
def test_training_throughput_gpu(benchmark, training_results, monkeypatch, config, implementation):
    reason = cuda_unavailable_reason()
    if reason is None and implementation == "torch":
        reason = _torch_cuda_reason()
    if reason is not None:
        pytest.skip(reason)
    cfg = CONFIGS[config]
    samples, rounds = SIZES[config]
    net = Network(list(cfg.sizes), activation=cfg.activation, output=cfg.output, cost=cfg.cost,
                  device="cuda", dtype="float32", seed=0)
    X, labels = synthetic_data(cfg, samples, seed=1)
    if implementation.startswith("gpubp"):
        if implementation == "gpubp-eager":
            monkeypatch.setenv(GRAPHS_ENV, "0")
        trainer = GpubpTrainer(net, cfg, X, labels, seed=2)
    else:
        trainer = TorchTrainer(net, cfg, X, labels, seed=2, device="cuda")
    benchmark.group = f"{config} {list(cfg.sizes)} batch {cfg.batch_size} (GPU)"
    benchmark.pedantic(trainer.run, rounds=rounds, warmup_rounds=1, iterations=1)
    training_results.add(benchmark, config, implementation, samples, device="cuda", gpu=_gpu_name())
