"""A PNG of the training curves: loss per phase, target mAP per stream, and the diagnostics
(`tal_train.diagnostics`) of every evaluated epoch."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .evaluation import target_metrics

Series = dict[str, list[tuple[int, float]]]


def _mean(values: dict[str, Any], key: str | None = None) -> float:
    items = [v[key] if key else v for v in values.values()]
    return sum(items) / len(items)


def diagnostic_series(metrics: list[dict]) -> tuple[Series, Series]:
    """(stream agreement and attention entropies, each in [0, 1]; expert divergence per stage)
    over the evaluated epochs."""
    agreement: Series = {}
    divergence: Series = {}
    for entry in metrics:
        epoch, diag = entry["epoch"], entry.get("diagnostics", {})
        for stage, r in diag.get("expert_divergence", {}).items():
            divergence.setdefault(stage, []).append((epoch, r))
        for target in target_metrics(entry):
            d = diag.get(target, {})
            points = {"DS-DI correlation": d.get("ds_di_correlation"),
                      "DS-DI top-1 agreement": d.get("ds_di_top1_agreement"),
                      "DABN entropy": _mean(d["dabn_attention"], "entropy")
                      if d.get("dabn_attention") else None,
                      "MSDA entropy": _mean(d["msda_attention"], "entropy")
                      if d.get("msda_attention") else None}
            for name, value in points.items():
                if value is not None:
                    agreement.setdefault(f"{target} {name}", []).append((epoch, value))
    return agreement, divergence


def plot_curves(train_log: list[dict], metrics: list[dict], path: str | Path) -> Path:
    """Top: mean loss of each phase per epoch, mAP (%) of every target and part; bottom: stream
    agreement and attention entropies, expert divergence per stage."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    (loss_ax, map_ax), (agree_ax, div_ax) = axes
    names = sorted({k for entry in train_log for k in entry["loss"]})
    for name in names:
        points = [(e["epoch"], e["loss"][name]) for e in train_log if name in e["loss"]]
        loss_ax.plot(*zip(*points), marker="o", label=name)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="training loss")
    series: Series = {}
    for entry in metrics:
        for target, parts in target_metrics(entry).items():
            for part, m in parts.items():
                series.setdefault(f"{target} {part}", []).append((entry["epoch"], m["mAP"]))
    for label, points in series.items():
        map_ax.plot(*zip(*points), marker="o", label=label)
    map_ax.set(xlabel="epoch", ylabel="mAP (%)", title="target mAP per stream")
    agreement, divergence = diagnostic_series(metrics)
    for ax, data in ((agree_ax, agreement), (div_ax, divergence)):
        for label, points in data.items():
            ax.plot(*zip(*points), marker="o", label=label)
    agree_ax.set(xlabel="epoch", ylim=(-0.05, 1.05),
                 title="DS-DI agreement, attention entropy (1 = uniform)")
    div_ax.set(xlabel="epoch", ylabel="std of expert means / within-domain std",
               title="expert divergence per stage")
    for ax in axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
