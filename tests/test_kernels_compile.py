"""Every CUDA kernel compiles, with nvcc to PTX for sm_80 and sm_90, and with NVRTC exactly as at run time.

Pre-Pascal GPUs (sm_50–53, still targets of CUDA 12) have no double-precision atomicAdd; common.cuh then
uses a compare-and-swap loop. That path is compiled for sm_52 where the installed nvcc still has the target
and, on any toolkit, forced on by ``-DGPUBP_CAS_ATOMIC_ADD`` (tests/test_kernels_host.py also runs it).

No GPU is needed. Under CI (env CI set) a missing nvcc or NVRTC is a failure, not a skip; elsewhere the
tests skip with the reason. NVRTC comes from the ``nvidia-cuda-nvrtc`` wheel, driven through CuPy's
``cupy.cuda.nvrtc`` bindings (``cupy-cuda13x``), which load it without a GPU.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from gpubp.backend import kernels

ARCHS = ("sm_80", "sm_90")
ON_CI = bool(os.environ.get("CI"))
CU_FILES = sorted(p.name for p in kernels.kernel_dir().glob("*.cu"))


def entries(ptx: str) -> set[str]:
    return set(re.findall(r"\.entry\s+(\w+)", ptx))


def unavailable(reason: str) -> None:
    if ON_CI:
        pytest.fail(f"CI must compile the kernels, but {reason}")
    pytest.skip(reason)


def test_every_source_file_is_registered():
    assert CU_FILES == sorted(kernels.KERNELS)


@pytest.fixture(scope="module")
def nvcc() -> str:
    path = shutil.which("nvcc") or next((p for p in ("/usr/local/cuda/bin/nvcc", "/usr/local/bin/nvcc")
                                         if os.path.exists(p)), None)
    if path is None:
        unavailable("nvcc is not on PATH")
    return path


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("file", CU_FILES)
def test_nvcc_compiles_to_ptx(nvcc, file, arch, tmp_path):
    ptx = nvcc_ptx(nvcc, file, arch, tmp_path / f"{file}.{arch}.ptx")
    assert entries(ptx) == set(kernels.KERNELS[file])


def nvcc_ptx(nvcc: str, file: str, arch: str, out, *defines: str) -> str:
    """PTX of kernels/``file`` for ``arch`` from nvcc, warnings as errors; fails the test with the log."""
    folder = kernels.kernel_dir()
    result = subprocess.run([nvcc, "-std=c++17", "-ptx", f"-arch={arch}", "-Werror", "all-warnings",
                             *defines, "-I", str(folder), str(folder / file), "-o", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, f"nvcc failed on kernels/{file} for {arch}:\n{result.stderr}"
    return out.read_text()


def test_nvcc_compiles_double_atomics_for_sm_52(nvcc, tmp_path):
    """The compare-and-swap atomicAdd(double*) that sm_5x needs, built for sm_52 (CUDA ≤ 12 nvcc)."""
    listed = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True).stdout.split()
    if "compute_52" not in listed:
        pytest.skip(f"this nvcc has no sm_52 target (it lists {', '.join(listed)}); CUDA 13 dropped "
                    "sm_50–72, so the fallback is compiled through -DGPUBP_CAS_ATOMIC_ADD instead")
    ptx = nvcc_ptx(nvcc, "output.cu", "sm_52", tmp_path / "output.sm_52.ptx")
    assert "atom.global.cas.b64" in ptx and "atom.global.add.f64" not in ptx


@pytest.mark.parametrize("arch", ARCHS[:1])
def test_nvcc_compiles_the_forced_compare_and_swap_atomic(nvcc, arch, tmp_path):
    ptx = nvcc_ptx(nvcc, "output.cu", arch, tmp_path / "output.cas.ptx", "-DGPUBP_CAS_ATOMIC_ADD")
    assert "atom.global.cas.b64" in ptx and "atom.global.add.f64" not in ptx
    assert entries(ptx) == set(kernels.KERNELS["output.cu"])


@pytest.fixture(scope="module")
def nvrtc():
    """Skip (fail under CI) where NVRTC cannot be loaded without a GPU."""
    try:
        kernels.compile_offline(CU_FILES[0])
    except kernels.KernelCompileError:
        return  # NVRTC works; the tests below report the compile error
    except Exception as exc:  # ImportError, OSError, CuPy's error when libnvrtc is missing
        unavailable(f"NVRTC cannot be loaded ({type(exc).__name__}: {exc}); pip install gpubp[nvrtc]")


def nvrtc_compile(file: str, arch: str, ptx: bool) -> bytes | str:
    """Compile like ``cupy.RawModule(code=module_source(file), options=NVRTC_OPTIONS)`` on that arch."""
    try:
        return kernels.compile_offline(file, arch, ptx=ptx)
    except kernels.KernelCompileError as exc:
        pytest.fail(str(exc))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("file", CU_FILES)
def test_nvrtc_compiles_runtime_source(nvrtc, file, arch):
    cubin = nvrtc_compile(file, arch, ptx=False)
    assert len(cubin) > 0


@pytest.mark.parametrize("file", CU_FILES)
def test_nvrtc_exports_registered_kernels(nvrtc, file):
    ptx = nvrtc_compile(file, "compute_90", ptx=True)
    text = ptx.decode() if isinstance(ptx, bytes) else ptx
    assert entries(text) == set(kernels.KERNELS[file])


def test_runtime_source_expands_local_headers():
    source = kernels.module_source("output.cu")
    assert '#include "' not in source
    assert source.count("enum Activation") == 1 and source.count("enum Cost") == 1
    # errors point at the right file and line: after the headers, the .cu file resumes at its own line
    cu_lines = (kernels.kernel_dir() / "output.cu").read_text().splitlines()
    marker = next(i for i, line in enumerate(cu_lines) if "namespace gpubp {" in line)
    expanded = source.splitlines()
    at = max(i for i, line in enumerate(expanded) if line.startswith('#line') and "output.cu" in line)
    first_line = int(expanded[at].split()[1])
    assert expanded[at + 1 + marker - (first_line - 1)] == cu_lines[marker]


def test_unknown_kernel_file_is_a_value_error():
    with pytest.raises(ValueError, match="unknown kernel file"):
        kernels.module_source("nope.cu")


def test_nvrtc_compiles_for_sm_52_where_it_has_the_target(nvrtc):
    from cupy.cuda import nvrtc as bindings

    supported = bindings.getSupportedArchs()
    if 52 not in supported:
        pytest.skip(f"NVRTC {'.'.join(map(str, bindings.getVersion()))} has no sm_52 target (it supports "
                    f"sm_{', sm_'.join(map(str, supported))})")
    assert len(nvrtc_compile("output.cu", "compute_52", ptx=True)) > 0
