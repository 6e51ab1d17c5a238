"""Shared by the benchmark suites: raw JSON with machine info, commit and date into bench/results/, and the
samples/s and gpubp-to-baseline ratios of the training benchmarks.

Run from the repository root, e.g. ``python -m pytest bench/test_bench_cpu.py``. Unless ``--benchmark-json``
names another file (or ``--benchmark-disable`` is given), pytest-benchmark's full JSON (every timing,
``machine_info`` with gpubp's own: CPU, BLAS, GPU, PyTorch; ``commit_info``; ``datetime``) is written to
``bench/results/<UTC time>-<machine>.json``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from gpubp.benchmark import machine_info as gpubp_machine_info

RESULTS = Path(__file__).parent / "results"
_RESULTS_KEY = pytest.StashKey["TrainingResults"]()


class _LazyFile:
    """A file that pytest-benchmark opens only when it writes (no empty file when nothing ran): as a context
    manager for pytest-benchmark 4, which opened ``--benchmark-json`` itself; as a path for 5, which opens
    the path it is given once benchmarks have run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __fspath__(self) -> str:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return str(self.path)

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "wb")
        return self._fh

    def __exit__(self, *exc) -> None:
        self._fh.close()

    def __str__(self) -> str:
        return str(self.path)


def _machine_slug(info: dict) -> str:
    name = info.get("gpu") or info.get("processor") or "unknown"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40]


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config.option, "benchmark_json"):
        return  # pytest-benchmark is not installed: the suites' benchmark fixture fails on its own
    quiet = config.option.benchmark_disable or config.option.collectonly
    if config.option.benchmark_json is None and not quiet:
        stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
        name = f"{stamp}-{_machine_slug(gpubp_machine_info())}.json"
        config.option.benchmark_json = _LazyFile(RESULTS / name)
    config.stash[_RESULTS_KEY] = TrainingResults()


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine_info["gpubp"] = gpubp_machine_info()


class TrainingResults:
    """Samples/s per (config, implementation); once gpubp and a baseline of a config both ran, their
    ratio goes into the extra_info of both benchmarks (and so into the JSON)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, tuple]] = {}

    def add(self, benchmark, config: str, implementation: str, samples_per_round: int, **info) -> None:
        benchmark.extra_info.update(config=config, implementation=implementation,
                                    samples_per_round=samples_per_round, **info)
        if benchmark.stats is None:  # --benchmark-disable: ran once, not timed
            return
        rate = samples_per_round / benchmark.stats.stats.median
        benchmark.extra_info["samples_per_s"] = rate
        row = self.rows.setdefault(config, {})
        row[implementation] = (benchmark, rate)
        if "gpubp" not in row:
            return
        mine, my_rate = row["gpubp"]
        for base, (theirs, their_rate) in row.items():
            if base != "gpubp":
                mine.extra_info[f"gpubp/{base}"] = theirs.extra_info[f"gpubp/{base}"] = my_rate / their_rate

    def summary(self) -> list[str]:
        lines = []
        for config, row in self.rows.items():
            rates = "  ".join(f"{impl} {rate:,.0f}/s" for impl, (_, rate) in row.items())
            ratios = "  ".join(f"gpubp/{base} {row['gpubp'][1] / rate:.2f}x"
                               for base, (_, rate) in row.items() if base != "gpubp" and "gpubp" in row)
            lines.append(f"{config}: {rates}  {ratios}".rstrip())
        return lines


@pytest.fixture(scope="session")
def training_results(pytestconfig: pytest.Config) -> TrainingResults:
    """Record a training benchmark: ``training_results.add(benchmark, "S", "gpubp", samples_per_round)``."""
    return pytestconfig.stash[_RESULTS_KEY]


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    results = config.stash.get(_RESULTS_KEY, None)
    if results is not None and results.rows:
        terminalreporter.section("training samples/s (median) and gpubp ratios")
        for line in results.summary():
            terminalreporter.write_line(line)
