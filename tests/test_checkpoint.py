"""Checkpoints: runs killed at random moments resume bitwise exactly; damaged, foreign and pickled files are
reported and skipped; another run's checkpoint is refused; an unusable directory is found before training;
files a run did not write are never touched; one run at a time holds a checkpoint folder."""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import gpubp
from gpubp import checkpoint as ckpt
from gpubp.checkpoint import CheckpointDirectoryError, CheckpointWarning, read_checkpoint

import checkpoint_worker as worker
import child
from test_distributed import _mpiexec, needs_mpi

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
WORKER = TESTS / "checkpoint_worker.py"
PROCESS_TIMEOUT = 60


def _env(tmp: Path) -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", TMPDIR=str(tmp))


def run_killed(cmd: list[str], directory: Path, kills: int, seed: int, log: Path,
               max_delay: float) -> tuple[int, int]:
    """Start ``cmd`` ``kills`` times, each killed (its whole process group, SIGKILL) at a random moment up to
    ``max_delay`` s after it wrote its first checkpoint, then once more to the end. Returns (kills that hit
    a running process, kills that left a checkpoint write unfinished: a temp file in ``directory``)."""
    rng = np.random.default_rng(seed)
    hits = during_write = 0
    for attempt in range(kills + 1):
        before = _checkpoints(directory)
        with open(log, "a") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                    text=True, env=_env(log.parent), start_new_session=True)
        try:
            assert proc.stdout.readline().strip() == "ready", log.read_text()
            if attempt < kills:
                deadline = time.monotonic() + PROCESS_TIMEOUT
                while _checkpoints(directory) == before and proc.poll() is None:
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.002)
                time.sleep(rng.uniform(0, max_delay))
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    hits += 1
                proc.wait(PROCESS_TIMEOUT)
                during_write += any(p.name.startswith(ckpt.TEMP_PREFIX) for p in directory.glob(".*"))
            else:
                proc.stdout.read()
                assert proc.wait(PROCESS_TIMEOUT) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.stdout.close()
    return hits, during_write


def _checkpoints(directory: Path) -> set[str]:
    return {p.name for p in directory.glob("ckpt-*.npz")} if directory.is_dir() else set()


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_killed_at_random_moments_and_resumed_equals_one_uninterrupted_run(optimizer, tmp_path):
    net, X, y, fit = worker.problem(optimizer)
    history = net.fit(X, y, **fit)
    directory, result, log = tmp_path / "ckpt", tmp_path / "result.npz", tmp_path / "stderr.txt"
    cmd = [sys.executable, str(WORKER), "api", optimizer, str(directory), str(result)]
    hits, during_write = run_killed(cmd, directory, kills=4, seed=len(optimizer), log=log, max_delay=0.1)
    assert hits >= 3, f"only {hits} kills hit a running process"
    assert during_write >= 1, "no kill landed inside a checkpoint write"
    assert log.read_text().count("resuming from") == 4, log.read_text()
    assert [p.name for p in directory.iterdir() if p.name.startswith(".")] == []  # no temp or lock file
    with np.load(result) as saved:
        np.testing.assert_array_equal(saved["params"], net.parameters())
        for key, values in history.items():
            assert saved[f"history_{key}"].tolist() == values, key


@needs_mpi
def test_two_ranks_killed_and_resumed_equal_an_uninterrupted_two_rank_run(tmp_path):
    pytest.importorskip("sklearn", reason="the digits data set needs scikit-learn (pip install gpubp[digits])")
    train = ["train", "--data", "digits", "--distributed", "--device", "cpu", "--sizes", "64,12,10",
             "--epochs", "10", "--batch-size", "64", "--optimizer", "momentum", "--weight-decay", "1e-4",
             "--lr", "0.5", "--no-progress", "--checkpoint"]
    mpi = [_mpiexec(), "-n", "2", sys.executable, str(WORKER), "cli"]
    whole, pieces = tmp_path / "whole", tmp_path / "pieces"
    run_killed(mpi + train + [str(whole)], whole, kills=0, seed=0, log=tmp_path / "whole.txt", max_delay=0)
    hits, _ = run_killed(mpi + train + [str(pieces)], pieces, kills=2, seed=1, log=tmp_path / "log.txt",
                         max_delay=0.1)
    assert hits == 2, f"only {hits} kills hit a running job"
    assert (tmp_path / "log.txt").read_text().count("resuming from") == 2
    expected, got = (read_checkpoint(d / "ckpt-000010.npz") for d in (whole, pieces))
    np.testing.assert_array_equal(got.state.params, expected.state.params)
    np.testing.assert_array_equal(got.state.optimizer.buffers["velocity"],
                                  expected.state.optimizer.buffers["velocity"])
    assert got.history == expected.history and got.finished


# ---- in one process ---------------------------------------------------------------------------------------
def make(optimizer="adam"):
    net, X, y, fit = worker.problem(optimizer)
    return net, X, y, dict(fit, epochs=6)


def params(net):
    return np.array(net.parameters(), copy=True)


def test_files_written_kept_and_readable_as_models(tmp_path):
    net, X, y, fit = make()
    history = net.fit(X, y, checkpoint=tmp_path, checkpoint_every=4, **dict(fit, epochs=9))
    assert sorted(os.listdir(tmp_path)) == ["ckpt-000008.npz", "ckpt-000009.npz"]  # every 4th, the end
    last = read_checkpoint(tmp_path / "ckpt-000009.npz")
    assert (last.epoch, last.finished, last.history) == (9, True, history)
    assert last.run["lr"] == 0.05 and last.run["samples"] == 45 and last.run["epochs"] == 9
    model = gpubp.load(tmp_path / "ckpt-000009.npz", device="cpu")  # a checkpoint is also a model file
    np.testing.assert_array_equal(model.parameters(), net.parameters())
    assert model.optimizer.t == net.optimizer.t


def test_resume_after_interruption_in_process_and_extension_of_a_finished_run(tmp_path, capsys):
    whole, X, y, fit = make("momentum")
    history = whole.fit(X, y, **dict(fit, epochs=8))

    def interrupt(net, epoch, logs):
        if epoch == 3:
            raise KeyboardInterrupt

    first, _, _, _ = make("momentum")
    with pytest.raises(KeyboardInterrupt):
        first.fit(X, y, checkpoint=tmp_path, checkpoint_every=10, callbacks=[interrupt], **fit)
    assert os.listdir(tmp_path) == ["ckpt-000002.npz"]  # the end of the last completed epoch
    second, _, _, _ = make("momentum")
    second.fit(X, y, checkpoint=tmp_path, checkpoint_every=10, **fit)  # to epoch 6: finished
    assert "resuming from" in capsys.readouterr().err
    third, _, _, _ = make("momentum")
    assert third.fit(X, y, checkpoint=tmp_path, **dict(fit, epochs=8)) == history  # extended to 8
    np.testing.assert_array_equal(params(third), params(whole))
    fourth, _, _, _ = make("momentum")
    assert fourth.fit(X, y, checkpoint=tmp_path, **dict(fit, epochs=8)) == history
    assert "nothing left to do" in capsys.readouterr().err
    np.testing.assert_array_equal(params(fourth), params(whole))
    with pytest.raises(ValueError, match="reached epoch 8, past the epochs=5"):
        make("momentum")[0].fit(X, y, checkpoint=tmp_path, **dict(fit, epochs=5))


@pytest.mark.parametrize("optimizer", ["adam", "nesterov"])
def test_ctrl_c_between_batches_checkpoints_the_last_completed_epoch(tmp_path, optimizer):
    whole, X, y, fit = make(optimizer)
    whole.fit(X, y, **fit)

    def press_ctrl_c(net, epoch, logs):
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGINT)  # seen after the next batch, mid-epoch 3

    net, _, _, _ = make(optimizer)
    with pytest.raises(KeyboardInterrupt, match="interrupted in epoch 3"):
        net.fit(X, y, checkpoint=tmp_path, checkpoint_every=5, callbacks=[press_ctrl_c], **fit)
    assert len(net.history["loss"]) == 3 and read_checkpoint(tmp_path / "ckpt-000002.npz").epoch == 2
    resumed, _, _, _ = make(optimizer)
    assert resumed.fit(X, y, checkpoint=tmp_path, **fit) == whole.history
    np.testing.assert_array_equal(params(resumed), params(whole))


def test_divergence_checkpoints_the_last_good_epoch(tmp_path):
    net, X, y, fit = make("sgd")

    def explode(net, epoch, logs):
        if epoch == 3:
            net.optimizer.current_lr = 1e308  # epoch 4 diverges

    with pytest.raises(FloatingPointError, match="epoch 4"):
        net.fit(X, y, checkpoint=tmp_path, checkpoint_every=10, callbacks=[explode], **fit)
    saved = read_checkpoint(tmp_path / "ckpt-000003.npz")
    assert saved.epoch == 3 and not saved.finished
    np.testing.assert_array_equal(saved.state.params, net.parameters())  # put back to epoch 3's end


def test_a_callback_that_stops_training_finishes_the_run(tmp_path, capsys):
    net, X, y, fit = make()
    history = net.fit(X, y, checkpoint=tmp_path, callbacks=[lambda n, e, logs: e < 2], **fit)
    assert len(history["loss"]) == 2 and read_checkpoint(tmp_path / "ckpt-000002.npz").finished
    again, _, _, _ = make()
    assert again.fit(X, y, checkpoint=tmp_path, **dict(fit, epochs=20)) == history
    assert "nothing left to do" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    (dict(lr=0.1), "lr 0.05 there, 0.1 here"),
    (dict(batch_size=10), "batch_size 9 there, 10 here"),
    (dict(optimizer="sgd"), "optimizer 'adam' there, 'sgd' here"),
    (dict(seed=12), "seed 11 there, 12 here"),
    ("data", "samples 45 there, 44 here"),
    ("model", "sizes [5, 8, 3] there, [5, 9, 3] here"),
])
def test_a_checkpoint_of_another_run_is_refused_and_left_as_it_was(tmp_path, change, message):
    net, X, y, fit = make()
    net.fit(X, y, checkpoint=tmp_path, **fit)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    other, _, _, _ = make()
    start = params(other)
    if change == "data":
        X, y = X[:-1], y[:-1]
    elif change == "model":
        other = gpubp.Network([5, 9, 3], activation="tanh", output="softmax", cost="log_likelihood",
                              device="cpu", dtype="float64", seed=2)
        start = params(other)
    else:
        fit = dict(fit, **change)
    with pytest.raises(ValueError, match=f"ckpt-000006.npz belongs to a different training run.*{re.escape(message)}"):
        other.fit(X, y, checkpoint=tmp_path, **fit)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    np.testing.assert_array_equal(params(other), start)


def test_weighted_runs_resume_exactly_and_differ_from_unweighted_ones(tmp_path):
    whole, X, y, fit = make("momentum")
    weights = np.linspace(0.5, 2.0, len(X))
    whole.fit(X, y, sample_weight=weights, **fit)
    first, _, _, _ = make("momentum")
    first.fit(X, y, sample_weight=weights, checkpoint=tmp_path, **dict(fit, epochs=2))
    resumed, _, _, _ = make("momentum")
    assert resumed.fit(X, y, sample_weight=weights, checkpoint=tmp_path, **fit) == whole.history
    np.testing.assert_array_equal(params(resumed), params(whole))
    with pytest.raises(ValueError, match="sample_weight True there, False here"):
        make("momentum")[0].fit(X, y, checkpoint=tmp_path, **fit)


class Planted:
    """Unpickling this would create the file ``path``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("damage", ["truncated", "bit_flip", "random", "empty", "foreign_npz", "model_file",
                                    "pickle", "object_array"])
def test_a_damaged_newest_checkpoint_is_reported_and_the_previous_one_used(tmp_path, damage, capsys):
    whole, X, y, fit = make()
    whole.fit(X, y, **fit)
    net, _, _, _ = make()
    net.fit(X, y, checkpoint=tmp_path, **dict(fit, epochs=4))  # leaves ckpt-000003 and ckpt-000004
    newest = tmp_path / "ckpt-000004.npz"
    data, marker = newest.read_bytes(), tmp_path.parent / f"unpickled-{damage}"
    if damage == "truncated":
        newest.write_bytes(data[:len(data) // 2])
    elif damage == "bit_flip":  # in a parameter
        at = zipfile.ZipFile(newest).getinfo("params.npy").header_offset + 200
        newest.write_bytes(data[:at] + bytes([data[at] ^ 4]) + data[at + 1:])
    elif damage == "random":
        newest.write_bytes(np.random.default_rng(0).bytes(len(data)))
    elif damage == "empty":
        newest.write_bytes(b"")
    elif damage == "foreign_npz":
        np.savez(newest, weights=np.ones(3))
    elif damage == "model_file":
        net.save(newest)
    elif damage == "pickle":
        newest.write_bytes(pickle.dumps(Planted(str(marker))))
    else:
        np.savez(newest, **{k: v for k, v in np.load(tmp_path / "ckpt-000003.npz").items()},
                 planted=np.array([Planted(str(marker))], dtype=object))
    (tmp_path / "notes.txt").write_text("mine")
    resumed, _, _, _ = make()
    with pytest.warns(CheckpointWarning) as caught:
        history = resumed.fit(X, y, checkpoint=tmp_path, **fit)
    messages = [str(w.message) for w in caught]
    assert any(m.startswith(f"skipping checkpoint {newest}: ") for m in messages), messages
    assert any("notes.txt" in m and "left alone" in m for m in messages), messages
    if damage in ("pickle", "object_array"):
        assert any("pickle" in m for m in messages), messages
    assert not marker.exists()
    assert history == whole.history
    np.testing.assert_array_equal(params(resumed), params(whole))
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert f"gpubp: skipping checkpoint {newest}: " in capsys.readouterr().err  # reported on stderr too


def test_only_unusable_files_start_afresh_and_are_left_as_they_were(tmp_path):
    (tmp_path / "ckpt-000005.npz").write_bytes(b"garbage")
    whole, X, y, fit = make()
    whole.fit(X, y, **fit)
    net, _, _, _ = make()
    with pytest.warns(CheckpointWarning, match="ckpt-000005.npz"):
        net.fit(X, y, checkpoint=tmp_path, **fit)
    np.testing.assert_array_equal(params(net), params(whole))
    assert (tmp_path / "ckpt-000005.npz").read_bytes() == b"garbage"
    run_id = read_checkpoint(tmp_path / "ckpt-000006.npz").run_id
    assert sorted(os.listdir(tmp_path)) == [f"ckpt-000005-{run_id}.npz", "ckpt-000005.npz", "ckpt-000006.npz"]


def test_unwritable_directory_is_an_error_before_training(tmp_path):
    (tmp_path / "file").write_text("")
    net, X, y, fit = make()
    start, calls = params(net), []
    with pytest.raises(CheckpointDirectoryError, match="cannot write checkpoints to .*file/run"):
        net.fit(X, y, checkpoint=tmp_path / "file" / "run", callbacks=[lambda *a: calls.append(a)], **fit)
    np.testing.assert_array_equal(params(net), start)
    assert calls == [] and net.history == {}


def test_read_only_and_full_directories_are_errors_before_training(tmp_path, monkeypatch):
    net, X, y, fit = make()
    calls = []

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(ckpt.tempfile, "mkstemp", refuse)
    with pytest.raises(CheckpointDirectoryError, match="Read-only file system"):
        net.fit(X, y, checkpoint=tmp_path, callbacks=[lambda *a: calls.append(a)], **fit)
    monkeypatch.undo()

    def full(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.os, "posix_fallocate", full, raising=False)
    with pytest.raises(OSError, match="No space left on device .the largest checkpoint of this run takes"):
        net.fit(X, y, checkpoint=tmp_path, callbacks=[lambda *a: calls.append(a)], **fit)
    assert calls == [] and os.listdir(tmp_path) == []


def test_leftovers_of_a_crashed_write_of_the_run_are_cleared_and_no_other_temp_file(tmp_path):
    net, X, y, fit = make()
    net.fit(X, y, checkpoint=tmp_path, **dict(fit, epochs=1))
    run_id = read_checkpoint(tmp_path / "ckpt-000001.npz").run_id
    others = {f"{ckpt.TEMP_PREFIX}abc.tmp": b"someone's file",
              f"{ckpt.TEMP_PREFIX}{'e' * 16}-x.tmp": b"a temp file of another run"}
    for name, data in others.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / f"{ckpt.TEMP_PREFIX}{run_id}-k1tv7rqz.tmp").write_bytes(b"half a checkpoint of this run")
    with pytest.warns(CheckpointWarning, match="2 file.s. that are not gpubp checkpoints.*left alone"):
        make()[0].fit(X, y, checkpoint=tmp_path, **dict(fit, epochs=2))  # resumes the run
    assert all((tmp_path / name).read_bytes() == data for name, data in others.items())
    assert sorted(os.listdir(tmp_path)) == sorted([*others, "ckpt-000001.npz", "ckpt-000002.npz"])


def user_files(folder: Path) -> dict[str, str]:
    """Plant files of the user's named like checkpoints and temp files; their SHA-256 by name."""
    np.savez(folder / "ckpt-000001.npz", mine=np.arange(3))
    (folder / "ckpt-000004.npz").write_bytes(b"notes")
    (folder / "ckpt-000007.npz").write_bytes(b"newer than every checkpoint, and no checkpoint")
    (folder / f"{ckpt.TEMP_PREFIX}abc.tmp").write_bytes(b"mine too")
    (folder / f"{ckpt.TEMP_PREFIX}{'e' * 16}-x.tmp").write_bytes(b"a temp file of another run")
    (folder / "notes.txt").write_text("mine")
    return child.digests(folder)


def test_files_the_run_did_not_write_survive_fresh_runs_resumes_and_rotation(tmp_path):
    whole, X, y, fit = make()
    whole.fit(X, y, **dict(fit, epochs=8))
    planted = user_files(tmp_path)

    def interrupt(net, epoch, logs):
        if epoch == 3:
            raise KeyboardInterrupt

    def ours():
        """The run's files: the folder less the planted ones, which must be as they were."""
        assert {k: v for k, v in child.digests(tmp_path).items() if k in planted} == planted
        return sorted(set(os.listdir(tmp_path)) - set(planted))

    with pytest.warns(CheckpointWarning):
        with pytest.raises(KeyboardInterrupt):
            make()[0].fit(X, y, checkpoint=tmp_path, callbacks=[interrupt], **fit)
        files = ours()
        run_id = read_checkpoint(tmp_path / "ckpt-000002.npz").run_id
        assert files == [f"ckpt-000001-{run_id}.npz", "ckpt-000002.npz"]
        make()[0].fit(X, y, checkpoint=tmp_path, **fit)  # resumed; ckpt-000004.npz taken: written with the id
        assert ours() == ["ckpt-000005.npz", "ckpt-000006.npz"]
        resumed, _, _, _ = make()
        assert resumed.fit(X, y, checkpoint=tmp_path, **dict(fit, epochs=8)) == whole.history
    np.testing.assert_array_equal(params(resumed), params(whole))
    assert ours() == [f"ckpt-000007-{run_id}.npz", "ckpt-000008.npz"]


def test_a_checkpoint_without_a_run_id_is_resumed_and_never_deleted(tmp_path):
    """Checkpoints of earlier gpubp versions hold no run id: nothing tells whether this run wrote them."""
    whole, X, y, fit = make()
    whole.fit(X, y, **fit)
    make()[0].fit(X, y, checkpoint=tmp_path, **dict(fit, epochs=2))
    os.remove(tmp_path / "ckpt-000001.npz")
    with np.load(tmp_path / "ckpt-000002.npz") as saved:
        np.savez(tmp_path / "ckpt-000002.npz", **{k: v for k, v in saved.items() if k != "checkpoint.run_id"})
    before = child.digests(tmp_path)
    resumed, _, _, _ = make()
    assert resumed.fit(X, y, checkpoint=tmp_path, **fit) == whole.history
    assert sorted(os.listdir(tmp_path)) == ["ckpt-000002.npz", "ckpt-000005.npz", "ckpt-000006.npz"]
    assert child.digests(tmp_path)["ckpt-000002.npz"] == before["ckpt-000002.npz"]
    assert read_checkpoint(tmp_path / "ckpt-000002.npz").run_id is None
    assert read_checkpoint(tmp_path / "ckpt-000006.npz").run_id is not None  # a new one


def test_a_version_1_checkpoint_keeps_its_history_apart_and_resumes_exactly(tmp_path):
    """Version 1 (a version 2 model file) held the history in checkpoint.history.<key>."""
    whole, X, y, fit = make()
    whole.fit(X, y, **fit)
    make()[0].fit(X, y, checkpoint=tmp_path, **dict(fit, epochs=3))
    with np.load(tmp_path / "ckpt-000003.npz") as saved:
        fields = {k.replace("history.", "checkpoint.history.", 1) if k.startswith("history.") else k: v
                  for k, v in saved.items() if k != "optimizer_settings"}
    fields.update({"format_version": np.array(2), "checkpoint.version": np.array(1)})
    np.savez(tmp_path / "ckpt-000003.npz", **fields)
    old = read_checkpoint(tmp_path / "ckpt-000003.npz")
    assert old.history == {k: v[:3] for k, v in whole.history.items()}
    fields["checkpoint.history.loss"] = fields["checkpoint.history.loss"][:2]
    np.savez(tmp_path / "short.npz", **fields)
    with pytest.raises(ValueError, match="its history of 'loss' does not hold 3 values"):
        read_checkpoint(tmp_path / "short.npz")
    os.remove(tmp_path / "short.npz")
    resumed, _, _, _ = make()
    assert resumed.fit(X, y, checkpoint=tmp_path, **fit) == whole.history
    np.testing.assert_array_equal(params(resumed), params(whole))


def test_files_that_cannot_be_read_do_not_stop_the_scan(tmp_path):
    """A FIFO named like a checkpoint would block a reader forever; a folder cannot be read."""
    os.mkfifo(tmp_path / "ckpt-000009.npz")
    (tmp_path / "ckpt-000008.npz").mkdir()
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); import checkpoint_worker as w\n"
            f"net, X, y, fit = w.problem('sgd')\n"
            f"net.fit(X, y, checkpoint={str(tmp_path)!r}, **dict(fit, epochs=2))")
    result = child.python(code, timeout=60)
    assert result.returncode == 0, result.stderr
    skipped = [line for line in result.stderr.splitlines() if line.startswith("gpubp: skipping checkpoint")]
    assert skipped == [f"gpubp: skipping checkpoint {tmp_path / name}: it is not a regular file"
                       for name in ("ckpt-000009.npz", "ckpt-000008.npz")], result.stderr
    assert sorted(os.listdir(tmp_path)) == ["ckpt-000001.npz", "ckpt-000002.npz", "ckpt-000008.npz", "ckpt-000009.npz"]


@pytest.mark.parametrize("field", ["checkpoint.run", "metadata"])
def test_json_nested_too_deeply_falls_back_to_the_older_checkpoint(tmp_path, field):
    whole, X, y, fit = make()
    whole.fit(X, y, **fit)
    make()[0].fit(X, y, checkpoint=tmp_path, **dict(fit, epochs=4))
    newest = tmp_path / "ckpt-000004.npz"
    with np.load(newest) as saved:
        arrays = dict(saved)
    arrays[field] = np.array("[" * 100_000 + "]" * 100_000)
    np.savez(newest, **arrays)
    if field == "checkpoint.run":
        with pytest.raises(ValueError, match="checkpoint.run is not JSON .RecursionError"):
            read_checkpoint(newest)
    resumed, _, _, _ = make()
    with pytest.warns(CheckpointWarning, match=f"skipping checkpoint {re.escape(str(newest))}: "):
        assert resumed.fit(X, y, checkpoint=tmp_path, **fit) == whole.history
    np.testing.assert_array_equal(params(resumed), params(whole))


def test_a_second_run_on_the_folder_is_refused_while_the_first_holds_it(tmp_path, capsys):
    net, X, y, fit = make()
    refusals = []

    def second_run(net, epoch, logs):
        if epoch == 2:
            other, _, _, _ = make()
            with pytest.raises(CheckpointDirectoryError) as caught:
                other.fit(X, y, checkpoint=tmp_path, **fit)
            refusals.append(str(caught.value))
            assert sorted(os.listdir(tmp_path)) == [ckpt.LOCK_NAME, "ckpt-000001.npz"]  # untouched

    history = net.fit(X, y, checkpoint=tmp_path, callbacks=[second_run], **fit)
    assert refusals == [f"[Errno {errno.EBUSY}] the checkpoint folder {tmp_path} is in use by another gpubp "
                        f"run (pid {os.getpid()}): one run at a time may use it; wait for that one to end, or "
                        "choose another folder"]
    assert sorted(os.listdir(tmp_path)) == ["ckpt-000005.npz", "ckpt-000006.npz"]  # the lock file is gone
    assert make()[0].fit(X, y, checkpoint=tmp_path, **fit) == history  # and the folder free again
    assert "nothing left to do" in capsys.readouterr().err


def test_cli_second_concurrent_run_exits_2_with_one_error_line(tmp_path):
    pytest.importorskip("sklearn", reason="the digits data set needs scikit-learn (pip install gpubp[digits])")
    folder = tmp_path / "ckpt"
    net, X, y, fit = make()
    results = []

    def second_run(net, epoch, logs):
        if epoch == 1:
            results.append(child.cli("train", "--data", "digits", "--device", "cpu", "--epochs", "1",
                                     "--no-progress", "--checkpoint", str(folder)))

    net.fit(X, y, checkpoint=folder, callbacks=[second_run], **dict(fit, epochs=2))
    (result,) = results
    assert result.returncode == 2, result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("gpubp:")] == [
        f"gpubp: error: [Errno {errno.EBUSY}] the checkpoint folder {folder} is in use by another gpubp run "
        f"(pid {os.getpid()}): one run at a time may use it; wait for that one to end, or choose another folder"]
    assert sorted(os.listdir(folder)) == ["ckpt-000001.npz", "ckpt-000002.npz"]


def test_the_lock_of_a_killed_run_does_not_block_and_its_temp_files_are_cleared(tmp_path):
    code = (f"import os, signal, sys; sys.path.insert(0, {str(TESTS)!r}); import checkpoint_worker as w\n"
            f"net, X, y, fit = w.problem('adam')\n"
            f"net.fit(X, y, checkpoint={str(tmp_path)!r}, callbacks=[lambda *a: os.kill(os.getpid(), signal.SIGKILL)],"
            f" **dict(fit, epochs=6))")
    assert child.python(code).returncode == -signal.SIGKILL  # in its first epoch: no checkpoint yet
    lock = (tmp_path / ckpt.LOCK_NAME).read_text()
    match = ckpt.LOCK_CONTENT.fullmatch(lock)
    assert match and match.group(2) != "-", lock
    (tmp_path / f"{ckpt.TEMP_PREFIX}{match.group(2)}-k1tv7rqz.tmp").write_bytes(b"as if killed in a write")
    (tmp_path / f"{ckpt.TEMP_PREFIX}abc.tmp").write_bytes(b"not gpubp's")
    whole, X, y, fit = make()
    whole.fit(X, y, **fit)
    net, _, _, _ = make()
    with pytest.warns(CheckpointWarning, match=r"\.ckpt-abc\.tmp; they are left alone"):
        assert net.fit(X, y, checkpoint=tmp_path, **fit) == whole.history  # a fresh run: nothing to resume
    assert sorted(os.listdir(tmp_path)) == [f"{ckpt.TEMP_PREFIX}abc.tmp", "ckpt-000005.npz", "ckpt-000006.npz"]
    assert read_checkpoint(tmp_path / "ckpt-000006.npz").run_id != match.group(2)


def test_a_lock_file_that_is_not_gpubps_is_refused_and_left_alone(tmp_path):
    (tmp_path / ckpt.LOCK_NAME).write_text("my own notes\n")
    net, X, y, fit = make()
    with pytest.raises(CheckpointDirectoryError, match=f"{re.escape(str(tmp_path / ckpt.LOCK_NAME))} is not a "
                                                       "gpubp lock file.*move it away"):
        net.fit(X, y, checkpoint=tmp_path, **fit)
    assert os.listdir(tmp_path) == [ckpt.LOCK_NAME]
    assert (tmp_path / ckpt.LOCK_NAME).read_text() == "my own notes\n"


def test_the_probe_reserves_the_largest_checkpoint_of_the_run(tmp_path, monkeypatch):
    net, X, y, fit = make()
    net.metadata["notes"] = "x" * 50_000  # 200 kB in every checkpoint
    reserved = []
    reserve = ckpt._reserve
    monkeypatch.setattr(ckpt, "_reserve", lambda fd, size: (reserved.append(size), reserve(fd, size)))
    net.fit(X, y, checkpoint=tmp_path, checkpoint_every=1000, **dict(fit, epochs=300))
    written = os.path.getsize(tmp_path / "ckpt-000300.npz")  # the last: the longest history
    assert len(reserved) == 1 and written <= reserved[0] <= written + 4096, (written, reserved)


def _fit_under_file_size_limit(folder: Path, limit: int, when: str) -> dict:
    """Fit in a child whose files may not grow past ``limit`` bytes (RLIMIT_FSIZE), set at the start of fit
    or after its first epoch; what it raised and the epochs it completed."""
    code = f"""
import json, resource, sys
sys.path.insert(0, {str(TESTS)!r})
import checkpoint_worker as w
net, X, y, fit = w.problem("adam")
net.metadata["notes"] = "x" * 50_000  # 200 kB in every checkpoint
epochs = []
def limit(*args):
    resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.RLIM_INFINITY))
def epoch_done(net, epoch, logs):
    epochs.append(epoch)
    if {when!r} == "after epoch 1":
        limit()
if {when!r} == "at the start":
    limit()
try:
    net.fit(X, y, checkpoint={str(folder)!r}, callbacks=[epoch_done], **dict(fit, epochs=3))
except OSError as exc:
    print(json.dumps(dict(error=type(exc).__name__, message=str(exc), epochs=epochs)))
"""
    result = child.python(code)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_disk_that_cannot_take_a_checkpoint_is_found_before_training(tmp_path):
    got = _fit_under_file_size_limit(tmp_path, 150_000, "at the start")
    assert got["error"] == "CheckpointDirectoryError" and got["epochs"] == [], got
    assert got["message"].startswith(f"[Errno {errno.EFBIG}] cannot write checkpoints to {tmp_path}: File too "
                                     "large (the largest checkpoint of this run takes 0.2"), got


def test_a_failed_checkpoint_write_names_the_file(tmp_path):
    got = _fit_under_file_size_limit(tmp_path, 150_000, "after epoch 1")
    assert got["epochs"] == [1] and str(tmp_path / "ckpt-000001.npz") in got["message"], got
    assert "File too large" in got["message"], got


@pytest.mark.parametrize("kwargs, message", [
    (dict(checkpoint_every=0), "checkpoint_every must be an integer >= 1"),
    (dict(checkpoint=3), "checkpoint must be a directory path"),
    (dict(checkpoint=""), "checkpoint must be a directory path .*not empty"),
])
def test_bad_checkpoint_arguments(tmp_path, kwargs, message):
    net, X, y, fit = make()
    with pytest.raises(ValueError, match=message):
        net.fit(X, y, **dict(dict(checkpoint=tmp_path), **kwargs), **fit)


def test_cli_resumes_when_the_same_command_runs_again(tmp_path, capsys):
    pytest.importorskip("sklearn", reason="the digits data set needs scikit-learn (pip install gpubp[digits])")
    from gpubp.cli import main

    command = ["train", "--data", "digits", "--device", "cpu", "--sizes", "64,8,10", "--batch-size", "50",
               "--no-progress", "--checkpoint", str(tmp_path), "--checkpoint-every", "2"]
    assert main(command + ["--epochs", "3"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["ckpt-000002.npz", "ckpt-000003.npz"]
    assert main(command + ["--epochs", "4"]) == 0
    assert "resuming from" in capsys.readouterr().err
    (tmp_path / "ckpt-000005.npz").write_bytes(b"PK")
    assert main(command + ["--epochs", "4"]) == 0
    err = capsys.readouterr().err
    assert "nothing left to do" in err and err.count("ckpt-000005.npz") == 1, err
    assert main(command + ["--epochs", "4", "--lr", "1.0"]) == 2
    assert re.search(r"different training run \(lr [0-9.]+ there, 1.0 here\)", capsys.readouterr().err)


@pytest.mark.gpu
@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_gpu_run_interrupted_and_resumed_matches_an_uninterrupted_one(tmp_path, optimizer):
    """Equal up to cuBLAS's non-determinism (float64: 1e-10), not bitwise."""
    whole, X, y, fit = make(optimizer)
    history = whole.to("cuda").fit(X, y, **fit)

    def interrupt(net, epoch, logs):
        if epoch == 3:
            raise KeyboardInterrupt

    first, _, _, _ = make(optimizer)
    with pytest.raises(KeyboardInterrupt):
        first.to("cuda").fit(X, y, checkpoint=tmp_path, callbacks=[interrupt], **fit)
    resumed, _, _, _ = make(optimizer)
    got = resumed.to("cuda").fit(X, y, checkpoint=tmp_path, **fit)
    np.testing.assert_allclose(gpubp.to_numpy(resumed.parameters()), gpubp.to_numpy(whole.parameters()),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got["loss"], history["loss"], rtol=1e-10)
