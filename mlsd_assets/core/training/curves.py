"""Training curves as a PNG, the picture people look at first in the MLflow run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mlsd_assets.core.training.train import EpochStats


def plot_curves(history: Sequence[EpochStats], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [h.epoch for h in history]
    validated = [h for h in history if h.val_accuracy is not None]  # low-resolution epochs are not
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h.train_loss for h in history], marker="o", label="train")
    ax_loss.plot([h.epoch for h in validated], [h.val_loss for h in validated], marker="o", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.plot(epochs, [h.train_accuracy for h in history], marker="o", label="train")
    ax_acc.plot([h.epoch for h in validated], [h.val_accuracy for h in validated], marker="o", label="validation")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
