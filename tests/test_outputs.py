"""What gpubp writes never destroys what the user had: an output that is an input (or another output) is
refused before any work, special files are written into rather than replaced, every file is written
atomically with the mode a Unix tool would give it, and write errors name the file (issue 19, items 1–4)."""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path

import numpy as np
import pytest

import gpubp
from gpubp.cli import main
from gpubp.cli.evaluate import format_confusion_summary
from gpubp.files import creation_mode, refuse_same_files, write_atomically
from gpubp.metrics import confusion_matrix

from child import digests


@pytest.fixture(autouse=True)
def _temp_files_here(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("GPUBP_DEVICE", "cpu")


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def write_csv(path: Path, n: int = 60, classes: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    rows = [f"{rng.normal() + c:.4f},{rng.normal() - c:.4f},{c}" for c in labels]
    path.write_text("a,b,label\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture
def work(tmp_path):
    """A folder with data.csv, a model trained on it (model.npz) and inputs.csv to predict."""
    data = write_csv(tmp_path / "data.csv")
    assert main(["train", "--data", str(data), "--epochs", "1", "--no-progress", "--save",
                 str(tmp_path / "model.npz")]) == 0
    (tmp_path / "inputs.csv").write_text("a,b\n0.1,0.2\n1.5,-1.0\n")
    return tmp_path


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpubp: error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


# ---- 1. an output that is an input, or another output ----------------------------------------------------
@pytest.mark.parametrize("argv, names", [
    (["predict", "{w}/model.npz", "{w}/inputs.csv", "--out", "{w}/model.npz"], ["--out", "the model"]),
    (["predict", "{w}/model.npz", "{w}/inputs.csv", "--out", "{w}/inputs.csv"], ["--out", "the input"]),
    (["predict", "{w}/model.npz", "{w}/inputs.csv", "--out", "{w}/../{n}/./inputs.csv"], ["the input"]),
    (["train", "--data", "{w}/data.csv", "--save", "{w}/data.csv"], ["--save", "--data"]),
    (["train", "--data", "{w}/data.csv", "--plot", "{w}/data.csv"], ["--plot", "--data"]),
    (["train", "--data", "{w}/data.csv", "--save", "{w}/new.png", "--plot", "{w}/new.png"],
     ["--plot", "--save", "another output"]),
    (["train", "--data", "{w}/data.csv", "--save", "{w}/model.npz", "--plot", "{w}/model.npz"],
     ["--plot", "--save"]),
])
def test_an_output_that_is_an_input_or_another_output_is_refused_before_any_work(work, capsys, argv, names):
    before = digests(work)
    argv = [a.format(w=work, n=work.name) for a in argv]
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert "is the same file as" in line and all(name in line for name in names), line
    assert capsys.readouterr().out == ""  # nothing was trained, loaded or predicted
    assert digests(work) == before and not (work / "new.png").exists()


def test_export_of_a_model_named_like_its_output_is_refused(work, capsys):
    gpubp.load(work / "model.npz").save(work / "model.onnx")  # a gpubp model that happens to be named .onnx
    before = digests(work)
    assert main(["export", str(work / "model.onnx"), str(work / "model.onnx")]) == 2
    assert "the output" in one_error_line(capsys) and digests(work) == before


def test_links_to_an_input_are_the_same_file(work, capsys):
    os.link(work / "model.npz", work / "hard.npz")
    os.symlink(work / "inputs.csv", work / "soft.csv")
    before = digests(work)
    for out in ("hard.npz", "soft.csv"):
        assert main(["predict", str(work / "model.npz"), str(work / "inputs.csv"), "--out",
                     str(work / out)]) == 2
        assert "is the same file as" in one_error_line(capsys)
    assert digests(work) == before


def test_idx_folder_files_are_inputs_too(tmp_path, capsys):
    folder = tmp_path / "idx"
    folder.mkdir()
    (folder / "train-images-idx3-ubyte").write_bytes(b"\0\0\x08\x01\0\0\0\0")
    assert main(["train", "--data", str(folder), "--save", str(folder / "train-images-idx3-ubyte")]) == 2
    assert "a file of --data" in one_error_line(capsys)


def test_distinct_paths_pass(tmp_path):
    refuse_same_files([("--save", tmp_path / "a"), ("--plot", tmp_path / "b"), ("--x", None)],
                      [("--data", tmp_path / "c")])
    refuse_same_files([("--save", os.devnull), ("--plot", os.devnull)])  # nothing there to lose


# ---- 2. special files are written into, never replaced -------------------------------------------------
@pytest.fixture
def null_device(tmp_path):
    """A character device to write to: as root, a null device made in tmp_path (so that a failing test
    cannot replace the system's /dev/null, which root could); otherwise /dev/null, which only root can
    replace."""
    if os.geteuid() != 0:
        return Path("/dev/null")
    device = tmp_path / "null"
    try:
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        with open(device, "wb") as f:
            f.write(b"probe")
    except OSError as exc:  # no mknod here, or a file system mounted nodev
        pytest.skip(f"cannot make a null device in {tmp_path} ({exc})")
    return device


def test_a_character_device_stays_a_device(work, capsys, null_device):
    before = os.stat(null_device)
    assert main(["predict", str(work / "model.npz"), str(work / "inputs.csv"), "--out", str(null_device)]) == 0
    assert main(["train", "--data", str(work / "data.csv"), "--epochs", "1", "--no-progress",
                 "--save", str(null_device)]) == 0
    gpubp.load(work / "model.npz").save(null_device)
    after = os.stat(null_device)
    assert stat.S_ISCHR(after.st_mode) and (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)


def test_a_fifo_receives_the_predictions(work, capsys):
    fifo = work / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    status = main(["predict", str(work / "model.npz"), str(work / "inputs.csv"), "--out", str(fifo)])
    reader.join(timeout=30)
    if reader.is_alive() and stat.S_ISFIFO(os.stat(fifo).st_mode):  # nothing was written into it: unblock
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert status == 0
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert received and received[0].splitlines()[0] == "label" and len(received[0].splitlines()) == 3


def test_out_dash_is_standard_output(work, capsys):
    assert main(["predict", str(work / "model.npz"), str(work / "inputs.csv"), "--out", "-"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "label" and len(out.splitlines()) == 3
    assert not (work / "-").exists()


def test_a_symbolic_link_is_written_through(work):
    target = work / "real.npz"
    target.write_bytes(b"old")
    os.symlink(target, work / "link.npz")
    gpubp.load(work / "model.npz").save(work / "link.npz")
    assert os.path.islink(work / "link.npz") and gpubp.load(target).sizes == gpubp.load(work / "model.npz").sizes


# ---- 3. the plot is written atomically -----------------------------------------------------------------
def test_a_failed_plot_leaves_the_old_file(work, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    plot = work / "curves.png"
    plot.write_bytes(b"the old plot")

    def fail_halfway(self, f, **kwargs):
        f.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", fail_halfway)
    assert main(["train", "--data", str(work / "data.csv"), "--epochs", "1", "--no-progress", "--plot",
                 str(plot)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert plot.read_bytes() == b"the old plot"
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(".")) == []


# ---- 4. modes: 0666 & ~umask for new files, the old mode for replaced ones --------------------------------
def outputs_of_every_kind(work: Path, name: str) -> list[Path]:
    """Write a model, predictions (CSV and .npy), a plot and an export named ``name``.*; their paths."""
    net = gpubp.load(work / "model.npz")
    paths = [work / f"{name}.npz", work / f"{name}.csv", work / f"{name}.npy"]
    net.save(paths[0])
    for out in paths[1:]:
        assert main(["predict", str(work / "model.npz"), str(work / "inputs.csv"), "--out", str(out)]) == 0
    try:
        import matplotlib  # noqa: F401

        from gpubp.plotting import plot_training
        plot_training({"loss": [1.0, 0.5]}, work / f"{name}.png")
        paths.append(work / f"{name}.png")
    except ImportError:
        pass
    try:
        import safetensors  # noqa: F401

        net.export(work / f"{name}.safetensors")
        paths.append(work / f"{name}.safetensors")
    except ImportError:
        pass
    return paths


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_new_files_get_0666_minus_the_umask(work, capsys, umask):
    old = os.umask(umask)
    try:
        assert creation_mode() == 0o666 & ~umask
        for path in outputs_of_every_kind(work, "new"):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask, path
    finally:
        os.umask(old)


def test_an_overwritten_file_keeps_its_mode(work, capsys, umask_022):
    paths = outputs_of_every_kind(work, "kept")
    for path, mode in zip(paths, (0o644, 0o640, 0o604, 0o664, 0o600)):
        os.chmod(path, mode)
    assert outputs_of_every_kind(work, "kept") == paths
    for path, mode in zip(paths, (0o644, 0o640, 0o604, 0o664, 0o600)):
        assert stat.S_IMODE(os.stat(path).st_mode) == mode, path


def test_checkpoints_get_the_mode_of_new_files(tmp_path, umask_022):
    net = gpubp.Network([2, 3, 2], device="cpu", seed=0)
    net.fit(np.zeros((8, 2)), np.arange(8) % 2, epochs=2, batch_size=4, lr=0.1, checkpoint=tmp_path / "ck",
            progress=False)
    files = list((tmp_path / "ck").iterdir())
    assert files and all(stat.S_IMODE(os.stat(p).st_mode) == 0o644 for p in files)


# ---- write errors name the file ---------------------------------------------------------------------------
def test_a_write_error_names_the_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "model.npz"
    target.write_bytes(b"old")

    def too_large(f):
        f.write(b"x" * 100)
        raise OSError(errno.EFBIG, "File too large")

    with pytest.raises(OSError, match=r"File too large: '.*model.npz'") as caught:
        write_atomically(target, too_large)
    assert caught.value.errno == errno.EFBIG
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.npz"]


def test_without_replace_a_file_that_appears_meanwhile_is_kept(tmp_path):
    target = tmp_path / "ckpt-000001.npz"

    def someone_else_writes_it_meanwhile(f):
        f.write(b"mine")
        target.write_bytes(b"theirs")

    with pytest.raises(FileExistsError, match="ckpt-000001.npz"):
        write_atomically(target, someone_else_writes_it_meanwhile, replace=False)
    assert target.read_bytes() == b"theirs" and os.listdir(tmp_path) == ["ckpt-000001.npz"]
    with pytest.raises(FileExistsError, match="not replaced"):
        write_atomically(target, b"mine", replace=False)
    write_atomically(tmp_path / "new", b"mine", replace=False)
    assert (tmp_path / "new").read_bytes() == b"mine"


def test_writing_into_a_missing_folder_or_a_folder_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_atomically(tmp_path / "no" / "model.npz", b"x")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        write_atomically(tmp_path, b"x")
    with pytest.raises(ValueError, match="empty path"):
        write_atomically("", b"x")


# ---- 12, 13: the CLI's other refusals --------------------------------------------------------------------
@pytest.mark.parametrize("extra, message", [
    (["--seed", "-1"], "argument --seed: expected an integer >= 0; got '-1'"),
    (["--checkpoint", ""], "argument --checkpoint: empty path"),
    (["--save", ""], "--save: empty path"),
    (["--plot", ""], "--plot: empty path"),
])
def test_bad_paths_and_seeds_name_the_option(tmp_path, capsys, extra, message):
    data = write_csv(tmp_path / "data.csv")
    before = digests(tmp_path)
    assert main(["train", "--data", str(data), "--epochs", "1", *extra]) == 2
    assert message in one_error_line(capsys)
    assert digests(tmp_path) == before


def test_predict_to_an_empty_path_is_refused(work, capsys):
    assert main(["predict", str(work / "model.npz"), str(work / "inputs.csv"), "--out", ""]) == 2
    assert "--out: empty path" in one_error_line(capsys)


def test_a_single_class_cannot_train_a_classifier(tmp_path, capsys):
    data = tmp_path / "one.csv"
    data.write_text("a,b,label\n" + "".join(f"{i},{-i},cat\n" for i in range(20)))
    assert main(["train", "--data", str(data), "--epochs", "1"]) == 2
    assert "a single class ('cat'): a classifier needs at least two classes" in one_error_line(capsys)


def test_many_classes_get_a_summary_instead_of_the_matrix():
    rng = np.random.default_rng(0)
    k = 10_000
    labels = rng.integers(0, k, 5000)
    predicted = np.where(rng.random(5000) < 0.7, labels, (labels + 1) % k)
    predicted[:40] = 7  # a confusion that happens 40 times at least for class 7 as the guess
    text = format_confusion_summary(labels, predicted, k)
    assert len(text) < 2000 and "10000 classes are too many to show" in text
    pairs = {}
    for t, p in zip(labels, predicted):
        if t != p:
            pairs[t, p] = pairs.get((t, p), 0) + 1
    top = max(pairs.values())
    assert f": {top}\n" in text
    lines = text.splitlines()
    recall_lines = lines[lines.index(next(l for l in lines if "lowest recall" in l)) + 1:]
    assert len(recall_lines) == 10 and all("(0.00%)" in line for line in recall_lines[:3])


def test_the_matrix_is_printed_up_to_thirty_classes(tmp_path, capsys):
    data = write_csv(tmp_path / "data.csv", n=120, classes=30)
    model = tmp_path / "m.npz"
    assert main(["train", "--data", str(data), "--epochs", "1", "--no-progress", "--save", str(model)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(model)]) == 0
    out = capsys.readouterr().out
    assert "confusion matrix (rows: true class" in out and "too many" not in out
    assert confusion_matrix(np.array([0, 1]), np.array([1, 1]), 2).tolist() == [[0, 1], [0, 1]]
