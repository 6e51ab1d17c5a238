"""Training-step benchmarks: gpubp against plain NumPy backprop and PyTorch eager, same data and init.

Configs (fp32), from the core issue:

- ``S`` [784, 30, 10], sigmoid, quadratic cost, batch 10 (the book's chapter-1 network);
- ``M`` [784, 1024, 1024, 10], relu + softmax + log-likelihood, batch 256;
- ``L`` [784, 4096, 4096, 10], relu + softmax + log-likelihood, batch 1024.

Every contender trains one epoch of mini-batch SGD over the same synthetic data set (shuffled each epoch,
mini-batches gathered by index), starting from the same weights: the plain NumPy and PyTorch models copy
gpubp's freshly initialised ``net.weights`` and ``net.biases``. Runs are interleaved (gpubp, NumPy, PyTorch,
gpubp, …) so that drift of the machine hits each alike: gpubp's epochs are timed inside one ``fit`` call, as
a user trains, and the baselines run their epochs in its epoch-end callback, outside gpubp's timings. The
medians are reported, and each ratio is the median of the per-repeat ratios. ``PlainNumpyNet`` is the
baseline a user writes from the book: forward, BP1–BP4, SGD update, allocating fresh arrays as it goes.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .backend.device import cuda_unavailable_reason, parse_device


@dataclass(frozen=True)
class Config:
    """One benchmark network: sizes, activations, cost, mini-batch size and learning rate."""

    name: str
    sizes: tuple[int, ...]
    activation: str
    output: str
    cost: str
    batch_size: int
    lr: float


CONFIGS: dict[str, Config] = {
    "S": Config("S", (784, 30, 10), "sigmoid", "sigmoid", "quadratic", 10, 3.0),
    "M": Config("M", (784, 1024, 1024, 10), "relu", "softmax", "log_likelihood", 256, 0.01),
    "L": Config("L", (784, 4096, 4096, 10), "relu", "softmax", "log_likelihood", 1024, 0.01),
}


def get_config(name: str | Config) -> Config:
    """The config called ``name`` ("S", "M" or "L"); ValueError otherwise."""
    if isinstance(name, Config):
        return name
    key = str(name).upper()
    if key not in CONFIGS:
        raise ValueError(f"unknown benchmark config {name!r}; valid names: {', '.join(CONFIGS)}")
    return CONFIGS[key]


def synthetic_data(config: Config, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` inputs uniform in [0, 1) (float32, like scaled pixels) and integer labels in [0, k)."""
    rng = np.random.default_rng(seed)
    X = rng.random((n, config.sizes[0]), dtype=np.float32)
    labels = rng.integers(0, config.sizes[-1], size=n)
    return X, labels


def one_hot(labels: np.ndarray, k: int, dtype: Any = np.float32) -> np.ndarray:
    """Rows eᵧ: the float targets the textbook loop trains on."""
    Y = np.zeros((len(labels), k), dtype=dtype)
    Y[np.arange(len(labels)), labels] = 1.0
    return Y


# ---- the plain NumPy baseline ---------------------------------------------------------------------
def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _sigmoid_prime(z: np.ndarray) -> np.ndarray:
    s = _sigmoid(z)
    return s * (1.0 - s)


def _relu(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0.0)


def _relu_prime(z: np.ndarray) -> np.ndarray:
    return (z > 0).astype(z.dtype)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


_HIDDEN = {"sigmoid": (_sigmoid, _sigmoid_prime), "relu": (_relu, _relu_prime)}


class PlainNumpyNet:
    """Mini-batch backpropagation written out by hand in NumPy: the baseline gpubp must beat.

    Rows are samples, so zˡ = aˡ⁻¹ Wˡᵀ + bˡ. Supports the benchmark pairs only: sigmoid + quadratic
    (δᴸ = (aᴸ − y) ⊙ σ′(zᴸ)), and relu hidden layers with softmax + log-likelihood (δᴸ = aᴸ − y).
    """

    def __init__(self, weights: Sequence[Any], biases: Sequence[Any], activation: str, output: str,
                 cost: str) -> None:
        pairs = {("sigmoid", "quadratic"), ("softmax", "log_likelihood")}
        if activation not in _HIDDEN or (output, cost) not in pairs:
            raise ValueError(f"PlainNumpyNet supports hidden {sorted(_HIDDEN)} with output/cost "
                             f"{sorted(pairs)}; got {activation!r}, {output!r}/{cost!r}")
        self.weights = [np.array(w) for w in weights]
        self.biases = [np.array(b) for b in biases]
        self.sigma, self.sigma_prime = _HIDDEN[activation]
        self.output, self.cost = output, cost

    def feedforward(self, X: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(zs, activations) for every layer; activations[0] is X."""
        zs, activations = [], [X]
        for l, (w, b) in enumerate(zip(self.weights, self.biases)):
            z = activations[-1] @ w.T + b
            zs.append(z)
            last = l == len(self.weights) - 1
            if last and self.output == "softmax":
                activations.append(_softmax(z))
            elif last:
                activations.append(_sigmoid(z))
            else:
                activations.append(self.sigma(z))
        return zs, activations

    def backprop(self, X: np.ndarray, Y: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Σₓ ∂Cₓ/∂W and Σₓ ∂Cₓ/∂b over the batch by BP1–BP4 (Y: one-hot targets)."""
        zs, activations = self.feedforward(X)
        if self.cost == "quadratic":
            delta = (activations[-1] - Y) * _sigmoid_prime(zs[-1])   # BP1
        else:
            delta = activations[-1] - Y                              # BP1, softmax + log-likelihood
        nabla_w = [None] * len(self.weights)
        nabla_b = [None] * len(self.weights)
        nabla_b[-1] = delta.sum(axis=0)                              # BP3
        nabla_w[-1] = delta.T @ activations[-2]                      # BP4
        for l in range(2, len(self.weights) + 1):
            delta = (delta @ self.weights[-l + 1]) * self.sigma_prime(zs[-l])   # BP2
            nabla_b[-l] = delta.sum(axis=0)
            nabla_w[-l] = delta.T @ activations[-l - 1]
        return nabla_w, nabla_b

    def step(self, X: np.ndarray, Y: np.ndarray, lr: float) -> None:
        """One SGD step on the batch mean: w ← w − (η/m) Σₓ ∂Cₓ/∂w, likewise b."""
        nabla_w, nabla_b = self.backprop(X, Y)
        scale = lr / len(X)
        self.weights = [w - scale * nw for w, nw in zip(self.weights, nabla_w)]
        self.biases = [b - scale * nb for b, nb in zip(self.biases, nabla_b)]

    def train_epoch(self, X: np.ndarray, Y: np.ndarray, batch_size: int, lr: float,
                    rng: np.random.Generator) -> None:
        """One epoch over shuffled mini-batches."""
        order = rng.permutation(len(X))
        for k in range(0, len(X), batch_size):
            index = order[k:k + batch_size]
            self.step(X[index], Y[index], lr)


# ---- contenders: each trains on the data it was built with and reports seconds -------------------
def _resolve_device(device: str) -> str:
    """What ``device`` (possibly "auto") means on this machine: "cpu", "cuda" or "cuda:N"."""
    kind, index = parse_device(device)
    if kind == "auto":
        kind = "cpu" if cuda_unavailable_reason() is not None else "cuda"
    return kind if index is None else f"{kind}:{index}"


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


# ---- the driver -----------------------------------------------------------------------------------
def compare(config: str | Config, device: str = "auto", *, seconds: float = 10.0, torch: bool = True,
            numpy: bool | None = None, repeats: int = 5, samples: int | None = None, seed: int = 0,
            log: Callable[[str], None] | None = None, extra: Sequence[Callable[..., Any]] = ()) -> dict:
    """Samples/s of one training epoch for gpubp and its baselines on one config, interleaved.

    ``numpy`` (default: on the CPU only) adds the plain NumPy loop, ``torch`` PyTorch eager on the same
    device when importable; each of ``extra`` builds one more contender as ``factory(net, config, X, labels,
    seed)``: an object with a ``name`` and ``run()`` that returns the seconds of one epoch. ``samples`` fixes
    the data set size; by default it is chosen from a warm-up so that all repeats together take about
    ``seconds``. Returns one row for ``format_table``, with "gpubp/<name>" for every other contender.
    """
    from .network import Network

    cfg = get_config(config)
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    resolved = _resolve_device(device)
    kind = resolved.split(":")[0]
    if numpy is None:
        numpy = kind == "cpu"
    settle = SETTLE_SECONDS if kind == "cpu" else 0.0
    net = Network(list(cfg.sizes), activation=cfg.activation, output=cfg.output, cost=cfg.cost,
                  device=resolved, dtype="float32", seed=seed)
    probe = cfg.batch_size * max(2, -(-2000 // cfg.batch_size))    # >= 2 batches and ~2000 samples
    X, labels = synthetic_data(cfg, probe, seed)

    def build(X: np.ndarray, labels: np.ndarray) -> list:
        contenders: list = [GpubpTrainer(net, cfg, X, labels, seed)]
        if numpy:
            contenders.append(NumpyTrainer(net, cfg, X, labels, seed))
        if torch and torch_available():
            contenders.append(TorchTrainer(net, cfg, X, labels, seed, resolved))
        return contenders + [factory(net, cfg, X, labels, seed) for factory in extra]

    if samples is None:
        gpubp, *others = build(X, labels)
        probe_times = _interleave(gpubp, others, 1, settle)   # warm-up, and the time per sample
        per_sample = statistics.fmean(ts[0] for ts in probe_times.values()) / probe
        budget = seconds / (repeats * (1 + len(others)))
        steps = max(2, round(budget / (per_sample * cfg.batch_size)))
        samples = min(steps * cfg.batch_size, 60000 // cfg.batch_size * cfg.batch_size)
    if samples < cfg.batch_size:
        raise ValueError(f"samples must be >= the batch size {cfg.batch_size}, got {samples}")
    X, labels = synthetic_data(cfg, samples, seed + 1)
    gpubp, *others = build(X, labels)
    if log:
        log(f"{cfg.name}: {samples} samples x {repeats} repeats on {kind}: "
            + ", ".join(c.name for c in (gpubp, *others)))
    times = _interleave(gpubp, others, repeats, settle)
    row: dict[str, Any] = {
        "config": cfg.name, "sizes": list(cfg.sizes), "batch_size": cfg.batch_size, "device": kind,
        "samples": samples, "repeats": repeats,
    }
    for name, ts in times.items():
        row[name] = samples / statistics.median(ts)
        row[f"{name}_seconds"] = ts
    for base in times:
        if base != "gpubp":
            row[f"gpubp/{base}"] = statistics.median(
                b / g for g, b in zip(times["gpubp"], times[base]))
    return row


#: untimed pause between contenders on a CPU: the thread pools of BLAS and PyTorch keep spinning for a while
#: after their last call (measured: M ran 1.03x after PyTorch's epoch without a pause, 1.07-1.08x with 0.05 s)
SETTLE_SECONDS = 0.1


def _interleave(gpubp: GpubpTrainer, others: list, repeats: int,
                settle: float = 0.0) -> dict[str, list[float]]:
    """``repeats`` epoch times of each contender: gpubp, then each baseline, then gpubp again, …, with
    ``settle`` seconds of rest before each."""
    times: dict[str, list[float]] = {c.name: [] for c in others}

    def between(record: bool) -> None:
        for c in others:
            time.sleep(settle)
            t = c.run()
            if record:
                times[c.name].append(t)
        time.sleep(settle)

    return {"gpubp": gpubp.interleaved(repeats, between), **times}


def run_benchmarks(configs: Sequence[str] = ("S", "M", "L"), device: str = "auto", seconds: float = 10.0,
                   torch: bool = True, **options: Any) -> list[dict]:
    """One row per config (see ``compare``); ``seconds`` is the time budget of each config."""
    return [compare(c, device, seconds=seconds, torch=torch, **options) for c in configs]


def _fmt_rate(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def format_table(rows: Sequence[dict]) -> str:
    """A plain-text table of samples/s and ratios, one line per row."""
    header = ("config", "sizes", "batch", "device", "gpubp/s", "numpy/s", "gpubp/numpy", "torch/s",
              "gpubp/torch")
    lines = [header]
    for row in rows:
        lines.append((
            row["config"], ",".join(str(s) for s in row["sizes"]), str(row["batch_size"]), row["device"],
            _fmt_rate(row.get("gpubp")), _fmt_rate(row.get("numpy")), _fmt_ratio(row.get("gpubp/numpy")),
            _fmt_rate(row.get("torch")), _fmt_ratio(row.get("gpubp/torch")),
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for j, line in enumerate(lines):
        out.append("  ".join(cell.ljust(w) if i < 4 else cell.rjust(w)
                             for i, (cell, w) in enumerate(zip(line, widths))).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def machine_info() -> dict:
    """What the figures were measured on: CPU, cores, load, NumPy and its BLAS, PyTorch, GPU."""
    info: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(),
        "processor": _cpu_model(), "cpu_count": os.cpu_count(), "numpy": np.__version__,
        "openblas_env": {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS_")},
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [{k: p.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
                        for p in threadpool_info()]
    except ImportError:
        pass
    if torch_available():
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["torch_gpu"] = torch.cuda.get_device_name()
    if cuda_unavailable_reason() is None:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.runtime.getDevice())
        info["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        info["cupy"] = cupy.__version__
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
