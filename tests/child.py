"""Running gpubp in a child process and reading its peak memory, for the hostile-file tests: a command's
exit status, output and ``ru_maxrss`` (from ``os.wait4``, so the figure is that child's alone)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

#: the peak resident memory every hostile file must stay under (the issue's bound)
PEAK_LIMIT = 200 * 2**20


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    peak_bytes: int


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
    """``python args…`` in a child; its exit status, output and peak resident memory in bytes."""
    proc = subprocess.Popen([sys.executable, *args], env=gpubp_env(tmp_path), cwd=cwd, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    streams = {"out": proc.stdout, "err": proc.stderr}
    texts: dict[str, str] = {}
    readers = [threading.Thread(target=lambda k=k, s=s: texts.__setitem__(k, s.read())) for k, s in streams.items()]
    for reader in readers:
        reader.start()
    timed_out = threading.Event()
    killer = threading.Timer(timeout, lambda: (timed_out.set(), proc.kill()))
    killer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (waitpid would lose it)
    finally:
        killer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join()
    for stream in streams.values():
        stream.close()
    if timed_out.is_set():
        raise subprocess.TimeoutExpired(args, timeout)
    return Result(proc.returncode, texts["out"], texts["err"], usage.ru_maxrss * 1024)


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
