"""The ``gpubp`` command line: ``train``, ``evaluate``, ``predict``, ``export``, ``info``, ``bench`` and
``selftest``.

User errors (missing data, a bad --sizes string, an unknown activation, an unwritable --save path, …) are
found before training starts and print one line ``gpubp: error: …`` to stderr with exit status 2.
Ctrl-C during training stops after the current mini-batch, still saves and plots, and exits with 130.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import datasets
from .datasets.dataset import map_splits
from .files import refuse_same_files
from .metrics import confusion_matrix, most_frequent_confusions, recall_per_class
from .backend import cuda_unavailable_reason, get_ops

#: exit statuses
MISMATCH = 1
USAGE_ERROR = 2
INTERRUPTED = 130
#: training samples whose mean gradient gives the per-layer learning speed in --plot
SPEED_SAMPLES = 1000
#: ``gpubp evaluate`` prints the confusion matrix up to this many classes, beyond it a summary of
#: SUMMARY_ROWS rows
MATRIX_CLASSES = 30
SUMMARY_ROWS = 10
#: the data set ``gpubp evaluate`` picks for a model of this input width when --data is not given
INPUT_WIDTHS = {784: "mnist", 64: "digits"}
#: --output and --cost when neither is given, and --lr when not given, per task
TASK_DEFAULTS = {"classification": ("softmax", "log_likelihood"), "regression": ("identity", "quadratic")}
#: --lr when not given: the book's η = 3.0 for the quadratic cost, 0.5 for cross-entropy and log-likelihood;
#: 0.01 for regression, whose unbounded outputs diverge at those rates
DEFAULT_LR = {"quadratic": 3.0, "cross_entropy": 0.5, "log_likelihood": 0.5, "regression": 0.01}


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors become ``CliError`` (one line, no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CliError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gpubp", description="Train and evaluate backpropagation networks on MNIST, "
                                               "the 8x8 digits or your own IDX/NPZ/CSV data, on the CPU "
                                               "or a CUDA GPU; apply and export the models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a network and report validation accuracy per epoch")
    _data_options(train, default="digits", default_help="digits, which needs no download")
    train.add_argument("--sizes", type=parse_sizes, default=None,
                       help="every layer width, input first, e.g. 784,30,10 (default: FEATURES,30,CLASSES "
                            "of the data; the first and last must match the data)")
    train.add_argument("--activation", default="sigmoid", help="hidden activation (default sigmoid)")
    train.add_argument("--output", default=None,
                       help="output activation, e.g. softmax (default: by the task, see --cost)")
    train.add_argument("--cost", default=None,
                       help="quadratic, cross_entropy or log_likelihood (default: softmax output with "
                            "log_likelihood for classification, identity with quadratic for regression)")
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--batch-size", type=int, default=10)
    train.add_argument("--lr", type=float, default=None,
                       help="learning rate η (default: 3.0 for classification with the quadratic cost, 0.5 "
                            "with cross_entropy or log_likelihood, 0.01 for regression)")
    train.add_argument("--optimizer", default="sgd", help="sgd, momentum or adam (default sgd)")
    train.add_argument("--momentum", type=float, default=0.9, help="μ for --optimizer momentum")
    decay = train.add_mutually_exclusive_group()
    decay.add_argument("--weight-decay", type=float, default=0.0,
                       help="L2 coefficient per step: w ← w − η(∂C/∂w + λw)")
    decay.add_argument("--l2", type=float, default=None, metavar="LAMBDA",
                       help="L2 in the book's form C + λ/(2n) Σw², i.e. --weight-decay λ/n for n "
                            "training samples")
    train.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: env "
                                                      "GPUBP_DEVICE, else auto)")
    train.add_argument("--dtype", default="float32", help="float32 or float64 (default float32)")
    train.add_argument("--seed", type=_seed, default=0, help="initialisation and shuffling seed, an integer "
                                                             ">= 0 (default 0)")
    train.add_argument("--save", default=None, metavar="PATH", help="write the trained model (.npz)")
    train.add_argument("--plot", default=None, metavar="PATH",
                       help="write a PNG of loss, accuracy and per-layer ‖∂C/∂bˡ‖ per epoch")
    train.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="a progress bar per epoch (default: when stderr is a terminal and tqdm is "
                            "installed)")
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel training over the ranks of gpubp.distributed.init()")
    train.add_argument("--checkpoint", type=_folder, default=None, metavar="DIR",
                       help="write checkpoints to DIR; the same command run again resumes from them")
    train.add_argument("--checkpoint-every", type=int, default=1, metavar="N",
                       help="checkpoint every N epochs (default 1), and always at the end or on Ctrl-C")
    train.set_defaults(run=cmd_train)

    evaluate = commands.add_parser("evaluate", help="loss and accuracy with the confusion matrix "
                                                    "(regression: MSE, MAE, R²) of a saved model")
    evaluate.add_argument("model", help="a model written by gpubp train --save (.npz)")
    _data_options(evaluate, default=None, default_help="the file the model was trained on, else by its input "
                                                       "width: 784 mnist, 64 digits")
    evaluate.add_argument("--set", dest="subset", choices=("test", "validation", "train"), default="test",
                          help="which part of the data to evaluate on (default test)")
    evaluate.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto")
    evaluate.set_defaults(run=cmd_evaluate)

    _model_commands(commands)

    info = commands.add_parser("info", help="versions, GPUs, the device 'auto' picks, kernel check")
    info.set_defaults(run=cmd_info)

    bench = commands.add_parser("bench", help="training-step samples/s against plain NumPy (and PyTorch)")
    bench.add_argument("--configs", default="S,M,L", help="comma-separated configs among S, M, L")
    bench.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto")
    bench.add_argument("--seconds", type=float, default=10.0, help="time budget per config (default 10)")
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True,
                       help="include PyTorch when installed (default yes)")
    bench.set_defaults(run=cmd_bench)

    selftest = commands.add_parser("selftest", help="check every backend's kernels, backprop and training "
                                                    "steps against the NumPy reference (exit 1 on a mismatch)")
    selftest.add_argument("--backends", default=None, metavar="LIST",
                          help="comma-separated backends among numpy, numba, cuda:N (default: every one "
                               "usable here)")
    selftest.set_defaults(run=cmd_selftest)
    return parser


def _data_options(parser: argparse.ArgumentParser, default: str | None, default_help: str) -> None:
    parser.add_argument("--data", default=default, metavar="NAME|PATH",
                        help=f"{' or '.join(datasets.NAMES)}, or your own data: a folder of IDX files, an .npz "
                             f"or a .csv (default: {default_help})")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="folder whose mnist/ holds the MNIST IDX files (default: env GPUBP_DATA, "
                             "else ~/.cache/gpubp)")
    parser.add_argument("--split", choices=("book", "full"), default="book",
                        help="book: train/validation/test (MNIST 50k/10k/10k); full: train/test "
                             "(60k/10k), monitoring the test set")
    _file_data_options(parser)


def _file_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default=None, metavar="COLUMN",
                        help="the target column of a .csv (default: the last column)")
    parser.add_argument("--test-fraction", type=float, default=None, metavar="F",
                        help=f"share of the rows of a file without a test split that become the test set "
                             f"(seeded; default {datasets.DEFAULT_TEST_FRACTION})")
    parser.add_argument("--standardize", action="store_true",
                        help="scale features to mean 0, std 1 as fitted on the training split (stored "
                             "in the saved model and applied again by evaluate and predict)")


def load_data(args: argparse.Namespace, name: str, dtype: str, device: str | None,
              standardize: bool | None = None) -> datasets.Dataset:
    """The data set of ``--data`` (a name or a path) with the file options of ``args``."""
    return datasets.load(name, args.data_dir, split=args.split, dtype=dtype, device=device,
                         target=args.target, test_fraction=args.test_fraction,
                         standardize=args.standardize if standardize is None else standardize)


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
    if data.task == "classification":
        return f"{data.n_classes} classes"
    return f"{data.n_outputs} regression target{'s' * (data.n_outputs > 1)}"


def task_defaults(args: argparse.Namespace, task: str) -> tuple[str | None, str, float, str]:
    """(output, cost, lr, note): neither --output nor --cost given, both follow the task (classification:
    softmax + log_likelihood; regression: identity + quadratic); one given, the other completes it as
    before (--cost log_likelihood implies softmax; else the output is --activation, regression identity;
    the cost is log_likelihood for a softmax output, else quadratic). --lr defaults by task and cost."""
    output, cost = args.output, args.cost
    if output is None and cost is None:
        output, cost = TASK_DEFAULTS[task]
    elif output is None:
        output = "softmax" if cost == "log_likelihood" else "identity" if task == "regression" else None
    elif cost is None:
        cost = "log_likelihood" if output == "softmax" and task == "classification" else "quadratic"
    lr = args.lr if args.lr is not None else DEFAULT_LR["regression"] if task == "regression" else \
        DEFAULT_LR.get(cost, DEFAULT_LR["quadratic"])
    chosen = [f"{what} {value}" for what, value, given in (("output", output or args.activation, args.output),
                                                            ("cost", cost, args.cost), ("lr", lr, args.lr))
              if given is None]
    note = f"{task}: " + ", ".join(chosen) + " (defaults for the task)" if chosen else f"{task}"
    return output, cost, lr, note


def format_results(result: dict[str, float]) -> str:
    """"loss 0.1234  accuracy 95.00%" or "loss …  mse …  mae …  r2 …"."""
    return "  ".join(f"{name} {100 * value:.2f}%" if name == "accuracy" else f"{name} {value:.4f}"
                     for name, value in result.items())


def parse_sizes(text: str) -> list[int]:
    """"784,30,10" -> [784, 30, 10]; argparse reports the ArgumentTypeError as a usage error."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        sizes = []
    if len(sizes) < 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"expected at least two comma-separated positive integers, input width first, such as "
            f"784,30,10; got {text!r}")
    return sizes


def _folder(text: str) -> str:
    """A folder path; the empty string is refused rather than taken as the current folder."""
    if not text:
        raise argparse.ArgumentTypeError("empty path; give a folder")
    return text


def _seed(text: str) -> int:
    """A --seed: an integer >= 0 (what NumPy's generators take)."""
    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if seed < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0; got {text!r}")
    return seed


def check_writable(path: str, option: str) -> Path:
    """``path`` if a file can be written there (its folder exists and is writable); CliError otherwise."""
    if not path:
        raise CliError(f"{option}: empty path; give a file name")
    target = Path(path).expanduser()
    folder = target.parent
    if target.is_dir():
        raise CliError(f"{option} {path}: is a directory; give a file name")
    if not folder.is_dir():
        raise CliError(f"{option} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise CliError(f"{option} {path}: not writable")
    return target


def _say(text: str = "", *, err: bool = False) -> None:
    print(text, file=sys.stderr if err else sys.stdout, flush=True)


# ---- train ------------------------------------------------------------------------------------------
class EpochReport:
    """The fit callback: one line per epoch (loss, held-out accuracy, time) and, for --plot, each layer's
    ‖∂C/∂bˡ‖ on a fixed training subset (the mean gradient of BP3 over those samples)."""

    def __init__(self, epochs: int, n_train: int, monitor: str, speed_data: tuple[Any, Any] | None,
                 verbose: bool):
        self.epochs, self.n_train, self.monitor = epochs, n_train, monitor
        self.speed_data, self.verbose = speed_data, verbose
        self.grad_norms: list[tuple[int, list[float]]] = []
        self.seconds: list[float] = []
        self.start = time.perf_counter()

    def __call__(self, net: Any, epoch: int, logs: dict) -> None:
        self.seconds.append(time.perf_counter() - self.start)
        if self.verbose:
            parts = [f"epoch {epoch}/{self.epochs}", f"loss {logs['loss']:.4f}"]
            if "val_loss" in logs:
                held_out = {k.removeprefix("val_"): v for k, v in logs.items() if k.startswith("val_")}
                parts += [f"{self.monitor} {text}" for text in format_results(held_out).split("  ")]
            parts.append(f"{self.seconds[-1]:.3g} s ({self.n_train / self.seconds[-1]:,.0f} samples/s)")
            _say("  ".join(parts))
        if self.speed_data is not None:
            _, nabla_b = net.backprop(*self.speed_data)
            self.grad_norms.append((epoch, [float(np.linalg.norm(net.ops.to_numpy(g))) for g in nabla_b]))
        self.start = time.perf_counter()


def _progress_wanted(flag: bool | None) -> bool:
    """A bar when asked (or, by default, when stderr is a terminal), and only if tqdm is installed."""
    if flag is False or (flag is None and not sys.stderr.isatty()):
        return False
    try:
        import tqdm  # noqa: F401
    except ImportError:
        if flag:
            _say("gpubp: note: tqdm is not installed (pip install gpubp[cli]); no progress bar", err=True)
        return False
    return True


def cmd_train(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointWarning
    from .network import Network
    from .plotting import plot_training, require_matplotlib

    warnings.filterwarnings("ignore", category=CheckpointWarning)  # fit prints them as "gpubp: …" lines

    refuse_same_files([("--save", args.save), ("--plot", args.plot)], data_files(args))
    save = check_writable(args.save, "--save") if args.save is not None else None
    plot = check_writable(args.plot, "--plot") if args.plot is not None else None
    if plot is not None:
        require_matplotlib()
    comm, device = None, args.device
    if args.distributed:
        from . import distributed

        comm = distributed.init(args.device)
        device = comm.device  # this rank's GPU (cuda:local_rank % visible GPUs) or the CPU
    main_rank = comm is None or comm.rank == 0

    data = load_data(args, args.data, dtype=args.dtype, device=device)
    if data.task == "classification" and data.n_classes < 2:
        only = f" ({data.class_names[0]!r})" if data.class_names else ""
        raise CliError(f"{args.data} holds a single class{only}: a classifier needs at least two classes "
                       "to tell apart")
    sizes = args.sizes or [data.n_features, 30, data.n_outputs]
    if sizes[0] != data.n_features or sizes[-1] != data.n_outputs:
        raise CliError(f"--sizes {','.join(map(str, sizes))} does not fit {args.data}: it has "
                       f"{data.n_features} inputs and {outputs_text(data)}, so sizes must be "
                       f"{data.n_features},...,{data.n_outputs}")
    output, cost, lr, task_note = task_defaults(args, data.task)
    net = Network(sizes, activation=args.activation, output=output, cost=cost,
                  device=device, dtype=args.dtype, seed=args.seed)
    net.metadata.update(data.model_metadata())
    X, y = data.train
    weight_decay = args.weight_decay if args.l2 is None else args.l2 / len(X)
    monitor, held_out = ("validation", data.validation) if data.validation is not None \
        else ("test", data.test)
    speed_data = (X[:SPEED_SAMPLES], y[:SPEED_SAMPLES]) if plot is not None and main_rank else None
    report = EpochReport(args.epochs, len(X), monitor, speed_data, verbose=main_rank)
    if main_rank:
        _say(f"{net!r}\n{data!r}\n{task_note}\ntraining {args.epochs} epochs, batch {args.batch_size}, lr {lr}, "
             f"{args.optimizer}" + (f", weight decay {weight_decay:.3g}" if weight_decay else "")
             + (f", {comm.size} ranks" if comm is not None else ""))
    status = 0
    try:
        net.fit(X, y, epochs=args.epochs, batch_size=args.batch_size, lr=lr, optimizer=args.optimizer,
                momentum=args.momentum, weight_decay=weight_decay, validation_data=held_out,
                progress=main_rank and _progress_wanted(args.progress), seed=args.seed,
                callbacks=[report], distributed=comm, checkpoint=args.checkpoint,
                checkpoint_every=args.checkpoint_every)
    except KeyboardInterrupt as exc:
        status = INTERRUPTED
        if main_rank:
            _say(f"gpubp: interrupted ({exc}); keeping what was trained", err=True)
    if not main_rank:
        return status
    history = net.history
    if history.get("val_accuracy"):
        best = int(np.argmax(history["val_accuracy"]))
        _say(f"best epoch {best + 1}: {monitor} accuracy {100 * history['val_accuracy'][best]:.2f}%")
    elif history.get("val_r2"):
        best = int(np.argmax(history["val_r2"]))
        _say(f"best epoch {best + 1}: {monitor} r2 {history['val_r2'][best]:.4f}  mse "
             f"{history['val_mse'][best]:.4f}")
    if monitor != "test":
        _say(f"test (final model): {format_results(net.evaluate(*data.test))}")
    if report.seconds:
        _say(f"time per epoch: {np.median(report.seconds):.3g} s (median of {len(report.seconds)})")
    if save is not None:
        net.save(str(save))
        _say(f"saved model to {save}")
    if plot is not None:
        plot_training(history, plot, report.grad_norms, title=f"{args.data} {sizes} {net.activation.name}"
                      f"/{net.output.name} {net.cost.name}", monitor=monitor)
        _say(f"saved plot to {plot}")
    return status


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
    fraction and split seed, so its test set is the one held out in training. Loaded on the host, with the
    features standardised by the model's stored standardisation (or, without one, fitted anew for
    --standardize)."""
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
    if data.feature_names and meta.get("feature_names") and data.feature_names != meta["feature_names"]:
        data = _reorder_features(data, meta["feature_names"], name)
    if data.class_names and meta.get("class_names") and data.class_names != meta["class_names"]:
        data = _recode_classes(data, meta["class_names"], name)
    if meta.get("standardization"):
        scaling = datasets.Standardization.from_json(meta["standardization"], net.sizes[0])
        data = map_splits(data, lambda split: (scaling.apply(split[0]), split[1]))
    return str(name), data


def _reorder_features(data: datasets.Dataset, names: Sequence[str], source: str) -> datasets.Dataset:
    """``data`` with its feature columns in the order ``names`` (the model's); CliError if they differ."""
    if set(names) != set(data.feature_names):
        raise CliError(f"{source}: feature columns {', '.join(data.feature_names)} differ from the model's "
                       f"{', '.join(names)}")
    column = {name: j for j, name in enumerate(data.feature_names)}
    order = [column[name] for name in names]
    return map_splits(data, lambda split: (split[0][:, order], split[1]), feature_names=list(names))


def _recode_classes(data: datasets.Dataset, names: Sequence[Any], source: str) -> datasets.Dataset:
    """``data`` with its class codes renumbered as the model's class ``names``; CliError for a class the
    model does not know."""
    code = {name: c for c, name in enumerate(names)}
    unknown = [name for name in data.class_names if name not in code]
    if unknown:
        raise CliError(f"{source}: class {unknown[0]!r} is not one the model knows ({', '.join(map(str, names))})")
    codes = np.array([code[name] for name in data.class_names], dtype=np.int64)
    return map_splits(data, lambda split: (split[0], codes[split[1]]), class_names=list(names),
                      n_classes=len(names))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .serialization import load

    net = load(args.model, device=args.device)
    name, data = evaluation_data(args, net)
    part = getattr(data, args.subset)
    if part is None:
        raise CliError(f"--set {args.subset}: the {args.split} split has no {args.subset} set; "
                       "use --split book")
    if net.sizes[0] != data.n_features:
        raise CliError(f"{args.model} takes {net.sizes[0]} inputs but {name} has {data.n_features}")
    if data.task != net.task:
        raise CliError(f"{args.model} is a {net.task} model but {name} holds {outputs_text(data)}")
    X, y = part
    result = net.evaluate(X, y)
    _say(f"{net!r}\n{name} {args.subset}: {len(X)} samples")
    if net.task == "regression":
        _say("\n".join(f"{key} {value:.6g}" for key, value in result.items()))
        return 0
    labels = net.ops.to_numpy(y)
    predicted = net.predict(X)
    _say(f"loss {result['loss']:.4f}\naccuracy {100 * result['accuracy']:.2f}% "
         f"({int((predicted == labels).sum())}/{len(labels)})")
    k = max(net.sizes[-1], data.n_classes)
    names = data.class_names if data.class_names is not None and len(data.class_names) == k else None
    if k <= MATRIX_CLASSES:
        _say("confusion matrix (rows: true class, columns: predicted class):")
        _say(format_confusion(confusion_matrix(labels, predicted, k), names))
    else:
        _say(format_confusion_summary(labels, predicted, k, names))
    return 0


# ---- predict, export ---------------------------------------------------------------------------------
def _model_commands(commands: Any) -> None:
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

    export = commands.add_parser("export", help="write a saved model as ONNX (.onnx) or safetensors "
                                                "(.safetensors) for use outside gpubp")
    export.add_argument("model", help="a model written by gpubp train --save (.npz)")
    export.add_argument("out", help="OUT.onnx or OUT.safetensors")
    export.set_defaults(run=cmd_export)


def cmd_predict(args: argparse.Namespace) -> int:
    from .prediction import predictions, read_inputs, write_predictions
    from .serialization import load

    out = None if args.out in (None, "-") else args.out
    refuse_same_files([("--out", out)], [("the model", args.model), ("the input", args.input)])
    out = check_writable(out, "--out") if out is not None else None
    net = load(args.model, device=args.device)
    header, columns = predictions(net, read_inputs(args.input, net), proba=args.proba)
    write_predictions(header, columns, out, sys.stdout)
    if out is not None:
        _say(f"wrote {len(columns[0])} predictions to {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import FORMATS
    from .serialization import load

    refuse_same_files([("the output", args.out)], [("the model", args.model)])
    out = check_writable(args.out, "export")
    if out.suffix.lower() not in FORMATS:
        raise CliError(f"export {args.out}: the name must end in {' or '.join(FORMATS)}")
    net = load(args.model, device="cpu")
    net.export(str(out))
    _say(f"wrote {out}")
    return 0


# ---- info -------------------------------------------------------------------------------------------
def _version(module: str) -> str:
    try:
        mod = __import__(module)
    except ImportError:
        return "not installed"
    return getattr(mod, "__version__", "installed")


def kernel_check() -> str:
    """Whether every CUDA kernel compiles (NVRTC) on the current GPU; where their sources are."""
    from .backend import kernels

    try:
        folder = kernels.kernel_dir()
    except FileNotFoundError as exc:
        return f"MISSING: {exc}"
    reason = cuda_unavailable_reason()
    if reason is not None:  # no GPU: compile with NVRTC for sm_90 as the run time would
        try:
            for file in kernels.KERNELS:
                kernels.compile_offline(file)
        except kernels.KernelCompileError as exc:
            return f"FAILED: {exc}"
        except Exception as exc:  # NVRTC itself is not installed
            return f"sources in {folder}; not compiled (no usable GPU, and NVRTC unavailable: {exc})"
        return f"all {len(kernels.KERNELS)} source files compile with NVRTC for sm_90 (no GPU to load " \
               f"them on; sources in {folder})"
    import cupy

    device = cupy.cuda.runtime.getDevice()
    names = [name for file_names in kernels.KERNELS.values() for name in file_names]
    try:
        with cupy.cuda.Device(device):
            for name in names:
                kernels.get_function(device, name)
    except kernels.KernelCompileError as exc:
        return f"FAILED: {exc}"
    return f"all {len(names)} compile on cuda:{device} (sources in {folder})"


def _gpus() -> list[str]:
    """The GPUs CuPy sees, usable or not (none where CuPy or the driver is missing)."""
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # ImportError, CUDARuntimeError: cuda_unavailable_reason says which
        return []
    names = []
    for index in range(count):
        name = cupy.cuda.runtime.getDeviceProperties(index)["name"]
        names.append(f"cuda:{index} {name.decode() if isinstance(name, bytes) else name}")
    return names


def cmd_info(args: argparse.Namespace) -> int:
    from . import __version__

    _say(f"gpubp {__version__}  Python {platform.python_version()}  {platform.platform()}")
    for module in ("numpy", "scipy", "numba", "cupy", "tqdm", "matplotlib", "sklearn", "onnx", "onnxruntime",
                   "safetensors"):
        _say(f"{module:<10} {_version(module)}")
    gpus = _gpus()
    reason = cuda_unavailable_reason()
    _say("GPUs:      " + ("; ".join(gpus) if gpus else f"none ({reason})"))
    auto = get_ops("auto")
    _say(f"auto:      {auto.device}" + ("" if reason is None else " (no usable GPU)" if not gpus else
                                          f" (the GPU is not usable: {reason})"))
    _say(f"cpu:       {cpu_backend_description()}")
    _say(f"env GPUBP_DEVICE={os.environ.get('GPUBP_DEVICE', '(unset)')}  "
         f"GPUBP_DATA={os.environ.get(datasets.DATA_ENV, '(unset)')}")
    _say(f"kernels:   {kernel_check()}")
    return 0


def cpu_backend_description() -> str:
    """Which backend device="cpu" uses, and how to choose the other one."""
    from .backend.device import CPU_BACKEND_ENV, cpu_backend, numba_unavailable_reason

    setting = os.environ.get(CPU_BACKEND_ENV)
    how = f"{CPU_BACKEND_ENV}={setting}" if setting else f"{CPU_BACKEND_ENV} unset"
    try:
        backend = cpu_backend()
    except (ValueError, RuntimeError) as exc:
        return f"unusable: {exc}"
    if backend == "numba":
        from .backend.numba_ops import _NUMBA_BLAS

        blas = "small layers' matmuls in the same call through SciPy's BLAS" if _NUMBA_BLAS else \
            "matmuls by NumPy (install scipy for whole small layers in one call)"
        return f"numba {_version('numba')}: fused kernels, {blas} ({how}; {CPU_BACKEND_ENV}=numpy forces " \
               "the NumPy reference)"
    reason = numba_unavailable_reason()
    return f"numpy: the NumPy reference ({how}" + (f"; {reason})" if reason else ")")


# ---- selftest ---------------------------------------------------------------------------------------
def cmd_selftest(args: argparse.Namespace) -> int:
    from .selftest import format_report, run_selftest

    backends = None if args.backends is None else [b.strip().lower() for b in args.backends.split(",")]
    rows, missing = run_selftest(backends, log=lambda line: _say(line, err=True))
    _say(format_report(rows, missing))
    return 0 if all(row.ok for row in rows) else MISMATCH


# ---- bench ------------------------------------------------------------------------------------------
def cmd_bench(args: argparse.Namespace) -> int:
    from .benchmark import format_table, get_config, run_benchmarks

    configs = [get_config(name.strip()).name for name in args.configs.split(",")]
    rows = run_benchmarks(configs, args.device or "auto", seconds=args.seconds, torch=args.torch,
                          repeats=args.repeats, log=lambda line: _say(line, err=True))
    _say(format_table(rows))
    return 0


# ---- entry point ------------------------------------------------------------------------------------
def _distributed_world():
    """The communicator of gpubp.distributed.init(), if this process made one."""
    module = sys.modules.get("gpubp.distributed")
    return None if module is None else getattr(module, "_world", None)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 user error, 130 interrupted)."""
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except (CliError, ValueError, OSError, ImportError, RuntimeError, FloatingPointError, MemoryError) as exc:
        # RuntimeError: DeviceError, KernelCompileError, gpubp.distributed's launch errors;
        # MemoryError: what no check foresaw is still one line, never a traceback
        message = f"gpubp: error: {exc}" if not isinstance(exc, MemoryError) else \
            f"gpubp: error: out of memory{f' ({exc})' if str(exc) else ''}; try a smaller network, batch or data set"
        world = _distributed_world()
        if world is not None and world.size > 1:  # the other ranks would wait for this one until timeout
            world.abort(message, USAGE_ERROR)
        _say(message, err=True)
        return USAGE_ERROR
