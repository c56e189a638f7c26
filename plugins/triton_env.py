"""Whether the Triton kernel can run here, asked without importing triton (an optional
dependency of the runtime) and read at call time (tests switch TRITON_INTERPRET on and off)."""
from __future__ import annotations

import importlib.util
import os

# Channels the kernel takes: it holds [BLOCK, C] operand tiles in registers; beyond this it
# would spill, and the blocked torch path serves instead.
KERNEL_MAX_CHANNELS = 256


def triton_available() -> bool:
    """True when the triton package is installed."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """True when TRITON_INTERPRET asks for Triton's CPU interpreter (kernels run in numpy)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
