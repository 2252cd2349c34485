"""Samplers side by side: one panel of samples per sampler, with its NFE."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence, Tuple

import numpy as np

from figures.canvas import (REFERENCE_COLOR, SAMPLE_COLOR, data_kind, format_nfe, image_grid,
                            new_figure, points_legend, scatter_points, show_image, styled, suptitle,
                            toy_axes, toy_lim, write_png)

if TYPE_CHECKING:
  from matplotlib.figure import Figure


Panel = Tuple[str, np.ndarray, Optional[float]]
"""One :func:`sampler_comparison` panel: ``(name, samples, nfe)``, ``nfe`` None for no sampler."""


@styled
def _draw_comparison(panels: Sequence[Panel], *, title: str,
                     reference: Optional[np.ndarray] = None, max_images: int = 64,
                     lim: Optional[float] = None) -> "Figure":
  """The figure of :func:`sampler_comparison`."""
  if len(panels) == 0:
    raise ValueError("panels must hold at least one (name, samples, nfe)")
  names, samples, nfes = [], [], []
  for i, panel in enumerate(panels):
    if len(panel) != 3:
      raise ValueError(f"panels[{i}] must be (name, samples, nfe), got {len(panel)} items")
    names.append(str(panel[0]))
    samples.append(np.asarray(panel[1]))
    nfes.append(panel[2])
  kinds = [data_kind(f"panels[{i}] samples", x, "B") for i, x in enumerate(samples)]
  if len(set(kinds)) != 1:
    raise ValueError(f"panels must all hold images or all 2-D points, got {kinds}")
  n = len(panels)
  titles = [name if nfe is None else f"{name}, {format_nfe(nfe)}"
            for name, nfe in zip(names, nfes)]
  if kinds[0] == "images":
    fig = new_figure(2.6 * n + 0.2, 3.1)
    for ax, x, panel_title in zip(fig.subplots(1, n, squeeze=False)[0], samples, titles):
      show_image(ax, image_grid(x[:max_images]))
      ax.set_title(panel_title)
  else:
    fig = new_figure(2.7 * n + 0.4, 3.4 if reference is None else 3.7)
    extra = [] if reference is None else [np.asarray(reference)]
    shown = toy_lim(samples + extra, lim)
    axes = fig.subplots(1, n, squeeze=False, sharex=True, sharey=True)[0]
    for i, (ax, x, panel_title) in enumerate(zip(axes, samples, titles)):
      if reference is not None:
        scatter_points(ax, np.asarray(reference), REFERENCE_COLOR, "data", alpha=0.35)
      scatter_points(ax, x, SAMPLE_COLOR, "samples")
      toy_axes(ax, shown, ylabel=i == 0)
      ax.set_title(panel_title)
    if reference is not None:
      points_legend(fig, handles=axes[0].collections, loc="outside lower center", ncols=2)
  suptitle(fig, title)
  return fig


def sampler_comparison(panels: Sequence[Panel], path: str, *, title: str,
                       reference: Optional[np.ndarray] = None, max_images: int = 64,
                       lim: Optional[float] = None) -> str:
  """Writes a PNG of samples side by side: e.g. prior noise, Euler-Maruyama, PC, ODE.

  Args:
    panels: ``(name, samples, nfe)`` per panel, left to right; ``samples`` all images
      ``[B, H, W, C]`` in [0, 1] (a grid of the first ``max_images``) or all points ``[N, 2]``
      (scatters on shared axes); ``nfe`` is shown after the name unless None.
    path: the ``.png`` to write.
    title: the figure title, e.g. :func:`run_title` with the step alone.
    reference: points only: ``[M, 2]`` data drawn as a faint layer in every panel.
    max_images: images only: how many of each panel's images are shown.
    lim: points only: half-width of the square shown around the origin; default: covering
      99.5 % of all panels' and ``reference``'s coordinates.

  Returns:
    ``path``.
  """
  return write_png(_draw_comparison(panels, title=title, reference=reference,
                                     max_images=max_images, lim=lim), path)
