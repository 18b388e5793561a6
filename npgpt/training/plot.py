"""The loss plot: training and validation loss against steps and against tokens seen.

Two panels side by side, from the metrics records (`npgpt.training.metrics`): the per-step training
loss (thin), the evaluated train and validation losses (markers). Tokens seen on the second
axis make runs with different batch sizes comparable. matplotlib is optional (the `plot`
extra); without it `plot_losses` prints a note and returns False.
"""

import sys

from npgpt.weights.atomic import atomic_write


def plot_losses(records, path, title=""):
    """Write the PNG at `path`; return whether it was written."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            'note: matplotlib is not installed (pip install -e ".[plot]"); no loss plot written',
            file=sys.stderr,
        )
        return False
    steps = [r for r in records if r.get("loss") is not None]
    evals = [r for r in records if r.get("val_loss") is not None]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, key, label in ((axes[0], "step", "step"), (axes[1], "tokens", "tokens seen")):
        ax.plot(
            [r[key] for r in steps],
            [r["loss"] for r in steps],
            lw=0.7,
            alpha=0.5,
            label="train (batch)",
        )
        ax.plot(
            [r[key] for r in evals],
            [r["train_loss"] for r in evals],
            "o-",
            ms=3,
            label="train (eval)",
        )
        ax.plot(
            [r[key] for r in evals], [r["val_loss"] for r in evals], "s-", ms=3, label="validation"
        )
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("cross-entropy loss (nats/token)")
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return True
