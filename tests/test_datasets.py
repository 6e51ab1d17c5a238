"""Data loading: the IDX parser on generated files, the MNIST loader's checks, the digits split."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from gpubp.datasets import MissingDataError, data_root, load, load_digits, load_mnist, parse_idx, read_idx
from gpubp.datasets import mnist as mnist_module

MNIST_DIR = Path(os.environ.get("GPUBP_DATA", "/nonexistent")) / "mnist"
needs_mnist = pytest.mark.skipif(
    not (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="MNIST not found: set GPUBP_DATA to a folder whose mnist/ holds the four IDX .gz files")


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """An IDX file: magic 00 00 TT DD, big-endian dims, then the data."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def stored_gzip(data: bytes) -> bytes:
    """``data`` gzipped without compression: contents this regular would otherwise expand more than the
    32× that gpubp allows a compressed file (against zip bombs)."""
    return gzip.compress(data, compresslevel=0)


def write_fake_mnist(folder: Path, n_train: int = 10_010, n_test: int = 20, gz: bool = True) -> None:
    """Four MNIST-shaped IDX files of made-up content (image i filled with i % 256, label i % 10)."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.repeat((np.arange(n) % 256).astype(np.uint8), 28 * 28).reshape(n, 28, 28)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            data = idx_bytes(array)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(stored_gzip(data))
            else:
                (folder / name).write_bytes(data)


# ---- IDX --------------------------------------------------------------------------------------------
def test_parse_idx_round_trip_uint8_and_big_endian_types():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(parse_idx(idx_bytes(images)), images)
    ints = np.array([1, -2, 70000], dtype=">i4")
    np.testing.assert_array_equal(parse_idx(idx_bytes(ints, 0x0C)), [1, -2, 70000])
    doubles = np.array([[0.5, -1.25]], dtype=">f8")
    np.testing.assert_array_equal(parse_idx(idx_bytes(doubles, 0x0E)), [[0.5, -1.25]])


@pytest.mark.parametrize("data, message", [
    (b"\x00\x00", "too short"),
    (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "not an IDX file"),
    (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "not an IDX file"),
    (b"\x00\x00\x08\x00", "not an IDX file"),
    (b"\x00\x00\x08\x03" + struct.pack(">I", 5), "truncated IDX header"),
    (b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"abc", "truncated"),
    (b"\x00\x00\x08\x01" + struct.pack(">I", 2) + b"abc", "trailing bytes"),
])
def test_parse_idx_rejects_bad_bytes_naming_the_file(data, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_idx(data, "some-file.idx")
    assert "some-file.idx" in str(info.value)


def test_read_idx_gz_and_damaged_gz(tmp_path):
    labels = np.array([5, 0, 4], dtype=np.uint8)
    good = tmp_path / "labels.gz"
    good.write_bytes(gzip.compress(idx_bytes(labels)))
    np.testing.assert_array_equal(read_idx(good), labels)
    cut = tmp_path / "cut.gz"
    cut.write_bytes(good.read_bytes()[:-6])
    with pytest.raises(ValueError, match="cut.gz"):
        read_idx(cut)


# ---- MNIST loader on generated files ------------------------------------------------------------
def test_fake_mnist_book_and_full_split(tmp_path):
    write_fake_mnist(tmp_path / "mnist")
    book = load_mnist(tmp_path, verify=False)
    assert [len(s[0]) for s in (book.train, book.validation, book.test)] == [10, 10_000, 20]
    X, y = book.train
    assert X.shape == (10, 784) and X.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_allclose(X[3], 3 / 255)
    np.testing.assert_array_equal(book.validation[1][:3], [0, 1, 2])  # image 10 starts the validation
    full = load_mnist(tmp_path, split="full", dtype="float64", verify=False)
    assert full.validation is None and len(full.train[0]) == 10_010 and full.train[0].dtype == np.float64
    assert full.n_features == 784 and full.n_classes == 10


def test_decompressed_files_and_a_root_holding_the_files_itself(tmp_path):
    write_fake_mnist(tmp_path, gz=False)
    data = load_mnist(tmp_path, split="full", verify=False)
    assert len(data.train[0]) == 10_010


def test_data_dir_from_env_then_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUBP_DATA", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("GPUBP_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data_root() == tmp_path / "cache" / "gpubp"


def test_missing_files_say_which_files_go_where(tmp_path):
    (tmp_path / "mnist").mkdir()
    write_fake_mnist(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(MissingDataError) as info:
        load_mnist(tmp_path, verify=False)
    message = str(info.value)
    assert message.startswith(f"MNIST files missing from {tmp_path / 'mnist'}: t10k-labels-idx1-ubyte.gz. ")
    assert isinstance(info.value, FileNotFoundError)


def test_checksum_mismatch_is_a_value_error_naming_the_file(tmp_path):
    write_fake_mnist(tmp_path / "mnist")
    with pytest.raises(ValueError, match="SHA-256 does not match") as info:
        load_mnist(tmp_path)
    assert "train-images-idx3-ubyte.gz" in str(info.value)


def test_checksum_accepts_known_decompressed_contents(tmp_path, monkeypatch):
    """A file passes when its decompressed contents match, however it was compressed."""
    write_fake_mnist(tmp_path / "mnist")
    sums = {}
    for path in (tmp_path / "mnist").iterdir():
        sums[path.name.removesuffix(".gz")] = hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()
    monkeypatch.setattr(mnist_module, "SHA256", sums)
    assert len(load_mnist(tmp_path).test[0]) == 20


def test_wrong_shapes_and_mismatched_counts(tmp_path):
    write_fake_mnist(tmp_path / "mnist")
    labels = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(np.zeros(19, np.uint8))))
    with pytest.raises(ValueError, match="expected 20 uint8 labels"):
        load_mnist(tmp_path, verify=False)
    labels.write_bytes(gzip.compress(idx_bytes(np.full(20, 12, np.uint8))))
    with pytest.raises(ValueError, match="out of range"):
        load_mnist(tmp_path, verify=False)
    images = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(stored_gzip(idx_bytes(np.zeros((20, 28, 27), np.uint8))))
    with pytest.raises(ValueError, match=r"shape \(n, 28, 28\)"):
        load_mnist(tmp_path, verify=False)


def test_truncated_mnist_file_names_it(tmp_path):
    write_fake_mnist(tmp_path / "mnist")
    path = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    path.write_bytes(stored_gzip(gzip.decompress(path.read_bytes())[:-1]))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz: IDX file truncated"):
        load_mnist(tmp_path, verify=False)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown split"):
        load_mnist(tmp_path, split="half")
    with pytest.raises(ValueError, match="unknown data set"):
        load("cifar")
    write_fake_mnist(tmp_path / "mnist")
    with pytest.raises(ValueError, match="dtype must be"):
        load_mnist(tmp_path, dtype="int8", verify=False)
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        load_mnist(tmp_path, device="tpu", verify=False)


# ---- real MNIST ---------------------------------------------------------------------------------------
@pytest.mark.mnist
@needs_mnist
def test_real_mnist_matches_the_published_figures():
    data = load_mnist(MNIST_DIR.parent)
    X, y = data.train
    assert X.shape == (50_000, 784) and data.validation[0].shape == (10_000, 784)
    np.testing.assert_array_equal(y[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
    np.testing.assert_array_equal(data.test[1][:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])
    assert 0.0 == X.min() and X.max() == 1.0
    full = load_mnist(MNIST_DIR.parent, split="full")
    assert abs(float(full.train[0].mean()) - 0.1307) < 1e-4
    assert abs(float(full.train[0].std()) - 0.3081) < 1e-4


# ---- digits ------------------------------------------------------------------------------------------
def test_digits_fixed_split():
    pytest.importorskip("sklearn", reason="digits needs scikit-learn (pip install gpubp[digits])")
    data = load_digits()
    assert [len(s[0]) for s in (data.train, data.validation, data.test)] == [1197, 300, 300]
    assert data.n_features == 64 and data.train[0].max() == 1.0 and data.train[0].min() == 0.0
    again = load_digits(split="full", dtype="float64")
    assert again.validation is None and len(again.train[0]) == 1497
    np.testing.assert_array_equal(again.test[1], data.test[1])  # the same fixed test set
    np.testing.assert_allclose(again.train[0][:1197], data.train[0])


def test_digits_without_sklearn_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(ImportError, match=r"pip install gpubp\[digits\]"):
        load_digits()


def test_a_dataset_unpacks_into_its_splits():
    from gpubp.datasets import Dataset

    X, y = np.zeros((4, 3), np.float32), np.arange(4)
    data = Dataset("toy", (X, y), None, (X[:2], y[:2]), n_classes=4)
    train, validation, test = data
    assert train[0] is X and validation is None and test[1].tolist() == [0, 1]
