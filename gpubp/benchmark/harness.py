"""The timing harness: every contender trains one epoch at a time, interleaved (gpubp, NumPy, PyTorch, gpubp,
…) so that drift of the machine hits each alike; gpubp's epochs are timed inside one ``fit`` call, as a user
trains, and the baselines run their epochs in its epoch-end callback, outside gpubp's timings. The medians
are reported, and each ratio is the median of the per-repeat ratios."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Sequence

import numpy as np

from ..backend import resolve_device
from .configs import Config, get_config, synthetic_data
from .contenders import GpubpTrainer, NumpyTrainer, TorchTrainer, gpubp_network, torch_available


def compare(config: str | Config, device: str = "auto", *, seconds: float = 10.0, torch: bool = True,
            numpy: bool | None = None, repeats: int = 5, samples: int | None = None, seed: int = 0,
            log: Callable[[str], None] | None = None, extra: Sequence[Callable[..., Any]] = (),
            cpu_backend: str | None = None) -> dict:
    """Samples/s of one training epoch for gpubp and its baselines on one config, interleaved.

    ``numpy`` (default: on the CPU only) adds the plain NumPy loop, ``torch`` PyTorch eager on the same
    device when importable; each of ``extra`` builds one more contender as ``factory(net, config, X, labels,
    seed)``: an object with a ``name`` and ``run()`` that returns the seconds of one epoch. ``samples`` fixes
    the data set size; by default it is chosen from a warm-up so that all repeats together take about
    ``seconds``. On the CPU gpubp runs on ``cpu_backend`` ("numba", "numpy" or "auto"; None: env
    GPUBP_CPU_BACKEND). Returns one row for ``format_table``, with "gpubp/<name>" for every other contender.
    """
    cfg = get_config(config)
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    resolved = resolve_device(device)
    kind = resolved.split(":")[0]
    if numpy is None:
        numpy = kind == "cpu"
    settle = SETTLE_SECONDS if kind == "cpu" else 0.0
    net = gpubp_network(cfg, resolved, seed, cpu_backend)
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
