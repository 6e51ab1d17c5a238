"""``gpubp explain``: teach mode on the command line: one sample through a saved model or a hand-written JSON
network, every number of the forward pass and of BP1–BP4 written out and checked by finite differences,
one SGD step, and optionally the drawing (``gpubp.explain``)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..explain import DEFAULT_LR
from ..files import refuse_same_files
from .common import CliError, check_writable, say

#: what --draw writes, by suffix
DRAWINGS = (".svg", ".png")
#: comma-separated numbers, the first negative: an INPUT or --target value, not an option
NEGATIVE_NUMBERS = re.compile(r"^-[\d.]+([eE][-+]?\d+)?(\s*,\s*[-+]?[\d.]+([eE][-+]?\d+)?)*$")


def add_command(commands: Any) -> None:
    """The ``explain`` sub-command and its options."""
    explain = commands.add_parser(
        "explain", help="teach mode: one sample through a network, the forward pass and BP1–BP4 written out "
                        "term by term, each gradient beside its finite difference, one SGD step, a drawing")
    explain.add_argument("net", metavar="NET",
                         help="a model written by gpubp train --save (.npz) or a hand-written JSON network "
                              '(.json): {"sizes": [3, 2, 2], "activation": "sigmoid", "cost": "quadratic", '
                              '"weights": [...], "biases": [...]}, weights[l] being sizes[l+1] × sizes[l]')
    # argparse takes "-1,2" for an option unless it matches the parser's negative-number pattern (which
    # only knows single numbers such as -1.5); this command has no option that looks like a number
    explain._negative_number_matcher = NEGATIVE_NUMBERS
    explain.add_argument("input", metavar="INPUT", nargs="?", default=None,
                         help="the sample: comma-separated numbers, as many as the network has inputs, e.g. "
                              "2,3,4 or -1,0.5,2; or --data with --index")
    explain.add_argument("--target", dest="target_values", default=None, metavar="T",
                         help="the expected output: comma-separated numbers, e.g. 1,0, or one class label")
    explain.add_argument("--step", type=float, default=DEFAULT_LR, metavar="LR",
                         help=f"the learning rate η of the SGD step shown (default {DEFAULT_LR})")
    explain.add_argument("--draw", default=None, metavar="FILE",
                         help="also draw the network with its numbers: FILE.svg, or FILE.png (needs matplotlib)")
    explain.add_argument("--data", default=None, metavar="NAME|PATH",
                         help="take INPUT and the target from a data set (mnist, digits, or a file as for "
                              "gpubp evaluate) instead")
    explain.add_argument("--data-dir", default=None, metavar="DIR",
                         help="folder whose mnist/ holds the MNIST IDX files (default: env GPUBP_DATA)")
    explain.add_argument("--index", type=int, default=0, metavar="N", help="the sample of --data (default 0)")
    explain.add_argument("--set", dest="subset", choices=("test", "validation", "train"), default="test",
                         help="the part of --data that --index counts in (default test)")
    explain.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto")
    explain.set_defaults(run=cmd_explain)


def parse_numbers(text: str, what: str) -> np.ndarray:
    """"2,3,4" -> array([2., 3., 4.]); CliError naming ``what`` for anything that is not a number."""
    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise CliError(f"{what} {text!r}: {part.strip()!r} is not a number; give comma-separated numbers "
                           "such as 2,3,4") from None
        if not np.isfinite(value):
            raise CliError(f"{what} {text!r}: {part.strip()!r} is not a finite number")
        values.append(value)
    return np.array(values)


def load_network(args: argparse.Namespace) -> Any:
    """NET: a hand-written JSON network (.json) or a saved model."""
    if Path(args.net).suffix.lower() == ".json":
        from ..json_network import read_json_network

        return read_json_network(args.net, device=args.device)
    from ..serialization import load

    return load(args.net, device=args.device)


def sample_from_arguments(args: argparse.Namespace, net: Any) -> tuple[np.ndarray, Any]:
    """(x, y) from INPUT and --target, standardised as the model was trained (when it was)."""
    from ..prediction import model_scaling

    width, outputs = net.sizes[0], net.sizes[-1]
    x = parse_numbers(args.input, "INPUT")
    if len(x) != width:
        raise CliError(f"INPUT {args.input!r}: the network takes {width} inputs; got {len(x)} number"
                       f"{'s' * (len(x) != 1)}")
    scaling = model_scaling(net)
    if scaling is not None:
        x = scaling.apply(x[None])[0]
        say("INPUT standardised as in training: (x − mean)/std with the model's stored mean and std")
    if args.target_values is None:
        if net.cost.needs_target:
            raise CliError(f"the {net.cost.name} cost compares the output with a target: give --target with "
                           f"{outputs} comma-separated numbers{' or a class label' if outputs > 1 else ''}")
        return x, None
    y = parse_numbers(args.target_values, "--target")
    if len(y) == 1 and outputs > 1:
        label = y[0]
        if label != int(label) or not 0 <= label < outputs:
            raise CliError(f"--target {args.target_values!r}: one number is a class label, which must be an "
                           f"integer from 0 to {outputs - 1}; or give {outputs} comma-separated numbers")
        return x, int(label)
    if len(y) != outputs:
        raise CliError(f"--target {args.target_values!r}: the network has {outputs} outputs; got {len(y)} "
                       f"number{'s' * (len(y) != 1)}")
    return x, y


def sample_from_data(args: argparse.Namespace, net: Any) -> tuple[np.ndarray, Any]:
    """(x, y): sample --index of the --set part of --data, aligned with the model as gpubp evaluate does."""
    from .evaluate import evaluation_data

    if args.input is not None or args.target_values is not None:
        raise CliError("--data gives the sample and its target: leave out INPUT and --target")
    options = argparse.Namespace(model=args.net, data=args.data, data_dir=args.data_dir, target=None,
                                 test_fraction=None, split="book", standardize=False)
    name, data = evaluation_data(options, net)
    part = getattr(data, args.subset)
    if part is None:
        raise CliError(f"--set {args.subset}: {name} has no {args.subset} set")
    X, y = part
    if not 0 <= args.index < len(X):
        raise CliError(f"--index {args.index}: the {args.subset} set of {name} has {len(X)} samples "
                       f"(0 to {len(X) - 1})")
    return np.asarray(X[args.index]), np.asarray(y[args.index])


def cmd_explain(args: argparse.Namespace) -> int:
    if args.input is None and args.data is None:
        raise CliError("give INPUT (comma-separated numbers) or --data with --index")
    if not (np.isfinite(args.step) and args.step > 0):
        raise CliError(f"--step {args.step}: the learning rate must be a finite number > 0")
    draw = None
    if args.draw is not None:
        refuse_same_files([("--draw", args.draw)], [("NET", args.net)])
        draw = check_writable(args.draw, "--draw")
        if draw.suffix.lower() not in DRAWINGS:
            raise CliError(f"--draw {args.draw}: the name must end in {' or '.join(DRAWINGS)}")
        if draw.suffix.lower() == ".png":
            from ..plotting import require_matplotlib

            require_matplotlib()
    net = load_network(args)
    x, y = sample_from_data(args, net) if args.data is not None else sample_from_arguments(args, net)
    explanation = net.explain(x, y, lr=args.step)
    say(str(explanation))
    if draw is not None:
        explanation.draw(draw)
        say(f"drew the network to {draw}")
    return 0
