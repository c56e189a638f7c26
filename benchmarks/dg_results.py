"""The plan and the results of benchmarks/dg_synthetic.py: its methods and paper-style tables,
the layout of its run folders, and the report (intervals, paired differences, Table 3 verdict,
diagnostics) written from finished runs. Kept apart from the training loop so the tables can be
read and rebuilt without it (``--tables-only``)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from machine import describe

from tal_infer.errors import TalError
from tal_train.confidence import Interval, bootstrap_interval

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


def run_dir(s: Settings, target: str, method: str, seed: int) -> Path:
    return s.out / "runs" / f"{target}-{method}-{seed}"


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def finished(folder: Path, epochs: int) -> bool:
    metrics, per_query = read_json(folder / "metrics.json"), read_json(folder / "per_query.json")
    return bool(metrics) and metrics[-1].get("epoch") == epochs and bool(per_query) \
        and per_query.get("epoch") == epochs


def collect(s: Settings) -> dict[str, dict[str, Any]]:
    """Finished runs: {run name: {target, method, seed, seconds, metrics, diagnostics,
    per_query}}."""
    out = {}
    for target in s.targets:
        for method in s.methods:
            for seed in s.seeds:
                folder = run_dir(s, target, method, seed)
                if not finished(folder, s.epochs):
                    continue
                bench = read_json(folder / "bench.json") or {}
                entry = read_json(folder / "metrics.json")[-1]
                out[folder.name] = {
                    "target": target, "method": method, "seed": seed,
                    "seconds": bench.get("seconds"), "cpu_seconds": bench.get("cpu_seconds"),
                    "metrics": entry[target], "diagnostics": entry.get("diagnostics", {}),
                    "per_query": read_json(folder / "per_query.json")["targets"][target]}
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


def report(runs: dict, s: Settings, command: str, data_seconds: float | None) -> tuple[str, dict]:
    tables, numbers = results_tables(runs, s)
    planned = len(s.targets) * len(s.seeds) * len(s.methods)
    seconds = sum(r["seconds"] or 0 for r in runs.values())
    cpu = sum(r["cpu_seconds"] or 0 for r in runs.values())
    header = [
        f"Command: `{command}`", "",
        f"Machine: {describe()}; device {s.device}. Date: {date.today().isoformat()}.", "",
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
