"""PTX text of the ahead-of-time kernel, made loadable by TensorRT's AOT plugin launcher.

Two facts of Triton's output that TensorRT does not accommodate (plugins/README.md, "TensorRT
plugin"):

* **Scratch parameters.** Triton >= 3.3 appends scratch-memory pointers to every kernel entry
  (3.9: a global and a profile scratch pointer), while TensorRT launches an AOT kernel with
  exactly (inputs, extra scalars, outputs). When Triton reports 0 bytes for every scratch
  buffer the kernel never touches them, so the trailing declarations are removed; otherwise the
  kernel cannot run under TensorRT and is refused.
* **PTX ISA version.** Triton stamps the ISA of the ptxas it ships (`.version 8.8` with CUDA
  12.9's ptxas, `.version 9.4` with Triton 3.9's CUDA 13.4 ptxas for sm_90a), and a driver
  refuses PTX newer than its CUDA release (CUDA_ERROR_UNSUPPORTED_PTX_VERSION). The version line
  is lowered to what the deployment driver supports, and ptxas then proves the text still
  assembles at that ISA (a newer instruction would be rejected there, not on the server).

Only text facts live here (no triton import at module level): parse the `.entry` parameter
list, drop trailing parameters, read and cap `.version`, map a CUDA release to its PTX ISA.
"""
from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import TalError

Isa = tuple[int, int]

_ENTRY = re.compile(r"\.entry\s+(?P<name>[A-Za-z_$][\w$]*)\s*\((?P<params>[^)]*)\)")
_PARAM = re.compile(r"\.param\s+(?P<type>\.[a-z]\d+)(?P<attrs>(?:\s+\.[\w]+(?:\s+\d+)?)*)\s+"
                    r"(?P<name>[A-Za-z_$][\w$]*)\s*$")
_VERSION = re.compile(r"^\.version\s+(\d+)\.(\d+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class EntryParam:
    """One kernel parameter as the PTX declares it: `.u64 .ptr ...` pointers, `.u32` scalars."""
    name: str
    type: str

    @property
    def is_pointer(self) -> bool:
        return self.type in (".u64", ".b64", ".s64")


def entry_params(ptx: str) -> tuple[str, list[EntryParam]]:
    """(kernel name, parameters in order) of the single `.entry` of `ptx`."""
    entries = list(_ENTRY.finditer(ptx))
    if len(entries) != 1:
        raise TalError(f"expected one .entry in the kernel PTX, found {len(entries)}")
    params = []
    for text in entries[0]["params"].split(","):
        if not text.strip():
            continue
        match = _PARAM.search(text.strip())
        if match is None:
            raise TalError(f"unreadable PTX kernel parameter {text.strip()!r}")
        params.append(EntryParam(match["name"], match["type"]))
    return entries[0]["name"], params


def drop_trailing_params(ptx: str, keep: int) -> str:
    """`ptx` with every `.entry` parameter after the first `keep` removed. Refuses when the body
    still names a removed parameter (then it is used, and removing it would break the kernel)."""
    name, params = entry_params(ptx)
    dropped = params[keep:]
    if not dropped:
        return ptx
    match = _ENTRY.search(ptx)
    kept = match["params"].split(",")[:keep]
    new_list = ",".join(kept).rstrip() + "\n"
    stripped = ptx[:match.start("params")] + new_list + ptx[match.end("params"):]
    body = stripped[match.start("params") + len(new_list):]
    used = [p.name for p in dropped if re.search(rf"\b{re.escape(p.name)}\b", body)]
    if used:
        raise TalError(f"kernel {name}: parameters {', '.join(used)} are read by the kernel "
                       "body and cannot be removed")
    return stripped


def isa_version(ptx: str) -> Isa:
    """The `.version` the PTX declares, e.g. (8, 8)."""
    found = _VERSION.findall(ptx)
    if len(found) != 1:
        raise TalError(f"expected one .version line in the kernel PTX, found {len(found)}")
    return int(found[0][0]), int(found[0][1])


def with_isa_version(ptx: str, version: Isa) -> str:
    """`ptx` declaring `.version major.minor` instead of its own."""
    isa_version(ptx)  # exactly one line to replace
    return _VERSION.sub(f".version {version[0]}.{version[1]}", ptx)


def format_isa(version: Isa) -> str:
    return f"{version[0]}.{version[1]}"


def parse_isa(text: str) -> Isa:
    """"8.4" -> (8, 4); a one-line TalError for anything else."""
    match = re.fullmatch(r"\s*(\d+)\.(\d)\s*", str(text))
    if match is None:
        raise TalError(f"PTX ISA version {text!r} is not of the form MAJOR.MINOR (e.g. 8.4)")
    return int(match[1]), int(match[2])


def target_name(arch: int) -> str:
    """The PTX target Triton compiles for: sm_90a, sm_100a for capability >= 90 (arch-specific
    features such as wgmma), sm_80 below."""
    return f"sm_{arch}{'a' if arch >= 90 else ''}"


# Oldest PTX ISA that knows each target (PTX ISA release notes): sm_80 7.0, sm_86 7.1,
# sm_89/sm_90 7.8, sm_90a 8.0, sm_100a 8.6, sm_120a 8.7.
_MIN_ISA = {80: (7, 0), 86: (7, 1), 87: (7, 4), 89: (7, 8), 90: (8, 0), 100: (8, 6),
            101: (8, 6), 103: (8, 8), 120: (8, 7), 121: (8, 8)}


def min_isa(arch: int) -> Isa:
    """The oldest PTX ISA that can express kernels for `target_name(arch)`."""
    if arch not in _MIN_ISA:
        raise TalError(f"compute capability {arch // 10}.{arch % 10} is not a known target for "
                       f"the QAConvMatch kernel (known: "
                       f"{', '.join(f'{a // 10}.{a % 10}' for a in sorted(_MIN_ISA))})")
    return _MIN_ISA[arch]


def isa_for_cuda(cuda: tuple[int, int]) -> Isa:
    """The newest PTX ISA a CUDA release (toolkit or driver) accepts: CUDA 11.x -> 7.x,
    12.0-12.5 -> 8.0-8.5, 12.6 -> 8.5, 12.8 -> 8.7, 12.9 -> 8.8, 13.x -> 9.x."""
    major, minor = cuda
    if major == 11:
        return 7, minor
    if major == 12:
        return (8, minor) if minor < 6 else (8, minor - 1)
    if major >= 13:
        return 9 + (major - 13), minor
    raise TalError(f"CUDA {major}.{minor} is too old for the QAConvMatch kernel (CUDA 11+)")


def driver_cuda_version() -> tuple[int, int] | None:
    """The CUDA release the installed NVIDIA driver supports (cuDriverGetVersion, which needs
    no GPU context), or None where no driver library is found."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        version = ctypes.c_int(0)
        if lib.cuDriverGetVersion(ctypes.byref(version)) != 0 or version.value <= 0:
            return None
        return version.value // 1000, (version.value % 1000) // 10
    return None


def _ptxas() -> str:
    """The newest ptxas Triton ships (or one on PATH)."""
    try:
        from triton import knobs

        tools = [getattr(knobs.nvidia, n, None) for n in ("ptxas_blackwell", "ptxas")]
        for tool in tools:
            try:
                if tool is not None and tool.path:
                    return tool.path
            except RuntimeError:  # the knob raises when its binary is missing
                continue
    except (ImportError, AttributeError):
        pass
    found = shutil.which("ptxas")
    if found is None:
        raise TalError("no ptxas found (it ships with triton) to check the plugin kernel")
    return found


def check_assembles(ptx: str, arch: int) -> None:
    """Assemble `ptx` for `target_name(arch)` with ptxas (no GPU needed); a TalError with
    ptxas's first error line where the text is not valid at its declared ISA."""
    with tempfile.TemporaryDirectory(prefix="tal-ptx-") as tmp:
        source = Path(tmp) / "kernel.ptx"
        source.write_text(ptx)
        result = subprocess.run([_ptxas(), f"-arch={target_name(arch)}", str(source), "-o",
                                 str(Path(tmp) / "kernel.cubin")],
                                capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = [l for l in (result.stderr + result.stdout).splitlines() if "error" in l]
        detail = lines[0] if lines else f"ptxas exit code {result.returncode}"
        raise TalError(f"the QAConvMatch kernel does not assemble at PTX ISA "
                       f"{format_isa(isa_version(ptx))} for {target_name(arch)}: {detail}")
