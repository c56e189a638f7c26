"""Launch parameters of the QAConvMatch Triton kernel: a small table instead of run-time autotuning.

Why: `triton.autotune` times every candidate config at the first call of every new process. On an
H200 that cost 43-45 s per kernel specialization (issue 12), paid again by every new process and
by every (map size, C, P, dtype, mode) a run meets, and its pick was the same in every case
measured. So a launch config is looked up, in this order:

1. the tuning cache file of this GPU (`cache_file`), written by the opt-in tuner
   (``python -m tal_plugins.tune``, or any process run with ``TAL_QACONV_AUTOTUNE=1``);
2. the built-in table `MEASURED`: configs measured on a real GPU, with where they come from;
3. the default rule `default_config`: the largest least-padding tile whose operand tiles stay
   within 16 KiB each, 8 galleries per program, 4 warps, 2 stages (the measured H200 pick follows
   from it for the model's 24x8 maps, fp16, C 128).

A lookup is keyed by what changes the compiled kernel or its best shape (`TuningKey`): GPU
architecture, HWq x HWg, C, the P range (P is padded to a power of two inside the kernel, so
P in (P_PAD/2, P_PAD] compiles alike), dtype and mode. Never by Nq or Ng: they vary per batch and
are plain run-time arguments of the kernel (see plugins/kernel.py).

The cache file is JSON, one per GPU model and architecture, in ``$TAL_CACHE_DIR`` or else
``$XDG_CACHE_HOME/tal-reid`` (``~/.cache/tal-reid``). A file that cannot be read or does not hold
valid configs is ignored with one warning naming it, and the table and rule serve instead.
Triton keeps its compiled kernels in its own on-disk cache (``TRITON_CACHE_DIR``, default
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
CACHE_FORMAT = "tal-reid/qaconv-launch/1"

# tl.dot needs every tile dimension >= 16.
MIN_BLOCK = 16
# Tile shapes the default rule and the tuner choose from.
TILE_SHAPES = ((16, 16), (32, 32), (64, 32), (32, 64), (64, 64), (128, 64), (64, 128))
WARPS_STAGES = ((4, 2), (4, 3), (8, 2))
GALLERIES_PER_PROGRAM = 8
# Bytes of one [BLOCK, C] operand tile the default rule allows (fp16 64 x 128 = 16 KiB).
DEFAULT_TILE_BYTES = 16 * 1024
DTYPES = ("fp16", "bf16", "fp32")
MODES = ("match", "responses")


@dataclass(frozen=True)
class LaunchConfig:
    """Tile shape, galleries per program, warps and software-pipelining stages of one launch."""
    block_i: int
    block_j: int
    galleries: int = GALLERIES_PER_PROGRAM
    num_warps: int = 4
    num_stages: int = 2

    def kernel_args(self) -> dict[str, int]:
        """Keyword arguments of a Triton launch (constexprs upper case, compile options lower)."""
        return {"BLOCK_I": self.block_i, "BLOCK_J": self.block_j, "GALLERIES": self.galleries,
                "num_warps": self.num_warps, "num_stages": self.num_stages}

    @classmethod
    def from_kernel_args(cls, args: dict) -> "LaunchConfig":
        """The inverse of `kernel_args`; ValueError for anything but a launchable config."""
        fields = ("BLOCK_I", "BLOCK_J", "GALLERIES", "num_warps", "num_stages")
        if not isinstance(args, dict) or any(type(args.get(f)) is not int for f in fields):
            raise ValueError(f"a launch config needs integer {', '.join(fields)}")
        config = cls(args["BLOCK_I"], args["BLOCK_J"], args["GALLERIES"], args["num_warps"],
                     args["num_stages"])
        checks = [(config.block_i in (16, 32, 64, 128, 256), "BLOCK_I"),
                  (config.block_j in (16, 32, 64, 128, 256), "BLOCK_J"),
                  (1 <= config.galleries <= 64, "GALLERIES"),
                  (config.num_warps in (1, 2, 4, 8, 16), "num_warps"),
                  (1 <= config.num_stages <= 8, "num_stages")]
        bad = [name for ok, name in checks if not ok]
        if bad:
            raise ValueError(f"launch config out of range: {', '.join(bad)} in {args}")
        return config


# Under TRITON_INTERPRET=1 every program runs in numpy: the smallest tiles keep tests quick.
INTERPRETER_CONFIG = LaunchConfig(16, 16, galleries=2)


def pow2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


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
        """The P values that compile to the same kernel as this one: (P_PAD/2, P_PAD]."""
        high = pow2(self.p)
        return (high // 2 + 1 if high > 1 else 1), high

    @property
    def mode(self) -> str:
        return "responses" if self.responses else "match"

    def text(self) -> str:
        low, high = self.p_range
        p = f"p{high}" if low == high else f"p{low}-{high}"
        return (f"{self.arch}/hw{self.hwq}x{self.hwg}/c{self.channels}/{p}/{self.dtype}/"
                f"{self.mode}")


@dataclass(frozen=True)
class TableRow:
    """A built-in config for every P of a (architectures, map size, C, dtypes, modes) class."""
    archs: tuple[str, ...]
    hw: tuple[int, int]
    channels: int
    dtypes: tuple[str, ...]
    modes: tuple[str, ...]
    config: LaunchConfig
    source: str

    def matches(self, key: TuningKey) -> bool:
        return (key.arch in self.archs and (key.hwq, key.hwg) == self.hw
                and key.channels == self.channels and key.dtype in self.dtypes
                and key.mode in self.modes)


MEASURED = (
    TableRow(("sm90",), (192, 192), 128, ("fp16",), ("match",), LaunchConfig(64, 64, 8, 4, 2),
             "triton.autotune's pick on an H200 (triton 3.6), P 1 and 65, 64 x 512 to "
             "3,368 x 15,913 pairs (issue 12)"),
)


def padding_waste(hwq: int, hwg: int, block_i: int, block_j: int) -> float:
    """Fraction of tensor-core work spent on masked (padded) tile rows and columns."""
    used = hwq * hwg
    return 1.0 - used / (cdiv(hwq, block_i) * block_i * cdiv(hwg, block_j) * block_j)


def tile_candidates(hwq: int, hwg: int) -> list[tuple[int, int]]:
    """Tile shapes worth considering for a map size: least padding, then no more than 4x smaller
    than the largest such tile (small tiles only lose operand reuse)."""
    fitting = [(bi, bj) for bi, bj in TILE_SHAPES if bi <= pow2(hwq) and bj <= pow2(hwg)]
    fitting = fitting or [(MIN_BLOCK, MIN_BLOCK)]
    least = min(padding_waste(hwq, hwg, bi, bj) for bi, bj in fitting)
    best = [t for t in fitting if padding_waste(hwq, hwg, *t) <= least + 1e-9]
    area = max(bi * bj for bi, bj in best)
    return [(bi, bj) for bi, bj in best if bi * bj * 4 >= area]


def _tile_bytes(block: int, key: TuningKey) -> int:
    return block * max(MIN_BLOCK, pow2(key.channels)) * (4 if key.dtype == "fp32" else 2)


def default_configs(key: TuningKey) -> list[LaunchConfig]:
    """The default rule's configs, best first: least-padding tiles from the largest whose
    operand tiles fit DEFAULT_TILE_BYTES down to the smallest, each with 2 stages then 1.
    Later entries are the fallbacks when a GPU lacks the shared memory for earlier ones."""
    tiles = sorted(tile_candidates(key.hwq, key.hwg), key=lambda t: (-t[0] * t[1], -t[0]))
    small = [t for t in tiles if max(_tile_bytes(b, key) for b in t) <= DEFAULT_TILE_BYTES]
    ordered = small + [t for t in tiles if t not in small]
    if (MIN_BLOCK, MIN_BLOCK) not in ordered:
        ordered.append((MIN_BLOCK, MIN_BLOCK))
    return [LaunchConfig(bi, bj, GALLERIES_PER_PROGRAM, 4, stages)
            for bi, bj in ordered for stages in (2, 1)]


def default_config(key: TuningKey) -> LaunchConfig:
    return default_configs(key)[0]


def tuning_candidates(key: TuningKey) -> list[LaunchConfig]:
    """What the opt-in tuner times: every least-padding tile x (warps, stages) pair."""
    return [LaunchConfig(bi, bj, GALLERIES_PER_PROGRAM, warps, stages)
            for bi, bj in tile_candidates(key.hwq, key.hwg) for warps, stages in WARPS_STAGES]


def table_config(key: TuningKey) -> LaunchConfig | None:
    """The built-in config for `key`, or None."""
    return next((row.config for row in MEASURED if row.matches(key)), None)


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
        log.warning("warning: ignoring the QAConvMatch tuning cache %s (%s); using the built-in "
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
    """(config, where it came from: "cache" | "table" | "default") for a key on a GPU model."""
    tuned = read_cache(cache_file(device_name, key.arch)).get(key.text())
    if tuned is not None:
        return tuned, "cache"
    row = table_config(key)
    if row is not None:
        return row, "table"
    return default_config(key), "default"


def launch_candidates(first: LaunchConfig, key: TuningKey) -> list[LaunchConfig]:
    """`first`, then the default rule's configs as fallbacks (no repeats)."""
    return list(dict.fromkeys([first, *default_configs(key)]))


def autotune_requested() -> bool:
    """True when TAL_QACONV_AUTOTUNE asks to tune kernel specializations missing from the cache."""
    return os.environ.get(AUTOTUNE_ENV, "0").strip().lower() not in ("", "0", "false", "no")
