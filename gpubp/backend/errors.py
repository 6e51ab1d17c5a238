"""What goes wrong with a device, and the install command that fixes a missing CUDA library (a leaf module)."""

from __future__ import annotations


class DeviceError(RuntimeError):
    """A requested device cannot be used (no CuPy, no GPU, or no such GPU); the message says why."""


def install_command() -> str:
    """The pip command that installs CuPy with the CUDA libraries gpubp needs, for the installed CuPy."""
    from importlib import metadata

    for major in (13, 12):
        try:
            metadata.distribution(f"cupy-cuda{major}x")
        except metadata.PackageNotFoundError:
            continue
        return f"pip install 'gpubp[cuda{major}]'"
    return "pip install 'gpubp[cuda13]' (or 'gpubp[cuda12]' for a CUDA 12 driver)"
