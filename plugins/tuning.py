"""Launch parameters of the QAConvMatch Triton kernel: one table instead of run-time autotuning.

Why: `triton.autotune` times every candidate config at the first call of every new process. On an
H200 that cost 43-45 s per kernel specialization (issue 12), paid again by every new process and
by every (map size, C, P, dtype, mode) a run meets. So a launch config is looked up, in this
order:

1. the tuning cache file of this GPU (`cache_file`), written by the opt-in tuner
   (``python -m tal_plugins.tune``, or any process run with ``TAL_QACONV_AUTOTUNE=1``);
2. the built-in table `TABLE`: one config per (architecture, shape class, dtype class), the same
   for the run-time launcher and the TensorRT plan (`table_config`), each checked ahead of time
   for shared memory within what a TensorRT plugin launch allows, registers without spills and
   the tensor-core instructions it compiles to (benchmarks/ptx_resources.py,
   tests/plugins/test_ptx_resources.py).

There is no fallback chain: the launcher runs the config it looked up (and logs it with its
source once), the plan records it in the manifest, and a config that does not fit is an error.

A lookup is keyed by what changes the compiled kernel or its best shape (`TuningKey`): GPU
architecture, HWq x HWg, C, the P range (P_PAD/2, P_PAD], dtype and mode. Never by Nq or Ng:
they vary per batch and are plain run-time arguments of the kernel (see plugins/kernel.py).

The cache file is JSON, one per GPU model and architecture, in ``$TAL_CACHE_DIR`` or else
``$XDG_CACHE_HOME/tal-reid`` (``~/.cache/tal-reid``). A file that cannot be read or does not hold
valid configs is ignored with one warning naming it, and the table serves instead. Triton
keeps its compiled kernels in its own on-disk cache (``TRITON_CACHE_DIR``, default
``~/.triton/cache``), so only the first process on a machine compiles a specialization.

Pure Python (no torch, no triton at import): the kernel module, the tuner and the TensorRT
plugin's ahead-of-time build all read this table.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("tal_plugins")

CACHE_DIR_ENV = "TAL_CACHE_DIR"
AUTOTUNE_ENV = "TAL_QACONV_AUTOTUNE"
CACHE_FORMAT = "tal-reid/qaconv-launch/2"

# tl.dot needs every tile dimension >= 16.
MIN_BLOCK = 16
# Galleries per program: the M dimension of the kernel's projection dots (>= MIN_BLOCK).
GALLERIES_PER_PROGRAM = 16
# Hopper's wgmma takes M in multiples of 64 rows per warp group.
WGMMA_ROWS = 64
GALLERY_BLOCKS = (64, 32, 16)
CHANNEL_BLOCKS = (16, 32, 64)
DTYPES = ("fp16", "bf16", "fp32")


@dataclass(frozen=True)
class LaunchConfig:
    """Gallery block, channel step, warps, software-pipelining stages and register cap (None:
    ptxas's choice) of one launch."""
    block_j: int
    block_c: int
    num_warps: int = 8
    num_stages: int = 1
    maxnreg: int | None = None

    def kernel_args(self) -> dict[str, int]:
        """Keyword arguments of a Triton launch (constexprs upper case, compile options lower)."""
        args = {"BLOCK_J": self.block_j, "BLOCK_C": self.block_c, "num_warps": self.num_warps,
                "num_stages": self.num_stages}
        return {**args, "maxnreg": self.maxnreg} if self.maxnreg else args

    @classmethod
    def from_kernel_args(cls, args: dict) -> "LaunchConfig":
        """The inverse of `kernel_args`; ValueError for anything but a launchable config."""
        fields = ("BLOCK_J", "BLOCK_C", "num_warps", "num_stages")
        if not isinstance(args, dict) or any(type(args.get(f)) is not int for f in fields) or (
                args.get("maxnreg") is not None and type(args["maxnreg"]) is not int):
            raise ValueError(f"a launch config needs integer {', '.join(fields)} (and maxnreg)")
        config = cls(args["BLOCK_J"], args["BLOCK_C"], args["num_warps"], args["num_stages"],
                     args.get("maxnreg"))
        checks = [(config.block_j in GALLERY_BLOCKS, "BLOCK_J"),
                  (config.block_c in CHANNEL_BLOCKS, "BLOCK_C"),
                  (config.num_warps in (4, 8), "num_warps"),
                  (1 <= config.num_stages <= 4, "num_stages"),
                  (config.maxnreg is None or 64 <= config.maxnreg <= 255, "maxnreg")]
        bad = [name for ok, name in checks if not ok]
        if bad:
            raise ValueError(f"launch config out of range: {', '.join(bad)} in {args}")
        return config

    def __str__(self) -> str:
        cap = f", <= {self.maxnreg} registers" if self.maxnreg else ""
        return (f"(gallery block {self.block_j}, channel step {self.block_c}, {self.num_warps} "
                f"warps, {self.num_stages} stage{'s' if self.num_stages > 1 else ''}{cap})")


# Under TRITON_INTERPRET=1 every program runs in numpy: the smallest blocks keep tests quick
# (warps and registers mean nothing there).
INTERPRETER_CONFIG = LaunchConfig(MIN_BLOCK, MIN_BLOCK, 4, 1)


def pow2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def query_parts(hwq: int) -> tuple[int, int]:
    """The kernel's split of the HWq query locations into at most two power-of-two parts:
    the largest power of two <= HWq (16 .. 256), and the rest padded to a power of two (0 when
    there is none): 192 -> (128, 64), 48 -> (32, 16), 20 -> (16, 16), 256 -> (256, 0)."""
    first = max(MIN_BLOCK, min(1 << (int(hwq).bit_length() - 1), 256))
    rest = hwq - first
    return first, (max(MIN_BLOCK, pow2(rest)) if rest > 0 else 0)


def gallery_block(hwg: int) -> int:
    """Gallery locations per S block: the largest of 64, 32, 16 that pads HWg least."""
    return min(GALLERY_BLOCKS, key=lambda b: (cdiv(hwg, b) * b, -b))


@dataclass(frozen=True)
class TuningKey:
    """What a launch config is chosen by (`text` is its name in tables and cache files)."""
    arch: str          # "sm90" for compute capability 9.0
    hwq: int
    hwg: int
    channels: int
    p: int             # projection width (1 in responses mode)
    dtype: str         # fp16 | bf16 | fp32
    responses: bool = False

    @property
    def p_range(self) -> tuple[int, int]:
        """The P values that share this key's config: (P_PAD/2, P_PAD]."""
        high = pow2(self.p)
        return (high // 2 + 1 if high > 1 else 1), high

    @property
    def mode(self) -> str:
        return "responses" if self.responses else "match"

    @property
    def shape_class(self) -> str:
        """"wgmma" when both query parts are multiples of 64 rows and the gallery blocks are
        64 wide (HW 64, 128, 192, 256, 320, 384 ...: Hopper's wgmma applies), else "small"."""
        parts = [n for n in query_parts(self.hwq) if n]
        wide = all(n % WGMMA_ROWS == 0 for n in parts) and gallery_block(self.hwg) == 64
        return "wgmma" if wide else "small"

    def text(self) -> str:
        low, high = self.p_range
        p = f"p{high}" if low == high else f"p{low}-{high}"
        return (f"{self.arch}/hw{self.hwq}x{self.hwg}/c{self.channels}/{p}/{self.dtype}/"
                f"{self.mode}")


@dataclass(frozen=True)
class TableRow:
    """The config of every key of one (architecture, shape class, dtype class); block_j None:
    `gallery_block` of the key's HWg."""
    arch: str          # "sm90", or "other" for every architecture without its own rows
    shape_class: str
    dtypes: tuple[str, ...]
    block_c: int
    num_warps: int
    maxnreg: int | None
    why: str

    def config(self, key: TuningKey) -> LaunchConfig:
        return LaunchConfig(gallery_block(key.hwg), self.block_c, self.num_warps, 1, self.maxnreg)


# Checked ahead of time by benchmarks/ptx_resources.py for every specialization the runtime and
# the TensorRT plan use (plugins/README.md has the table); not yet timed on a GPU.
TABLE = (
    TableRow("sm90", "wgmma", ("fp16", "bf16"), 32, 8, 128,
             "wgmma for both query parts; no spills at 128 registers, so two programs of 8 "
             "warps fit an SM"),
    TableRow("sm90", "wgmma", ("fp32",), 32, 8, None,
             "three-pass tf32 wgmma: a 128-register cap spills, so ptxas chooses"),
    TableRow("sm90", "small", DTYPES, 32, 8, 128, "mma.sync (parts under 64 rows)"),
    TableRow("other", "wgmma", DTYPES, 32, 8, None,
             "mma.sync keeps operand fragments in registers: a 128-register cap spills"),
    TableRow("other", "small", DTYPES, 32, 8, 128, "mma.sync"),
)


def table_row(key: TuningKey) -> TableRow:
    """The table row of `key` (every key has exactly one)."""
    arch = key.arch if any(row.arch == key.arch for row in TABLE) else "other"
    return next(row for row in TABLE if row.arch == arch and row.shape_class == key.shape_class
                and key.dtype in row.dtypes)


def table_config(key: TuningKey) -> LaunchConfig:
    """The built-in config of `key`: what the launcher uses without a tuning cache, and what the
    TensorRT plan is compiled with."""
    return table_row(key).config(key)


def tuning_candidates(key: TuningKey) -> list[LaunchConfig]:
    """What the opt-in tuner times: the table's config, then its neighbours in channel step,
    warps and register cap (six configs, each one compile)."""
    first = table_config(key)
    found = [first] + [LaunchConfig(first.block_j, block_c, warps, 1, cap)
                       for block_c in (32, 64) for warps, cap in ((8, 128), (8, None), (4, None))]
    return list(dict.fromkeys(found))


# ---- the per-GPU cache file ----------------------------------------------------------------

def cache_dir() -> Path:
    """$TAL_CACHE_DIR, else $XDG_CACHE_HOME/tal-reid, else ~/.cache/tal-reid."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "tal-reid"


def cache_file(device_name: str, arch: str) -> Path:
    """The tuning cache of one GPU model, e.g. qaconv-launch-nvidia-h200-sm90.json."""
    slug = re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-") or "gpu"
    return cache_dir() / f"qaconv-launch-{slug}-{arch}.json"


# Cache files as read by this process (a bad file is read, and warned about, once).
_READ: dict[Path, dict[str, LaunchConfig]] = {}


def _parse_cache(path: Path) -> dict[str, LaunchConfig]:
    """{key text: config} of a cache file; {} (with one warning) when it is missing or bad."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
            raise ValueError(f"format is not {CACHE_FORMAT!r}")
        configs = data.get("configs")
        if not isinstance(configs, dict):
            raise ValueError("no 'configs' object")
        return {str(k): LaunchConfig.from_kernel_args(v) for k, v in configs.items()}
    except (OSError, UnicodeDecodeError, ValueError) as err:  # JSONDecodeError is a ValueError
        log.warning("ignoring the QAConvMatch tuning cache %s (%s); using the built-in "
                    "launch table", path, str(err).splitlines()[0][:200])
        return {}


def read_cache(path: Path) -> dict[str, LaunchConfig]:
    """The valid entries of a tuning cache file ({} if none; a bad file warns once)."""
    if path not in _READ:
        _READ[path] = _parse_cache(path)
    return _READ[path]


def write_cache(path: Path, device_name: str, tuned: dict[str, tuple[LaunchConfig, float]],
                triton_version: str = "") -> None:
    """Merge tuned {key text: (config, milliseconds)} into the cache file, atomically (a reader
    never sees half a file), and make this process use them."""
    # Valid entries already there are kept as written (with their timings); a bad file is replaced.
    entries = json.loads(path.read_text())["configs"] if read_cache(path) else {}
    for key, (config, ms) in tuned.items():
        entries[key] = {**config.kernel_args(), "ms": round(float(ms), 4)}
    data = {"format": CACHE_FORMAT, "device": device_name, "triton": triton_version,
            "configs": dict(sorted(entries.items()))}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)
    _READ[path] = {k: LaunchConfig.from_kernel_args(v) for k, v in entries.items()}


# ---- lookup ----------------------------------------------------------------------------------

def choose(key: TuningKey, device_name: str) -> tuple[LaunchConfig, str]:
    """(config, where it came from: "cache" | "table") for a key on a GPU model."""
    tuned = read_cache(cache_file(device_name, key.arch)).get(key.text())
    if tuned is not None:
        return tuned, "cache"
    return table_config(key), "table"


def autotune_requested() -> bool:
    """True when TAL_QACONV_AUTOTUNE asks to tune kernel specializations missing from the cache."""
    return os.environ.get(AUTOTUNE_ENV, "0").strip().lower() not in ("", "0", "false", "no")
