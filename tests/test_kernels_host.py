"""The kernels' maths on the host: kernels/activations.cuh and kernels/costs.cuh, compiled with a C++
compiler into tests/cpp/kernels_host.cpp, give the same σ, σ′, cost terms and cost gradients as the NumPy
backend, in float64 and float32, and use the same ids as gpubp/backend/kernels.py.

Under CI (env CI set) a missing C++ compiler is a failure, not a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from gpubp.activations import ACTIVATIONS
from gpubp.backend import kernels
from gpubp.backend.numpy_ops import NumpyOps
from gpubp.costs import COSTS, LOG_EPS

SOURCE = Path(__file__).parent / "cpp" / "kernels_host.cpp"
DTYPES = (np.float64, np.float32)
#: (rtol, atol) against NumPy: libm and NumPy's own tanh/exp/log1p may differ by an ulp or two, and
#: GELU′ at z ≈ −5 cancels (1 + tanh u ≈ 0), amplifying one ulp of tanh by about |½ z du| ≈ 10
TOLERANCE = {np.float64: (1e-12, 1e-14), np.float32: (1e-5, 5e-6)}

_grid = np.linspace(-10.0, 10.0, 81)
_special = [0.0, -0.0, 1e-8, -1e-8, 0.5, -0.5, 15.0, -15.0, 20.0, -20.0, 40.0, -40.0, 100.0, -100.0,
            1e3, -1e3, 1e4, -1e4]
Z = np.concatenate([_grid, _special])


@pytest.fixture(scope="module")
def host_program(tmp_path_factory) -> Path:
    compiler = os.environ.get("CXX") or next(
        (c for c in ("g++", "c++", "clang++") if shutil.which(c)), None)
    if compiler is None:
        if os.environ.get("CI"):
            pytest.fail("CI must test the kernels' maths on the host, but no C++ compiler was found")
        pytest.skip("no C++ compiler (g++, c++, clang++ or $CXX) to build the host test program")
    exe = tmp_path_factory.mktemp("kernels_host") / "kernels_host"
    # -std=c++17 (not gnu++17) keeps a*b+c from being contracted into an FMA, like NumPy
    result = subprocess.run([compiler, "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror",
                             "-I", str(kernels.kernel_dir()), str(SOURCE), "-o", str(exe)],
                            capture_output=True, text=True)
    assert result.returncode == 0, f"building {SOURCE.name} failed:\n{result.stderr}"
    return exe


def run(exe: Path, args: list[str], values: np.ndarray) -> dict[str, tuple[int, np.ndarray]]:
    """name -> (id, rows of floats) from the program's output."""
    stdin = " ".join(float(v).hex() for v in values)
    result = subprocess.run([str(exe), *args], input=stdin, capture_output=True, text=True, check=True)
    tables: dict[str, tuple[int, list]] = {}
    for line in result.stdout.splitlines():
        fields = line.split()
        if fields[0] in ("act", "cost"):
            rows: list = []
            tables[fields[2]] = (int(fields[1]), rows)
        else:
            rows.append([float.fromhex(f) for f in fields])
    return {name: (ident, np.array(rows)) for name, (ident, rows) in tables.items()}


def test_activation_ids_agree(host_program):
    table = run(host_program, ["act", "f64"], Z[:1])
    assert {name: ident for name, (ident, _) in table.items()} == kernels.ACTIVATION_IDS
    assert set(kernels.ACTIVATION_IDS) == set(ACTIVATIONS)


def test_cost_ids_agree(host_program):
    table = run(host_program, ["cost", "f64", "1e-7"], np.array([0.5, 1.0]))
    assert {name: ident for name, (ident, _) in table.items()} == kernels.COST_IDS
    assert set(kernels.COST_IDS) == set(COSTS)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_activations_match_numpy(host_program, dtype):
    z = Z.astype(dtype)
    table = run(host_program, ["act", "f32" if dtype is np.float32 else "f64"], z)
    rtol, atol = TOLERANCE[dtype]
    for name, act in ACTIVATIONS.items():
        with np.errstate(all="ignore"):
            a = act.f(np, z, np.empty_like(z))
            da = act.df(np, z, a, np.empty_like(z))
        got = table[name][1]
        np.testing.assert_allclose(got[:, 0], a, rtol=rtol, atol=atol, err_msg=f"{name} f")
        np.testing.assert_allclose(got[:, 1], da, rtol=rtol, atol=atol, err_msg=f"{name} f'")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_costs_match_numpy(host_program, dtype):
    a = np.array([0.0, 1e-12, 1e-3, 0.2, 0.5, 0.7, 0.999, 1.0 - 1e-12, 1.0, 1.5, -0.25], dtype=dtype)
    a, y = [m.ravel().astype(dtype) for m in np.meshgrid(a, np.array([0.0, 0.3, 1.0]))]
    eps = LOG_EPS[np.dtype(dtype)]
    table = run(host_program, ["cost", "f32" if dtype is np.float32 else "f64", repr(eps)],
                np.stack([a, y], axis=1).ravel())
    rtol, atol = TOLERANCE[dtype]
    ops = NumpyOps()
    one = y == 1.0
    for name, cost in COSTS.items():
        got = table[name][1]
        col_a, col_y = a[:, None], y[:, None]  # one-element rows: the row cost is the element's term
        with np.errstate(all="ignore"):
            term = cost.fn(col_a, col_y)
            grad = cost.derivative(col_a, col_y)[:, 0]
            labelled = [ops.cost_sum(cost, col_a[i:i + 1], np.array([0])) for i in np.flatnonzero(one)]
        np.testing.assert_allclose(got[:, 0], term, rtol=rtol, atol=atol, err_msg=f"{name} term")
        np.testing.assert_allclose(got[:, 2], grad, rtol=rtol, atol=atol, err_msg=f"{name} gradient")
        np.testing.assert_allclose(got[:, 3], a - y, rtol=rtol, atol=atol, err_msg=f"{name} stable")
        # an integer label means y = 1 in its column; Ops.cost_sum gathers that column
        np.testing.assert_allclose(got[one, 1], labelled, rtol=rtol, atol=atol,
                                   err_msg=f"{name} labelled term")
