"""gpubp against the book's own code: Nielsen's chapter-1 MNIST run, same machine, same process.

[784, 30, 10], sigmoid, quadratic cost, η = 3.0, mini-batch 10, the book's split (train on the first
50,000 training images, report accuracy on the 10,000 test images). By default both networks start from
the same initial parameters (gpubp's, copied into ``book.per_sample.Network``); ``--init own`` keeps the
book's N(0, 1) draw instead. Prints seconds per epoch, samples/s, the speed-up and test accuracy.

    GPUBP_DATA=../shared/data python bench/nielsen_compare.py [--epochs 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from book.per_sample import Network as NielsenNetwork  # noqa: E402

import gpubp  # noqa: E402
from gpubp.datasets import load_mnist  # noqa: E402

SIZES, ETA, BATCH = [784, 30, 10], 3.0, 10


def book_data(X: np.ndarray, labels: np.ndarray, targets: bool) -> list:
    """The book loader's layout: (784, 1) float32 columns with one-hot (10, 1) targets, or the label."""
    columns = [x.reshape(-1, 1) for x in X]
    if not targets:
        return list(zip(columns, labels.tolist()))
    eye = np.eye(10)
    return [(x, eye[y].reshape(-1, 1)) for x, y in zip(columns, labels)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--data-dir", default=None, help="folder holding mnist/ (default: env GPUBP_DATA)")
    parser.add_argument("--device", default="cpu", help="gpubp's device (default cpu)")
    parser.add_argument("--init", choices=("same", "own"), default="same",
                        help="same: Nielsen's net starts from gpubp's parameters; own: the book's N(0, 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    data = load_mnist(args.data_dir, split="book")
    (X, y), (X_test, y_test) = data.train, data.test
    random.seed(args.seed)
    np.random.seed(args.seed)
    net = gpubp.Network(SIZES, activation="sigmoid", cost="quadratic", device=args.device, seed=args.seed)
    book = NielsenNetwork(SIZES)
    if args.init == "same":
        book.weights = [np.array(gpubp.to_numpy(w), dtype=np.float64) for w in net.weights]
        book.biases = [np.array(gpubp.to_numpy(b), dtype=np.float64).reshape(-1, 1) for b in net.biases]

    start = time.perf_counter()
    book.SGD(book_data(X, y, targets=True), args.epochs, BATCH, ETA)
    book_seconds = (time.perf_counter() - start) / args.epochs
    book_accuracy = book.evaluate(book_data(X_test, y_test, targets=False)) / len(X_test)

    ends = [time.perf_counter()]
    net.fit(X, y, epochs=args.epochs, batch_size=BATCH, lr=ETA, progress=False, seed=args.seed,
            callbacks=[lambda *_: ends.append(time.perf_counter())])
    epoch_seconds = np.diff(ends)
    ours_seconds = float(epoch_seconds.mean())
    ours_accuracy = net.evaluate(X_test, y_test)["accuracy"]

    n = len(X)
    print(f"[784, 30, 10] sigmoid quadratic, eta {ETA}, batch {BATCH}, {n} training samples, "
          f"{args.epochs} epoch(s), init {args.init}, gpubp on {net.device}")
    print(f"{'':18s}{'s/epoch':>10s}{'samples/s':>12s}{'test acc':>10s}")
    print(f"{'per-sample (book)':18s}{book_seconds:10.2f}{n / book_seconds:12,.0f}{book_accuracy:10.2%}")
    print(f"{'gpubp':18s}{ours_seconds:10.2f}{n / ours_seconds:12,.0f}{ours_accuracy:10.2%}")
    print(f"speed-up: {book_seconds / ours_seconds:.1f}x per epoch")
    if args.epochs > 1:  # gpubp's first epoch carries fit's one-off input checks and allocations
        later = float(np.median(epoch_seconds[1:]))
        print(f"gpubp epoch 1: {epoch_seconds[0]:.2f} s; later epochs (median): {later:.2f} s, "
              f"{n / later:,.0f} samples/s, {book_seconds / later:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
