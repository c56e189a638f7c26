"""Benchmark: fused QAConvMatch vs the official QAConv test path vs a plain GEMM roof.

For each size and projection width P it times, on the same random L2-normalized feature maps:

  official   the official QAConv test path: 6-D einsum 'g c h w, p c y x -> g p y x h w', max
             over gallery locations and over query locations, in query x gallery chunks of
             128 x 128 (the official evaluator's defaults), then the projection of the
             concatenated responses; fp16 on GPU (as the official evaluator), fp32 on CPU.
  ours       tal_plugins.qaconv_match: the Triton kernel on GPU (fp16 features), the blocked
             torch path on CPU (fp32), plus the numpy path on CPU.
  roof       plain square GEMMs (fp16 on GPU, fp32 on CPU) timed on about the same number of
             FLOPs, 2 * HWq * HWg * C per pair, and scaled to exactly that number: the time the
             matching work would take at the machine's GEMM rate.

Ratios: 'x official' = official seconds / method seconds; '% roof' = roof seconds / method
seconds. 'max rel. diff' compares each output with the official path's on the first 64 queries
(all galleries), relative to the largest official value. Peak memory: torch's CUDA peak
allocation on GPU; on CPU the peak growth of the process RSS, sampled every millisecond while
the method runs. 'first call' = each method's first call in this process (8 x 8 pairs), which
for the Triton kernel includes its compile unless Triton's on-disk cache (TRITON_CACHE_DIR)
already holds it; the other columns are steady-state calls.

Two more modes:

  --first-call  only the first qaconv_match call of a new process (8 x 8 pairs, P = 1 then 65,
                fp16 on CUDA): with an empty TRITON_CACHE_DIR it includes the compile, run again
                with the same folder it shows a warm cache (targets: <= 5 s
                cold, <= 1 s warm).
  --training    what training runs: `qaconv_responses` forward + backward at a training batch
                (B x B pairs of one phase): the torch path (GEMM + max) in fp32 and under fp16
                autocast, and on CUDA the kernel's responses mode on fp16 maps (same backward),
                so the default on CUDA (torch_op.resolve_backend) can be checked against a
                measurement.
"""
from __future__ import annotations

import ctypes
import functools
import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import click
import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout too

from tal_infer.cli_common import friendly_errors  # noqa: E402
from tal_infer.errors import TalError  # noqa: E402
from tal_infer.features import match_layout  # noqa: E402
from tal_infer.matching import choose_match_backend  # noqa: E402
from tal_infer.precision import FLOAT16, FLOAT32  # noqa: E402
from tal_plugins import qaconv_match, qaconv_responses  # noqa: E402

# name: (Nq, Ng); feature maps are 24 x 8 (HW 192), C 128 as in the paper's 384 x 128 input.
SIZES = {"tiny": (8, 32), "cpu": (64, 512), "medium": (512, 2048), "market": (3368, 15913)}
HEIGHT, WIDTH, CHANNELS = 24, 8, 128
OFFICIAL_CHUNK = 128  # the official evaluator's test_prob_batch = test_gal_batch = 128
COMPARED_QUERIES = 64  # outputs are checked against the official path on these queries' rows
TRAINING_BATCH = 64  # paper preset: 16 identities x 4 images per phase batch


class PeakMemory:
    """Peak extra memory of the code inside the block, in bytes: torch's CUDA allocator peak,
    or on CPU the growth of the process RSS sampled every millisecond."""

    def __init__(self, device: str):
        self.device, self.peak = device, 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, self._rss() - self._base)

    def __enter__(self) -> "PeakMemory":
        if self.device == "cuda":
            torch.cuda.synchronize()
            self._base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            self._base, self._stop = self._rss(), threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss() - self._base)


def return_freed_memory_to_os() -> Callable[[], None]:
    """Make glibc serve every allocation over 64 KiB by mmap, so freed blocks leave the RSS and
    RSS growth measures live memory; returns `trim`, which hands the heap's free pages back
    before a measurement. It slows allocation-heavy code, so CPU memory is measured in a
    separate pass after all timings."""
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 64 * 1024)
    libc.mallopt(m_trim_threshold, 64 * 1024)
    return lambda: libc.malloc_trim(0)


def timed(fn: Callable[[], object], device: str, repeats: int) -> tuple[float, int | None, object]:
    """(best seconds of `repeats` runs, CUDA peak extra bytes or None on CPU, last result)."""
    best, peak, result = float("inf"), None, None
    for _ in range(repeats):
        result = None
        with PeakMemory(device) as mem:
            start = time.perf_counter()
            result = fn()
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        best = min(best, seconds)
        if device == "cuda":
            peak = max(peak or 0, mem.peak)
    return best, peak, result


def official_match(prob: torch.Tensor, gal: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The official QAConv test path on [N, C, H, W] maps, projected by w [2 HW, P]."""
    hw = prob.shape[2] * prob.shape[3]
    out = torch.empty(prob.shape[0], gal.shape[0], w.shape[1], device=prob.device)
    chunks = [(i, k) for i in range(0, prob.shape[0], OFFICIAL_CHUNK)
              for k in range(0, gal.shape[0], OFFICIAL_CHUNK)]
    for i, k in tqdm(chunks, desc="official", leave=False, disable=len(chunks) < 50):
        p, g = prob[i:i + OFFICIAL_CHUNK], gal[k:k + OFFICIAL_CHUNK]
        s = torch.einsum("gchw,pcyx->gpyxhw", g, p).reshape(g.shape[0], p.shape[0], hw, hw)
        responses = torch.cat((s.max(dim=3)[0], s.max(dim=2)[0]), dim=-1)  # [g, p, 2 HW]
        out[i:i + p.shape[0], k:k + g.shape[0]] = (responses.float() @ w).transpose(0, 1)
    return out


def gemm_roof(flops: float, device: str, dtype: torch.dtype, repeats: int):
    """(seconds square GEMMs need for `flops` (timed on about that many FLOPs, at least one
    GEMM, and scaled to exactly `flops`), CUDA peak bytes or None, the timed function)."""
    n = 8192 if device == "cuda" else 1536
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    reps = max(1, round(flops / (2 * n ** 3)))

    def run():
        for _ in range(reps):
            c = a @ b
        return c
    run()  # warm-up
    seconds, peak, _ = timed(run, device, repeats)
    return seconds * flops / (reps * 2 * n ** 3), peak, run


def features(n: int, device: str, dtype: torch.dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(n, CHANNELS, HEIGHT, WIDTH, generator=gen)
    return torch.nn.functional.normalize(x, dim=1).to(device=device, dtype=dtype)


def first_call_seconds(fn: Callable[[], object], device: str) -> float:
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_size(name: str, device: str, widths: list[int], repeats: int) -> list[dict]:
    """Timing rows for one size; each row keeps its `run` for the CPU memory pass."""
    n_q, n_g = SIZES[name]
    hw = HEIGHT * WIDTH
    flops = 2.0 * hw * hw * CHANNELS * n_q * n_g
    dtype = torch.float16 if device == "cuda" else torch.float32
    prob, gal = features(n_q, device, dtype, 0), features(n_g, device, dtype, 1)
    q, g = match_layout(prob), match_layout(gal)
    roof_s, roof_peak, roof_run = gemm_roof(flops, device, dtype, repeats)
    rows = [dict(size=name, P="-", method=f"roof: square GEMM ({str(dtype)[6:]})", seconds=roof_s,
                 peak=roof_peak, run=roof_run)]
    for p in widths:
        gen = torch.Generator(device="cpu").manual_seed(p)
        w = (torch.randn(2 * hw, p, generator=gen) / hw).to(device)
        wq, wg = w[:hw].contiguous(), w[hw:].contiguous()
        # the row the runtime's `--matcher auto` runs here says so (tal_infer.matching decides)
        auto = choose_match_backend("auto", device, FLOAT16 if device == "cuda" else FLOAT32,
                                    CHANNELS)
        mark = {backend: " (--matcher auto)" if backend == auto else ""
                for backend in ("triton", "torch", "numpy")}
        ours = "triton" if device == "cuda" else "torch"
        methods = {"official: einsum + max, chunked": lambda a, b: official_match(prob[:a], gal[:b], w),
                   ("ours: triton kernel" if device == "cuda" else "ours: blocked torch")
                   + mark[ours]: lambda a, b: qaconv_match(q[:a], g[:b], wq, wg)}
        if device == "cpu":
            qn, gn, wqn, wgn = (t.numpy() for t in (q, g, wq, wg))
            methods["ours: blocked numpy (runtime without torch)" + mark["numpy"]] = (
                lambda a, b: qaconv_match(qn[:a], gn[:b], wqn, wgn))
        results = {}
        for label, run in methods.items():
            first = first_call_seconds(functools.partial(run, 8, 8), device)
            full = functools.partial(run, n_q, n_g)
            seconds, peak, out = timed(full, device, repeats)
            results[label] = torch.as_tensor(out[:COMPARED_QUERIES]).float().cpu()
            del out
            rows.append(dict(size=name, P=p, method=label, seconds=seconds, peak=peak, run=full,
                             first=first))
            # as it happens, so a run stopped early still shows what it measured
            click.echo(f"measured {name} P={p} {label}: first call {first:.3f} s, "
                       f"{seconds:.3f} s", err=True)
        reference = next(iter(results.values()))
        scale = reference.abs().max().item()
        for row in rows[-len(methods):]:
            row["max_err"] = (results[row["method"]] - reference).abs().max().item() / scale
    for row in rows:
        row["rate"] = flops / row["seconds"]
    return rows


def first_calls(device: str, widths: list[int]) -> None:
    """Print the first and second qaconv_match call of this process for each P (8 x 8 pairs)."""
    dtype = torch.float16 if device == "cuda" else torch.float32
    q, g = (match_layout(features(8, device, dtype, seed)) for seed in (0, 1))
    folder = Path(os.environ.get("TRITON_CACHE_DIR") or Path.home() / ".triton" / "cache")
    entries = sum(1 for _ in folder.rglob("*")) if folder.is_dir() else 0
    click.echo(f"TRITON_CACHE_DIR {folder}: {entries} files before the first call")
    click.echo("| P | dtype | first call (s) | second call (s) |\n|---|---|---|---|")
    for p in widths:
        hw = HEIGHT * WIDTH
        wq, wg = (torch.randn(hw, p, device=device) for _ in range(2))
        run = functools.partial(qaconv_match, q, g, wq, wg)
        first, second = first_call_seconds(run, device), first_call_seconds(run, device)
        click.echo(f"| {p} | {str(dtype)[6:]} | {first:.3f} | {second:.4f} |")


def bench_training(device: str, repeats: int) -> None:
    """Print forward + backward of qaconv_responses at a training batch: the torch path in fp32
    and under fp16 autocast (tal-train --amp; the maps stay fp32, the GEMMs run in fp16), and
    on CUDA the kernel on fp16 maps (its fp32 variant compiles for over a minute)."""
    hw, b = HEIGHT * WIDTH, TRAINING_BATCH
    # forward GEMM, the backward's recomputed GEMM, and dS @ G, dS^T @ Q
    flops = 4 * 2.0 * hw * hw * CHANNELS * b * b
    runs = [("fp32", "torch")] + ([("amp", "torch"), ("fp16", "triton")] if device == "cuda" else [])
    unit, scale = rate_unit(device)
    click.echo(f"qaconv_responses forward + backward, {b} x {b} pairs (one phase batch), "
               f"maps {HEIGHT}x{WIDTH}, C {CHANNELS}")
    click.echo(f"| precision | backend | first call (s) | ms per step | {unit} |\n|---|---|---|---|---|")
    for precision, backend in runs:
        dtype = torch.float16 if precision == "fp16" else torch.float32
        q, g = (match_layout(features(b, device, dtype, seed)).requires_grad_() for seed in (0, 1))
        grad = torch.randn(b, b, 2 * hw, device=device)

        def step(q=q, g=g, grad=grad, backend=backend, amp=precision == "amp"):
            with torch.autocast(device, dtype=torch.float16, enabled=amp):
                out = qaconv_responses(q, g, backend=backend)
            torch.autograd.grad(out, (q, g), grad)
        first = first_call_seconds(step, device)
        seconds, _, _ = timed(step, device, repeats)
        click.echo(f"| {precision} | {backend} | {first:.3f} | {1e3 * seconds:.2f} "
                   f"| {flops / seconds / scale:.1f} |")


def measure_cpu_memory(rows: list[dict]) -> None:
    """Second pass on CPU: run each method once more with freed memory returned to the OS."""
    trim = return_freed_memory_to_os()
    for row in rows:
        trim()
        with PeakMemory("cpu") as mem:
            row["run"]()
        row["peak"] = mem.peak


def rate_unit(device: str) -> tuple[str, float]:
    return ("TFLOP/s", 1e12) if device == "cuda" else ("GFLOP/s", 1e9)


def print_table(rows: list[dict], device: str) -> None:
    unit, scale = rate_unit(device)
    official = {(r["size"], r["P"]): r["seconds"] for r in rows if r["method"].startswith("official")}
    roof = {r["size"]: r["seconds"] for r in rows if r["method"].startswith("roof")}
    header = (f"| size (Nq x Ng) | P | method | first call (s) | seconds | {unit} | x official "
              f"| % roof | peak mem (MiB) | max rel. diff vs official |")
    click.echo(header)
    click.echo("|" + "---|" * 10)
    for r in rows:
        n_q, n_g = SIZES[r["size"]]
        x_off = official.get((r["size"], r["P"]))
        vs_official = f"{x_off / r['seconds']:.2f}" if x_off else "-"
        diff = f"{r['max_err']:.1e}" if "max_err" in r else "-"
        first = f"{r['first']:.3f}" if "first" in r else "-"
        click.echo(
            f"| {r['size']} ({n_q} x {n_g}) | {r['P']} | {r['method']} | {first} | {r['seconds']:.3f} "
            f"| {r['rate'] / scale:.1f} | {vs_official} | {100 * roof[r['size']] / r['seconds']:.0f}% "
            f"| {r['peak'] / 2**20:.0f} | {diff} |")


EPILOG = """\b
Examples:
  python benchmarks/match.py --device cpu                  # CPU table, 64 x 512 pairs
  python benchmarks/match.py --device cuda                 # GPU table up to Market-1501 size
  python benchmarks/match.py --device cpu --sizes tiny     # smoke run
  TRITON_CACHE_DIR=$(mktemp -d) python benchmarks/match.py --device cuda --first-call
  python benchmarks/match.py --device cuda --training      # training op: torch vs kernel
"""


@click.command(epilog=EPILOG)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where to run every method.")
@click.option("--sizes", default=None,
              help=f"Comma-separated presets from {', '.join(SIZES)} "
                   "[default: cpu on CPU, medium,market on CUDA].")
@click.option("--widths", default="1,65", show_default=True,
              help="Comma-separated projection widths P (1: plain QAConv score; 65: MSDA, 1 + 64 hidden).")
@click.option("--repeats", default=None, type=int,
              help="Timed runs per method, best kept [default: 3 on CPU, 1 on CUDA].")
@click.option("--threads", default=None, type=int, help="torch CPU threads [default: all cores].")
@click.option("--first-call", is_flag=True,
              help="Only time the first qaconv_match call of this process (compile included).")
@click.option("--training", is_flag=True,
              help="Only time qaconv_responses forward + backward at a training batch.")
@friendly_errors
def main(device: str, sizes: str | None, widths: str, repeats: int | None, threads: int | None,
         first_call: bool, training: bool) -> None:
    """Time QAConv matching three ways and print a markdown table."""
    if device == "cuda" and not torch.cuda.is_available():
        raise TalError("--device cuda: no CUDA device is visible")
    if threads:
        torch.set_num_threads(threads)
    names = (sizes or ("medium,market" if device == "cuda" else "cpu")).split(",")
    unknown = [n for n in names if n not in SIZES]
    if unknown:
        raise TalError(f"--sizes: unknown preset {', '.join(unknown)}; choose from {', '.join(SIZES)}")
    machine = torch.cuda.get_device_name() if device == "cuda" else f"{torch.get_num_threads()} CPU threads"
    click.echo(f"QAConvMatch benchmark on {machine}; feature maps {HEIGHT}x{WIDTH}, C {CHANNELS}; "
               f"torch {torch.__version__}, numpy {np.__version__}")
    repeats = repeats or (1 if device == "cuda" else 3)
    if first_call:
        return first_calls(device, [int(p) for p in widths.split(",")])
    if training:
        return bench_training(device, max(repeats, 5))
    rows = []
    with torch.inference_mode():
        for name in names:
            rows += bench_size(name, device, [int(p) for p in widths.split(",")], repeats)
        if device == "cpu":
            measure_cpu_memory(rows)
    print_table(rows, device)


if __name__ == "__main__":
    main()
