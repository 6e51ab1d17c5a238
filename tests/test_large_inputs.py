"""Inputs too large for the machine, or too large to be real, are one-line errors made before the work:

* an integer class label beyond int64 is a ValueError naming its row and column (never OverflowError);
* a CSV row longer than ``MAX_ROW_CHARS`` stops the reading there: a ``.csv`` that is /dev/zero is an error
  naming the file and the line, with the child's peak memory far under the issue's bound;
* a CSV of 80,000 columns is read, loaded and applied to a model in linear time (columns found by name
  through a dict, not list.index);
* a network whose parameters and gradients cannot fit in the device's available memory is refused before
  anything is allocated, saying how much it needs and how much there is.
"""

from __future__ import annotations

import os
import time
import tracemalloc
from pathlib import Path

import child
import numpy as np
import pytest
from emulated_gpu import emulated_gpus
from test_own_data import write_csv

import gpubp
import gpubp.network as network_module
from gpubp.backend import get_ops
from gpubp.backend.ops import Ops, host_available_memory
from gpubp.cli import main
from gpubp.datasets import load_csv
from gpubp.datasets import table as table_module
from gpubp.datasets.table import MAX_ROW_CHARS, read_table
from gpubp.prediction import read_inputs

#: a bound no linear reading of the wide file comes near (it takes well under a second), while the
#: quadratic one took over a minute
WIDE_SECONDS = 10.0


def run(capsys, *argv) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(status: int, out: str, err: str, *fragments: str) -> None:
    assert status == 2, (out, err)
    assert err.startswith("gpubp: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "epoch 1/" not in out
    for fragment in fragments:
        assert fragment in err, err


# ---- integer labels beyond int64 ------------------------------------------------------------------------
@pytest.mark.parametrize("label, shown", [
    ("99999999999999999999999", "'99999999999999999999999'"),
    ("-9223372036854775809", "'-9223372036854775809'"),  # one below int64's smallest
    ("9" * 5000, "(5,000 characters)"),  # past Python's 4,300-digit limit of int(str): never converted
])
def test_an_integer_label_beyond_int64_is_an_error_naming_the_row_and_column(capsys, tmp_path, label, shown):
    path = write_csv(tmp_path / "big.csv", ["a", "b", "y"],
                     [[0.5, 1, 3], [1.5, 0, label], [2.5, 1, 3], [0.5, 2, 4]])
    fragments = (str(path), "row 2 (line 3), column 'y'", shown, "beyond the 64-bit range", "make them text")
    with pytest.raises(ValueError) as info:
        load_csv(path)
    assert all(fragment in str(info.value) for fragment in fragments), info.value
    assert len(str(info.value)) < 400
    model = tmp_path / "m.npz"
    assert_one_line_error(*run(capsys, "train", "--data", path, "--save", model), *fragments)
    assert not model.exists()


def test_labels_at_the_ends_of_int64_are_classes(tmp_path):
    low, high = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    path = write_csv(tmp_path / "ends.csv", ["a", "y"], [[i, label] for i, label in
                                                          enumerate([low, high, "+007", high, low, 7] * 3)])
    data = load_csv(path)
    assert data.class_names == [low, 7, high]


# ---- rows of bounded length ------------------------------------------------------------------------------
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="no /dev/zero or /proc here")
def test_a_csv_that_is_dev_zero_stops_at_the_row_limit_with_bounded_memory(tmp_path):
    """Before the limit the first line was read until MemoryError (3.8 GB on a 24 GB machine)."""
    zero = tmp_path / "zero.csv"
    zero.symlink_to("/dev/zero")
    before = child.digests(tmp_path)
    result = child.cli("train", "--data", str(zero), "--save", str(tmp_path / "m.npz"), tmp_path=tmp_path)
    peak = result.peak_bytes
    assert_one_line_error(result.returncode, result.stdout, result.stderr, str(zero), "line 1:",
                          f"longer than {MAX_ROW_CHARS:,} characters")
    assert peak < child.PEAK_LIMIT / 2, peak
    assert child.digests(tmp_path) == before
    with pytest.raises(ValueError, match="line 1: a row longer than"):
        read_table(zero)


def test_the_row_limit_counts_every_line_of_a_quoted_row_and_spares_rows_within_it(tmp_path, monkeypatch):
    monkeypatch.setattr(table_module, "MAX_ROW_CHARS", 20)
    fits = tmp_path / "fits.csv"
    fits.write_text("a,y\n" + "1234567,12345678901\n")  # 20 characters with the line end
    assert read_table(fits).rows == [["1234567", "12345678901"]]
    long = tmp_path / "long.csv"
    long.write_text("a,y\n" + "1234567,123456789012\n")
    with pytest.raises(ValueError, match=f"{long}: line 2: a row longer than 20 characters"):
        read_table(long)
    quoted = tmp_path / "quoted.csv"
    quoted.write_text('a,y\n1,"one\ntwo\nthree\nfour\nfive"\n2,ok\n')
    with pytest.raises(ValueError, match="lines 2–5: a row longer than 20 characters"):
        read_table(quoted)
    quoted.write_text('a,y\n1,"one\ntwo"\n2,"three\nfour"\n')  # each row within the limit
    assert read_table(quoted).lines == [3, 5]


# ---- wide files in linear time ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wide_csv(tmp_path_factory) -> Path:
    """80,000 feature columns and a class column, 3 rows."""
    path = tmp_path_factory.mktemp("wide") / "wide.csv"
    n = 80_000
    rows = [[f"{(i + j) % 7 / 4}" for j in range(n)] + [i % 2] for i in range(3)]
    return write_csv(path, [f"c{j}" for j in range(n)] + ["y"], rows)


def test_a_csv_of_80000_columns_is_read_and_loaded_in_linear_time(wide_csv):
    """Quadratic before: header.count per name, header.index per column (69 s to read, 79 s to load)."""
    start = time.perf_counter()
    table = read_table(wide_csv)
    data = load_csv(wide_csv)
    seconds = time.perf_counter() - start
    assert seconds < WIDE_SECONDS, seconds
    assert len(table.header) == 80_001 and data.n_features == 80_000
    X = np.concatenate([data.train[0], data.validation[0], data.test[0]])
    assert sorted(X[:, 5].tolist()) == [0.0, 1.25, 1.5]


def test_a_model_of_80000_features_takes_their_columns_by_name_in_linear_time(wide_csv):
    """The model's features in the reverse of the file's order; quadratic before (``name not in`` lists)."""
    net = gpubp.Network([80_000, 2], device="cpu", seed=0)
    net.metadata.update(feature_names=[f"c{j}" for j in reversed(range(80_000))], target="y")
    start = time.perf_counter()
    X = read_inputs(wide_csv, net)
    seconds = time.perf_counter() - start
    assert seconds < WIDE_SECONDS, seconds
    assert X.shape == (3, 80_000)
    np.testing.assert_array_equal(X[:, ::-1], read_table(wide_csv).numeric([f"c{j}" for j in range(80_000)]))


def test_column_lists_in_messages_are_cut_short(tmp_path):
    path = write_csv(tmp_path / "many.csv", [f"c{j}" for j in range(100)], [list(range(100))])
    with pytest.raises(ValueError) as info:
        load_csv(path, target="colour")
    assert "the columns are c0, c1," in str(info.value) and "c19, … (100 in all)" in str(info.value)
    assert "c20" not in str(info.value)


# ---- networks that cannot fit ----------------------------------------------------------------------------
@pytest.mark.skipif(host_available_memory() is None, reason="this system does not say how much memory is free")
def test_a_network_of_a_trillion_parameters_is_refused_at_once(cpu_backend):
    start = time.perf_counter()
    with pytest.raises(ValueError) as info:
        gpubp.Network([10**6, 10**6], device="cpu")
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert message.startswith("sizes [1000000, 1000000] need 1,000,001,000,000 parameters: 16.0 TB on cpu for "
                              "the float32 parameters (4.0 TB), their gradients (4.0 TB), their float64 "
                              "initial values (8.0 TB), but cpu has "), message
    assert message.endswith(" available")


@pytest.mark.parametrize("dtype, parts", [
    ("float32", "the float32 parameters (4.8 kB), their gradients (4.8 kB), their float64 initial values "
                "(9.6 kB)"),
    ("float64", "the float64 parameters (9.6 kB), their gradients (9.6 kB)"),  # the initial values are them
])
def test_the_memory_check_compares_construction_with_the_backends_available_memory(cpu_backend, monkeypatch,
                                                                                  dtype, parts):
    need = 16 * 1202  # [3, 200, 2] has 1,202 parameters; on the CPU 16 bytes each in either dtype
    monkeypatch.setattr(Ops, "available_memory", lambda self: need - 1)
    with pytest.raises(ValueError) as info:
        gpubp.Network([3, 200, 2], device="cpu", dtype=dtype)
    assert str(info.value) == (f"sizes [3, 200, 2] need 1,202 parameters: 19.2 kB on cpu for {parts}, but cpu "
                               "has 19.2 kB available")
    monkeypatch.setattr(Ops, "available_memory", lambda self: need)
    assert gpubp.Network([3, 200, 2], device="cpu", dtype=dtype).sizes == [3, 200, 2]
    monkeypatch.setattr(Ops, "available_memory", lambda self: None)  # unknown: no check
    assert gpubp.Network([3, 200, 2], device="cpu", dtype=dtype).sizes == [3, 200, 2]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_memory_check_counts_what_construction_allocates(cpu_backend, dtype):
    """NumPy reports its arrays to tracemalloc: the peak while constructing is the needs the check adds up."""
    sizes = [300, 2000, 10]
    gpubp.Network(sizes, device="cpu")  # the backend loaded first
    tracemalloc.start()
    try:
        net = gpubp.Network(sizes, device="cpu", dtype=dtype)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    need = sum(size for _, size, _ in net._construction_needs())
    assert need == 16 * (300 * 2000 + 2000 * 10 + 2000 + 10)
    assert need <= peak < need + 100_000, (need, peak)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="no /proc here")
def test_the_cli_refuses_too_large_sizes_in_one_line_with_bounded_memory(tmp_path, monkeypatch):
    """The issue's ``--sizes 2,1000000000,2`` (80 GB) fits a large machine; a thousand times that fits none.
    GPUBP_CPU_BACKEND=numpy: importing Numba alone costs 155 MB of the child's memory."""
    data = write_csv(tmp_path / "two.csv", ["a", "b", "y"], [[i % 3, i % 5, i % 2] for i in range(30)])
    monkeypatch.setenv("GPUBP_CPU_BACKEND", "numpy")
    result = child.cli("train", "--data", str(data), "--sizes", "2,1000000000000,2", tmp_path=tmp_path)
    peak = result.peak_bytes
    assert_one_line_error(result.returncode, result.stdout, result.stderr,
                          "sizes [2, 1000000000000, 2] need 5,000,000,000,002 parameters: 80.0 TB on cpu",
                          "but cpu has ")
    assert peak < child.PEAK_LIMIT, peak


def test_fit_memory_counts_the_optimizer_state_the_epoch_copy_a_batch_and_the_data(monkeypatch):
    net = gpubp.Network([3, 200, 2], device="cpu", seed=0)
    n = 1202 * 4  # bytes of the float32 parameters
    batch = 3 * 10 * 202 * 4  # zˡ, aˡ and δˡ of a batch of 10
    monkeypatch.setattr(Ops, "available_memory", lambda self: 2 * n + 3 * n + batch + 1000 - 1)
    with pytest.raises(ValueError) as info:
        net.check_fit_memory("Adam", 10, data_bytes=1000)
    assert str(info.value) == ("fit with adam, batch size 10, on sizes [3, 200, 2] needs 49.3 kB on cpu for the "
                               "adam state (9.6 kB), the copy taken at each epoch's start (14.4 kB), a batch's "
                               "zˡ, aˡ and δˡ (24.2 kB), the shuffled copy of the data (1.0 kB), but cpu has "
                               "49.3 kB available")
    net.check_fit_memory("adam", 10, data_bytes=999)
    net.fit(np.zeros((4, 3)), np.zeros(4, dtype=np.int64), epochs=1, batch_size=2, lr=0.1, optimizer="adam",
            progress=False)
    net.check_fit_memory("adam", 10, data_bytes=999 + 2 * n)  # the kept optimizer holds its state already
    with pytest.raises(ValueError, match="no_such"):
        net.check_fit_memory("no_such", 10)


# ---- GPUs: the backend's free memory ---------------------------------------------------------------------
def test_a_gpu_network_is_checked_against_the_free_memory_of_its_own_gpu(emulation_build, monkeypatch):
    with emulated_gpus(emulation_build) as fake:
        ops = get_ops("cuda:1")
        free, free_on_0 = ops.available_memory(), get_ops("cuda:0").available_memory()
        with fake.cuda.Device(1):
            block = fake.zeros(1000, dtype=np.float64)
        assert ops.available_memory() == free - 8000 and get_ops("cuda:0").available_memory() == free_on_0
        del block
        used = fake.GPU_MEMORY - ops.available_memory()  # arrays of earlier tests not yet collected
        # room for the float32 parameters and gradients less one byte
        monkeypatch.setattr(fake, "GPU_MEMORY", used + 2 * 1202 * 4 - 1)
        with pytest.raises(ValueError) as info:
            gpubp.Network([3, 200, 2], device="cuda:1")
        assert str(info.value) == ("sizes [3, 200, 2] need 1,202 parameters: 9.6 kB on cuda:1 for the float32 "
                                   "parameters (4.8 kB), their gradients (4.8 kB), but cuda:1 has 9.6 kB available")
        monkeypatch.setattr(fake, "POOL_FREE_BYTES", 1)  # what CuPy's pool holds unused counts as free
        assert gpubp.Network([3, 200, 2], device="cuda:1").device == "cuda:1"
        monkeypatch.setattr(network_module, "host_available_memory", lambda: 1202 * 12 - 1)
        with pytest.raises(ValueError) as info:
            gpubp.Network([3, 200, 2], device="cuda:1")
        assert str(info.value).endswith("14.4 kB on cpu for their float64 initial values (9.6 kB), their "
                                        "float32 copy uploaded to cuda:1 (4.8 kB), but cpu has 14.4 kB available")


def test_host_available_memory_is_positive_and_at_most_the_machine():
    available = host_available_memory()
    if available is None:
        pytest.skip("this system does not say how much memory is free")
    assert 0 < available <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
