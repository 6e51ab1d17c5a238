"""The process tests/test_checkpoint.py kills with SIGKILL and starts again, until it finishes:

    python tests/checkpoint_worker.py api OPTIMIZER CHECKPOINT_DIR RESULT.npz
    [mpiexec -n 2] python tests/checkpoint_worker.py cli train ... --checkpoint DIR

``api`` fits the small problem of ``problem(OPTIMIZER)`` with ``checkpoint=CHECKPOINT_DIR`` and saves the
final parameters and history; ``cli`` runs ``gpubp`` with the remaining arguments. Either prints "ready"
once imported. Every fsync of a regular file sleeps PAUSE seconds, so that most of the run is spent inside
a checkpoint write (between the temp file's creation and its rename) and a kill at a random moment often
lands there.
"""

from __future__ import annotations

import os
import stat
import sys
import time

import numpy as np

import gpubp

PAUSE = 0.015
EPOCHS = 40


def problem(optimizer: str) -> tuple[gpubp.Network, np.ndarray, np.ndarray, dict]:
    """A float64 CPU network, data and fit arguments (shuffling on, validation data) for ``optimizer``."""
    rng = np.random.default_rng(7)
    X, y = rng.normal(size=(60, 5)), rng.integers(0, 3, 60)
    net = gpubp.Network([5, 8, 3], activation="tanh", output="softmax", cost="log_likelihood", device="cpu",
                        dtype="float64", seed=2)
    fit = dict(epochs=EPOCHS, batch_size=9, lr=0.05, optimizer=optimizer, seed=11, progress=False,
               validation_data=(X[45:], y[45:]),
               weight_decay=1e-3 if optimizer == "momentum" else 0.0)
    return net, X[:45], y[:45], fit


def _slow_fsync(fsync):
    def slow(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):
            time.sleep(PAUSE)
        return fsync(fd)
    return slow


def main() -> int:
    os.fsync = _slow_fsync(os.fsync)
    mode, args = sys.argv[1], sys.argv[2:]
    if os.environ.get("PMI_RANK", "0") == "0":  # under mpiexec: rank 0 speaks for the job
        print("ready", flush=True)
    if mode == "cli":
        from gpubp.cli import main as cli_main

        return cli_main(args)
    optimizer, directory, result = args
    net, X, y, fit = problem(optimizer)
    history = net.fit(X, y, checkpoint=directory, **fit)
    np.savez(result, params=net.parameters(), **{f"history_{k}": np.array(v) for k, v in history.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
