"""Your own data in, your model out: IDX folders, .npz and .csv files made here, trained from the CLI and
Python, evaluated on the same held-out split, applied with ``gpubp predict``; every bad input one line."""

from __future__ import annotations

import csv
import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

import gpubp
from gpubp.cli import main
from gpubp.datasets import load, load_csv, load_idx, load_npz

ANIMALS = ("cat", "dog", "bird")


# ---- data made in the tests ----------------------------------------------------------------------------
def idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def pattern_images(rng: np.random.Generator, n: int, k: int = 4, shape=(6, 5)) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images whose class decides which rows are bright (learnable in a few epochs), labels 0..k−1."""
    labels = rng.integers(0, k, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, *shape)).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, label % shape[0]] += 180
    return images, labels


def write_idx_folder(folder: Path, rng: np.random.Generator, n_train: int = 240, n_test: int = 60,
                     gz: bool = True) -> None:
    """A non-MNIST data set in MNIST's layout: 6×5 images, 4 classes."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        if n == 0:
            continue
        images, labels = pattern_images(rng, n)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            name = folder / f"{prefix}-{kind}-ubyte"
            data = idx_bytes(array)
            if gz:
                Path(f"{name}.gz").write_bytes(gzip.compress(data, compresslevel=1))
            else:
                name.write_bytes(data)


def animal_rows(rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[str]]:
    X = rng.normal(size=(n, 3)) * [1.0, 10.0, 100.0] + [0.0, 50.0, -20.0]
    classes = [ANIMALS[int(x[0] > 0.3) + int(x[1] > 58.0)] for x in X]
    return X, classes


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def animals_csv(path: Path, rng: np.random.Generator, n: int = 200) -> Path:
    X, classes = animal_rows(rng, n)
    return write_csv(path, ["weight", "height", "age", "animal"], [[*x, c] for x, c in zip(X, classes)])


def prices_csv(path: Path, rng: np.random.Generator, n: int = 200) -> Path:
    X = rng.normal(size=(n, 3))
    price = 2.0 * X[:, 0] - X[:, 1] + 0.5
    return write_csv(path, ["rooms", "age", "price", "floor"],
                     [[x[0], x[1], f"{p:.6f}", x[2]] for x, p in zip(X, price)])


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(result: tuple[int, str, str], *fragments: str) -> None:
    status, out, err = result
    assert status == 2, (out, err)
    assert err.startswith("gpubp: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "epoch 1/" not in out
    for fragment in fragments:
        assert fragment in err, err


# ---- IDX folders -----------------------------------------------------------------------------------------
def test_idx_folder_of_a_non_mnist_data_set_trains_and_evaluates_from_the_cli(capsys, tmp_path, rng):
    folder = tmp_path / "shapes"
    write_idx_folder(folder, rng)
    model = tmp_path / "m.npz"
    status, out, err = run(capsys, "train", "--data", folder, "--epochs", "4", "--device", "cpu",
                           "--no-progress", "--save", model)
    assert status == 0, err
    assert "30 features, 4 classes" in out and "sizes=[30, 30, 4]" in out
    assert "classification: output softmax, cost log_likelihood, lr 0.5 (defaults for the task)" in out
    test_line = next(line for line in out.splitlines() if line.startswith("test (final model)"))
    status, out, err = run(capsys, "evaluate", model, "--device", "cpu")  # the folder from the metadata
    assert status == 0, err
    assert f"{folder.resolve()} test: 60 samples" in out
    assert test_line.split()[3:5] == ["loss", out.split("loss ")[1].split()[0]]  # the same test set
    rows = [line.split() for line in out.splitlines()[-4:]]
    counts = np.array([[int(v) for v in row[1:]] for row in rows])
    assert counts.shape == (4, 4) and counts.sum() == 60 and np.trace(counts) >= 50


def test_load_idx_any_image_size_no_checksum_and_a_test_split_when_none(tmp_path, rng):
    write_idx_folder(tmp_path / "a", rng, gz=False)
    data = load_idx(tmp_path / "a")
    assert data.class_names == [0, 1, 2, 3] and data.n_classes == 4 and data.task == "classification"
    assert [len(s[0]) for s in data] == [200, 40, 60] and data.n_features == 30
    X = data.train[0]
    assert X.dtype == np.float32 and 0.0 <= X.min() and X.max() <= 1.0 and X.max() > 0.9
    write_idx_folder(tmp_path / "b", rng, n_test=0)
    only_train = load_idx(tmp_path / "b", split="full", test_fraction=0.25)
    assert only_train.validation is None and [len(s[0]) for s in (only_train.train, only_train.test)] == [180, 60]
    again = load_idx(tmp_path / "b", split="full", test_fraction=0.25)
    np.testing.assert_array_equal(again.test[0], only_train.test[0])  # seeded: the same test split
    other = load_idx(tmp_path / "b", split="full", test_fraction=0.25, seed=1)
    assert not np.array_equal(other.test[0], only_train.test[0])


# ---- .npz -------------------------------------------------------------------------------------------------
def test_npz_in_the_keras_layout(capsys, tmp_path, rng):
    (x_train, y_train), (x_test, y_test) = pattern_images(rng, 180, k=3), pattern_images(rng, 30, k=3)
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    data = load_npz(path, split="full")
    assert data.validation is None and len(data.train[0]) == 180 and len(data.test[0]) == 30
    np.testing.assert_allclose(data.test[0], x_test.reshape(30, -1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(data.test[1], y_test)
    status, out, err = run(capsys, "train", "--data", path, "--epochs", "2", "--device", "cpu", "--no-progress")
    assert status == 0, err
    assert "30 features, 3 classes" in out


def test_npz_with_X_and_y_float_targets_is_regression(tmp_path, rng):
    path = tmp_path / "xy.npz"
    X = rng.normal(size=(100, 4))
    np.savez(path, X=X, y=X @ [1.0, -2.0, 0.5, 0.0])
    data = load_npz(path)
    assert data.task == "regression" and data.n_classes == 0 and data.n_outputs == 1
    assert [len(s[0]) for s in data] == [67, 13, 20] and data.train[1].dtype == np.float32


# ---- CSV --------------------------------------------------------------------------------------------------
def test_csv_with_string_classes(tmp_path, rng):
    path = animals_csv(tmp_path / "animals.csv", rng)
    data = load_csv(path)
    assert data.class_names == ["bird", "cat", "dog"] and data.feature_names == ["weight", "height", "age"]
    assert data.target_name == "animal" and data.task == "classification"
    rows = list(csv.reader(open(path)))[1:]
    all_X = np.array([[float(v) for v in r[:3]] for r in rows], dtype=np.float32)
    for X, y in data:  # every row's label follows it into whichever split
        for x, label in zip(X[:5], y[:5]):
            row = int(np.argmin(np.abs(all_X - x).sum(axis=1)))
            assert rows[row][3] == data.class_names[label]


def test_csv_with_a_float_target_reports_regression_metrics_never_accuracy(capsys, tmp_path, rng):
    path = prices_csv(tmp_path / "prices.csv", rng)
    data = load_csv(path, target="price")
    assert data.task == "regression" and data.feature_names == ["rooms", "age", "floor"]
    model = tmp_path / "r.npz"
    status, out, err = run(capsys, "train", "--data", path, "--target", "price", "--epochs", "30",
                           "--device", "cpu", "--no-progress", "--save", model)
    assert status == 0, err
    assert "regression: output identity, cost quadratic, lr 0.01 (defaults for the task)" in out
    assert "accuracy" not in out and "validation r2" in out and "mse" in out and "mae" in out
    status, out, err = run(capsys, "evaluate", model, "--device", "cpu")
    assert status == 0, err
    assert "accuracy" not in out and "confusion" not in out
    metrics = dict(line.split() for line in out.splitlines()[2:])
    assert set(metrics) == {"loss", "mse", "mae", "r2"} and float(metrics["r2"]) > 0.5
    net = gpubp.load(model)
    assert net.task == "regression" and set(net.evaluate(*data.test)) == {"loss", "mse", "mae", "r2"}


def test_target_column_by_name_and_integer_classes(tmp_path, rng):
    X, classes = animal_rows(rng, 60)
    codes = [ANIMALS.index(c) * 10 for c in classes]  # integer labels 0, 10, 20
    path = write_csv(tmp_path / "t.csv", ["kind", "a", "b", "c"], [[k, *x] for k, x in zip(codes, X)])
    data = load_csv(path, target="kind", split="full")
    assert data.class_names == [0, 10, 20] and data.feature_names == ["a", "b", "c"]


def test_standardize_fits_on_the_training_split_only(capsys, tmp_path, rng):
    path = animals_csv(tmp_path / "animals.csv", rng)
    raw, scaled = load_csv(path), load_csv(path, standardize=True)
    X = scaled.train[0]
    np.testing.assert_allclose(X.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(X.std(axis=0), 1.0, atol=1e-5)
    s = scaled.standardization
    np.testing.assert_allclose(s.mean, raw.train[0].mean(axis=0, dtype=np.float64), rtol=1e-5)
    np.testing.assert_allclose(scaled.test[0], (raw.test[0] - s.mean) / s.std, rtol=1e-4, atol=1e-5)
    model = tmp_path / "m.npz"
    status, out, err = run(capsys, "train", "--data", path, "--standardize", "--epochs", "20", "--device",
                           "cpu", "--no-progress", "--save", model)
    assert status == 0, err
    assert "standardized" in out
    meta = gpubp.load(model).metadata
    np.testing.assert_allclose(meta["standardization"]["std"], s.std)
    assert meta["feature_names"] == ["weight", "height", "age"] and meta["input_width"] == 3


# ---- Network.task -----------------------------------------------------------------------------------------
def test_the_task_from_metadata_else_from_the_output_activation(rng):
    X = rng.normal(size=(20, 3))
    y = rng.normal(size=20)
    net = gpubp.Network([3, 4, 1], output="identity", device="cpu", seed=0)
    assert net.task == "regression" and set(net.evaluate(X, y)) == {"loss", "mse", "mae", "r2"}
    result = net.evaluate(X, y)
    predicted = gpubp.to_numpy(net.forward(X))[:, 0]
    np.testing.assert_allclose(result["mse"], np.mean((predicted - y) ** 2), rtol=1e-5)
    np.testing.assert_allclose(result["mae"], np.mean(np.abs(predicted - y)), rtol=1e-5)
    np.testing.assert_allclose(result["r2"], 1 - np.sum((predicted - y) ** 2) / np.sum((y - y.mean()) ** 2),
                               rtol=1e-5)
    history = net.fit(X, y, epochs=2, batch_size=5, lr=0.01, validation_data=(X, y), progress=False)
    assert set(history) == {"loss", "val_loss", "val_mse", "val_mae", "val_r2"}
    net.task = "classification"
    assert net.metadata["task"] == "classification" and set(net.evaluate(X, (y > 0).astype(int))) == \
        {"loss", "accuracy"}
    assert gpubp.Network([3, 2], device="cpu").task == "classification"
    with pytest.raises(ValueError, match="task must be one of"):
        net.task = "ranking"


# ---- gpubp predict ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def animals_model(tmp_path_factory):
    """A model trained from the CLI on a standardised animals CSV, and the CSV."""
    folder = tmp_path_factory.mktemp("animals")
    path = animals_csv(folder / "animals.csv", np.random.default_rng(7), n=300)
    model = folder / "animals.npz"
    assert main(["train", "--data", str(path), "--standardize", "--epochs", "30", "--device", "cpu",
                 "--no-progress", "--save", str(model)]) == 0
    return model, path


def test_train_csv_save_then_predict_on_a_new_csv_gives_the_classes_of_net_predict(capsys, tmp_path,
                                                                                     animals_model):
    model, _ = animals_model
    X, _ = animal_rows(np.random.default_rng(99), 25)
    # new rows, columns in another order, no target column
    new = write_csv(tmp_path / "new.csv", ["age", "weight", "height"], [[x[2], x[0], x[1]] for x in X])
    status, out, err = run(capsys, "predict", model, new)
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0] == "animal" and len(lines) == 26
    net = gpubp.load(model, device="cpu")
    s = net.metadata["standardization"]
    expected = [net.metadata["class_names"][c] for c in net.predict((X - s["mean"]) / s["std"])]
    assert lines[1:] == expected
    assert len(set(expected)) > 1


def test_predict_proba_out_csv_and_npy(capsys, tmp_path, animals_model):
    model, path = animals_model
    out_csv, out_npy = tmp_path / "p.csv", tmp_path / "p.npy"
    status, out, err = run(capsys, "predict", model, path, "--proba", "--out", out_csv)
    assert status == 0, err
    assert "wrote 300 predictions" in out
    rows = list(csv.reader(open(out_csv)))
    assert rows[0] == ["animal", "bird", "cat", "dog"] and len(rows) == 301
    probabilities = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert [r[0] for r in rows[1:]] == [("bird", "cat", "dog")[i] for i in probabilities.argmax(axis=1)]
    assert run(capsys, "predict", model, path, "--out", out_npy)[0] == 0
    np.testing.assert_array_equal(np.load(out_npy), [r[0] for r in rows[1:]])
    assert run(capsys, "predict", model, path, "--proba", "--out", out_npy)[0] == 0
    np.testing.assert_allclose(np.load(out_npy), probabilities, rtol=1e-6)


def test_predict_on_npz_and_idx_images_returns_the_class_names(capsys, tmp_path, rng):
    images, labels = pattern_images(rng, 200, k=3)
    names = np.array(["circle", "square", "star"])
    path = tmp_path / "shapes.npz"
    np.savez(path, X=images, y=names[labels])
    model = tmp_path / "m.npz"
    status, out, err = run(capsys, "train", "--data", path, "--epochs", "15", "--device", "cpu",
                           "--no-progress", "--save", model)
    assert status == 0, err
    new_images, new_labels = pattern_images(rng, 40, k=3)
    net = gpubp.load(model, device="cpu")
    expected = list(names[net.predict(new_images.reshape(40, -1) / 255.0)])
    np.save(tmp_path / "new.npy", new_images)
    np.savez(tmp_path / "new.npz", x_test=new_images)
    (tmp_path / "new-idx3-ubyte").write_bytes(idx_bytes(new_images))
    for source in ("new.npy", "new.npz", "new-idx3-ubyte"):
        status, out, err = run(capsys, "predict", model, tmp_path / source)
        assert status == 0, err
        assert out.splitlines() == ["prediction", *expected], source
    assert np.mean(np.array(expected) == names[new_labels]) > 0.8


def test_predict_regression_values(capsys, tmp_path, rng):
    path = prices_csv(tmp_path / "prices.csv", rng)
    model = tmp_path / "r.npz"
    assert run(capsys, "train", "--data", path, "--target", "price", "--epochs", "2", "--device", "cpu",
               "--no-progress", "--save", model)[0] == 0
    status, out, err = run(capsys, "predict", model, path)  # the target column may be present
    assert status == 0, err
    net = gpubp.load(model, device="cpu")
    X = load_csv(path, target="price").feature_names
    table = np.array([[float(v) for v in r] for r in list(csv.reader(open(path)))[1:]])
    expected = gpubp.to_numpy(net.forward(table[:, [0, 1, 3]]))[:, 0]
    assert out.splitlines()[0] == "price" and X == ["rooms", "age", "floor"]
    np.testing.assert_allclose([float(v) for v in out.splitlines()[1:]], expected, rtol=1e-6)
    assert_one_line_error(run(capsys, "predict", model, path, "--proba"), "--proba", "regression")


# ---- bad input: one line, exit 2, nothing written ------------------------------------------------------
def _bad_idx_folder(tmp_path: Path, rng: np.random.Generator, damage: str) -> tuple[Path, str]:
    folder = tmp_path / "bad"
    write_idx_folder(folder, rng)
    images = folder / "train-images-idx3-ubyte.gz"
    if damage == "truncated gz":
        images.write_bytes(images.read_bytes()[:-20])
        return folder, "not a valid gzip file"
    if damage == "wrong magic":
        data = bytearray(gzip.decompress(images.read_bytes()))
        data[2] = 0x42
        images.write_bytes(gzip.compress(bytes(data)))
        return folder, "not an IDX file"
    if damage == "count mismatch":
        data = gzip.decompress(images.read_bytes())
        images.write_bytes(gzip.compress(data[:-30]))
        return folder, "IDX file truncated"
    if damage == "labels count":
        labels = folder / "t10k-labels-idx1-ubyte.gz"
        labels.write_bytes(gzip.compress(idx_bytes(np.zeros(59, np.uint8))))
        return labels, "59 labels for the 60 images"
    (folder / "train-labels-idx1-ubyte.gz").unlink()  # images without labels
    return folder / "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte[.gz] is missing"


@pytest.mark.parametrize("damage", ["truncated gz", "wrong magic", "count mismatch", "labels count",
                                    "images without labels"])
def test_bad_idx_folders(capsys, tmp_path, rng, damage):
    folder, message = _bad_idx_folder(tmp_path, rng, damage)
    model = tmp_path / "m.npz"
    data_dir = tmp_path / "bad"
    assert_one_line_error(run(capsys, "train", "--data", data_dir, "--save", model, "--device", "cpu"), message,
                          str(folder) if folder != data_dir else "bad")
    assert not model.exists()
    with pytest.raises((ValueError, FileNotFoundError), match=message.replace("[", r"\[").replace(".", r"\.")):
        load_idx(data_dir)


def _bad_csv(tmp_path: Path, damage: str) -> tuple[Path, list[str], tuple[str, ...]]:
    rows = [["1.5", "2", "cat"], ["0.5", "1", "dog"], ["2.5", "0", "cat"], ["1", "1", "dog"]]
    args: list[str] = []
    if damage == "ragged":
        rows[2] = ["2.5", "cat"]
        fragments = ("row 3 (line 4)", "2 cells", "3 columns")
    elif damage == "text cell":
        rows[1][1] = "tall"
        fragments = ("row 2 (line 3)", "column 'b'", "'tall' is not a number")
    elif damage == "missing cell":
        rows[3][0] = ""
        fragments = ("row 4 (line 5)", "column 'a'", "missing value")
    elif damage == "nan feature":
        rows[0][1] = "nan"
        fragments = ("row 1 (line 2)", "column 'b'", "'nan'")
    else:  # unknown target
        args = ["--target", "colour"]
        fragments = ("no column 'colour'", "a, b, kind")
    return write_csv(tmp_path / "bad.csv", ["a", "b", "kind"], rows), args, fragments


@pytest.mark.parametrize("damage", ["ragged", "text cell", "missing cell", "nan feature", "unknown target"])
def test_bad_csv_files(capsys, tmp_path, damage):
    path, args, fragments = _bad_csv(tmp_path, damage)
    model = tmp_path / "m.npz"
    assert_one_line_error(run(capsys, "train", "--data", path, *args, "--save", model), str(path), *fragments)
    assert not model.exists()
    with pytest.raises(ValueError) as info:
        load_csv(path, target=args[1] if args else None)
    assert all(fragment in str(info.value) for fragment in fragments)


def test_npz_holding_a_pickled_object_is_refused_and_never_unpickled(capsys, tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, X=np.array([{"a": 1}, None], dtype=object), y=np.array([0, 1]))
    with np.load(path, allow_pickle=True) as f:
        assert f["X"].dtype == object  # the file really holds pickled objects
    assert_one_line_error(run(capsys, "train", "--data", path), str(path), "pickled Python objects")
    with pytest.raises(ValueError, match="pickled"):
        load_npz(path)


def test_nan_in_npz_features(capsys, tmp_path):
    path = tmp_path / "nan.npz"
    X = np.ones((10, 3))
    X[4, 2] = np.nan
    np.savez(path, X=X, y=np.arange(10) % 2)
    assert_one_line_error(run(capsys, "train", "--data", path), str(path), "NaN", "row 4, column 2")


@pytest.mark.parametrize("header, fragments", [
    (["weight", "height"], ("missing age",)),
    (["weight", "height", "age", "colour"], ("unexpected colour",)),
    (["w", "height", "age"], ("missing weight", "unexpected w")),
])
def test_predict_input_with_wrong_columns(capsys, tmp_path, animals_model, header, fragments):
    model, _ = animals_model
    new = write_csv(tmp_path / "new.csv", header, [[1.0] * len(header)] * 3)
    out = tmp_path / "p.csv"
    assert_one_line_error(run(capsys, "predict", model, new, "--out", out), str(new), "the model takes weight, "
                          "height, age", *fragments)
    assert not out.exists()


def test_predict_input_of_the_wrong_width_or_with_nan(capsys, tmp_path, animals_model, rng):
    model, _ = animals_model
    np.save(tmp_path / "wide.npy", np.ones((3, 5)))
    assert_one_line_error(run(capsys, "predict", model, tmp_path / "wide.npy"), "wide.npy", "5 features",
                          "takes 3")
    new = write_csv(tmp_path / "nan.csv", ["weight", "height", "age"], [[1, 2, 3], [1, "nan", 3]])
    out = tmp_path / "p.npy"
    assert_one_line_error(run(capsys, "predict", model, new, "--out", out), "nan.csv", "row 2", "'height'")
    assert not out.exists()
    (tmp_path / "labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(4, np.uint8)))
    assert_one_line_error(run(capsys, "predict", model, tmp_path / "labels-idx1-ubyte"), "labels-idx1-ubyte",
                          "one row per sample")
    assert_one_line_error(run(capsys, "predict", model, tmp_path / "none.csv"), "none.csv", "no such input file")


def test_unknown_data_path_and_options_for_built_in_sets(capsys, tmp_path):
    assert_one_line_error(run(capsys, "train", "--data", tmp_path / "nowhere.csv"), "nowhere.csv",
                          "neither a name")
    (tmp_path / "data.txt").write_text("a,b\n1,2\n")
    assert_one_line_error(run(capsys, "train", "--data", tmp_path / "data.txt"), "unknown kind of data file")
    with pytest.raises(ValueError, match="test_fraction must be"):
        load(str(animals_csv(tmp_path / "a.csv", np.random.default_rng(0))), test_fraction=1.5)


# ---- real MNIST through the generic IDX loader --------------------------------------------------------------
MNIST_DIR = Path(os.environ.get("GPUBP_DATA", "/nonexistent")) / "mnist"


@pytest.mark.mnist
@pytest.mark.skipif(not (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
                    reason="MNIST not found: set GPUBP_DATA to a folder whose mnist/ holds the four IDX .gz files")
def test_load_idx_reads_mnist_as_load_mnist_does():
    from gpubp.datasets import load_mnist

    generic, mnist = load_idx(MNIST_DIR, split="full"), load_mnist(MNIST_DIR.parent, split="full")
    assert generic.class_names == list(range(10)) and generic.source["test_fraction"] is None
    for (X, y), (Xm, ym) in zip((generic.train, generic.test), (mnist.train, mnist.test)):
        np.testing.assert_array_equal(X, Xm)
        np.testing.assert_array_equal(y, ym)
