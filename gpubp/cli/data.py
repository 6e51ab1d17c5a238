"""``--data`` and the options of a data file, shared by ``gpubp train`` and ``gpubp evaluate``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import datasets


def add_data_options(parser: argparse.ArgumentParser, default: str | None, default_help: str) -> None:
    parser.add_argument("--data", default=default, metavar="NAME|PATH",
                        help=f"{' or '.join(datasets.NAMES)}, or your own data: a folder of IDX files, an .npz "
                             f"or a .csv (default: {default_help})")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="folder whose mnist/ holds the MNIST IDX files (default: env GPUBP_DATA, "
                             "else ~/.cache/gpubp)")
    parser.add_argument("--split", choices=("book", "full"), default="book",
                        help="book: train/validation/test (MNIST 50k/10k/10k); full: train/test "
                             "(60k/10k), monitoring the test set")
    parser.add_argument("--target", default=None, metavar="COLUMN",
                        help="the target column of a .csv (default: the last column)")
    parser.add_argument("--test-fraction", type=float, default=None, metavar="F",
                        help=f"share of the rows of a file without a test split that become the test set "
                             f"(seeded; default {datasets.DEFAULT_TEST_FRACTION})")
    parser.add_argument("--standardize", action="store_true",
                        help="scale features to mean 0, std 1 as fitted on the training split (stored "
                             "in the saved model and applied again by evaluate and predict)")


def load_data(args: argparse.Namespace, dtype: str, device: str | None) -> datasets.Dataset:
    """The data set of ``--data`` (a name or a path) with the file options of ``args``."""
    return datasets.load(args.data, args.data_dir, split=args.split, dtype=dtype, device=device,
                         target=args.target, test_fraction=args.test_fraction, standardize=args.standardize)


def data_files(args: argparse.Namespace) -> list[tuple[str, str]]:
    """("--data", path) for each file ``--data`` reads: the file itself, every file in a folder of IDX
    files, MNIST's files in its data folder (none for the bundled digits)."""
    if args.data == "digits":
        return []
    folder = datasets.mnist_dir(args.data_dir) if args.data == "mnist" else Path(args.data).expanduser()
    if folder.is_dir():
        return [("a file of --data", str(p)) for p in sorted(folder.iterdir()) if p.is_file()]
    return [("--data", args.data)]


def outputs_text(data: datasets.Dataset) -> str:
    """"10 classes" or "2 regression targets": what a data set's outputs are."""
    if data.task == "classification":
        return f"{data.n_classes} classes"
    return f"{data.n_outputs} regression target{'s' * (data.n_outputs > 1)}"
