"""The contenders of a benchmark, each built from one gpubp network's initial parameters: gpubp's own
``fit``, the plain NumPy loop and PyTorch eager; ``run()`` trains on the data a contender was built with and
returns the seconds taken."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

from ..backend import get_ops
from .configs import Config, one_hot
from .plain_numpy import PlainNumpyNet


def gpubp_network(config: Config, device: str, seed: int, cpu_backend: str | None = None) -> Any:
    """gpubp's fp32 network of ``config`` on ``device``, initialised from ``seed``; on the CPU it runs on
    ``cpu_backend`` ("numba", "numpy" or "auto"; None: env GPUBP_CPU_BACKEND)."""
    from ..network import Network

    net = Network(list(config.sizes), activation=config.activation, output=config.output, cost=config.cost,
                  device=device, dtype="float32", seed=seed)
    return on_cpu_backend(net, cpu_backend) if net.ops.on_host and cpu_backend is not None else net


def on_cpu_backend(net: Any, backend: str) -> Any:
    """``net``, a network on the CPU, run from now on by the CPU backend ``backend`` ("numba", "numpy" or
    "auto"), whatever env GPUBP_CPU_BACKEND says; its parameters stay as they are."""
    return net.to(get_ops("cpu", cpu_backend=backend))


class GpubpTrainer:
    """gpubp's real training loop, ``net.fit`` (SGD, shuffled every epoch), data on the net's device."""

    name = "gpubp"

    def __init__(self, net: Any, config: Config, X: np.ndarray, labels: np.ndarray, seed: int) -> None:
        self.net, self.config, self.seed = net, config, seed
        self.X = net.ops.asarray(X)
        self.labels = net.ops.asarray(labels)

    def _fit(self, epochs: int, callbacks: list | None = None) -> None:
        self.seed += 1
        self.net.fit(self.X, self.labels, epochs=epochs, batch_size=self.config.batch_size,
                     lr=self.config.lr, progress=False, seed=self.seed, callbacks=callbacks)

    def run(self, epochs: int = 1) -> float:
        """Seconds for one ``fit`` call of ``epochs`` epochs (input checks and allocation included)."""
        start = time.perf_counter()
        self._fit(epochs)
        self.net.ops.synchronize()
        return time.perf_counter() - start

    def interleaved(self, epochs: int, between: Callable[[bool], None]) -> list[float]:
        """Seconds of epochs 2 … epochs+1 of one ``fit`` call, each timed from the end of the epoch before
        (epoch 1 carries fit's input checks and allocations); ``between(record)`` runs, untimed, after
        every epoch, with ``record`` False after the first."""
        times: list[float] = []
        start = [0.0]

        def after_epoch(net: Any, epoch: int, logs: dict) -> None:
            net.ops.synchronize()
            if epoch > 1:
                times.append(time.perf_counter() - start[0])
            between(epoch > 1)
            start[0] = time.perf_counter()

        self._fit(epochs + 1, [after_epoch])
        return times


class NumpyTrainer:
    """``PlainNumpyNet`` from the net's initial parameters, on one-hot targets."""

    name = "numpy"

    def __init__(self, net: Any, config: Config, X: np.ndarray, labels: np.ndarray, seed: int) -> None:
        self.model = PlainNumpyNet(_host(net, net.weights), _host(net, net.biases),
                                   config.activation, config.output, config.cost)
        self.config, self.X = config, X
        self.Y = one_hot(labels, config.sizes[-1], X.dtype)
        self.rng = np.random.default_rng(seed)

    def run(self, epochs: int = 1) -> float:
        start = time.perf_counter()
        for _ in range(epochs):
            self.model.train_epoch(self.X, self.Y, self.config.batch_size, self.config.lr, self.rng)
        return time.perf_counter() - start


class TorchTrainer:
    """PyTorch eager from the net's initial parameters: nn.Linear layers, autograd, torch.optim.SGD,
    mini-batches gathered by a ``randperm`` each epoch; CUDA time from events after a synchronise."""

    name = "torch"

    def __init__(self, net: Any, config: Config, X: np.ndarray, labels: np.ndarray, seed: int,
                 device: str) -> None:
        import torch

        self.torch, self.config = torch, config
        self.device = torch.device(device)
        self.layers = []
        for w, b in zip(_host(net, net.weights), _host(net, net.biases)):
            layer = torch.nn.Linear(w.shape[1], w.shape[0]).to(self.device)
            with torch.no_grad():
                layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
                layer.bias.copy_(torch.from_numpy(np.ascontiguousarray(b)))
            self.layers.append(layer)
        params = [p for layer in self.layers for p in layer.parameters()]
        self.optimizer = torch.optim.SGD(params, lr=config.lr)
        self.X = torch.from_numpy(X).to(self.device)
        self.labels = torch.from_numpy(labels).to(self.device)
        if config.cost == "quadratic":
            self.Y = torch.from_numpy(one_hot(labels, config.sizes[-1], X.dtype)).to(self.device)
        self.hidden = torch.sigmoid if config.activation == "sigmoid" else torch.relu
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def _step(self, index: Any) -> None:
        torch = self.torch
        a = self.X[index]
        for layer in self.layers[:-1]:
            a = self.hidden(layer(a))
        z = self.layers[-1](a)
        if self.config.cost == "quadratic":
            loss = 0.5 * ((torch.sigmoid(z) - self.Y[index]) ** 2).sum(dim=1).mean()
        else:
            loss = torch.nn.functional.cross_entropy(z, self.labels[index])  # softmax + log-likelihood
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def _epoch(self) -> None:
        n, batch = len(self.X), self.config.batch_size
        order = self.torch.randperm(n, device=self.device, generator=self.generator)
        for k in range(0, n, batch):
            self._step(order[k:k + batch])

    def run(self, epochs: int = 1) -> float:
        torch = self.torch
        if self.device.type != "cuda":
            start = time.perf_counter()
            for _ in range(epochs):
                self._epoch()
            return time.perf_counter() - start
        with torch.cuda.device(self.device):
            torch.cuda.synchronize()
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(epochs):
                self._epoch()
            end.record()
            end.synchronize()
        return begin.elapsed_time(end) / 1000.0


def _host(net: Any, arrays: Sequence[Any]) -> list[np.ndarray]:
    """Host copies of a net's weights or biases."""
    return [np.array(net.ops.to_numpy(a)) for a in arrays]


def torch_available() -> bool:
    """Whether PyTorch can be imported."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True
