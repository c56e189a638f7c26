"""One line naming the machine a benchmark ran on (CPU model, cores, torch, GPU), so every
printed table says where its numbers come from."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def describe() -> str:
    import torch

    text = f"{_cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(0)}"
    return text


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    return next((line.split(":", 1)[1].strip() for line in lines
                 if line.startswith("model name")), platform.processor() or "unknown CPU")
