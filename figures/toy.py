"""2-D toys: marginals of the forward process at several times (with density contours), and
samples against data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

import numpy as np

from figures.canvas import (DATA_COLOR, SAMPLE_COLOR, format_t, new_figure, points_legend,
                            scatter_points, styled, suptitle, toy_axes, toy_lim, write_png)

if TYPE_CHECKING:
  from matplotlib.axes import Axes
  from matplotlib.figure import Figure

Density = Union[Callable[[np.ndarray], np.ndarray], np.ndarray]
"""A density for :func:`toy_marginals`: ``p(points: [M, 2]) -> [M]``, or values ``[G, G]``."""

_DENSITY_GRID = 120         # points per side where a density callable is evaluated
_DENSITY_LEVELS = (0.05, 0.2, 0.4, 0.6, 0.8)  # contour levels, fractions of the panel's peak


@styled
def _draw_marginals(times: Sequence[float], samples_per_t: Sequence[np.ndarray], *, title: str,
                    densities: Optional[Sequence[Optional[Density]]] = None,
                    lim: Optional[float] = None) -> "Figure":
  """The figure of :func:`toy_marginals`."""
  samples = [np.asarray(x) for x in samples_per_t]
  if len(times) == 0 or len(samples) != len(times):
    raise ValueError(f"samples_per_t must hold one [N, 2] array per time, {len(times)} times, "
                     f"got {len(samples)}")
  for i, x in enumerate(samples):
    if x.ndim != 2 or x.shape[-1] != 2:
      raise ValueError(f"samples_per_t[{i}] must be [N, 2], got shape {x.shape}")
  if densities is not None:
    if len(densities) != len(times):
      raise ValueError(f"densities must hold one entry (or None) per time, {len(times)} times, "
                       f"got {len(densities)}")
    if lim is None and any(isinstance(p, np.ndarray) for p in densities):
      raise ValueError("lim must be given with density grid values (they span [-lim, lim]^2)")
  # pylint: disable=import-outside-toplevel
  from matplotlib.lines import Line2D
  shown = toy_lim(samples, lim)
  n = len(times)
  ncol = min(n, 5)
  nrow = int(np.ceil(n / ncol))
  fig = new_figure(2.5 * ncol + 0.4, 2.55 * nrow + 0.9)
  axes = fig.subplots(nrow, ncol, squeeze=False, sharex=True, sharey=True)
  for i, ax in enumerate(axes.flat):
    if i >= n:
      ax.set_visible(False)
      continue
    scatter_points(ax, samples[i], DATA_COLOR)
    density = None if densities is None else densities[i]
    if density is not None:
      _contours(ax, density, shown, f"densities[{i}]")
    row, col = divmod(i, ncol)
    toy_axes(ax, shown, xlabel=row == nrow - 1 or i + ncol >= n, ylabel=col == 0)
    if i + ncol >= n:
      ax.xaxis.set_tick_params(labelbottom=True)
    ax.set_title(format_t(times[i]))
  handles = [Line2D([], [], ls="", marker="o", ms=4, color=DATA_COLOR,
                    label="samples of $p_t$")]
  if densities is not None and any(p is not None for p in densities):
    handles.append(Line2D([], [], color="tab:red", lw=1.0, label="exact $p_t$ (contours)"))
  fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
  suptitle(fig, title)
  return fig


def _contours(ax: "Axes", density: Density, lim: float, name: str) -> None:
  """Contours of ``density`` over ``[-lim, lim]^2`` at :data:`_DENSITY_LEVELS` of its peak."""
  if callable(density):
    axis = np.linspace(-lim, lim, _DENSITY_GRID)
    xx, yy = np.meshgrid(axis, axis)
    values = np.asarray(density(np.stack([xx.ravel(), yy.ravel()], -1)), np.float64)
    if values.shape != (xx.size,):
      raise ValueError(f"{name} must map points [M, 2] to densities [M], got shape "
                       f"{values.shape} for M = {xx.size}")
    values = values.reshape(xx.shape)
  else:
    values = np.asarray(density, np.float64)
    if values.ndim != 2 or values.shape[0] != values.shape[1]:
      raise ValueError(f"{name} must be a callable or grid values [G, G], got shape "
                       f"{values.shape}")
    axis = np.linspace(-lim, lim, values.shape[0])
  peak = float(np.nanmax(values)) if np.isfinite(values).any() else 0.0
  if peak > 0:
    ax.contour(axis, axis, values, levels=[peak * f for f in _DENSITY_LEVELS], colors="tab:red",
               linewidths=0.9)


def toy_marginals(times: Sequence[float], samples_per_t: Sequence[np.ndarray], path: str, *,
                  title: str, densities: Optional[Sequence[Optional[Density]]] = None,
                  lim: Optional[float] = None) -> str:
  """Writes a PNG of the data and the perturbed marginals ``p_t``, one panel per time.

  Args:
    times: the panels' times, e.g. ``eps`` (the data) up to ``T`` (the prior).
    samples_per_t: ``[N, 2]`` samples of ``p_t`` per time (e.g. data pushed through the
      perturbation kernel, ``SDE.marginal_prob``).
    path: the ``.png`` to write.
    title: the figure title (the SDE, say).
    densities: per time, the exact density ``p_t`` drawn as contours at 5, 20, 40, 60 and 80 %
      of its peak, or None for none: a callable ``p(points: [M, 2]) -> [M]``, or values
      ``[G, G]`` on a regular grid over ``[-lim, lim]^2`` (row ``i`` at ``y_i``, column ``j`` at
      ``x_j``, both increasing), which needs ``lim``.
    lim: half-width of the square shown around the origin, shared by all panels; default:
      covering 99.5 % of all samples' coordinates.

  Returns:
    ``path``.
  """
  return write_png(_draw_marginals(times, samples_per_t, title=title, densities=densities,
                                    lim=lim), path)


@styled
def _draw_samples_vs_data(samples: np.ndarray, data: np.ndarray, *, title: str,
                          lim: Optional[float] = None) -> "Figure":
  """The figure of :func:`toy_samples_vs_data`."""
  samples, data = np.asarray(samples), np.asarray(data)
  for name, x in (("samples", samples), ("data", data)):
    if x.ndim != 2 or x.shape[-1] != 2:
      raise ValueError(f"{name} must be [N, 2], got shape {x.shape}")
  fig = new_figure(4.4, 4.6)
  ax = fig.subplots()
  scatter_points(ax, data, DATA_COLOR, f"data ({len(data)})", alpha=0.5)
  scatter_points(ax, samples, SAMPLE_COLOR, f"samples ({len(samples)})", alpha=0.5)
  toy_axes(ax, toy_lim([samples, data], lim))
  points_legend(ax, loc="best")
  suptitle(fig, title)
  return fig


def toy_samples_vs_data(samples: np.ndarray, data: np.ndarray, path: str, *, title: str,
                        lim: Optional[float] = None) -> str:
  """Writes a PNG of 2-D samples over the data, in two colours with a legend.

  Args:
    samples: ``[N, 2]`` the sampler's output.
    data: ``[M, 2]`` data points (the test set).
    path: the ``.png`` to write.
    title: the figure title, e.g. :func:`run_title`'s.
    lim: half-width of the square shown around the origin; default: covering 99.5 % of both
      sets' coordinates.

  Returns:
    ``path``.
  """
  return write_png(_draw_samples_vs_data(samples, data, title=title, lim=lim), path)
