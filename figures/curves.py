"""Training curves: the loss beside the bits/dim probes, against training wall time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from figures.canvas import DATA_COLOR, SAMPLE_COLOR, new_figure, styled, suptitle, write_png

if TYPE_CHECKING:
  from matplotlib.figure import Figure


@styled
def _draw_training_curves(loss_t: np.ndarray, loss: np.ndarray, bpd_t: np.ndarray,
                          bpd: np.ndarray, *, title: str) -> "Figure":
  """The figure of :func:`training_curves`."""
  fig = new_figure(7.6, 3.0)
  loss_ax, bpd_ax = fig.subplots(1, 2)
  loss_ax.plot(loss_t / 60.0, loss, color=DATA_COLOR, linewidth=1.0)
  loss_ax.set_yscale("log")
  loss_ax.set_ylabel("training loss")
  bpd_ax.plot(bpd_t / 60.0, bpd, color=SAMPLE_COLOR, marker="o", markersize=3.5)
  for t, value in zip(bpd_t, bpd):
    bpd_ax.annotate(f"{value:.3f}", (t / 60.0, value), textcoords="offset points",
                    xytext=(0, 5), ha="center", fontsize=6.5)
  bpd_ax.set_ylabel("test bits/dim (EMA)")
  for ax in (loss_ax, bpd_ax):
    ax.set_xlabel("training time (min)")
  suptitle(fig, title)
  return fig


def training_curves(loss_t: Sequence[float], loss: Sequence[float], bpd_t: Sequence[float],
                    bpd: Sequence[float], path: str, *, title: str) -> str:
  """Writes a PNG of a run's loss curve (log scale) beside its bits/dim probes, both against
  training wall time.

  Args:
    loss_t, loss: ``[N]`` training seconds and the mean training loss up to them.
    bpd_t, bpd: ``[M]`` training seconds of each bits/dim measurement and its value.
    path: the ``.png`` to write.
    title: the figure title.

  Returns:
    ``path``.
  """
  arrays = [np.asarray(a, np.float64) for a in (loss_t, loss, bpd_t, bpd)]
  if arrays[0].shape != arrays[1].shape or arrays[2].shape != arrays[3].shape:
    raise ValueError(f"loss_t/loss and bpd_t/bpd must pair up, got shapes "
                     f"{[a.shape for a in arrays]}")
  return write_png(_draw_training_curves(*arrays, title=title), path)
