"""Aligning data with a model, in one place (``gpubp.prediction``): ``gpubp evaluate``, ``gpubp predict`` and
Python take feature columns by the model's names, renumber classes as the model's, check the width against
the input layer, and refuse misaligned data with the same message."""

from __future__ import annotations

import numpy as np
import pytest

import gpubp
from gpubp.cli import main
from gpubp.datasets import load
from gpubp.prediction import align_dataset, read_inputs

FEATURES = ["weight", "height", "age"]
ANIMALS = ["bird", "cat", "dog"]


def write_csv(path, header: list[str], rows: list[list]) -> str:
    path.write_text("\n".join(",".join(map(str, row)) for row in [header, *rows]) + "\n")
    return str(path)


def animal_rows(n: int, seed: int, classes=ANIMALS) -> list[list]:
    rng = np.random.default_rng(seed)
    return [[*np.round(rng.normal(size=3), 4), classes[i % len(classes)]] for i in range(n)]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A model trained from the CLI on a standardised CSV of three features and three named classes."""
    folder = tmp_path_factory.mktemp("alignment")
    data = write_csv(folder / "animals.csv", [*FEATURES, "animal"], animal_rows(60, 0))
    path = folder / "model.npz"
    assert main(["train", "--data", data, "--standardize", "--epochs", "2", "--device", "cpu", "--no-progress",
                 "--save", str(path)]) == 0
    return str(path)


def cli_error(capsys, *argv: str) -> str:
    """The message of the one-line error of ``gpubp argv…`` (exit status 2)."""
    capsys.readouterr()
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpubp: error: ") and err.count("\n") == 1, err
    return err.removeprefix("gpubp: error: ").rstrip("\n")


def python_error(call) -> str:
    with pytest.raises(ValueError) as info:
        call()
    return str(info.value)


@pytest.mark.parametrize("header, fragment", [
    (["weight", "height", "animal"], "(missing age); the model takes weight, height, age"),
    (["weight", "height", "age", "colour", "animal"], "(unexpected colour)"),
    (["w", "height", "age", "animal"], "(missing weight; unexpected w)"),
])
def test_evaluate_predict_and_python_refuse_the_same_columns_with_one_message(capsys, tmp_path, model, header,
                                                                              fragment):
    rows = [[0.5] * (len(header) - 1) + [ANIMALS[i % 3]] for i in range(20)]
    data = write_csv(tmp_path / "other.csv", header, rows)
    net = gpubp.load(model, device="cpu")
    messages = {
        "evaluate": cli_error(capsys, "evaluate", model, "--data", data, "--device", "cpu"),
        "predict": cli_error(capsys, "predict", model, data),
        "read_inputs": python_error(lambda: read_inputs(data, net)),
        "align_dataset": python_error(lambda: align_dataset(net, load(data, target="animal"), data)),
    }
    assert len(set(messages.values())) == 1, messages
    assert messages["predict"].startswith(f"{data}: columns do not match the model's features ")
    assert fragment in messages["predict"]


def test_evaluate_predict_and_python_refuse_the_same_width_with_one_message(capsys, tmp_path):
    data, model = str(tmp_path / "wide.npz"), str(tmp_path / "model.npz")
    np.savez(data, X=np.ones((20, 5)), y=np.arange(20) % 3)
    net = gpubp.Network([3, 4, 3], device="cpu", seed=0)
    net.save(model)
    messages = {
        "evaluate": cli_error(capsys, "evaluate", model, "--data", data, "--device", "cpu"),
        "predict": cli_error(capsys, "predict", model, data),
        "read_inputs": python_error(lambda: read_inputs(data, net)),
        "align_dataset": python_error(lambda: align_dataset(net, load(data), data)),
    }
    assert set(messages.values()) == {f"{data} has 5 features per sample, but the model takes 3 inputs"}, messages


def test_evaluate_and_python_refuse_a_class_the_model_does_not_know_alike(capsys, tmp_path, model):
    data = write_csv(tmp_path / "fish.csv", [*FEATURES, "animal"], animal_rows(20, 1, ["cat", "fish"]))
    net = gpubp.load(model, device="cpu")
    expected = f"{data}: class 'fish' is not one the model knows (bird, cat, dog)"
    assert cli_error(capsys, "evaluate", model, "--data", data, "--device", "cpu") == expected
    assert python_error(lambda: align_dataset(net, load(data, target="animal"), data)) == expected


def test_columns_in_another_order_and_a_subset_of_the_classes_are_aligned_with_the_model(tmp_path, model):
    rows = animal_rows(40, 2, ["dog", "cat"])
    same = write_csv(tmp_path / "same.csv", [*FEATURES, "animal"], rows)
    shuffled = write_csv(tmp_path / "shuffled.csv", ["animal", "age", "weight", "height"],
                         [[row[3], row[2], row[0], row[1]] for row in rows])
    net = gpubp.load(model, device="cpu")
    scaling = net.metadata["standardization"]
    aligned = [align_dataset(net, load(path, target="animal"), path) for path in (same, shuffled)]
    for data in aligned:
        assert data.feature_names == FEATURES and data.class_names == ANIMALS and data.n_classes == 3
    (X, y), (X_shuffled, y_shuffled) = aligned[0].test, aligned[1].test
    np.testing.assert_array_equal(X_shuffled, X)
    np.testing.assert_array_equal(y_shuffled, y)
    raw = load(same, target="animal")
    np.testing.assert_allclose(X, (raw.test[0] - scaling["mean"]) / scaling["std"], rtol=1e-6)
    assert [ANIMALS[c] for c in y] == [raw.class_names[c] for c in raw.test[1]]  # cat 1, dog 2 as in the model
    assert set(y.tolist()) == {1, 2}
