"""A benchmark run's raw record: the machine, the commit and the date beside the figures, in one JSON file
under ``bench/results/``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from .machine import machine_info

#: packages whose version is recorded when installed (read from their metadata: nothing is imported)
VERSIONS = ("numba", "scipy", "jax", "jaxlib")


def run_info(root: Path) -> dict:
    """Machine (``machine_info`` and the versions of ``VERSIONS``), commit of the source tree ``root``
    (``dirty`` when gpubp/ or bench/ outside bench/results/ differ from it), UTC date and argv."""
    info = machine_info()
    for package in VERSIONS:
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    git = ["git", "-C", str(root)]
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run([*git, "status", "--porcelain", "--", "gpubp", "bench", ":!bench/results"],
                                capture_output=True, text=True).stdout.strip())
    return {"machine": info, "commit": commit, "dirty": dirty,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "argv": sys.argv}


def write_results(root: Path, name: str, payload: dict) -> Path:
    """Write ``run_info(root)`` and ``payload`` to ``root/bench/results/<UTC time>-<name>.json``; returns
    the path."""
    folder = root / "bench" / "results"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{time.strftime('%Y-%m-%dT%H%M%SZ', time.gmtime())}-{name}.json"
    path.write_text(json.dumps({**run_info(root), **payload}, indent=1))
    return path
