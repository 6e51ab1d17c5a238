"""``gpubp selftest``: its table and exit status on the CPU backends, planted wrong kernels it must report,
and its CUDA rows under the emulated CuPy (tests/cpp/emulated_cupy.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from emulated_gpu import plant_in_kernel
from test_kernels_host import emulated, host_program  # noqa: F401  (fixtures: the emulated CuPy)

from gpubp.backend import device
from gpubp.cli import main
from gpubp.selftest import CHECKS, TF32_TOLERANCE, TOLERANCE

needs_numba = pytest.mark.skipif(device.numba_unavailable_reason() is not None,
                                 reason=f"the fused CPU backend: {device.numba_unavailable_reason()}")


def selftest(capsys, *argv: str) -> tuple[int, str, dict[tuple[str, str], list[str]]]:
    """(exit status, stdout, {(backend, dtype): the row's cells}) of ``gpubp selftest``."""
    status = main(["selftest", *argv])
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("backend"))
    assert lines[header].split()[:3] == ["backend", "dtype", "load"] and lines[header].split()[-1] == "result"
    rows = {}
    for line in lines[header + 2:]:
        if not line.strip():
            break
        cells = line.split()
        if cells[0] != "not":
            rows[cells[0], cells[1]] = cells[2:]
    return status, out, rows


@needs_numba
def test_every_cpu_backend_passes(capsys):
    status, out, rows = selftest(capsys)
    assert status == 0, out
    assert set(rows) == {(b, d) for b in ("numpy", "numba") for d in ("float32", "float64")}
    assert all(cells[-1] == "ok" for cells in rows.values())
    assert "all 4 backend/dtype rows passed" in out
    assert rows["numba", "float64"][-2] != "-" and rows["numba", "float32"][-2] == "-"  # finite diff. in f64
    for check in CHECKS:
        assert check in out


@needs_numba
def test_a_planted_wrong_kernel_is_reported(capsys, monkeypatch):
    """σ′ ⊙ g that forgets σ′, in the elementwise kernel and in BP2's layer kernel: the fused backend's rows
    fail on those steps and on backprop; NumPy's pass."""
    from gpubp.backend import cpu_kernels

    def bp2_without_sigma_prime(delta, w, z, a, out):
        np.dot(delta, w, out=out)
        return True

    for name, of_activation in cpu_kernels.KERNELS.items():
        planted = of_activation._replace(backprop_activation=lambda z, a, g, out: np.copyto(out, g),
                                         layer_backward=bp2_without_sigma_prime)
        monkeypatch.setitem(cpu_kernels.KERNELS, name, planted)
    status, out, rows = selftest(capsys)
    assert status == 1
    for dtype in ("float32", "float64"):
        assert rows["numpy", dtype][-1] == "ok"
        assert rows["numba", dtype][-1] == "FAILED"
        for check in ("σ′⊙g", "layers", "BP1–BP4"):
            assert f"numba {dtype} {check}: worst error" in out
    assert "MISMATCH" in out and "numba float32 bias+σ" not in out


@needs_numba
def test_a_kernel_that_does_not_load_is_reported(capsys, monkeypatch):
    from gpubp.backend import cpu_kernels

    def broken(*args):
        raise RuntimeError("planted compile failure")

    monkeypatch.setattr(cpu_kernels, "sgd_update", broken)
    status, out, rows = selftest(capsys, "--backends", "numba")
    assert status == 1 and set(rows) == {("numba", "float32"), ("numba", "float64")}
    assert rows["numba", "float32"][0] == "ERROR"
    assert "numba float32 load: RuntimeError: planted compile failure" in out


def test_backends_option(capsys):
    status, out, rows = selftest(capsys, "--backends", "numpy")
    assert status == 0 and set(rows) == {("numpy", "float32"), ("numpy", "float64")}
    assert main(["selftest", "--backends", "numpy,cuda:7"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpubp: error: backend 'cuda:7' is not usable here")


def test_cuda_rows_under_the_emulated_cupy(emulated, capsys):  # noqa: F811
    status, out, rows = selftest(capsys, "--backends", "cuda:0")
    assert status == 0, out
    assert set(rows) == {("cuda:0", "float32"), ("cuda:0", "float64")}
    assert all(cells[-1] == "ok" for cells in rows.values())


def test_the_cuda_rows_run_the_matmul_precision_asked_for(emulated, capsys, monkeypatch):  # noqa: F811
    """By default every row is checked in fp32, within float32's tolerance even under CUPY_TF32=1 (it changes
    only CuPy's own matmuls: the report says so). ``--matmul-precision tf32`` runs the GPU's float32 row in
    TF32 (emulated: operands rounded as tensor cores do), whose errors exceed float32's tolerance and pass
    within TF32's; float64 and the CPU stay fp32."""
    monkeypatch.setenv("CUPY_TF32", "1")
    status, out, rows = selftest(capsys, "--backends", "cuda:0,numpy")
    assert status == 0 and all(cells[-1] == "ok" for cells in rows.values()), out
    assert "matmuls: matmul_precision='fp32' on every row; CUPY_TF32=1: CuPy's own float32 matmuls in TF32; " \
           "gpubp's follow each network's matmul_precision" in out, out
    layers = CHECKS.index("layers") + 1  # its cell, after the two of "load" ("0.12 s")
    assert float(rows["cuda:0", "float32"][layers]) <= TOLERANCE["float32"]
    monkeypatch.delenv("CUPY_TF32")
    status, out, rows = selftest(capsys, "--backends", "cuda:0,numpy", "--matmul-precision", "tf32")
    assert status == 0 and all(cells[-1] == "ok" for cells in rows.values()), out
    assert f"matmuls: matmul_precision='tf32' on cuda:0 float32, checked within {TF32_TOLERANCE:g}" in out, out
    assert "CUPY_TF32" not in out
    assert TOLERANCE["float32"] < float(rows["cuda:0", "float32"][layers]) <= TF32_TOLERANCE
    assert float(rows["cuda:0", "float64"][layers]) <= TOLERANCE["float64"]


def test_a_planted_wrong_cuda_kernel_is_reported(emulated, capsys, monkeypatch):  # noqa: F811
    """The backward kernel's sigmoid′ = a(1 − a) replaced by a in backprop.cu: compiled, run, reported."""
    plant_in_kernel(monkeypatch, "backprop.cu", "return (T(1) - a) * a;", "return a;")
    status, out, rows = selftest(capsys, "--backends", "cuda:0")
    assert status == 1
    assert "cuda:0 float64 σ′⊙g: worst error" in out and "cuda:0 float64 BP1–BP4: worst error" in out
    assert "cuda:0 float64 output δ" not in out  # the output kernel has its own, correct, copy of σ′


@needs_numba
@pytest.mark.parametrize("setting", [None, "numpy", "numba"])
def test_selftest_and_info_choose_the_cpu_backends_without_touching_the_environment(capsys, monkeypatch,
                                                                                    environment_writes,
                                                                                    setting):
    """Each CPU backend is asked for by name (get_ops("cpu", cpu_backend=…)), whatever env GPUBP_CPU_BACKEND
    says, and no GPUBP_ variable is written (``gpubp info`` imports scikit-learn, which sets KMP_ ones)."""
    from gpubp.selftest import usable_backends

    if setting is None:
        monkeypatch.delenv("GPUBP_CPU_BACKEND", raising=False)
    else:
        monkeypatch.setenv("GPUBP_CPU_BACKEND", setting)
    before, writes = gpubp_environment(), len(environment_writes)
    usable, _ = usable_backends()
    assert usable["numpy"]().name == "numpy" and usable["numba"]().name == "numba"
    status, out, rows = selftest(capsys, "--backends", "numpy,numba")
    assert status == 0, out
    assert set(rows) == {(b, d) for b in ("numpy", "numba") for d in ("float32", "float64")}
    assert main(["info"]) == 0
    assert f"cpu:       {setting or 'numba'}" in capsys.readouterr().out
    assert [name for name in environment_writes[writes:] if name.startswith("GPUBP_")] == []
    assert gpubp_environment() == before


def gpubp_environment() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name.startswith("GPUBP_")}
