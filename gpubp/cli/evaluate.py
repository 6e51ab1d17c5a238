"""``gpubp evaluate`` and ``gpubp predict``: apply a saved model to data, aligned with what it was trained on
(``gpubp.prediction``); evaluate reports loss and accuracy with the confusion matrix (regression: MSE, MAE,
R²), predict writes the predictions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import datasets
from ..files import refuse_same_files
from ..metrics import confusion_matrix, most_frequent_confusions, recall_per_class
from .common import CliError, check_writable, say
from .data import add_data_options, outputs_text

#: ``gpubp evaluate`` prints the confusion matrix up to this many classes, beyond it a summary of
#: SUMMARY_ROWS rows
MATRIX_CLASSES = 30
SUMMARY_ROWS = 10
#: the data set ``gpubp evaluate`` picks for a model of this input width when --data is not given
INPUT_WIDTHS = {784: "mnist", 64: "digits"}


def add_commands(commands: Any) -> None:
    """The ``evaluate`` and ``predict`` sub-commands and their options."""
    evaluate = commands.add_parser("evaluate", help="loss and accuracy with the confusion matrix "
                                                    "(regression: MSE, MAE, R²) of a saved model")
    evaluate.add_argument("model", help="a model written by gpubp train --save (.npz)")
    add_data_options(evaluate, default=None, default_help="the file the model was trained on, else by its "
                                                          "input width: 784 mnist, 64 digits")
    evaluate.add_argument("--set", dest="subset", choices=("test", "validation", "train"), default="test",
                          help="which part of the data to evaluate on (default test)")
    evaluate.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto")
    evaluate.set_defaults(run=cmd_evaluate)

    predict = commands.add_parser("predict", help="apply a saved model to a .csv, .npz/.npy or IDX images "
                                                  "file: class names (or values) as CSV or .npy")
    predict.add_argument("model", help="a model written by gpubp train --save (.npz)")
    predict.add_argument("input", help="a .csv with the training feature columns (by name), an .npz or .npy "
                                       "of samples, or an IDX images file")
    predict.add_argument("--out", default=None, metavar="FILE",
                         help="write here: .npy for an array, else CSV (default, or -: CSV to standard "
                              "output)")
    predict.add_argument("--proba", action="store_true",
                         help="also one column per class: the output activation (softmax: probability)")
    predict.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto")
    predict.set_defaults(run=cmd_predict)


# ---- evaluate ---------------------------------------------------------------------------------------
def format_confusion(counts: np.ndarray, names: Sequence[Any] | None = None) -> str:
    """The matrix as text, rows and columns labelled by the class names (default: the class codes)."""
    k = len(counts)
    labels = [str(name) for name in (names if names is not None else range(k))]
    width = max(len(str(int(counts.max()))), *(len(label) for label in labels), 4)
    first = max(9, *(len(label) for label in labels))
    lines = ["true\\pred".ljust(first) + " " + " ".join(label.rjust(width) for label in labels)]
    for label, row in zip(labels, counts):
        lines.append(label.rjust(first) + " " + " ".join(str(int(c)).rjust(width) for c in row))
    return "\n".join(lines)


def format_confusion_summary(labels: np.ndarray, predicted: np.ndarray, k: int,
                             names: Sequence[Any] | None = None) -> str:
    """For more classes than a matrix can show: the most frequent confusions and the classes with the
    lowest recall."""
    name = (lambda c: str(names[c])) if names is not None else str
    lines = [f"confusion matrix: {k} classes are too many to show (more than {MATRIX_CLASSES}); the "
             f"{SUMMARY_ROWS} most frequent confusions (true -> predicted: samples):"]
    confusions = most_frequent_confusions(labels, predicted, SUMMARY_ROWS)
    lines += [f"  {name(true)} -> {name(guess)}: {count}" for true, guess, count in confusions] or ["  none"]
    correct, samples = recall_per_class(labels, predicted, k)
    present = np.flatnonzero(samples)
    recall = correct[present] / samples[present]
    worst = present[np.argsort(recall, kind="stable")[:SUMMARY_ROWS]]
    lines.append(f"the {len(worst)} classes with the lowest recall (correct / samples of the class):")
    lines += [f"  {name(c)}: {correct[c]}/{samples[c]} ({100 * correct[c] / samples[c]:.2f}%)" for c in worst]
    return "\n".join(lines)


def evaluation_data(args: argparse.Namespace, net: Any) -> tuple[str, datasets.Dataset]:
    """(name, data) for ``gpubp evaluate``: --data, else the file the model was trained on (from its
    metadata), else the built-in set of its input width; a file is split again with the model's stored test
    fraction and split seed, so its test set is the one held out in training. Loaded on the host (fitting a
    standardisation anew for --standardize when the model stores none) and aligned with the model
    (``gpubp.prediction.align_dataset``)."""
    from ..prediction import align_dataset

    meta = net.metadata
    saved = meta.get("data") or {}
    name = args.data or saved.get("path") or INPUT_WIDTHS.get(net.sizes[0])
    if name is None:
        raise CliError(f"{args.model} takes {net.sizes[0]} inputs, which matches no built-in data set "
                       f"({', '.join(f'{d} {w}' for w, d in INPUT_WIDTHS.items())}); pass --data")
    options: dict[str, Any] = {}
    if name not in datasets.NAMES:
        if args.data is None and not Path(name).exists():
            raise CliError(f"{args.model} was trained on {name}, which no longer exists; pass --data")
        options = dict(target=args.target or meta.get("target"), seed=saved.get("split_seed", 0),
                       test_fraction=args.test_fraction or saved.get("test_fraction"))
    data = datasets.load(name, args.data_dir, split=args.split, dtype=net.dtype.name, device="cpu",
                         standardize=args.standardize and not meta.get("standardization"), **options)
    return str(name), align_dataset(net, data, name)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..serialization import load

    net = load(args.model, device=args.device)
    name, data = evaluation_data(args, net)
    part = getattr(data, args.subset)
    if part is None:
        raise CliError(f"--set {args.subset}: the {args.split} split has no {args.subset} set; "
                       "use --split book")
    if data.task != net.task:
        raise CliError(f"{args.model} is a {net.task} model but {name} holds {outputs_text(data)}")
    X, y = part
    result = net.evaluate(X, y)
    say(f"{net!r}\n{name} {args.subset}: {len(X)} samples")
    if net.task == "regression":
        say("\n".join(f"{key} {value:.6g}" for key, value in result.items()))
        return 0
    labels = net.ops.to_numpy(y)
    predicted = net.predict(X)
    say(f"loss {result['loss']:.4f}\naccuracy {100 * result['accuracy']:.2f}% "
        f"({int((predicted == labels).sum())}/{len(labels)})")
    k = max(net.sizes[-1], data.n_classes)
    names = data.class_names if data.class_names is not None and len(data.class_names) == k else None
    if k <= MATRIX_CLASSES:
        say("confusion matrix (rows: true class, columns: predicted class):")
        say(format_confusion(confusion_matrix(labels, predicted, k), names))
    else:
        say(format_confusion_summary(labels, predicted, k, names))
    return 0


# ---- predict ----------------------------------------------------------------------------------------
def cmd_predict(args: argparse.Namespace) -> int:
    from ..prediction import predictions, read_inputs, write_predictions
    from ..serialization import load

    out = None if args.out in (None, "-") else args.out
    refuse_same_files([("--out", out)], [("the model", args.model), ("the input", args.input)])
    out = check_writable(out, "--out") if out is not None else None
    net = load(args.model, device=args.device)
    header, columns = predictions(net, read_inputs(args.input, net), proba=args.proba)
    write_predictions(header, columns, out, sys.stdout)
    if out is not None:
        say(f"wrote {len(columns[0])} predictions to {out}")
    return 0
