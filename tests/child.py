"""Running gpubp in a child process and reading its peak memory, for the hostile-file tests: a command's
exit status, output and peak resident memory.

The peak is the child's own ``VmHWM`` (Linux's high-water mark of resident memory, which starts afresh at
exec), written by the child as it exits. ``ru_maxrss`` would not do: Linux counts in it the memory the
parent had when it forked the child, so a child of a large test process would report the parent's size.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

#: the peak resident memory every hostile file must stay under (the issue's bound)
PEAK_LIMIT = 200 * 2**20

#: runs ``-m module args…`` or ``-c code args…`` as python would, and at exit writes its own peak resident
#: memory (VmHWM, bytes) to the file named by env GPUBP_TEST_PEAK
_REPORTING_PEAK = """
import atexit, os, resource, runpy, sys

def _report_peak():
    try:
        with open("/proc/self/status") as status:
            peak = int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) * 1024
    except (OSError, StopIteration):  # not Linux: ru_maxrss, which may count the parent's memory too
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    with open(os.environ["GPUBP_TEST_PEAK"], "w") as out:
        out.write(str(peak))

atexit.register(_report_peak)
mode, target, *rest = sys.argv[1:]
if mode == "-m":
    sys.argv = [target, *rest]
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    sys.argv = ["-c", *rest]
    exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})
"""


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    #: None when the child could not report it (killed by a signal, or ended by os._exit)
    peak_bytes: int | None


def gpubp_env(tmp_path: Path | None = None) -> dict[str, str]:
    """The environment of a child gpubp: this checkout importable, the CPU, temp files under ``tmp_path``."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("GPUBP_DEVICE", "cpu")
    if tmp_path is not None:
        env["TMPDIR"] = str(tmp_path)
    return env


def run(args: list[str], tmp_path: Path | None = None, timeout: float = 120, cwd: Path | None = None) -> Result:
    """``python -m module …`` or ``python -c code …`` (``args``) in a child: its exit status, output and
    peak resident memory in bytes."""
    if args[0] not in ("-m", "-c"):
        raise ValueError(f"args must start with -m or -c; got {args[0]!r}")
    env = gpubp_env(tmp_path)
    fd, report = tempfile.mkstemp(prefix="gpubp-peak-", dir=tmp_path)
    os.close(fd)
    env["GPUBP_TEST_PEAK"] = report
    try:
        done = subprocess.run([sys.executable, "-c", _REPORTING_PEAK, *args], env=env, cwd=cwd, text=True,
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
        with open(report) as f:
            text = f.read()
    finally:
        os.unlink(report)
    return Result(done.returncode, done.stdout, done.stderr, int(text) if text else None)


def cli(*argv: str, tmp_path: Path | None = None, **kwargs) -> Result:
    """``gpubp argv…`` in a child process."""
    return run(["-m", "gpubp", *argv], tmp_path, **kwargs)


def python(code: str, tmp_path: Path | None = None, **kwargs) -> Result:
    """``python -c code`` in a child process."""
    return run(["-c", code], tmp_path, **kwargs)


def digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by relative path: compare before and after a command."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}
