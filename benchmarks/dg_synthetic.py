"""The synthetic domain-generalization experiment: does TAL generalize better than QAConv-GS?

Generates a synthetic camera network of several domains (tal-data synthesize), then for each
held-out target (protocol p2, leave-one-out) and each seed trains, for the same number of
iterations with the tiny preset:

* **QAConv-GS baseline**: one stream with plain BN, graph sampler, batch-hard triplet
  (``streams=("di",), di_norm="bn"``: the DI stream without DABN is exactly that);
* **TAL**: DS experts + DABN stream, the three phases per iteration.

"TAL DS-only" and "TAL DI-only" are read from the same trained TAL models by scoring with one
stream (``match(parts=("ds",))`` / ``("di",)``), which is paper Table 3's "each part alone";
``--separate-ablations`` also trains single-stream models (``streams=("ds",)`` /
``("di",)`` with DABN) as separate rows. Note that a TAL iteration trains on K + 1 batches (one
per source domain, plus the hybrid one) where the baseline trains on one; the row
"(K+1)x iterations" trains the baseline on as many images as TAL sees (``--matched-baseline``).

Prints a markdown table of mean +- std over seeds of target mAP and top-1 (percent), and the
wall time of every run; writes every run's metrics to OUT/results.json.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import click

from tal_train.data.synthetic import SyntheticConfig, domain_names, synthesize
from tal_train.engine import TrainOptions, train

BASELINE = {"streams": ["di"], "di_norm": "bn"}
METHODS = {  # method -> (model switches, [(row label, evaluated part)])
    "baseline": (BASELINE, [("QAConv-GS baseline", "tal")]),
    "baseline-images": (BASELINE, [("QAConv-GS baseline, (K+1)x iterations", "tal")]),
    "tal": ({}, [("TAL (DS + DI)", "tal"), ("TAL DS-only (same model)", "ds"),
                 ("TAL DI-only (same model)", "di")]),
    "ds": ({"streams": ["ds"]}, [("DS stream trained alone", "tal")]),
    "di": ({"streams": ["di"]}, [("DI stream (DABN) trained alone", "tal")]),
}

EPILOG = """\b
Examples:
  python benchmarks/dg_synthetic.py
  python benchmarks/dg_synthetic.py --targets domain-a,domain-b,domain-c,domain-d --seeds 0,1,2
  python benchmarks/dg_synthetic.py --epochs 2 --iters 30 --seeds 0 --separate-ablations"""


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(results: list[dict], targets: list[str], methods: list[str]) -> str:
    head = "| method | " + " | ".join(f"{t} mAP | {t} top-1" for t in targets) + \
        " | mean mAP | mean top-1 |"
    lines = [head, "|---|" + "---:|" * (2 * len(targets) + 2)]
    for method in methods:
        for label, part in METHODS[method][1]:
            cells, per_seed = [], {}
            for t in targets:
                runs = [r for r in results if r["method"] == method and r["target"] == t]
                for key in ("mAP", "top1"):
                    values = [r["metrics"][part][key] for r in runs]
                    cells.append(_cell(values))
                    for r, v in zip(runs, values):
                        per_seed.setdefault((key, r["seed"]), []).append(v)
            means = {key: [statistics.mean(v) for (k, _), v in per_seed.items() if k == key]
                     for key in ("mAP", "top1")}
            lines.append(f"| {label} | " + " | ".join(cells) +
                         f" | {_cell(means['mAP'])} | {_cell(means['top1'])} |")
    return "\n".join(lines)


@click.command(epilog=EPILOG)
@click.option("--root", default="runs/dg_synthetic/data", show_default=True,
              help="Synthetic data root (generated when missing).")
@click.option("--domains", default=4, show_default=True)
@click.option("--identities", default=40, show_default=True, help="Identities per domain.")
@click.option("--targets", default="domain-c,domain-d", show_default=True)
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--epochs", default=3, show_default=True)
@click.option("--iters", default=60, show_default=True, help="Iterations per epoch.")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--lr", default=0.005, show_default=True, type=float)
@click.option("--separate-ablations", is_flag=True,
              help="Also train DS-only and DI-only models.")
@click.option("--matched-baseline", is_flag=True,
              help="Also train the baseline for (K+1)x the iterations (the images TAL sees).")
@click.option("--out", default="runs/dg_synthetic", show_default=True)
@click.option("--reuse", is_flag=True,
              help="Take runs that already finished in OUT from their metrics.json instead of "
                   "training them again (to extend or resume a table).")
def main(root: str, domains: int, identities: int, targets: str, seeds: str, epochs: int,
         iters: int, batch_size: int, lr: float, separate_ablations: bool,
         matched_baseline: bool, out: str, reuse: bool) -> None:
    """Train QAConv-GS and TAL on synthetic domains (leave-one-out) and compare on the target."""
    root_path = Path(root)
    if not all((root_path / n).is_dir() for n in domain_names(domains)):
        synthesize(root_path, SyntheticConfig(identities=identities, domains=domains),
                   progress=False)
    target_list = [t.strip() for t in targets.split(",")]
    methods = (["baseline"] + (["baseline-images"] if matched_baseline else []) + ["tal"]
               + (["ds", "di"] if separate_ablations else []))
    sources = domains - 1  # p2 leave-one-out
    results = []
    for target in target_list:
        for seed in [int(s) for s in seeds.split(",")]:
            for method in methods:
                options = TrainOptions(protocol="p2", data_root=root, target=target,
                                       preset="tiny", epochs=epochs,
                                       iters=iters * (sources + 1 if method == "baseline-images"
                                                      else 1),
                                       batch_size=batch_size, lr=lr, seed=seed,
                                       out=str(Path(out) / f"{target}-{method}-{seed}"),
                                       progress=False, **METHODS[method][0])
                started = time.time()
                finished = _finished_metrics(Path(options.out), epochs) if reuse else None
                metrics = (finished or train(options).metrics[-1])[target]
                seconds = None if finished else round(time.time() - started, 1)
                results.append({"target": target, "seed": seed, "method": method,
                                "seconds": seconds, "metrics": metrics})
                took = "reused" if finished else f"{seconds:.0f} s"
                print(f"run {target} seed {seed} {method}: {took}, "
                      f"mAP {metrics['tal']['mAP']:.2f}", flush=True)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nSynthetic DG, protocol p2, tiny preset, {epochs} x {iters} iterations, batch "
          f"{batch_size}, seeds {seeds} (mean ± std over seeds, percent):\n")
    print(table(results, target_list, methods))


def _finished_metrics(run: Path, epochs: int) -> dict | None:
    """The last metrics entry of a run in `run` that completed `epochs` epochs, else None."""
    try:
        entries = json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return entries[-1] if entries and entries[-1].get("epoch") == epochs else None


if __name__ == "__main__":
    main()
