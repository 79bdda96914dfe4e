"""What every benchmark prints about where it ran: the CPU's name and torch's thread count."""

from __future__ import annotations

import platform
import subprocess

import torch


def cpu_name() -> str:
    """``lscpu``'s model name (else the platform's), and the threads torch uses."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")
        )
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{name}, {torch.get_num_threads()} threads"
