"""curves.png of a run: training loss and learning rate against steps, held-out loss as points, and the
scores of generated answers when eval.generate_metrics is set."""

from __future__ import annotations

import json
from pathlib import Path

from sftune.training.callbacks import GENERATED


def curve_points(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of every logged step, per curve: "loss", "learning_rate", "eval_loss" and the generation
    scores. A resumed run logs again the steps after its checkpoint: the later record of a step is the one kept."""
    curves: dict[str, dict[int, float]] = {}
    for record in records:
        keys = ("loss", "learning_rate") if "loss" in record else ("eval_loss", *GENERATED)
        for key in keys:
            if key in record:
                curves.setdefault(key, {})[record["step"]] = record[key]
    return {key: sorted(points.items()) for key, points in curves.items()}


def plot_curves(metrics_path: Path, png_path: Path) -> None:
    """Training loss and learning rate against steps (held-out loss as points), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    curves = curve_points(records)
    generated = [k for k in GENERATED if k in curves]
    fig, axes = plt.subplots(3 if generated else 2, 1, figsize=(7, 9 if generated else 6), sharex=True)
    ax_loss, ax_lr = axes[0], axes[-1]

    def draw(ax, key, style, scale=1.0, **kwargs):
        steps, values = zip(*curves[key]) if curves.get(key) else ((), ())
        ax.plot(steps, [v / scale for v in values], style, **kwargs)

    if generated:  # eval.generate_metrics: scores of generated answers, 0-1 (BLEU shown / 100)
        for key in generated:
            scale = 100 if key == "eval_bleu" else 1
            draw(axes[1], key, "o-", scale, label=key[len("eval_"):] + (" / 100" if scale != 1 else ""))
        axes[1].set_ylabel("generated answers")
        axes[1].legend(fontsize=8)
    draw(ax_loss, "loss", ".-", label="train loss")
    if "eval_loss" in curves:
        draw(ax_loss, "eval_loss", "o-", label="held-out loss")
    ax_loss.set_ylabel("loss per trained token")
    ax_loss.legend()
    draw(ax_lr, "learning_rate", ".-", color="tab:orange")
    ax_lr.set_ylabel("learning rate (of each step)")
    ax_lr.set_xlabel("optimizer step")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
