"""Hostile model and data files, each made small here: the loaders raise ValueError naming the file and what
is wrong (never MemoryError, RecursionError, TypeError, AttributeError), before a network is built and
after reading little; the command line exits 2 with one ``gpubp: error:`` line, its peak memory under
``child.PEAK_LIMIT``, and every file it was given unchanged."""

from __future__ import annotations

import gzip
import io
import json
import math
import struct
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import gpubp
from gpubp import npzfile
from gpubp.checkpoint import read_checkpoint
from gpubp.datasets import load, load_idx, load_mnist, load_npz, read_idx
from gpubp.network import Network

import child

#: what a zip or gzip bomb here expands to: past the peak-memory bound, made in well under a second
BOMB_BYTES = 256 * 2**20
TIB = 2**40


# ---- making hostile files --------------------------------------------------------------------------------
def npy_header(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def write_zip(path: Path, members: dict[str, bytes], bomb: str | None = None, row: tuple[int, ...] = (),
              descr: str = "<f8") -> Path:
    """An archive of the stored ``members``, plus, when named, a deflated member ``bomb``: an array of zeros
    of rows ``row`` whose header and data fill BOMB_BYTES exactly (an honest header: only its size is
    hostile)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, data in members.items():
            archive.writestr(name, data, compress_type=zipfile.ZIP_STORED)
        if bomb is not None:
            item = np.dtype(descr).itemsize * math.prod(row)
            rows = BOMB_BYTES // item
            with archive.open(bomb, "w", force_zip64=True) as f:
                f.write(npy_header((rows, *row), descr))
                write_zeros(f, rows * item)
    return path


def write_zeros(f, n: int) -> None:
    chunk = bytes(2**20)
    for start in range(0, n, len(chunk)):
        f.write(chunk[:n - start])


def idx_header(type_code: int, shape: tuple[int, ...]) -> bytes:
    return bytes([0, 0, type_code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


def idx_gz_bomb(path: Path, shape_tail: tuple[int, ...] = (28, 28)) -> Path:
    """A .gz IDX file of uint8 zeros whose header is honest and whose contents are BOMB_BYTES long."""
    rows = BOMB_BYTES // math.prod(shape_tail)
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(idx_header(0x08, (rows, *shape_tail)))
        write_zeros(f, rows * math.prod(shape_tail))
    return path


def idx_file(path: Path, array: np.ndarray) -> Path:
    data = idx_header(0x08, array.shape) + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def idx_folder(folder: Path, images: Callable[[Path], object], gz: bool = True) -> Path:
    """``folder`` holding ten labels and the images file that ``images(path)`` writes."""
    suffix = ".gz" if gz else ""
    folder.mkdir()
    images(folder / f"train-images-idx3-ubyte{suffix}")
    idx_file(folder / f"train-labels-idx1-ubyte{suffix}", np.zeros(10))
    return folder


def text_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def good_model(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """A saved model with optimizer state, metadata and a shuffle generator, and its fields."""
    folder = tmp_path_factory.mktemp("good")
    rng = np.random.default_rng(0)
    net = gpubp.Network([4, 5, 3], activation="relu", output="softmax", cost="log_likelihood", device="cpu",
                        dtype="float64", seed=1)
    net.fit(rng.normal(size=(30, 4)), rng.integers(0, 3, 30), epochs=1, batch_size=8, lr=0.01,
            optimizer="adam", seed=2, progress=False)
    net.metadata.update(task="classification", class_names=["a", "b", "c"], my_own_key={"any": [1, "x"]})
    path = folder / "model.npz"
    net.save(path)
    with np.load(path) as data:
        return path, dict(data)


def model_with(folder: Path, fields: dict[str, np.ndarray], **changes) -> Path:
    path = folder / "model.npz"
    np.savez(path, **{**fields, **{k: np.asarray(v) for k, v in changes.items()}})
    return path


def model_members(fields: dict[str, np.ndarray], without: str) -> dict[str, bytes]:
    return {f"{k}.npy": npy_bytes(v) for k, v in fields.items() if k != without}


DEEP_JSON = "[" * 100_000 + "]" * 100_000

#: name -> (make the file in a folder from the good model's fields, a fragment of the message)
MODELS: dict[str, tuple[Callable[[Path, dict], Path], str]] = {
    "sizes [1e9, 1e9]": (lambda d, f: model_with(d, f, sizes=np.array([10**9, 10**9])),
                     "sizes [1000000000, 1000000000] need 1000000001000000000"),
    "sizes [15000, 15000]": (lambda d, f: model_with(d, f, sizes=np.array([15000, 15000])),
                       "sizes [15000, 15000] need 225015000"),
    "optimizer buffer": (lambda d, f: model_with(d, f, **{"optimizer.m": np.zeros(10**6)}),
                         "optimizer.m has shape (1000000,)"),
    "zip bomb": (lambda d, f: write_zip(d / "model.npz", model_members(f, "params"), bomb="params.npy"),
                 "member 'params.npy' expands 1,0"),
    "8 TiB header": (lambda d, f: write_zip(d / "model.npz", {**model_members(f, "params"),
                                                              "params.npy": npy_header((TIB,)) + bytes(8)}),
                     "member 'params.npy' claims shape (1099511627776,) of float64 (8.8 TB)"),
    "JSON nested 100,000 deep": (lambda d, f: model_with(d, f, metadata=DEEP_JSON),
                                 "field 'metadata' holds JSON nested too deeply"),
    "feature_names 5": (lambda d, f: model_with(d, f, metadata=json.dumps({"feature_names": 5})),
                        "metadata 'feature_names' must be a list of column names (text) or null; got 5"),
    "data a string": (lambda d, f: model_with(d, f, metadata=json.dumps({"data": "str"})),
                      "metadata 'data' must be an object"),
    "split seed a string": (lambda d, f: model_with(d, f, metadata=json.dumps({"data": {"split_seed": "x"}})),
                            "metadata 'data.split_seed' must be a non-negative integer"),
    "standardization damaged": (
        lambda d, f: model_with(d, f, metadata=json.dumps({"standardization": {"mean": [0], "std": [1]}})),
        "metadata 'standardization' is damaged: expected 4 finite means"),
    "shuffle state nested deep": (lambda d, f: model_with(d, f, shuffle_rng=DEEP_JSON),
                                  "field 'shuffle_rng' holds JSON nested too deeply"),
    "shuffle state not a state": (lambda d, f: model_with(d, f, shuffle_rng='{"bit_generator": 5}'),
                                  "field 'shuffle_rng' is not a generator state"),
    "CSV named .npz": (lambda d, f: text_file(d / "model.npz", "a,b,c\n1,2,3\n"),
                       "not an .npz archive: it starts with 'a,b,c…', which looks like text (a CSV?)"),
}


@pytest.fixture
def no_network(monkeypatch):
    """Building a Network fails the test: a hostile file must be refused before (a CPU network imports
    Numba, which alone takes a large part of the memory bound)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a Network was built for a hostile file")
    monkeypatch.setattr(Network, "__init__", refuse)


@pytest.mark.parametrize("case", MODELS)
def test_hostile_model_files_raise_value_error_before_a_network_is_built(case, good_model, tmp_path, no_network):
    make, fragment = MODELS[case]
    path = make(tmp_path, good_model[1])
    for read in (gpubp.load, read_checkpoint):
        with pytest.raises(ValueError) as info:
            read(path)
        assert fragment in str(info.value) and str(path) in str(info.value), str(info.value)


@pytest.mark.parametrize("case", ["sizes [1e9, 1e9]", "sizes [15000, 15000]", "zip bomb", "8 TiB header",
                                  "JSON nested 100,000 deep", "feature_names 5", "CSV named .npz"])
@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_hostile_model_files_on_the_command_line(case, command, good_model, tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    path = MODELS[case][0](folder, good_model[1])
    inputs = folder / "inputs.csv"
    inputs.write_text("a,b,c,d\n1,2,3,4\n")
    args = ["evaluate", str(path)] if command == "evaluate" else ["predict", str(path), str(inputs)]
    assert_fails_cleanly(folder, tmp_path, args, str(path), MODELS[case][1])


def assert_fails_cleanly(folder: Path, tmp_path: Path, args: list[str], *fragments: str) -> child.Result:
    """``gpubp args…`` in a child: exit 2, one error line holding ``fragments``, peak memory under the
    bound, the files in ``folder`` unchanged and none added."""
    before = child.digests(folder)
    result = child.cli(*args, tmp_path=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("gpubp: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "out of memory" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    assert result.peak_bytes < child.PEAK_LIMIT, f"peak {result.peak_bytes / 2**20:.0f} MiB"
    assert child.digests(folder) == before
    return result


# ---- data files ------------------------------------------------------------------------------------------
Y = npy_bytes(np.arange(40) % 2)

#: name -> (make the data file in a folder, a fragment of the message)
DATA: dict[str, tuple[Callable[[Path], Path], str]] = {
    "zip bomb": (lambda d: write_zip(d / "data.npz", {"y.npy": Y}, bomb="X.npy", row=(64,)),
                 "member 'X.npy' expands 1,0"),
    "8 TiB header": (lambda d: write_zip(d / "data.npz", {"X.npy": npy_header((TIB, 1)) + bytes(8), "y.npy": Y}),
                     "member 'X.npy' claims shape (1099511627776, 1) of float64 (8.8 TB)"),
    "member not .npy": (lambda d: write_zip(d / "data.npz", {"X.npy": npy_bytes(np.ones((40, 2))), "y.npy": Y,
                                                             "notes.txt": b"mine"}),
                        "member 'notes.txt' is not a distinct .npy array"),
    "0-d X": (lambda d: write_zip(d / "data.npz", {"X.npy": npy_bytes(np.array(5.0)), "y.npy": Y}),
              "the train features are one value (a 0-d array)"),
    "0 rows": (lambda d: write_zip(d / "data.npz", {"X.npy": npy_bytes(np.ones((0, 3))),
                                                    "y.npy": npy_bytes(np.zeros(0, np.int64))}),
               "data.npz: no samples (0 rows)"),
    "CSV named .npz": (lambda d: text_file(d / "data.npz", "a,b,c\n1,2,3\n"),
                       "data.npz: not an .npz archive or .npy array: it starts with 'a,b,c…', which looks like "
                       "text (a CSV?)"),
    "labels of two kinds": (lambda d: write_zip(d / "data.npz", {
        "x_train.npy": npy_bytes(np.ones((4, 2))), "y_train.npy": npy_bytes(np.arange(4)),
        "x_test.npy": npy_bytes(np.ones((2, 2))), "y_test.npy": npy_bytes(np.array(["a", "b"]))}),
        "training targets are int64 but test targets <U1"),
    "IDX gz bomb": (lambda d: idx_folder(d / "idx", idx_gz_bomb), "train-images-idx3-ubyte.gz: it expands 1,0"),
    "IDX claiming 1e9 images": (
        lambda d: idx_folder(d / "idx", lambda p: p.write_bytes(idx_header(8, (10**9, 28, 28))), gz=False),
        "IDX file truncated: header says shape (1000000000, 28, 28)"),
}


@pytest.mark.parametrize("case", DATA)
def test_hostile_data_files_raise_value_error(case, tmp_path):
    make, fragment = DATA[case]
    path = make(tmp_path)
    loaders = [load] + ([load_idx] if path.is_dir() else [load_npz])
    for loader in loaders:
        with pytest.raises(ValueError) as info:
            loader(path)
        assert fragment in str(info.value), str(info.value)


@pytest.mark.parametrize("case", DATA)
def test_hostile_data_files_on_the_command_line(case, tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    path = DATA[case][0](folder)
    assert_fails_cleanly(folder, tmp_path, ["train", "--data", str(path), "--epochs", "1", "--no-progress"],
                         DATA[case][1])


def test_a_gzip_bomb_among_the_mnist_files(tmp_path):
    folder = tmp_path / "files" / "mnist"
    folder.mkdir(parents=True)
    idx_gz_bomb(folder / "train-images-idx3-ubyte.gz")
    idx_file(folder / "train-labels-idx1-ubyte.gz", np.zeros(10))
    idx_file(folder / "t10k-images-idx3-ubyte.gz", np.zeros((2, 28, 28)))
    idx_file(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(2))
    for verify in (True, False):
        with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz: it expands 1,0"):
            load_mnist(folder.parent, verify=verify)
    with pytest.raises(ValueError, match="more than the 32× gpubp allows against zip bombs"):
        read_idx(folder / "train-images-idx3-ubyte.gz")
    assert_fails_cleanly(folder, tmp_path, ["train", "--data", "mnist", "--data-dir", str(folder.parent)],
                         "it expands")


@pytest.fixture
def small_model(tmp_path, monkeypatch) -> Path:
    """A model taking 4 inputs; its children use NumPy's CPU backend, so that loading it stays well under
    the memory bound and what the bound measures is the reading of the inputs."""
    monkeypatch.setenv("GPUBP_CPU_BACKEND", "numpy")
    path = tmp_path / "model.npz"
    gpubp.Network([4, 3, 2], device="cpu").save(path)
    return path


@pytest.mark.parametrize("name, make, fragment", [
    ("inputs.npz", lambda p: write_zip(p, {}, bomb="X.npy", row=(4,)), "member 'X.npy' expands 1,0"),
    ("inputs.npy", lambda p: p.write_bytes(npy_header((TIB, 4)) + bytes(32)),
     "its array claims shape (1099511627776, 4)"),
    ("inputs-idx3-ubyte.gz", lambda p: idx_gz_bomb(p, (4,)), "it expands 1,0"),
    ("inputs.npz", lambda p: text_file(p, "a,b\n1,2\n"), "looks like text (a CSV?)"),
])
def test_hostile_inputs_to_predict(name, make, fragment, small_model, tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    path = folder / name
    make(path)
    assert_fails_cleanly(folder, tmp_path, ["predict", str(small_model), str(path)], str(path), fragment)


@pytest.mark.parametrize("case", ["zip bomb", "8 TiB header", "IDX gz bomb", "CSV named .npz"])
def test_hostile_data_files_to_evaluate(case, small_model, tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    path = DATA[case][0](folder)
    assert_fails_cleanly(folder, tmp_path, ["evaluate", str(small_model), "--data", str(path)], DATA[case][1])


# ---- the rules of gpubp.npzfile, one by one ----------------------------------------------------------------
def test_members_that_overlap_are_refused(tmp_path):
    """A member whose directory entry claims more compressed bytes than the archive has."""
    path = write_zip(tmp_path / "a.npz", {"X.npy": npy_bytes(np.ones(1000))})
    data = bytearray(path.read_bytes())
    central = data.rfind(b"PK\x01\x02")
    data[central + 10:central + 12] = struct.pack("<H", zipfile.ZIP_DEFLATED)
    data[central + 20:central + 24] = struct.pack("<I", 10**6)  # compressed size
    data[central + 24:central + 28] = struct.pack("<I", 10**7)  # uncompressed size
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="members' headers and data need 1,000,035 bytes, more than the "
                                         r"archive's [\d,]+: they overlap"):
        npzfile.read(path)


def test_only_stored_or_deflated_members_are_read(tmp_path):
    path = tmp_path / "a.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_BZIP2) as archive:
        archive.writestr("X.npy", npy_bytes(np.ones(10)))
    with pytest.raises(ValueError, match="'X.npy' uses zip compression method 12"):
        npzfile.read(path)


def test_a_stored_member_whose_sizes_differ_is_refused(tmp_path):
    path = write_zip(tmp_path / "a.npz", {"X.npy": npy_bytes(np.ones(10))})
    data = bytearray(path.read_bytes())
    central = data.rfind(b"PK\x01\x02")
    data[central + 24:central + 28] = struct.pack("<I", 10**6)
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="stored uncompressed, yet its directory entry gives two sizes"):
        npzfile.read(path)


def test_bytes_after_an_array_are_refused(tmp_path):
    path = write_zip(tmp_path / "a.npz", {"X.npy": npy_bytes(np.ones(10)) + b"extra"})
    with pytest.raises(ValueError, match=r"claims shape \(10,\) of float64 \(80 B\) but holds 85 B"):
        npzfile.read(path)


def test_compressed_files_within_the_rule_load(tmp_path, rng):
    """np.savez_compressed of ordinary data expands a few times: read as before, CRC-32 checked."""
    X, y = rng.normal(size=(200, 5)), rng.integers(0, 3, 200)
    path = tmp_path / "data.npz"
    np.savez_compressed(path, X=X, y=y, names=np.array(["a", "b"]))
    arrays = npzfile.read(path)
    np.testing.assert_array_equal(arrays["X"], X)
    np.testing.assert_array_equal(arrays["y"], y)
    assert len(load_npz(path).train[0]) > 100
    data = bytearray(path.read_bytes())
    at = zipfile.ZipFile(path).getinfo("X.npy").header_offset + 100
    data[at] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged"):
        npzfile.read(path)


def test_unknown_metadata_and_members_pass_but_pickle_never(good_model, tmp_path):
    path, fields = good_model
    extra = model_with(tmp_path, fields, notes=np.arange(5))
    net = gpubp.load(extra, device="cpu")
    assert net.metadata["my_own_key"] == {"any": [1, "x"]} and net.metadata["class_names"] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="member 'notes.npy' holds pickled Python objects"):
        gpubp.load(model_with(tmp_path, fields, notes=np.array([None, 1], dtype=object)))
