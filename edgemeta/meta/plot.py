"""Training curves as a PNG (host only; matplotlib with the non-interactive Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from edgemeta._deps import require

__all__ = ["plot_history"]


def plot_history(history: Sequence[dict[str, float]], path: str | Path, title: str = "") -> Path:
    """Plot loss, training accuracy and validation accuracy against episodes; return the path."""
    matplotlib = require("matplotlib", "training plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(path)
    episodes = [p["episode"] for p in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(episodes, [p["loss"] for p in history], label="train loss")
    ax_loss.set_xlabel("episode")
    ax_loss.set_ylabel("loss")
    ax_loss.grid(alpha=0.3)
    ax_acc.plot(episodes, [p["train_acc"] for p in history], label="train (query) accuracy")
    if any("val_acc" in p for p in history):
        ax_acc.plot([p["episode"] for p in history if "val_acc" in p],
                    [p["val_acc"] for p in history if "val_acc" in p], label="validation accuracy")
    ax_acc.set_xlabel("episode")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_ylim(0, 1)
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
