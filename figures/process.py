"""The reverse process as an animation (GIF): images or 2-D points from the prior to the data."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Callable, Optional, Tuple

import numpy as np

from figures.canvas import (REFERENCE_COLOR, SAMPLE_COLOR, data_kind, format_t, house_style,
                            image_grid, new_figure, points_legend, render_rgb, scatter_points,
                            show_image, styled, suptitle, toy_axes, toy_lim)
from infra import outputs

if TYPE_CHECKING:
  from matplotlib.figure import Figure


@styled
def _draw_process(frames_x: np.ndarray, frames_t: np.ndarray, *, title: str,
                  reference: Optional[np.ndarray] = None, max_images: int = 64,
                  lim: Optional[float] = None) -> Tuple["Figure", Callable[[int], None]]:
  """The figure of :func:`process_animation` and ``show(k)``, which sets it to frame ``k``.

  The layout is computed once, on frame 0, and then frozen, so frames do not jitter.
  """
  frames_x = np.asarray(frames_x)
  frames_t = np.asarray(frames_t, np.float64)
  kind = data_kind("frames_x", frames_x, "K, B")
  if frames_t.ndim != 1 or len(frames_t) != len(frames_x):
    raise ValueError(f"frames_t must be [K] with K = {len(frames_x)} (frames_x's first axis), "
                     f"got shape {frames_t.shape}")
  if len(frames_x) == 0:
    raise ValueError("frames_x must hold at least one frame, got K = 0")
  if kind == "images":
    fig = new_figure(4.6, 5.0)
    ax = fig.subplots()
    n = min(frames_x.shape[1], max_images)
    artist = show_image(ax, image_grid(frames_x[0, :n]))

    def set_data(k: int) -> None:
      grid = image_grid(frames_x[k, :n])
      artist.set_data(grid[..., 0] if grid.shape[-1] == 1 else grid)
  else:
    fig = new_figure(4.6, 4.9)
    ax = fig.subplots()
    extra = [] if reference is None else [np.asarray(reference)]
    toy_axes(ax, toy_lim([frames_x] + extra, lim))
    if reference is not None:
      scatter_points(ax, np.asarray(reference), REFERENCE_COLOR, "data", alpha=0.35)
    artist = scatter_points(ax, frames_x[0], SAMPLE_COLOR, "samples x(t)")
    if reference is not None:
      # A fixed place: "best" is recomputed at every draw and would jump between frames.
      points_legend(ax, loc="upper right")

    def set_data(k: int) -> None:
      artist.set_offsets(frames_x[k])

  def show(k: int) -> None:
    set_data(k)
    with house_style():  # callers run show() outside _draw_process's style
      ax.set_title(format_t(frames_t[k]))

  suptitle(fig, title)
  show(0)
  fig.canvas.draw()
  fig.set_layout_engine("none")
  return fig, show


def process_animation(frames_x: np.ndarray, frames_t: np.ndarray, path: str, *, title: str,
                      fps: float = 10.0, hold_last_s: float = 2.0,
                      reference: Optional[np.ndarray] = None, max_images: int = 64,
                      lim: Optional[float] = None) -> str:
  """Writes a GIF of a sampler's reverse process, one frame per saved step, annotated with t.

  Args:
    frames_x: ``[K, B, H, W, C]`` images in [0, 1] (a grid of the first ``max_images`` per
      frame; values outside are clipped, so noisy early frames saturate) or ``[K, B, 2]`` points
      (a scatter on axes fixed over all frames).
    frames_t: ``[K]`` the time of each frame, from about ``T`` down to ``eps``.
    path: the ``.gif`` to write.
    title: the figure title, e.g. :func:`run_title`'s; each frame adds its ``t`` below it.
    fps: frames per second.
    hold_last_s: how long the last frame (the samples) stays, seconds.
    reference: points only: ``[M, 2]`` data drawn as a faint layer under every frame.
    max_images: images only: how many of the ``B`` images each frame shows.
    lim: points only: half-width of the square shown around the origin; default: covering
      99.5 % of all frames' and ``reference``'s coordinates.

  Returns:
    ``path``. The GIF has ``K`` frames of equal size (Pillow merges consecutive frames that
    are pixel-identical into one of their summed duration) and loops forever.
  """
  from PIL import Image  # pylint: disable=import-outside-toplevel
  fig, show = _draw_process(frames_x, frames_t, title=title, reference=reference,
                            max_images=max_images, lim=lim)
  frames = []
  for k in range(len(frames_t)):
    show(k)
    frames.append(Image.fromarray(render_rgb(fig)).quantize(256, Image.Quantize.MEDIANCUT))
  # Milliseconds, which GIF keeps to 10 ms.
  durations = [int(round(1000.0 / fps))] * (len(frames) - 1) + [int(round(1000.0 * hold_last_s))]
  buffer = io.BytesIO()
  frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:],
                 duration=durations, loop=0)
  outputs.atomic_write_bytes(path, buffer.getvalue())
  return path
