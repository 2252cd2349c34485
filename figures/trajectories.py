"""Coordinate trajectories of the reverse SDE against the probability-flow ODE, with the
marginal standard deviation's envelope."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from figures.canvas import new_figure, styled, suptitle, write_png

if TYPE_CHECKING:
  from matplotlib.figure import Figure


@styled
def _draw_trajectories(t: np.ndarray, sde_x: np.ndarray, ode_x: np.ndarray, std_t: np.ndarray,
                       *, title: str, ode_t: Optional[np.ndarray] = None,
                       labels: Optional[Sequence[str]] = None) -> "Figure":
  """The figure of :func:`coordinate_trajectories`."""
  t = np.asarray(t, np.float64)
  sde_x, ode_x = np.asarray(sde_x, np.float64), np.asarray(ode_x, np.float64)
  std_t = np.asarray(std_t, np.float64)
  ode_t = t if ode_t is None else np.asarray(ode_t, np.float64)
  if sde_x.ndim != 3:
    raise ValueError(f"sde_x must be [K, B, D_sel], got shape {sde_x.shape}")
  k, b, d = sde_x.shape
  if t.shape != (k,):
    raise ValueError(f"t must be [K] with K = {k} (sde_x's first axis), got shape {t.shape}")
  if std_t.shape != (k,):
    raise ValueError(f"std_t must be [K] with K = {k} (sde_x's first axis), "
                     f"got shape {std_t.shape}")
  if ode_t.ndim != 1 or ode_x.shape != (len(ode_t), b, d):
    raise ValueError(f"ode_x must be [K_ode, B, D_sel] = [{len(ode_t)}, {b}, {d}] (ode_t's or "
                     f"t's length, sde_x's draws and coordinates), got shape {ode_x.shape}")
  labels = [f"coordinate {i}" for i in range(d)] if labels is None else list(labels)
  if len(labels) != d:
    raise ValueError(f"labels must name the D_sel = {d} coordinates, got {len(labels)}")
  # pylint: disable=import-outside-toplevel
  from matplotlib import colormaps
  from matplotlib.lines import Line2D
  ncol = min(d, 3)
  nrow = int(np.ceil(d / ncol))
  fig = new_figure(3.3 * ncol + 0.4, 2.5 * nrow + 0.9)
  axes = fig.subplots(nrow, ncol, squeeze=False, sharex=True, sharey=True)
  colors = colormaps["tab10"].colors
  for i, ax in enumerate(axes.flat):
    if i >= d:
      ax.set_visible(False)
      continue
    ax.plot(t, std_t, color="k", ls=":", lw=1.0)
    ax.plot(t, -std_t, color="k", ls=":", lw=1.0)
    for j in range(b):
      ax.plot(t, sde_x[:, j, i], color=colors[j % len(colors)], lw=0.8, alpha=0.8)
      ax.plot(ode_t, ode_x[:, j, i], color=colors[j % len(colors)], lw=1.5, ls="--")
    ax.set_title(labels[i])
    # Reverse time: T on the left, eps on the right, the order the samplers run in.
    ax.set_xlim(max(t.max(), ode_t.max()), min(t.min(), ode_t.min()))
    row, col = divmod(i, ncol)
    if row == nrow - 1 or i + ncol >= d:
      ax.set_xlabel("t (reverse time, T to eps)")
      ax.xaxis.set_tick_params(labelbottom=True)
    if col == 0:
      ax.set_ylabel("x(t)")
  handles = [Line2D([], [], color="0.3", lw=0.8, label="SDE sampler (colour: prior draw)"),
             Line2D([], [], color="0.3", lw=1.5, ls="--", label="ODE sampler, same prior draw"),
             Line2D([], [], color="k", lw=1.0, ls=":", label="$\\pm$std(t) of the SDE's marginal")]
  # One column under a single panel: the three entries side by side are wider than it.
  fig.legend(handles=handles, loc="outside lower center", ncols=3 if ncol > 1 else 1)
  suptitle(fig, title)
  return fig


def coordinate_trajectories(t: np.ndarray, sde_x: np.ndarray, ode_x: np.ndarray,
                            std_t: np.ndarray, path: str, *, title: str,
                            ode_t: Optional[np.ndarray] = None,
                            labels: Optional[Sequence[str]] = None) -> str:
  """Writes a PNG of ``x(t)`` for a few coordinates, SDE and ODE samplers from the same draws.

  One panel per coordinate (three per row, shared axes); in each, one colour per prior draw,
  the SDE sampler's path solid, the ODE sampler's dashed, and ``+-std(t)`` dotted. Time runs
  from ``T`` on the left to ``eps`` on the right.

  Args:
    t: ``[K]`` the times of ``sde_x``'s rows.
    sde_x: ``[K, B, D_sel]`` the SDE sampler's values of ``D_sel`` chosen coordinates (pixels,
      say) for ``B`` prior draws.
    ode_x: ``[K_ode, B, D_sel]`` the ODE sampler's, from the same draws.
    std_t: ``[K]`` the SDE's marginal std at ``t`` (``SDE.marginal_std``), drawn as ``+-std``
      around 0.
    path: the ``.png`` to write.
    title: the figure title, e.g. :func:`run_title`'s.
    ode_t: ``[K_ode]`` the times of ``ode_x``'s rows, if not ``t`` (an adaptive solver's).
    labels: ``D_sel`` panel titles, e.g. ``"pixel (14, 14)"``; default ``"coordinate i"``.

  Returns:
    ``path``.
  """
  return write_png(_draw_trajectories(t, sde_x, ode_x, std_t, title=title, ode_t=ode_t,
                                       labels=labels), path)
