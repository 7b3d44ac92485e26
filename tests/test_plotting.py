"""Picture tool: boxes land on the right pixels, files are valid PNG/GIF of the expected size."""

import numpy as np
from PIL import Image

from ocr_jax import plotting


def _scene():
    image = np.zeros((20, 30), np.uint8)
    image[2:8, 3:12] = 200
    boxes = np.array([[2, 3, 8, 12], [10, 15, 18, 28]], np.float32)
    return image, boxes


def test_render_frame_draws_box_outline_on_pixel_edges():
    image, boxes = _scene()
    pil = np.asarray(plotting.render_frame(image, boxes, [True, False], scale=2))
    assert pil.shape == (40, 60, 3)
    blue = np.array([0x1F, 0x77, 0xB4])
    outline = (pil == blue).all(-1)
    ys, xs = np.nonzero(outline)
    # Box 0 covers rows 2..7, cols 3..11 → scaled edges [4, 16) × [6, 24).
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (4, 15, 6, 23)
    # The absent box (slot 1, orange) is not drawn.
    orange = np.array([0xFF, 0x7F, 0x0E])
    assert not (pil == orange).all(-1).any()


def test_plot_images_and_strips_save_png(tmp_path):
    image, boxes = _scene()
    fig = plotting.plot_images(
        np.stack([image] * 5),
        np.stack([boxes] * 5),
        np.array([[1, 0]] * 5, bool),
        ncols=3,
        titles=list("abcde"),
        show_absent=True,
    )
    path = plotting.save_figure(fig, tmp_path / "sub" / "grid.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (360, 255)  # 3 × 1.2 in, 2 × 1.2 in + 0.15 in header, 100 dpi
    axes = fig.axes
    assert len(axes[0].patches) == 2 and axes[0].patches[1].get_linestyle() == "--"
    rect = axes[0].patches[0]
    assert (rect.get_x(), rect.get_y(), rect.get_width(), rect.get_height()) == (2.5, 1.5, 9.0, 6.0)

    frames = np.stack([np.stack([image] * 4)] * 2)
    fig = plotting.plot_frame_strips(frames, np.broadcast_to(boxes, (2, 4, 2, 4)), np.ones((2, 4, 2), bool))
    path = plotting.save_figure(fig, tmp_path / "strip.png")
    with Image.open(path) as im:
        assert im.size == (400, 215)
    assert sum(len(ax.patches) for ax in fig.axes) == 16


def test_save_gif_frames(tmp_path):
    image, boxes = _scene()
    frames = np.stack([np.roll(image, s, axis=1) for s in range(5)])
    path = plotting.save_gif(
        np.stack([frames, frames]), tmp_path / "seq.gif", np.broadcast_to(boxes, (2, 5, 2, 4)), scale=2
    )
    with Image.open(path) as im:
        assert im.format == "GIF" and im.n_frames == 5
        assert im.size == (2 * 60 + 2, 40)
    single = plotting.save_gif(frames.astype(np.float32) / 255.0, tmp_path / "one.gif")
    with Image.open(single) as im:
        assert im.n_frames == 5 and im.size == (120, 80)
