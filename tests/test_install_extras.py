"""``pip install gpubp[cuda13]`` (and ``[cuda12]``) brings every CUDA library gpubp loads at run time.

A dry-run install (``pip install --dry-run --ignore-installed --report``) of each GPU extra from this
checkout must resolve NVRTC, the CUDA runtime (its headers, which NVRTC needs for CuPy's kernels), cuBLAS
and NCCL wheels of that CUDA major version, besides CuPy itself. Both resolutions run side by side (about
15 s, mostly pip talking to the package index); they skip, saying why, where no index can be reached.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: extra -> the distributions its resolution must contain (CUDA 13 wheels dropped the -cuXX suffix)
EXPECTED = {
    "cuda13": {"cupy-cuda13x", "nvidia-cuda-nvrtc", "nvidia-cuda-runtime", "nvidia-cublas", "nvidia-nccl-cu13"},
    "cuda12": {"cupy-cuda12x", "nvidia-cuda-nvrtc-cu12", "nvidia-cuda-runtime-cu12", "nvidia-cublas-cu12",
               "nvidia-nccl-cu12"},
}


@pytest.fixture(scope="module")
def resolutions(tmp_path_factory) -> dict[str, dict[str, str] | str]:
    """extra -> {distribution: version}, or pip's error output when it could not resolve."""
    folder = tmp_path_factory.mktemp("pip_reports")
    runs = {}
    for extra in EXPECTED:
        report = folder / f"{extra}.json"
        runs[extra] = (report, subprocess.Popen(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
             "--disable-pip-version-check", "--report", str(report), f"{ROOT}[{extra}]"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    results: dict[str, dict[str, str] | str] = {}
    for extra, (report, proc) in runs.items():
        output, _ = proc.communicate(timeout=300)
        if proc.returncode:
            results[extra] = output
            continue
        installs = json.loads(report.read_text())["install"]
        results[extra] = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in installs}
    return results


@pytest.mark.slow
@pytest.mark.parametrize("extra", sorted(EXPECTED))
def test_gpu_extra_resolves_nvrtc_headers_cublas_and_nccl(resolutions, extra):
    resolved = resolutions[extra]
    if isinstance(resolved, str):
        offline = any(s in resolved for s in ("NewConnectionError", "Network is unreachable",
                                              "Temporary failure in name resolution"))
        if offline:
            pytest.skip(f"no package index with CuPy reachable: {resolved.strip().splitlines()[-1]}")
        pytest.fail(f"pip could not resolve gpubp[{extra}]:\n{resolved}")
    missing = EXPECTED[extra] - set(resolved)
    assert not missing, f"gpubp[{extra}] would not install {sorted(missing)}; it resolves {resolved}"
    assert int(resolved[f"cupy-{extra}x"].split(".")[0]) >= 14
