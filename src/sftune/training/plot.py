"""curves.png of a run: training loss and learning rate against steps, held-out loss as points, and the
scores of generated answers when eval.generate_metrics is set."""

from __future__ import annotations

import json
from pathlib import Path

from sftune.training.callbacks import GENERATED


def plot_curves(metrics_path: Path, png_path: Path) -> None:
    """Training loss and learning rate against steps (held-out loss as points), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    train = [r for r in records if "loss" in r]
    held = [r for r in records if "eval_loss" in r]
    generated = [k for k in GENERATED if any(k in r for r in held)]
    fig, axes = plt.subplots(3 if generated else 2, 1, figsize=(7, 9 if generated else 6), sharex=True)
    ax_loss, ax_lr = axes[0], axes[-1]
    if generated:  # eval.generate_metrics: scores of generated answers, 0-1 (BLEU shown / 100)
        for key in generated:
            points = [r for r in held if key in r]
            scale = 100 if key == "eval_bleu" else 1
            axes[1].plot([r["step"] for r in points], [r[key] / scale for r in points], "o-",
                    label=key[len("eval_"):] + (" / 100" if scale != 1 else ""))
        axes[1].set_ylabel("generated answers")
        axes[1].legend(fontsize=8)
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    if held:
        ax_loss.plot([r["step"] for r in held], [r["eval_loss"] for r in held], "o-", label="held-out loss")
    ax_loss.set_ylabel("loss per trained token")
    ax_loss.legend()
    ax_lr.plot([r["step"] for r in train], [r.get("learning_rate", 0) for r in train], color="tab:orange")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimizer step")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
