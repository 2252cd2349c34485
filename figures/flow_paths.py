"""2-D flow trajectories side by side: a flow's paths before and after reflow, from the same
starting points."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import numpy as np

from figures.canvas import (DATA_COLOR, SAMPLE_COLOR, new_figure, styled, suptitle, toy_axes,
                            toy_lim, write_png)

if TYPE_CHECKING:
  from matplotlib.figure import Figure


@styled
def _draw_flow_paths(paths: Mapping[str, np.ndarray], *, title: str) -> "Figure":
  """The figure of :func:`flow_paths`."""
  if not paths:
    raise ValueError("paths must hold at least one [K + 1, N, 2] array")
  arrays = {name: np.asarray(p) for name, p in paths.items()}
  for name, p in arrays.items():
    if p.ndim != 3 or p.shape[-1] != 2 or p.shape[0] < 2:
      raise ValueError(f"paths[{name!r}] must be [K + 1, N, 2] with K >= 1, got {p.shape}")
  lim = toy_lim(list(arrays.values()), None)
  fig = new_figure(3.2 * len(arrays) + 0.4, 3.6)
  axes = fig.subplots(1, len(arrays), squeeze=False, sharex=True, sharey=True)[0]
  for i, (ax, (name, p)) in enumerate(zip(axes, arrays.items())):
    for n in range(p.shape[1]):
      ax.plot(p[:, n, 0], p[:, n, 1], color="0.45", lw=0.6, alpha=0.7)
    ax.scatter(p[0, :, 0], p[0, :, 1], s=6, c=DATA_COLOR, linewidths=0, label="x(T)")
    ax.scatter(p[-1, :, 0], p[-1, :, 1], s=6, c=SAMPLE_COLOR, linewidths=0, label="x(eps)")
    toy_axes(ax, lim, ylabel=i == 0)
    ax.set_title(name)
  axes[0].legend(loc="upper left", fontsize="small")
  suptitle(fig, title)
  return fig


def flow_paths(paths: Mapping[str, np.ndarray], path: str, *, title: str) -> str:
  """Writes a PNG with one panel per entry of ``paths`` (``name -> [K + 1, N, 2]``, the states
  from ``x(T)`` to ``x(eps)``): each trajectory as a line, its start and end as dots. Returns
  ``path``."""
  return write_png(_draw_flow_paths(paths, title=title), path)
