"""Whether the Triton kernel can run here, asked without importing triton (an optional
dependency of the runtime) and read at call time (tests switch TRITON_INTERPRET on and off)."""
from __future__ import annotations

import importlib.util
import os

# Sizes the kernel takes (plugins/kernel.py); beyond them the blocked torch path serves. C: the
# channel loop is unrolled into tensor-core steps; locations: the query is held as at most two
# parts of <= 256 rows, the gallery's responses in a table that grows with HWg.
KERNEL_MAX_CHANNELS = 256
KERNEL_MAX_LOCATIONS = 512


def triton_available() -> bool:
    """True when the triton package is installed."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """True when TRITON_INTERPRET asks for Triton's CPU interpreter (kernels run in numpy)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
