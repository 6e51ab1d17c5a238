"""What every ``gpubp`` command shares: the user error, the exit statuses, printing, and output paths."""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: exit statuses
MISMATCH = 1
USAGE_ERROR = 2
INTERRUPTED = 130


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def say(text: str = "", *, err: bool = False) -> None:
    """Print a line to stdout (or, with ``err``, stderr) at once."""
    print(text, file=sys.stderr if err else sys.stdout, flush=True)


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
