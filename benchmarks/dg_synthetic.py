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
import platform
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import click
import numpy as np

from tal_infer.cli_common import SizeType, device_option, friendly_errors
from tal_infer.errors import TalError
from tal_train.confidence import Interval, bootstrap_interval
from tal_train.data.synthetic import SyntheticConfig, domain_names, synthesize
from tal_train.engine import TrainOptions, resume_options, train

DOC_BEGIN, DOC_END = "<!-- dg-synthetic:begin -->", "<!-- dg-synthetic:end -->"
OTHER_AUGMENT = {"qaconv": "standard", "standard": "qaconv"}
BASELINE = {"streams": ["di"], "di_norm": "bn"}


@dataclass(frozen=True)
class Method:
    label: str
    options: dict[str, Any] = field(default_factory=dict)
    iteration_factor: str = "1"  # "K+1": as many images per run as TAL sees


METHODS: dict[str, Method] = {
    "qaconv-gs": Method("QAConv-GS, official v2.0 recipe", {"recipe": "qaconv-gs"}),
    "baseline": Method("one-stream baseline (TAL recipe, plain BN)", BASELINE),
    "tal": Method("TAL"),
    "tal-own": Method("TAL, DABN reading own", {"dabn_stats": "own"}),
    "tal-di-bn": Method("TAL, DI norm BN", {"di_norm": "bn"}),
    "tal-di-avg": Method("TAL, DI norm avg", {"di_norm": "avg"}),
    "tal-ds-avg": Method("TAL, DS head avg", {"ds_head": "avg"}),
    "tal-ds-vote": Method("TAL, DS head vote", {"ds_head": "vote"}),
    "tal-res4": Method("TAL, res4 only", {"scales": ["res4"]}),
    "tal-res5": Method("TAL, res5 only", {"scales": ["res5"]}),
    "tal-augment": Method("TAL, other augmentation"),  # options set from --augment
    "baseline-matched": Method("one-stream baseline, (K+1)x iterations", BASELINE, "K+1"),
    "ds-alone": Method("DS stream trained alone", {"streams": ["ds"]}),
    "di-alone": Method("DI stream (DABN) trained alone", {"streams": ["di"]}),
}
DEFAULT_METHODS = list(METHODS)[:12]

# Paper-style tables: (title, note, rows of (label, method, scored part)).
TABLES = [
    ("Table 3: streams", "DS alone / DI alone are the TAL model scored by one stream.", [
        ("QAConv-GS (official v2.0 recipe)", "qaconv-gs", "tal"),
        ("one-stream baseline (TAL recipe)", "baseline", "tal"),
        ("one-stream baseline, (K+1)x iterations", "baseline-matched", "tal"),
        ("DS stream trained alone", "ds-alone", "tal"),
        ("DI stream trained alone", "di-alone", "tal"),
        ("DS alone", "tal", "ds"), ("DI alone", "tal", "di"), ("DS + DI (TAL)", "tal", "tal")]),
    ("Table 4: DI network", "The DI part alone (as paper Table 4), then the full score.", [
        ("BN, DI part", "tal-di-bn", "di"), ("avg, DI part", "tal-di-avg", "di"),
        ("DABN experts, DI part", "tal", "di"), ("DABN own, DI part", "tal-own", "di"),
        ("BN, DS + DI", "tal-di-bn", "tal"), ("avg, DS + DI", "tal-di-avg", "tal"),
        ("DABN experts, DS + DI", "tal", "tal"), ("DABN own, DS + DI", "tal-own", "tal")]),
    ("Table 5: DS network", "The DS part alone (as paper Table 5), then the full score.", [
        ("avg, DS part", "tal-ds-avg", "ds"), ("vote, DS part", "tal-ds-vote", "ds"),
        ("MSDA-QAConv, DS part", "tal", "ds"), ("avg, DS + DI", "tal-ds-avg", "tal"),
        ("vote, DS + DI", "tal-ds-vote", "tal"), ("MSDA-QAConv, DS + DI", "tal", "tal")]),
    ("Table 6: scales", "The full TAL score.", [
        ("res4", "tal-res4", "tal"), ("res5", "tal-res5", "tal"),
        ("res4 + res5", "tal", "tal")]),
    ("Augmentation", "The full TAL score with each augmentation set.", [
        ("TAL, {main} augmentation", "tal", "tal"),
        ("TAL, {other} augmentation", "tal-augment", "tal")]),
]
# Paired comparisons: (label, (method, part), (method, part)): mean of first minus second.
COMPARISONS = [
    ("DS + DI - DS alone", ("tal", "tal"), ("tal", "ds")),
    ("DS + DI - DI alone", ("tal", "tal"), ("tal", "di")),
    ("DS + DI - one-stream baseline", ("tal", "tal"), ("baseline", "tal")),
    ("DS + DI - QAConv-GS official", ("tal", "tal"), ("qaconv-gs", "tal")),
    ("DS alone - one-stream baseline", ("tal", "ds"), ("baseline", "tal")),
    ("DI alone - one-stream baseline", ("tal", "di"), ("baseline", "tal")),
    ("DS + DI - baseline, (K+1)x iterations", ("tal", "tal"), ("baseline-matched", "tal")),
    ("DABN own - experts, DI part", ("tal-own", "di"), ("tal", "di")),
    ("DABN own - experts, DS + DI", ("tal-own", "tal"), ("tal", "tal")),
    ("DABN experts - BN, DI part", ("tal", "di"), ("tal-di-bn", "di")),
    ("DABN experts - avg, DI part", ("tal", "di"), ("tal-di-avg", "di")),
    ("MSDA - avg, DS part", ("tal", "ds"), ("tal-ds-avg", "ds")),
    ("MSDA - vote, DS part", ("tal", "ds"), ("tal-ds-vote", "ds")),
    ("res4 + res5 - res4", ("tal", "tal"), ("tal-res4", "tal")),
    ("res4 + res5 - res5", ("tal", "tal"), ("tal-res5", "tal")),
    ("{main} - {other} augmentation", ("tal", "tal"), ("tal-augment", "tal")),
]

EPILOG = """\b
Examples:
  python benchmarks/dg_synthetic.py --update-doc docs/results.md     # the full benchmark
  python benchmarks/dg_synthetic.py --tables-only --update-doc docs/results.md
  python benchmarks/dg_synthetic.py --identities 40 --epochs 2 --iters 5 --seeds 0 \\
         --targets domain-d --methods baseline,tal --out /tmp/dg-smoke      # a smoke run
  python benchmarks/dg_synthetic.py --shift photometric --identities 40 --epochs 3 \\
         --iters 60 --augment standard --methods baseline,baseline-matched,tal,ds-alone,di-alone \\
         --out runs/dg_photometric                   # the first, photometric experiment"""


@dataclass
class Settings:
    """Everything the command was given (the report prints it)."""
    root: Path
    out: Path
    shift: str
    domains: int
    identities: int
    cameras: int
    size: tuple[int, int]
    targets: list[str]
    seeds: list[int]
    methods: list[str]
    epochs: int
    iters: int
    batch_size: int
    lr: float
    augment: str
    device: str
    replicates: int


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


def run_dir(s: Settings, target: str, method: str, seed: int) -> Path:
    return s.out / "runs" / f"{target}-{method}-{seed}"


def signature(options: TrainOptions) -> dict[str, Any]:
    """The options that decide a run's result (what a finished folder must have been trained
    with to be reused)."""
    skip = {"out", "progress", "device", "workers", "resume", "data_root", "run_name"}
    return {k: v for k, v in options.to_dict().items() if k not in skip}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _finished(folder: Path, epochs: int) -> bool:
    metrics, per_query = _read_json(folder / "metrics.json"), _read_json(folder / "per_query.json")
    return bool(metrics) and metrics[-1].get("epoch") == epochs and bool(per_query) \
        and per_query.get("epoch") == epochs


def execute(options: TrainOptions) -> dict[str, Any]:
    """Train one run unless finished (resuming an interrupted one); returns its bench.json
    (settings, seconds, cpu_seconds), with ``trained_now`` when this call trained."""
    folder = Path(options.out)
    bench = _read_json(folder / "bench.json")
    if bench is None and (folder / "ckpt.pth").exists():
        raise TalError(f"{folder}: holds a run this script did not start (no bench.json); use "
                       "another --out")
    if bench is not None and bench["signature"] != signature(options):
        raise TalError(f"{folder}: trained with other settings; use another --out (or delete the "
                       "folder)")
    if bench is not None and _finished(folder, options.epochs):
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


# ---- results --------------------------------------------------------------------------------

def collect(s: Settings) -> dict[str, dict[str, Any]]:
    """Finished runs: {run name: {target, method, seed, seconds, metrics, diagnostics,
    per_query}}."""
    out = {}
    for target in s.targets:
        for method in s.methods:
            for seed in s.seeds:
                folder = run_dir(s, target, method, seed)
                if not _finished(folder, s.epochs):
                    continue
                bench = _read_json(folder / "bench.json") or {}
                entry = _read_json(folder / "metrics.json")[-1]
                out[folder.name] = {
                    "target": target, "method": method, "seed": seed,
                    "seconds": bench.get("seconds"), "cpu_seconds": bench.get("cpu_seconds"),
                    "metrics": entry[target], "diagnostics": entry.get("diagnostics", {}),
                    "per_query": _read_json(folder / "per_query.json")["targets"][target]}
    return out


def blocks(runs: dict, s: Settings, method: str, part: str, key: str) -> list[np.ndarray] | None:
    """Per target an [S, Q] array of per-query `key` ("ap" / "top1"), or None when a run of
    `method` is missing."""
    out = []
    for target in s.targets:
        rows, queries = [], None
        for seed in s.seeds:
            run = runs.get(f"{target}-{method}-{seed}")
            if run is None or part not in run["per_query"]:
                return None
            q = run["per_query"][part]
            if queries is not None and q["query"] != queries:
                raise TalError(f"{target}: runs disagree on the valid queries")
            queries = q["query"]
            rows.append(q[key])
        out.append(100.0 * np.asarray(rows, dtype=np.float64))
    return out


def _fmt(i: Interval) -> str:
    return f"{i.mean:.2f} [{i.low:.2f}, {i.high:.2f}]"


def _intervals(runs: dict, s: Settings, method: str, part: str) -> dict[str, Interval] | None:
    """{"<target> mAP", "<target> top-1", ..., "all mAP", "all top-1"} or None."""
    out = {}
    for key, name in (("ap", "mAP"), ("top1", "top-1")):
        b = blocks(runs, s, method, part, key)
        if b is None:
            return None
        for target, block in zip(s.targets, b):
            out[f"{target} {name}"] = bootstrap_interval([block], s.replicates)
        out[f"all {name}"] = bootstrap_interval(b, s.replicates)
    return out


def _columns(s: Settings) -> list[str]:
    return [f"{t} {k}" for t in s.targets for k in ("mAP", "top-1")] + ["all mAP", "all top-1"]


def _labels(text: str, s: Settings) -> str:
    return text.format(main=s.augment, other=OTHER_AUGMENT[s.augment])


def results_tables(runs: dict, s: Settings) -> tuple[str, dict]:
    """Markdown of the paper-style tables and the paired comparisons; and their numbers."""
    columns, lines, numbers = _columns(s), [], {}
    for title, note, rows in TABLES:
        body = []
        for label, method, part in rows:
            cells = _intervals(runs, s, method, part) if method in s.methods else None
            if cells is None:
                continue
            label = _labels(label, s)
            numbers[f"{title} | {label}"] = {k: dataclasses.asdict(v) for k, v in cells.items()}
            body.append(f"| {label} | " + " | ".join(_fmt(cells[c]) for c in columns) + " |")
        if body:
            lines += [f"**{title}.** {note}", "", "| | " + " | ".join(columns) + " |",
                      "|---|" + "---:|" * len(columns), *body, ""]
    comparison_lines = []
    for label, (ma, pa), (mb, pb) in COMPARISONS:
        a = blocks(runs, s, ma, pa, "ap") if ma in s.methods else None
        b = blocks(runs, s, mb, pb, "ap") if mb in s.methods else None
        if a is None or b is None:
            continue
        diffs = [x - y for x, y in zip(a, b)]
        cells = [bootstrap_interval([d], s.replicates) for d in diffs]
        pooled = bootstrap_interval(diffs, s.replicates)
        label = _labels(label, s)
        numbers[f"paired | {label}"] = dataclasses.asdict(pooled)
        verdict = ("higher" if pooled.low > 0 else "lower" if pooled.high < 0
                   else "not resolved")
        comparison_lines.append(f"| {label} | " + " | ".join(_fmt(c) for c in cells)
                                + f" | {_fmt(pooled)} | {verdict} |")
    if comparison_lines:
        lines += ["**Paired differences** of mAP (points; per-query differences of the same "
                  "seeds and queries, two-way bootstrap):", "",
                  "| comparison | " + " | ".join(f"{t} ΔmAP" for t in s.targets)
                  + " | all ΔmAP | all targets |", "|---|" + "---:|" * (len(s.targets) + 1)
                  + "---|", *comparison_lines, ""]
    return "\n".join(lines), numbers


def ordering_verdict(numbers: dict) -> str:
    """Whether Table 3's ordering holds on all targets with non-overlapping intervals."""
    def get(label: str) -> Interval | None:
        cell = numbers.get(f"Table 3: streams | {label}", {}).get("all mAP")
        return Interval(**cell) if cell else None

    both, ds, di = get("DS + DI (TAL)"), get("DS alone"), get("DI alone")
    baselines = [b for b in (get("QAConv-GS (official v2.0 recipe)"),
                             get("one-stream baseline (TAL recipe)")) if b]
    if not (both and ds and di and baselines):
        return "Table 3's ordering: not enough finished runs to judge."
    best_part = max((ds, di), key=lambda i: i.mean)
    best_base = max(baselines, key=lambda i: i.mean)
    first = both.low > best_part.high
    second = best_part.low > best_base.high
    return (f"Table 3's ordering DS + DI > max(DS, DI) > baseline with non-overlapping 95% "
            f"intervals (all targets, mAP): DS + DI > max(DS, DI): "
            f"{'holds' if first else 'does not hold'} ({_fmt(both)} vs {_fmt(best_part)}); "
            f"max(DS, DI) > best baseline: {'holds' if second else 'does not hold'} "
            f"({_fmt(best_part)} vs {_fmt(best_base)}).")


def diagnostics_table(runs: dict, s: Settings) -> str:
    """Final-epoch diagnostics of the two-stream runs, means over targets and seeds."""
    rows = []
    for method in s.methods:
        found = [r for r in runs.values() if r["method"] == method]
        per_target = [r["diagnostics"].get(r["target"], {}) for r in found]
        if not found or not any("ds_di_correlation" in d for d in per_target):
            continue

        def mean(values: list[float]) -> str:
            return f"{np.mean(values):.3f}" if values else "-"

        def stages(d: dict, key: str, stat: str) -> list[float]:
            return [v[stat] for v in d.get(key, {}).values()]

        divergence = [v for r in found for v in r["diagnostics"].get("expert_divergence",
                                                                      {}).values()]
        rows.append(f"| {METHODS[method].label} | "
                    + " | ".join([mean([d["ds_di_correlation"] for d in per_target]),
                                  mean([d["ds_di_top1_agreement"] for d in per_target]),
                                  mean([x for d in per_target
                                        for x in stages(d, "dabn_attention", "entropy")]),
                                  mean([x for d in per_target
                                        for x in stages(d, "dabn_attention", "spread")]),
                                  mean([x for d in per_target
                                        for x in stages(d, "msda_attention", "entropy")]),
                                  mean([x for d in per_target
                                        for x in stages(d, "msda_attention", "spread")]),
                                  mean(divergence)]) + " |")
    if not rows:
        return ""
    return "\n".join([
        "**Diagnostics** (final epoch, on the targets; means over targets, seeds and stages; "
        "`tal_train.diagnostics`):", "",
        "| method | DS-DI score correlation | DS-DI top-1 agreement | DABN entropy | DABN "
        "spread | MSDA entropy | MSDA spread | expert divergence |",
        "|---|" + "---:|" * 7, *rows, ""])


def machine() -> str:
    import torch

    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo()
                  if line.startswith("model name")), platform.processor() or "unknown CPU")
    text = f"{model}, {os.cpu_count()} cores, torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(0)}"
    return text


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def report(runs: dict, s: Settings, command: str, data_seconds: float | None) -> tuple[str, dict]:
    tables, numbers = results_tables(runs, s)
    planned = len(s.targets) * len(s.seeds) * len(s.methods)
    seconds = sum(r["seconds"] or 0 for r in runs.values())
    cpu = sum(r["cpu_seconds"] or 0 for r in runs.values())
    header = [
        f"Command: `{command}`", "",
        f"Machine: {machine()}; device {s.device}. Date: {date.today().isoformat()}.", "",
        f"Runs: {len(runs)} of {planned} finished; their wall time (training + evaluation, "
        f"summed): {seconds / 3600:.2f} h ({cpu / 3600:.2f} h of process CPU time)"
        + (f"; data generation {data_seconds:.0f} s" if data_seconds else "") + ".", "",
        f"Setting: {s.domains} synthetic domains ({s.shift} shift, {s.identities} identities "
        f"and {s.cameras} cameras each, {s.size[0]}x{s.size[1]}), protocol p2 on targets "
        f"{', '.join(s.targets)}; tiny preset from random init; {s.epochs} epochs x {s.iters} "
        f"iterations, batch {s.batch_size}, lr {s.lr} (the official QAConv-GS recipe keeps its "
        f"0.001), x0.1 after 2/3 of the epochs; {s.augment} augmentation; seeds "
        f"{', '.join(map(str, s.seeds))}.", "",
        f"Cells: mean [95% interval] in percent, over seeds and queries; intervals from a "
        f"two-way bootstrap (seeds and queries resampled, {s.replicates} replicates). "
        f"Per-target query counts: " + ", ".join(
            f"{t} {_query_count(runs, t)}" for t in s.targets) + ".", "",
        ordering_verdict(numbers), ""]
    text = "\n".join(header) + "\n" + tables + "\n" + diagnostics_table(runs, s)
    return text, numbers


def _query_count(runs: dict, target: str) -> str:
    for r in runs.values():
        if r["target"] == target:
            return str(len(r["per_query"]["tal"]["query"]))
    return "-"


def update_doc(path: Path, text: str) -> None:
    """Replace the block between the dg-synthetic markers of `path` with `text`."""
    doc = path.read_text()
    if DOC_BEGIN not in doc or DOC_END not in doc:
        raise TalError(f"{path}: no '{DOC_BEGIN}' ... '{DOC_END}' block to update")
    head, rest = doc.split(DOC_BEGIN, 1)
    _, tail = rest.split(DOC_END, 1)
    path.write_text(f"{head}{DOC_BEGIN}\n{text.strip()}\n{DOC_END}{tail}")


# ---- command ----------------------------------------------------------------------------

def _data(s: Settings, identities: int) -> float | None:
    """Generate the network when missing (returns the seconds it took); refuse a root that
    holds another network."""
    config = SyntheticConfig(identities=identities, domains=s.domains, cameras=s.cameras,
                             size=s.size, shift=s.shift)
    manifest = _read_json(s.root / "synthesis.json")
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
