"""Registers, stack, spills, shared memory and tensor-core instructions of the QAConvMatch kernel,
ahead of time, without a GPU.

For every kernel specialization the runtime and the TensorRT plan use (24x8 and 12x4 maps:
HW 192 and 48; C 128 and 256; P 1 and 65 (the QAConv score; MSDA's 1 + 64 hidden); fp16 and fp32;
sm_90a and sm_80), the kernel is compiled with the launch table's config (plugins/tuning.py)
exactly as `tal_plugins.kernel.compile_ptx` does for the plan, then its PTX is assembled by
every ptxas the triton wheel ships (the CUDA 12.x one at the highest PTX ISA it reads), and
`ptxas -v` is parsed. "wgmma" counts Hopper warp-group MMA instructions in the PTX, "mma" the
mma.sync ones.

    python benchmarks/ptx_resources.py                 # the whole table (about 2-4 min on 2 cores)
    python benchmarks/ptx_resources.py --dtype fp16 --arch 90 --hw 192

tests/plugins/test_ptx_resources.py keeps the budget (plugins/README.md, "Resources").
"""
from __future__ import annotations

import functools
import itertools
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import click

HWS = (192, 48)
CHANNELS = (128, 256)
PROJECTIONS = (1, 65)
DTYPES = ("fp16", "fp32")
ARCHS = (90, 80)


@dataclass(frozen=True)
class Spec:
    """One kernel specialization (query and gallery maps alike)."""
    dtype: str
    hw: int
    channels: int
    p: int
    arch: int

    def text(self) -> str:
        return f"sm_{self.arch}{'a' if self.arch >= 90 else ''} {self.dtype} HW {self.hw} C {self.channels} P {self.p}"


@dataclass(frozen=True)
class Ptxas:
    path: str
    cuda: tuple[int, int]  # its CUDA release


@dataclass(frozen=True)
class Resources:
    """What ptxas reports for one kernel, plus what the PTX and Triton's metadata say."""
    registers: int
    stack: int           # bytes of stack frame per thread (local memory)
    spill_stores: int    # bytes
    spill_loads: int     # bytes
    shared: int          # bytes of (dynamic) shared memory, from Triton's metadata
    wgmma: int           # wgmma.mma_async instructions in the PTX
    mma_sync: int        # mma.sync instructions in the PTX
    config: str


def specs(dtypes=DTYPES, archs=ARCHS, hws=HWS, channels=CHANNELS, projections=PROJECTIONS):
    return [Spec(*values) for values in itertools.product(dtypes, hws, channels, projections, archs)]


def ptxas_binaries() -> list[Ptxas]:
    """Every ptxas the installed triton wheel ships (triton/backends/nvidia/bin/ptxas*)."""
    import triton

    folder = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    found = []
    for path in sorted(folder.glob("ptxas*")):
        text = subprocess.run([str(path), "--version"], capture_output=True, text=True,
                              check=False).stdout
        release = re.search(r"release (\d+)\.(\d+)", text)
        if release:
            found.append(Ptxas(str(path), (int(release[1]), int(release[2]))))
    return found


@functools.cache
def compiled(spec: Spec):
    """(PTX, shared bytes, config text) of `spec` as the plan compiles it."""
    from tal_plugins import kernel

    result, config = kernel.compile_ptx(spec.dtype, spec.hw, spec.hw, spec.channels, spec.p,
                                        arch=spec.arch)
    return result.asm["ptx"], result.metadata.shared, str(config)


_USED = re.compile(r"Used (\d+) registers")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas_verbose(text: str) -> tuple[int, int, int, int]:
    """(registers, stack bytes, spill store bytes, spill load bytes) from `ptxas -v` output of
    a single kernel."""
    used, frame = _USED.findall(text), _FRAME.findall(text)
    if len(used) != 1 or len(frame) != 1:
        raise ValueError(f"expected one kernel in the ptxas -v output, got:\n{text[-2000:]}")
    return (int(used[0]), *(int(v) for v in frame[0]))


def measure(spec: Spec, ptxas: Ptxas) -> Resources:
    """Assemble `spec`'s PTX with `ptxas` (at the highest ISA that ptxas reads) and read -v."""
    from tal_plugins import ptx as ptx_text

    ptx, shared, config = compiled(spec)
    isa = min(ptx_text.isa_version(ptx), ptx_text.isa_for_cuda(ptxas.cuda))
    with tempfile.TemporaryDirectory(prefix="tal-ptx-") as tmp:
        source = Path(tmp) / "kernel.ptx"
        source.write_text(ptx_text.with_isa_version(ptx, isa))
        run = subprocess.run([ptxas.path, "-v", f"-arch={ptx_text.target_name(spec.arch)}",
                              str(source), "-o", str(Path(tmp) / "kernel.cubin")],
                             capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"{Path(ptxas.path).name} failed on {spec.text()}: {run.stderr[-500:]}")
    registers, stack, stores, loads = parse_ptxas_verbose(run.stderr + run.stdout)
    return Resources(registers, stack, stores, loads, shared, ptx.count("wgmma.mma_async"),
                     ptx.count("mma.sync"), config)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dtype", "dtypes", multiple=True, type=click.Choice(DTYPES), help="Repeatable.")
@click.option("--arch", "archs", multiple=True, type=click.Choice([str(a) for a in ARCHS]))
@click.option("--hw", "hws", multiple=True, type=click.Choice([str(h) for h in HWS]))
def main(dtypes, archs, hws) -> None:
    """Print the resource table of the QAConvMatch kernel (markdown)."""
    binaries = ptxas_binaries()
    if not binaries:
        click.echo("error: the installed triton ships no ptxas", err=True)
        sys.exit(2)
    import triton

    chosen = specs(dtypes or DTYPES, tuple(map(int, archs)) or ARCHS, tuple(map(int, hws)) or HWS)
    click.echo(f"triton {triton.__version__}; ptxas: " + ", ".join(
        f"{Path(b.path).name} (CUDA {b.cuda[0]}.{b.cuda[1]})" for b in binaries))
    click.echo("\n| kernel | config | ptxas (CUDA) | registers | stack B | spill stores B | "
               "spill loads B | shared B | wgmma | mma.sync |")
    click.echo("|---|---|---|---|---|---|---|---|---|---|")
    for spec in chosen:
        for ptxas in binaries:
            r = measure(spec, ptxas)
            click.echo(f"| {spec.text()} | {r.config} | {ptxas.cuda[0]}.{ptxas.cuda[1]} | "
                       f"{r.registers} | {r.stack} | {r.spill_stores} | {r.spill_loads} | "
                       f"{r.shared} | {r.wgmma} | {r.mma_sync} |")


if __name__ == "__main__":
    main()
