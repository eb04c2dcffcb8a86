"""Figures of a classifier's results: confusion matrix, per-class accuracy, misclassified images.

Pure functions from numbers to matplotlib figures, used by the TensorBoard callback and the run
report. They use matplotlib's object API (``Figure``), not pyplot's global state, so they can
be drawn in a background thread while training goes on. matplotlib is imported on first use
only, so nothing that does not draw pays for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def confusion_matrix_figure(matrix: Tensor, class_names: Sequence[str], title: str = "Confusion matrix"):
    """Rows: true class; columns: predicted class; cells: counts, coloured by row share."""
    counts = matrix.detach().cpu().to(torch.int64)
    share = counts.float() / counts.sum(dim=1, keepdim=True).clamp(min=1)
    n = len(class_names)
    size = max(4.0, 0.55 * n + 2)
    fig = _figure(size, size * 0.9)
    ax = fig.subplots()
    ax.imshow(share.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title} (accuracy {counts.diag().sum().item() / max(counts.sum().item(), 1):.1%})")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                color = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, str(counts[i, j].item()), ha="center", va="center", color=color, fontsize=8)
    fig.tight_layout()
    return fig


def per_class_bar_figure(values: Sequence[float], class_names: Sequence[str], title: str = "Accuracy per class"):
    fig = _figure(max(4.0, 0.5 * len(class_names) + 2), 3.5)
    ax = fig.subplots()
    bars = ax.bar(range(len(values)), [float(v) for v in values], color="tab:blue")
    ax.bar_label(bars, labels=[f"{float(v):.0%}" for v in values], fontsize=8)
    ax.set_xticks(range(len(values)), class_names, rotation=45, ha="right")
    ax.set_ylim(0, 1.08)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def misclassified_figure(images: Tensor, true: Sequence[int], predicted: Sequence[int], class_names: Sequence[str]):
    """A grid of uint8 images (N, 3, H, W), each captioned 'true -> predicted'.

    The images are pasted into one canvas shown by a single axes: 32 separate subplots cost
    about 1.4 s of CPU to draw, this about a tenth of that.
    """
    n = len(images)
    cols = min(8, max(n, 1))
    rows = max(1, -(-n // cols))
    _, h, w = images.shape[1:] if n else (3, 32, 32)
    gap_x, gap_y = w // 4, h // 2  # room between images, and below each for its caption
    canvas = torch.full((3, rows * (h + gap_y), cols * (w + gap_x)), 255, dtype=torch.uint8)
    fig = _figure(1.3 * cols, 1.45 * rows + 0.3)
    ax = fig.subplots()
    for k in range(n):
        r, c = divmod(k, cols)
        y, x = r * (h + gap_y), c * (w + gap_x)
        canvas[:, y : y + h, x : x + w] = images[k].cpu()
        caption = f"{class_names[true[k]]}\n-> {class_names[predicted[k]]}"
        ax.text(x + w / 2, y + h + 1, caption, ha="center", va="top", fontsize=6)
    ax.imshow(canvas.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.axis("off")
    ax.set_title("Misclassified (true -> predicted)", fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.92)
    return fig


def save_figure(fig, path) -> None:
    fig.savefig(path, dpi=110)
