"""``gpubp train``: train a network on a data set, report each epoch, save the model and plot the curves."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from typing import Any

import numpy as np

from ..backend.precision import MATMUL_PRECISIONS
from ..files import refuse_same_files
from ..network import EVAL_CHUNK
from ..schedules import SCHEDULES
from .common import INTERRUPTED, CliError, check_writable, say
from .data import add_data_options, data_files, load_data, outputs_text

#: training samples whose mean gradient gives the per-layer learning speed in --plot
SPEED_SAMPLES = 1000
#: --output and --cost when neither is given, and --lr when not given, per task
TASK_DEFAULTS = {"classification": ("softmax", "log_likelihood"), "regression": ("identity", "quadratic")}
#: --lr when not given: the book's η = 3.0 for the quadratic cost, 0.5 for cross-entropy and log-likelihood;
#: 0.01 for regression, whose unbounded outputs diverge at those rates
DEFAULT_LR = {"quadratic": 3.0, "cross_entropy": 0.5, "log_likelihood": 0.5, "regression": 0.01}


def add_command(commands: Any) -> None:
    """The ``train`` sub-command and its options."""
    train = commands.add_parser("train", help="train a network and report validation accuracy per epoch")
    add_data_options(train, default="digits", default_help="digits, which needs no download")
    train.add_argument("--sizes", type=parse_sizes, default=None,
                       help="every layer width, input first, e.g. 784,30,10 (default: FEATURES,30,CLASSES "
                            "of the data; the first and last must match the data)")
    train.add_argument("--activation", default="sigmoid", help="hidden activation (default sigmoid)")
    train.add_argument("--output", default=None,
                       help="output activation, e.g. softmax (default: by the task, see --cost)")
    train.add_argument("--cost", default=None,
                       help="quadratic, cross_entropy or log_likelihood (default: softmax output with "
                            "log_likelihood for classification, identity with quadratic for regression)")
    train.add_argument("--epochs", type=int, default=30,
                       help="epochs (default 30); with --optimizer lbfgs the most L-BFGS iterations")
    train.add_argument("--batch-size", type=int, default=None,
                       help="mini-batch size (default 10); with --optimizer lbfgs the rows per chunk of its "
                            f"full-batch gradient (default {EVAL_CHUNK})")
    train.add_argument("--lr", type=float, default=None,
                       help="learning rate η (default: 3.0 for classification with the quadratic cost, 0.5 "
                            "with cross_entropy or log_likelihood, 0.01 for regression)")
    train.add_argument("--optimizer", default="sgd",
                       help="sgd, momentum, nesterov, adam, or lbfgs: scipy's L-BFGS-B on the full-batch "
                            "loss, which takes no --lr (its line search sets each step), reads --tol as its "
                            "gradient tolerance and --optimizer-option max_fun=N (default sgd)")
    train.add_argument("--momentum", type=float, default=0.9, help="μ for --optimizer momentum")
    decay = train.add_mutually_exclusive_group()
    decay.add_argument("--weight-decay", type=float, default=0.0,
                       help="L2 coefficient per step: w ← w − η(∂C/∂w + λw)")
    decay.add_argument("--l2", type=float, default=None, metavar="LAMBDA",
                       help="L2 in the book's form C + λ/(2n) Σw², i.e. --weight-decay λ/n for n "
                            "training samples")
    train.add_argument("--lr-schedule", default="constant", choices=SCHEDULES,
                       help="constant η; invscaling η₀/(t+1)^power_t over samples seen t; adaptive η/5 "
                            "when --tol's rule fires (default constant)")
    train.add_argument("--power-t", type=float, default=0.5, help="the exponent of --lr-schedule invscaling "
                                                                  "(default 0.5)")
    train.add_argument("--tol", type=float, default=None,
                       help="stop after --n-iter-no-change epochs whose loss does not improve by TOL: the "
                            "validation loss where the data has a validation split, else the training loss "
                            "(default: off); lbfgs: stop once no gradient component exceeds TOL (default 1e-5)")
    train.add_argument("--n-iter-no-change", type=int, default=10, metavar="N",
                       help="epochs without an improvement before --tol's rule fires (default 10)")
    train.add_argument("--restore-best", action="store_true",
                       help="end with the parameters of the best epoch that --tol's rule saw")
    train.add_argument("--optimizer-option", action="append", default=[], type=_option, metavar="NAME=VALUE",
                       help="any other optimizer setting, e.g. beta2=0.99 for adam (repeatable; VALUE is "
                            "read as JSON, else as text)")
    train.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: env "
                                                      "GPUBP_DEVICE, else auto)")
    train.add_argument("--dtype", default="float32", help="float32 or float64 (default float32)")
    train.add_argument("--matmul-precision", default="fp32", choices=MATMUL_PRECISIONS,
                       help="a GPU's matmuls: fp32 (default) or tf32 (TF32 tensor cores, float32 networks)")
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


def _option(text: str) -> tuple[str, object]:
    """An --optimizer-option NAME=VALUE: VALUE as JSON (numbers, true/false), else as the text itself."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE; got {text!r}")
    try:
        return name.strip(), json.loads(value)
    except json.JSONDecodeError:
        return name.strip(), value


def _seed(text: str) -> int:
    """A --seed: an integer >= 0 (what NumPy's generators take)."""
    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if seed < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0; got {text!r}")
    return seed


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
            say("  ".join(parts))
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
            say("gpubp: note: tqdm is not installed (pip install gpubp[cli]); no progress bar", err=True)
        return False
    return True


def cmd_train(args: argparse.Namespace) -> int:
    from ..checkpoint import CheckpointWarning
    from ..network import Network
    from ..plotting import plot_training, require_matplotlib

    warnings.filterwarnings("ignore", category=CheckpointWarning)  # fit prints them as "gpubp: …" lines

    refuse_same_files([("--save", args.save), ("--plot", args.plot)], data_files(args))
    save = check_writable(args.save, "--save") if args.save is not None else None
    plot = check_writable(args.plot, "--plot") if args.plot is not None else None
    if plot is not None:
        require_matplotlib()
    comm, device = None, args.device
    if args.distributed:
        from .. import distributed

        comm = distributed.init(args.device)
        device = comm.device  # this rank's GPU (cuda:local_rank % visible GPUs) or the CPU
    main_rank = comm is None or comm.rank == 0

    data = load_data(args, dtype=args.dtype, device=device)
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
                  device=device, dtype=args.dtype, seed=args.seed, matmul_precision=args.matmul_precision)
    net.metadata.update(data.model_metadata())
    X, y = data.train
    lbfgs = isinstance(args.optimizer, str) and args.optimizer.lower() == "lbfgs"
    batch_size = args.batch_size if args.batch_size is not None else EVAL_CHUNK if lbfgs else 10
    weight_decay = args.weight_decay if args.l2 is None else args.l2 / len(X)
    monitor, held_out = ("validation", data.validation) if data.validation is not None \
        else ("test", data.test)
    speed_data = (X[:SPEED_SAMPLES], y[:SPEED_SAMPLES]) if plot is not None and main_rank else None
    report = EpochReport(args.epochs, len(X), monitor, speed_data, verbose=main_rank)
    if main_rank:
        steps = f"at most {args.epochs} L-BFGS iterations, chunks of {batch_size} rows" if lbfgs else \
            f"{args.epochs} epochs, batch {batch_size}, lr {lr}, {args.optimizer}"
        say(f"{net!r}\n{data!r}\n{task_note}\ntraining {steps}"
            + (f", weight decay {weight_decay:.3g}" if weight_decay else "")
            + (f", {comm.size} ranks" if comm is not None else ""))
    status = 0
    try:
        net.fit(X, y, epochs=args.epochs, batch_size=batch_size, lr=lr, optimizer=args.optimizer,
                momentum=args.momentum, weight_decay=weight_decay, validation_data=held_out,
                progress=main_rank and _progress_wanted(args.progress), seed=args.seed,
                callbacks=[report], distributed=comm, checkpoint=args.checkpoint,
                checkpoint_every=args.checkpoint_every, lr_schedule=args.lr_schedule, power_t=args.power_t,
                tol=args.tol, n_iter_no_change=args.n_iter_no_change,
                monitor=None if args.tol is None or lbfgs else "val_loss" if monitor == "validation" else "loss",
                restore_best=args.restore_best,
                optimizer_options=dict(args.optimizer_option) or None)
    except KeyboardInterrupt as exc:
        status = INTERRUPTED
        if main_rank:
            say(f"gpubp: interrupted ({exc}); keeping what was trained", err=True)
    if not main_rank:
        return status
    history = net.history
    if history.get("val_accuracy"):
        best = int(np.argmax(history["val_accuracy"]))
        say(f"best epoch {best + 1}: {monitor} accuracy {100 * history['val_accuracy'][best]:.2f}%")
    elif history.get("val_r2"):
        best = int(np.argmax(history["val_r2"]))
        say(f"best epoch {best + 1}: {monitor} r2 {history['val_r2'][best]:.4f}  mse "
            f"{history['val_mse'][best]:.4f}")
    if monitor != "test":
        say(f"test (final model): {format_results(net.evaluate(*data.test))}")
    if report.seconds:
        say(f"time per epoch: {np.median(report.seconds):.3g} s (median of {len(report.seconds)})")
    if save is not None:
        net.save(str(save))
        say(f"saved model to {save}")
    if plot is not None:
        plot_training(history, plot, report.grad_norms, title=f"{args.data} {sizes} {net.activation.name}"
                      f"/{net.output.name} {net.cost.name}", monitor=monitor)
        say(f"saved plot to {plot}")
    return status
