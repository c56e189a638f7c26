"""A PNG of the training curves: loss per phase and target mAP per evaluated epoch."""
from __future__ import annotations

from pathlib import Path

from .evaluation import target_metrics


def plot_curves(train_log: list[dict], metrics: list[dict], path: str | Path) -> Path:
    """Left: mean loss of each phase per epoch; right: mAP (%) of every target and part."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = sorted({k for entry in train_log for k in entry["loss"]})
    for name in names:
        points = [(e["epoch"], e["loss"][name]) for e in train_log if name in e["loss"]]
        left.plot(*zip(*points), marker="o", label=name)
    left.set(xlabel="epoch", ylabel="triplet loss", title="training loss")
    series: dict[str, list[tuple[int, float]]] = {}
    for entry in metrics:
        for target, parts in target_metrics(entry).items():
            for part, m in parts.items():
                series.setdefault(f"{target} {part}", []).append((entry["epoch"], m["mAP"]))
    for label, points in series.items():
        right.plot(*zip(*points), marker="o", label=label)
    right.set(xlabel="epoch", ylabel="mAP (%)", title="target mAP")
    for ax in (left, right):
        if ax.lines:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
