"""``gpubp export``: a saved model as ONNX (.onnx) or safetensors (.safetensors), for use outside gpubp."""

from __future__ import annotations

import argparse
from typing import Any

from ..files import refuse_same_files
from .common import CliError, check_writable, say


def add_command(commands: Any) -> None:
    """The ``export`` sub-command and its arguments."""
    export = commands.add_parser("export", help="write a saved model as ONNX (.onnx) or safetensors "
                                                "(.safetensors) for use outside gpubp")
    export.add_argument("model", help="a model written by gpubp train --save (.npz)")
    export.add_argument("out", help="OUT.onnx or OUT.safetensors")
    export.set_defaults(run=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from ..export import FORMATS
    from ..serialization import load

    refuse_same_files([("the output", args.out)], [("the model", args.model)])
    out = check_writable(args.out, "export")
    if out.suffix.lower() not in FORMATS:
        raise CliError(f"export {args.out}: the name must end in {' or '.join(FORMATS)}")
    net = load(args.model, device="cpu")
    net.export(str(out))
    say(f"wrote {out}")
    return 0
