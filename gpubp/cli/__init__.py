"""The ``gpubp`` command line: ``train``, ``evaluate``, ``predict``, ``explain``, ``export``, ``info``,
``bench`` and ``selftest``, one module per concept (``train``; ``evaluate`` with ``predict``; ``explain``;
``export``; ``info`` with ``selftest`` and ``bench``), sharing ``common`` (errors, exit statuses, printing)
and ``data`` (--data).

User errors (missing data, a bad --sizes string, an unknown activation, an unwritable --save path, …) are
found before training starts and print one line ``gpubp: error: …`` to stderr with exit status 2.
Ctrl-C during training stops after the current mini-batch, still saves and plots, and exits with 130.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from . import evaluate, explain, export, info, train
from .common import USAGE_ERROR, CliError, say


class _Parser(argparse.ArgumentParser):
    """argparse whose errors become ``CliError`` (one line, no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CliError(message)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every sub-command; each sets ``run``, the function that carries it out."""
    parser = _Parser(prog="gpubp", description="Train and evaluate backpropagation networks on MNIST, "
                                               "the 8x8 digits or your own IDX/NPZ/CSV data, on the CPU "
                                               "or a CUDA GPU; apply and export the models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train.add_command(commands)
    evaluate.add_commands(commands)
    explain.add_command(commands)
    export.add_command(commands)
    info.add_commands(commands)
    return parser


def _distributed_world() -> Any:
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
        say(message, err=True)
        return USAGE_ERROR
