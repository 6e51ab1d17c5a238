"""The ``gpubp`` command line: success paths on the bundled digits; every user error is one line, exit 2."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpubp
from gpubp.cli import main
from gpubp.metrics import confusion_matrix

ROOT = Path(__file__).resolve().parents[1]

needs_digits = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None,
                                  reason="the digits data set needs scikit-learn (pip install gpubp[digits])")
needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                                      reason="--plot needs matplotlib (pip install gpubp[cli])")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(status: int, out: str, err: str, *fragments: str) -> None:
    assert status == 2
    assert err.startswith("gpubp: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "epoch 1/" not in out  # failed before training
    for fragment in fragments:
        assert fragment in err


def gpubp_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


# ---- success paths ------------------------------------------------------------------------------------
@needs_digits
@needs_matplotlib
def test_train_on_digits_saves_plots_and_evaluates(capsys, tmp_path):
    model, plot = tmp_path / "model.npz", tmp_path / "curves.png"
    status, out, err = run(capsys, "train", "--data", "digits", "--epochs", "2", "--device", "cpu",
                           "--save", str(model), "--plot", str(plot), "--no-progress")
    assert status == 0, err
    assert "epoch 1/2  loss" in out and "epoch 2/2" in out and "validation accuracy" in out
    assert "best epoch" in out and "test (final model)" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    net = gpubp.load(str(model))
    assert net.sizes == [64, 30, 10]

    status, out, err = run(capsys, "evaluate", str(model), "--device", "cpu")  # digits: 64 inputs
    assert status == 0, err
    assert "digits test: 300 samples" in out and "confusion matrix" in out
    rows = [line.split() for line in out.splitlines()[-10:]]
    counts = np.array([[int(v) for v in row[1:]] for row in rows])
    assert counts.shape == (10, 10) and counts.sum() == 300
    assert f"({np.trace(counts)}/300)" in out and np.trace(counts) > 150


@needs_digits
def test_train_options_full_split_momentum_l2_and_sizes(capsys):
    status, out, err = run(capsys, "train", "--epochs", "1", "--split", "full", "--sizes", "64,20,10",
                           "--activation", "relu", "--output", "softmax", "--cost", "log_likelihood",
                           "--optimizer", "momentum", "--lr", "0.1", "--l2", "5", "--no-progress")
    assert status == 0, err
    assert "test accuracy" in out and "weight decay 0.00334" in out  # 5 / 1497 training samples
    assert "sizes=[64, 20, 10]" in out and "test (final model)" not in out


def test_confusion_matrix_counts():
    counts = confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 3)
    np.testing.assert_array_equal(counts, [[1, 0, 0], [0, 1, 1], [0, 0, 1]])


def test_info(capsys):
    status, out, err = run(capsys, "info")
    assert status == 0, err
    assert f"gpubp {gpubp.__version__}" in out and f"numpy      {np.__version__}" in out
    assert "auto:" in out and "kernels:" in out


def test_bench_one_small_config(capsys):
    status, out, err = run(capsys, "bench", "--configs", "S", "--device", "cpu", "--seconds", "0.3",
                           "--repeats", "1", "--no-torch")
    assert status == 0, err
    assert out.splitlines()[0].split()[:2] == ["config", "sizes"] and "784,30,10" in out


def test_python_dash_m_runs_the_same_main():
    result = subprocess.run([sys.executable, "-m", "gpubp", "train", "--sizes", "1"], env=gpubp_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("gpubp: error: argument --sizes")


@needs_digits
def test_ctrl_c_stops_after_the_batch_and_still_saves(tmp_path):
    model = tmp_path / "model.npz"
    proc = subprocess.Popen([sys.executable, "-m", "gpubp", "train", "--epochs", "100000", "--no-progress",
                             "--save", str(model)], env=gpubp_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("epoch 2/"):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "gpubp: interrupted (training interrupted in epoch" in err and "Traceback" not in err
    assert "best epoch" in out and "saved model" in out
    assert gpubp.load(str(model)).sizes == [64, 30, 10]


# ---- error paths: one line, exit 2, before any training ----------------------------------------------
def test_missing_mnist_says_where_to_put_the_files(capsys, tmp_path):
    assert_one_line_error(*run(capsys, "train", "--data", "mnist", "--data-dir", str(tmp_path)),
                          "train-images-idx3-ubyte.gz", str(tmp_path / "mnist"))


@pytest.mark.parametrize("sizes", ["784,x,10", "784", "784,0,10", "", "784,,10"])
def test_bad_sizes_string(capsys, sizes):
    assert_one_line_error(*run(capsys, "train", "--sizes", sizes), "--sizes", "784,30,10")


@needs_digits
def test_sizes_that_do_not_fit_the_data(capsys):
    assert_one_line_error(*run(capsys, "train", "--sizes", "784,30,10"), "64 inputs", "10 classes")


@needs_digits
@pytest.mark.parametrize("option, value, fragment", [
    ("--activation", "sigmoidal", "unknown activation 'sigmoidal'"),
    ("--output", "argmax", "unknown activation 'argmax'"),
    ("--cost", "hinge", "unknown cost 'hinge'"),
    ("--optimizer", "rprop", "unknown optimizer 'rprop'"),
    ("--lr", "-1", "lr"),
    ("--dtype", "float16", "float16"),
    ("--device", "tpu", "unknown device 'tpu'"),
    # a table of cases, one row each
    ("--optimizer-option", "beta1=0.5", "no setting 'beta1'"),
    ("--optimizer-option", "momentum", "expected NAME=VALUE"),
    ("--lr-schedule", "cosine", "invalid choice: 'cosine'"),
    ("--power-t", "-1", "power_t"),
    ("--n-iter-no-change", "0", "n_iter_no_change"),
    ("--restore-best", None, "restore_best needs the stopping rule"),
])
def test_bad_training_options(capsys, option, value, fragment):
    given = (option,) if value is None else (option, value)
    assert_one_line_error(*run(capsys, "train", *given, "--epochs", "1", "--no-progress"), fragment)


@needs_digits
def test_schedule_and_stopping_rule_options(capsys):
    """--tol stops on the validation loss (digits has a validation split) once --n-iter-no-change epochs in a
    row miss it (the first epoch always improves on nothing); --optimizer-option reaches the optimizer."""
    status, out, err = run(capsys, "train", "--epochs", "40", "--optimizer", "adam", "--lr", "0.01",
                           "--lr-schedule", "invscaling", "--power-t", "0.1", "--tol", "10",
                           "--n-iter-no-change", "2", "--restore-best", "--optimizer-option", "beta2=0.99",
                           "--optimizer-option", "eps=1e-6", "--progress")
    assert status == 0, err
    assert "epoch 3/40" in out and "epoch 4/40" not in out, out
    assert "epoch 3: val_loss: no improvement by tol=10" in err


@pytest.mark.parametrize("where", ["missing-folder/model.npz", "."])
def test_unwritable_save_path_is_caught_before_training(capsys, tmp_path, where):
    path = tmp_path / where
    assert_one_line_error(*run(capsys, "train", "--save", str(path)), "--save", str(path))


def test_unwritable_plot_path(capsys, tmp_path):
    assert_one_line_error(*run(capsys, "train", "--plot", str(tmp_path / "no" / "c.png")), "--plot")


def test_plot_without_matplotlib_names_the_extra(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    assert_one_line_error(*run(capsys, "train", "--plot", str(tmp_path / "c.png")), "pip install gpubp[cli]")


def test_unknown_command_and_missing_command(capsys):
    assert_one_line_error(*run(capsys, "fly"), "invalid choice: 'fly'")
    assert_one_line_error(*run(capsys), "required")


def test_evaluate_missing_model_file(capsys, tmp_path):
    assert_one_line_error(*run(capsys, "evaluate", str(tmp_path / "none.npz"), "--data", "digits"),
                          "none.npz")


@needs_digits
def test_evaluate_model_on_data_of_another_width(capsys, tmp_path):
    path = tmp_path / "m.npz"
    gpubp.Network([10, 3, 10], device="cpu", seed=0).save(str(path))
    assert_one_line_error(*run(capsys, "evaluate", str(path), "--data", "digits", "--device", "cpu"),
                          "takes 10 inputs", "has 64")


def test_evaluate_model_of_a_width_no_data_set_has(capsys, tmp_path):
    path = tmp_path / "m.npz"
    gpubp.Network([10, 3, 10], device="cpu", seed=0).save(str(path))
    assert_one_line_error(*run(capsys, "evaluate", str(path), "--device", "cpu"),
                          "takes 10 inputs", "mnist 784", "digits 64")


@needs_digits
def test_evaluate_a_set_the_split_lacks(capsys, tmp_path):
    path = tmp_path / "m.npz"
    gpubp.Network([64, 3, 10], device="cpu", seed=0).save(str(path))
    assert_one_line_error(*run(capsys, "evaluate", str(path), "--data", "digits", "--split", "full",
                               "--set", "validation"), "no validation set")


def test_bench_unknown_config(capsys):
    assert_one_line_error(*run(capsys, "bench", "--configs", "S,XL"), "unknown benchmark config 'XL'")


@needs_digits
@pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None or shutil.which("mpiexec") is None,
                    reason="--distributed over 2 ranks needs mpi4py and mpiexec (pip install 'gpubp[mpi]')")
def test_distributed_two_ranks_match_one_process_and_only_rank_0_reports(tmp_path, capsys):
    status, single, err = run(capsys, "train", "--epochs", "2", "--device", "cpu", "--no-progress")
    assert status == 0, err
    model = tmp_path / "model.npz"
    result = subprocess.run([shutil.which("mpiexec"), "-n", "2", sys.executable, "-m", "gpubp", "train",
                             "--distributed", "--epochs", "2", "--device", "cpu", "--no-progress",
                             "--save", str(model)], env=gpubp_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "2 ranks" in result.stdout and result.stdout.count("saved model") == 1
    def losses(out: str) -> list[float]:
        return [float(line.split("  ")[1].removeprefix("loss ")) for line in out.splitlines()
                if line.startswith("epoch ")]

    assert len(losses(result.stdout)) == 2 and model.is_file()
    np.testing.assert_allclose(losses(result.stdout), losses(single), atol=2e-4)  # the same training
