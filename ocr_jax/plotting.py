"""Pictures: images with boxes, image grids, frame strips (rows = sequences, columns = time), PNG and GIF files.

Boxes follow the data convention `(y_min, x_min, y_max, x_max)` in pixel-edge units (a digit on rows r0..r1−1 has
y_min = r0, y_max = r1). Colours are picked per slot: the slot index is the AIR step or the SQAIR identity; pass
`color_ids` to colour by something else (e.g. persistent identity ids). `presence` may be boolean or a probability:
absent boxes (presence 0) are skipped, or drawn dashed with `show_absent=True`; a probability sets the line's opacity.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas (no pyplot, no display, no global backend
change); GIFs are written with PIL.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image, ImageDraw

# Tableau-10 colours: distinct, colour-blind friendlier than the rainbow.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def color_for(i: int) -> str:
    return PALETTE[int(i) % len(PALETTE)]


def _as_display(image: np.ndarray) -> tuple[np.ndarray, float]:
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected a [H, W] image, got shape {image.shape}")
    return image, (255.0 if image.dtype == np.uint8 else 1.0)


def _box_args(boxes, presence, color_ids, k_shape):
    boxes = None if boxes is None else np.asarray(boxes, np.float64).reshape(k_shape + (4,))
    if boxes is None:
        return None, None, None
    k = boxes.shape[-2]
    presence = (
        np.ones(boxes.shape[:-1]) if presence is None else np.asarray(presence, np.float64).reshape(boxes.shape[:-1])
    )
    color_ids = (
        np.broadcast_to(np.arange(k), boxes.shape[:-1])
        if color_ids is None
        else np.asarray(color_ids).reshape(boxes.shape[:-1])
    )
    return boxes, presence, color_ids


def draw_boxes(
    ax, boxes, presence=None, *, color_ids=None, show_absent=False, linewidth=1.5, linestyle="-", labels=None
):
    """Draws boxes [k, 4] on a matplotlib axes that shows an image with imshow's default extent."""
    boxes, presence, color_ids = _box_args(boxes, presence, color_ids, (-1,))
    if boxes is None:
        return
    for j, (y0, x0, y1, x1) in enumerate(boxes):
        p = float(presence[j])
        if p <= 0 and not show_absent:
            continue
        absent = p <= 0
        ax.add_patch(
            Rectangle(
                (x0 - 0.5, y0 - 0.5),
                x1 - x0,
                y1 - y0,
                fill=False,
                edgecolor=color_for(color_ids[j]),
                linewidth=linewidth,
                linestyle="--" if absent else linestyle,
                alpha=0.5 if absent else max(p, 0.15),
            )
        )
        if labels is not None and not absent:
            ax.text(x0 - 0.5, y0 - 1.0, str(labels[j]), color=color_for(color_ids[j]), fontsize=7, va="bottom")


def _figure(nrows, ncols, cell=1.2, title=False):
    header = 0.35 if title else 0.15  # inches above the grid: suptitle + the first row's titles
    height = nrows * cell + header
    fig = Figure(figsize=(ncols * cell, height), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - header / height, wspace=0.05, hspace=0.2)
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.08 / height, va="top")
    return fig, axes


def plot_images(
    images,
    boxes=None,
    presence=None,
    *,
    color_ids=None,
    ncols=8,
    titles=None,
    labels=None,
    show_absent=False,
    title=None,
    cell=1.2,
) -> Figure:
    """A grid of images [n, H, W] (uint8 or float in [0, 1]) with optional boxes [n, k, 4] and presence [n, k]."""
    images = np.asarray(images)
    n = images.shape[0]
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    boxes, presence, color_ids = _box_args(boxes, presence, color_ids, (n, -1))
    fig, axes = _figure(nrows, ncols, cell, title)
    for i, ax in enumerate(axes.ravel()):
        if i >= n:
            ax.axis("off")
            continue
        image, vmax = _as_display(images[i])
        ax.imshow(image, cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
        if boxes is not None:
            draw_boxes(
                ax,
                boxes[i],
                presence[i],
                color_ids=color_ids[i],
                show_absent=show_absent,
                labels=None if labels is None else labels[i],
            )
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=7, pad=2)
    return fig


def plot_frame_strips(
    frames, boxes=None, presence=None, *, color_ids=None, show_absent=False, row_titles=None, title=None, cell=1.0
) -> Figure:
    """Sequences [n, T, H, W] as a grid: one row per sequence, one column per time step; boxes [n, T, k, 4]."""
    frames = np.asarray(frames)
    n, t = frames.shape[:2]
    boxes, presence, color_ids = _box_args(boxes, presence, color_ids, (n, t, -1))
    fig, axes = _figure(n, t, cell, title)
    for i in range(n):
        for s in range(t):
            ax = axes[i, s]
            image, vmax = _as_display(frames[i, s])
            ax.imshow(image, cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
            if boxes is not None:
                draw_boxes(ax, boxes[i, s], presence[i, s], color_ids=color_ids[i, s], show_absent=show_absent)
            if i == 0:
                ax.set_title(f"t={s}", fontsize=7, pad=2)
        if row_titles is not None:
            axes[i, 0].set_ylabel(str(row_titles[i]), fontsize=7)
    return fig


def save_figure(fig: Figure, path) -> Path:
    """Saves a figure as PNG (parent directories are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def render_frame(image, boxes=None, presence=None, *, color_ids=None, scale=4) -> Image.Image:
    """One image [H, W] as an RGB PIL image, upscaled by `scale`, with boxes drawn (for GIFs)."""
    image, vmax = _as_display(image)
    gray = np.clip(np.asarray(image, np.float64) / vmax * 255.0, 0, 255).astype(np.uint8)
    pil = Image.fromarray(gray).convert("RGB").resize((gray.shape[1] * scale, gray.shape[0] * scale), Image.NEAREST)
    boxes, presence, color_ids = _box_args(boxes, presence, color_ids, (-1,))
    if boxes is not None:
        draw = ImageDraw.Draw(pil)
        for j, (y0, x0, y1, x1) in enumerate(boxes):
            if presence[j] <= 0:
                continue
            draw.rectangle(
                [x0 * scale, y0 * scale, x1 * scale - 1, y1 * scale - 1],
                outline=color_for(color_ids[j]),
                width=max(1, scale // 2),
            )
    return pil


def save_gif(
    frames, path, boxes=None, presence=None, *, color_ids=None, fps: float = 4.0, scale: int = 4, ncols: int = 4
) -> Path:
    """Writes an animated GIF of one sequence [T, H, W] or several [n, T, H, W] tiled in a grid (boxes [.., k, 4])."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
        boxes = None if boxes is None else np.asarray(boxes)[None]
        presence = None if presence is None else np.asarray(presence)[None]
        color_ids = None if color_ids is None else np.asarray(color_ids)[None]
    if frames.ndim != 4:
        raise ValueError(f"expected frames [T, H, W] or [n, T, H, W], got shape {frames.shape}")
    n, t, h, w = frames.shape
    boxes, presence, color_ids = _box_args(boxes, presence, color_ids, (n, t, -1))
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    gap = 2
    pictures = []
    for s in range(t):
        sheet = Image.new("RGB", (ncols * (w * scale + gap) - gap, nrows * (h * scale + gap) - gap), "white")
        for i in range(n):
            tile = render_frame(
                frames[i, s],
                None if boxes is None else boxes[i, s],
                None if boxes is None else presence[i, s],
                color_ids=None if boxes is None else color_ids[i, s],
                scale=scale,
            )
            sheet.paste(tile, ((i % ncols) * (w * scale + gap), (i // ncols) * (h * scale + gap)))
        pictures.append(sheet)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=int(1000 / fps), loop=0)
    return path
