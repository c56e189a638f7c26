"""The synthetic domain-generalization benchmark: paper Tables 3-6 on domains that differ in
structure, with bootstrap confidence intervals over queries and seeds.

Data: ``tal-data synthesize --shift structural`` (4 domains; per domain its own viewpoint mix,
camera pitch, person scale and crop alignment, occlusion rate, clothing palette and texture,
resolution, on top of the photometric style), 280 identities per domain, so each held-out
target has 140 test identities and over 300 queries. Protocol p2 (leave-one-out) on each
``--targets`` domain, the tiny preset from random initialization, every run for the same
``--epochs`` x ``--iters`` with batch 32 and the same ``--augment`` set, for each ``--seeds``
seed. The default set is ``standard``; the official ``qaconv`` set (the paper preset's) is the
``tal-augment`` row: from random init, in this budget, it slowed learning (sizing run on
domain-d, seed 0: TAL 24.2 mAP with it, 41.0 with ``standard``; docs/results.md).

Methods (``--methods``; the default runs all but the last two):

==================  ===========================================================================
qaconv-gs           the official QAConv-GS v2.0 recipe (``--recipe qaconv-gs``: one stream with
                    plain BN, res4, neck 64, pairwise matching loss, lr 0.001), the paper's
                    baseline
baseline            our one-stream baseline: TAL's recipe with ``--streams di --di-norm bn``
                    (res4 + res5, triplet loss, lr ``--lr``)
tal                 TAL (DS + DI, DABN with ``dabn_stats`` experts, MSDA-QAConv, res4 + res5);
                    "DS alone" / "DI alone" are this model scored by one stream (paper Table 3)
tal-own             TAL with the other DABN reading (``--dabn-stats own``)
tal-di-bn/-di-avg   TAL with a plain BN / an averaging DI norm (Table 4)
tal-ds-avg/-ds-vote TAL with averaging / voting DS heads (Table 5)
tal-res4/-res5      TAL on one scale (Table 6)
tal-augment         TAL with the other augmentation set (``--augment``: qaconv <-> standard)
baseline-matched    the baseline for (K+1)x the iterations: as many images as TAL sees
ds-alone, di-alone  (extra) single-stream models trained alone
==================  ===========================================================================

Every number is a mean over seeds and queries with a 95% **two-way bootstrap interval**
(`tal_train.confidence`: seeds and queries resampled); comparisons are **paired** (the
per-query differences of two methods, same seeds and queries), which resolves much smaller
differences than two overlapping intervals suggest. Diagnostics (`tal_train.diagnostics`) of
the final epoch explain what the streams learned.

**Parallel runs** (``--jobs``, default 2): independent runs train side by side, each in its own
process with ``cpu_count // jobs`` torch threads. On the 2-core machine two one-thread runs use
both cores without intra-op synchronization; two-thread PyTorch next to other busy processes was
measured 10x slower per iteration than one thread (OpenMP threads waiting for each other).

**Resumable, runnable in the background.** Each run trains into ``OUT/runs/<target>-<method>-
<seed>/`` and records its settings in ``bench.json``: a re-run skips finished runs, resumes an
interrupted one from its checkpoint, and refuses a folder trained with other settings. After
every run ``OUT/results.json`` and ``OUT/results.md`` (the tables) are rewritten, so partial
tables are always there; ``--tables-only`` rebuilds them without training, ``--update-doc
docs/results.md`` writes them into the block between the ``dg-synthetic`` markers there::

    mkdir -p runs && nohup python benchmarks/dg_synthetic.py --update-doc docs/results.md \\
          > runs/dg_synthetic.log 2>&1 &
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import click
import numpy as np

from dg_results import (DEFAULT_METHODS, METHODS, OTHER_AUGMENT, Settings, collect, finished,
                        read_json, report, run_dir, update_doc)
from tal_infer.cli_common import SizeType, device_option, friendly_errors
from tal_infer.errors import TalError
from tal_train.data.synthetic import SyntheticConfig, domain_names, synthesize
from tal_train.engine import train
from tal_train.options import TrainOptions, resume_options

EPILOG = """\b
Examples:
  python benchmarks/dg_synthetic.py --update-doc docs/results.md     # the full benchmark
  python benchmarks/dg_synthetic.py --tables-only --update-doc docs/results.md
  python benchmarks/dg_synthetic.py --identities 40 --epochs 2 --iters 5 --seeds 0 \\
         --targets domain-d --methods baseline,tal --out /tmp/dg-smoke      # a smoke run
  python benchmarks/dg_synthetic.py --shift photometric --identities 40 --epochs 3 \\
         --iters 60 --augment standard --methods baseline,baseline-matched,tal,ds-alone,di-alone \\
         --out runs/dg_photometric                   # the first, photometric experiment"""


def run_options(s: Settings, target: str, method: str, seed: int) -> TrainOptions:
    """The tal-train options of one run."""
    m = METHODS[method]
    extra = dict(m.options)
    if method == "tal-augment":
        extra["augment"] = OTHER_AUGMENT[s.augment]
    if "recipe" not in extra:  # the official recipe keeps its own learning rate
        extra["lr"] = s.lr
    factor = s.domains if m.iteration_factor == "K+1" else 1  # K = domains - 1 sources
    options = TrainOptions(protocol="p2", data_root=str(s.root), target=target, preset="tiny",
                           epochs=s.epochs, iters=s.iters * factor, batch_size=s.batch_size,
                           seed=seed, augment=s.augment, device=s.device, progress=False,
                           out=str(run_dir(s, target, method, seed)))
    return dataclasses.replace(options, **extra)


def signature(options: TrainOptions) -> dict[str, Any]:
    """The options that decide a run's result (what a finished folder must have been trained
    with to be reused)."""
    skip = {"out", "progress", "device", "workers", "resume", "data_root", "run_name"}
    return {k: v for k, v in options.to_dict().items() if k not in skip}


def execute(options: TrainOptions) -> dict[str, Any]:
    """Train one run unless finished (resuming an interrupted one); returns its bench.json
    (settings, seconds, cpu_seconds), with ``trained_now`` when this call trained."""
    folder = Path(options.out)
    bench = read_json(folder / "bench.json")
    if bench is None and (folder / "ckpt.pth").exists():
        raise TalError(f"{folder}: holds a run this script did not start (no bench.json); use "
                       "another --out")
    if bench is not None and bench["signature"] != signature(options):
        raise TalError(f"{folder}: trained with other settings; use another --out (or delete the "
                       "folder)")
    if bench is not None and finished(folder, options.epochs):
        return bench
    bench = bench or {"signature": signature(options), "seconds": 0.0, "cpu_seconds": 0.0}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench.json").write_text(json.dumps(bench, indent=2))
    ckpt = folder / "ckpt.pth"
    started, cpu = time.time(), _cpu_seconds()
    with open(folder / "train.log", "a") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        if ckpt.is_file():
            train(resume_options(ckpt, epochs=options.epochs, out=options.out,
                                 device=options.device, progress=False))
        else:
            train(options)
    bench["seconds"] = round(bench["seconds"] + time.time() - started, 1)
    bench["cpu_seconds"] = round(bench["cpu_seconds"] + _cpu_seconds() - cpu, 1)
    (folder / "bench.json").write_text(json.dumps(bench, indent=2))
    return {**bench, "trained_now": True}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---- command ----------------------------------------------------------------------------

def _data(s: Settings, identities: int) -> float | None:
    """Generate the network when missing (returns the seconds it took); refuse a root that
    holds another network."""
    config = SyntheticConfig(identities=identities, domains=s.domains, cameras=s.cameras,
                             size=s.size, shift=s.shift)
    manifest = read_json(s.root / "synthesis.json")
    if manifest is not None:
        if manifest["config"] != json.loads(json.dumps(dataclasses.asdict(config))):
            raise TalError(f"{s.root}: holds a synthetic network with other settings; use "
                           "another --root")
        return None
    started = time.time()
    synthesize(s.root, config, progress=True)
    return time.time() - started


def _names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", default="runs/dg_synthetic", show_default=True, type=click.Path(
    file_okay=False, path_type=Path), help="Runs, results.json and results.md go here.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path),
              help="Synthetic data (generated when missing) [default: OUT/data].")
@click.option("--shift", type=click.Choice(["structural", "photometric"]), default="structural",
              show_default=True, help="How the synthetic domains differ.")
@click.option("--domains", default=4, show_default=True)
@click.option("--identities", default=280, show_default=True,
              help="Identities per domain (half train, half test).")
@click.option("--cameras", default=4, show_default=True)
@click.option("--size", default="128x64", show_default=True, type=SizeType())
@click.option("--targets", default="domain-c,domain-d", show_default=True)
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--methods", default=",".join(DEFAULT_METHODS), show_default=True,
              help=f"Comma-separated, from: {', '.join(METHODS)}.")
@click.option("--epochs", default=10, show_default=True)
@click.option("--iters", default=40, show_default=True, help="Iterations per epoch.")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--lr", default=0.005, show_default=True, type=float,
              help="Learning rate of the TAL-recipe runs.")
@click.option("--augment", type=click.Choice(["qaconv", "standard"]), default="standard",
              show_default=True, help="Augmentation of every run (tal-augment: the other one).")
@device_option
@click.option("--jobs", default=2, show_default=True,
              help="Runs trained at once, each in its own process with cpu_count // jobs "
                   "threads (use 1 on a GPU).")
@click.option("--replicates", default=2000, show_default=True, help="Bootstrap replicates.")
@click.option("--tables-only", is_flag=True, help="Train nothing; tables from finished runs.")
@click.option("--update-doc", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the tables into this markdown file's dg-synthetic block.")
@friendly_errors
def main(out: Path, root: Path | None, shift: str, domains: int, identities: int, cameras: int,
         size: tuple[int, int], targets: str, seeds: str, methods: str, epochs: int, iters: int,
         batch_size: int, lr: float, augment: str, device: str, jobs: int, replicates: int,
         tables_only: bool, update_doc: Path | None) -> None:
    """Train the baselines, TAL and its ablations on synthetic domains (leave-one-out), and
    write paper Tables 3-6 with bootstrap confidence intervals and diagnostics."""
    s = Settings(root or out / "data", out, shift, domains, identities, cameras, size,
                 _names(targets), [int(x) for x in _names(seeds)], _names(methods), epochs,
                 iters, batch_size, lr, augment, device, replicates)
    unknown = [m for m in s.methods if m not in METHODS]
    names = domain_names(domains)
    if unknown or any(t not in names for t in s.targets):
        raise TalError(f"unknown methods {unknown} or targets not in {names}")
    command = "python benchmarks/dg_synthetic.py " + " ".join(sys.argv[1:])
    data_seconds = None if tables_only else _data(s, identities)
    plan = [(t, m, seed) for t in s.targets for seed in s.seeds for m in s.methods]
    print(f"{len(plan)} runs planned in {out}, {jobs} at a time", flush=True)
    if not tables_only:
        _train_all(s, plan, max(1, jobs), command, data_seconds, update_doc)
    text = _write_results(s, command, data_seconds, update_doc)
    print("\n" + text)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _train_all(s: Settings, plan: list[tuple[str, str, int]], jobs: int, command: str,
               data_seconds: float | None, doc: Path | None) -> None:
    """Train the plan's runs, `jobs` at a time; rewrite the results after each one."""
    durations: dict[str, list[float]] = {}
    threads = max(1, (os.cpu_count() or 1) // jobs)
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch state
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(execute, run_options(s, *run)): run for run in plan}
        left = list(plan)
        for done, future in enumerate(as_completed(futures), 1):
            target, method, seed = run = futures[future]
            bench = future.result()
            left.remove(run)
            if bench.get("trained_now"):
                durations.setdefault(method, []).append(bench["seconds"])
            print(f"[{done}/{len(plan)}] {target} {method} seed {seed}: "
                  f"{'trained' if bench.get('trained_now') else 'done before'} "
                  f"({bench['seconds']:.0f} s){_eta(durations, left, jobs)}", flush=True)
            _write_results(s, command, data_seconds, doc)


def _eta(durations: dict[str, list[float]], left: list[tuple[str, str, int]], jobs: int) -> str:
    """'; ~N min left' from the mean time of each method's runs trained in this session (of
    all of them for a method not run yet), `jobs` at a time."""
    everything = [d for ds in durations.values() for d in ds]
    if not everything:
        return ""
    seconds = sum(np.mean(durations.get(m) or everything) for _, m, _ in left) / jobs
    return f"; ~{seconds / 60:.0f} min left"


def _write_results(s: Settings, command: str, data_seconds: float | None,
                   doc: Path | None) -> str:
    runs = collect(s)
    text, numbers = report(runs, s, command, data_seconds)
    s.out.mkdir(parents=True, exist_ok=True)
    summary = {name: {k: v for k, v in r.items() if k != "per_query"} for name, r in runs.items()}
    (s.out / "results.json").write_text(json.dumps({"runs": summary, "tables": numbers},
                                                   indent=2))
    (s.out / "results.md").write_text(text)
    if doc is not None:
        update_doc(doc, text)
    return text


if __name__ == "__main__":
    main()
