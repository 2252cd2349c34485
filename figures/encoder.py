"""The probability-flow ODE as an encoder: data, latents, reconstructions and interpolations."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np

from figures.canvas import (DATA_COLOR, REFERENCE_COLOR, SAMPLE_COLOR, data_kind, image_grid,
                            marker_size, new_figure, points_legend, scatter_points, show_image,
                            styled, suptitle, toy_axes, toy_lim, write_png)

if TYPE_CHECKING:
  from matplotlib.figure import Figure

_IMAGE_INCHES = 0.8         # size of one image in the encoder figure's rows


def _latent_display(z: np.ndarray) -> np.ndarray:
  """Latents ``z`` shown as ``0.5 + z / (6 rms(z))``: +-3 rms span black to white.

  Latents are roughly Gaussian with the prior's scale (``sigma_max`` for VE), not in [0, 1].
  """
  finite = z[np.isfinite(z)]
  rms = float(np.sqrt(np.mean(finite ** 2))) if finite.size else 0.0
  return 0.5 + z / (6.0 * rms) if rms > 0 else np.full_like(z, 0.5)


@styled
def _draw_encoder(x: np.ndarray, z: np.ndarray, x_rec: np.ndarray, interpolation: np.ndarray,
                  *, title: str, roundtrip_error: float, max_examples: int = 8,
                  lim: Optional[float] = None) -> "Figure":
  """The figure of :func:`encoder_figure`."""
  x, z, x_rec = np.asarray(x), np.asarray(z), np.asarray(x_rec)
  interpolation = np.asarray(interpolation)
  kind = data_kind("x", x, "B")
  for name, other in (("z", z), ("x_rec", x_rec)):
    if other.shape != x.shape:
      raise ValueError(f"{name} must have x's shape {x.shape}, got {other.shape}")
  if interpolation.ndim != x.ndim or interpolation.shape[1:] != x.shape[1:]:
    raise ValueError(f"interpolation must be [M, {', '.join(map(str, x.shape[1:]))}] "
                     f"(x's example shape), got {interpolation.shape}")
  if kind == "images":
    n = min(len(x), max_examples)
    width = _IMAGE_INCHES * max(n, len(interpolation)) + 0.6
    fig = new_figure(width, 4 * _IMAGE_INCHES + 1.0)
    rows = [("data x", x[:n]), ("latent z", _latent_display(z[:n].astype(np.float64))),
            ("decode(z)", x_rec[:n]), ("interpolation", interpolation)]
    for ax, (label, images) in zip(fig.subplots(4, 1), rows):
      show_image(ax, image_grid(images, ncol=len(images)))
      ax.set_ylabel(label)
  else:
    fig = new_figure(10.0, 3.9)
    data_ax, latent_ax, path_ax = fig.subplots(1, 3)
    shown = toy_lim([x, x_rec, interpolation], lim)
    # Big dots under small crosses: a good round trip puts each cross on its dot, and both
    # stay visible.
    data_ax.scatter(x[:, 0], x[:, 1], s=6 * marker_size(len(x)), c=DATA_COLOR, alpha=0.5,
                    linewidths=0, label="data x")
    data_ax.scatter(x_rec[:, 0], x_rec[:, 1], s=2 * marker_size(len(x_rec)), marker="x",
                    c=SAMPLE_COLOR, linewidths=0.5, label="decode(encode(x))")
    toy_axes(data_ax, shown)
    points_legend(data_ax, loc="best")
    data_ax.set_title("data and reconstruction")
    scatter_points(latent_ax, z, "tab:green", "z = encode(x)")
    toy_axes(latent_ax, toy_lim([z], None))
    latent_ax.set_xlabel("$z_1$")
    latent_ax.set_ylabel("$z_2$")
    points_legend(latent_ax, loc="best")
    latent_ax.set_title("latents")
    scatter_points(path_ax, x, REFERENCE_COLOR, "data x", alpha=0.35)
    path_ax.plot(interpolation[:, 0], interpolation[:, 1], "-o", color="tab:red", ms=3, lw=1.0,
                 label="decoded interpolation")
    toy_axes(path_ax, shown)
    points_legend(path_ax, loc="best")
    path_ax.set_title("latent interpolation, decoded")
  suptitle(fig, f"{title}\nround-trip error {roundtrip_error:.3g}")
  return fig


def encoder_figure(x: np.ndarray, z: np.ndarray, x_rec: np.ndarray, interpolation: np.ndarray,
                   path: str, *, title: str, roundtrip_error: float, max_examples: int = 8,
                   lim: Optional[float] = None) -> str:
  """Writes a PNG of the probability-flow ODE as an encoder: data, latents, reconstructions.

  Images: rows data / latent / reconstruction for the first ``max_examples`` examples (latents
  shown as ``0.5 + z / (6 rms(z))``, so +-3 rms span black to white), and a row of the decoded
  latent interpolation. Points: panels of the data with their reconstructions, the latents, and
  the decoded interpolation as a path over the data.

  Args:
    x: ``[B, H, W, C]`` images in [0, 1] or ``[B, 2]`` points.
    z: ``x``'s latents ``encode(x)``, ``x``'s shape.
    x_rec: the reconstructions ``decode(z)``, ``x``'s shape.
    interpolation: ``[M, ...]`` the decoded points of a latent interpolation (e.g. spherical,
      between two of ``z``), in order.
    path: the ``.png`` to write.
    title: the figure title, e.g. :func:`run_title`'s.
    roundtrip_error: shown under the title as given, e.g. the RMSE of ``x_rec - x``.
    max_examples: images only: how many examples the first three rows show.
    lim: points only: half-width of the data panels' square around the origin; default:
      covering 99.5 % of the coordinates (the latent panel always fits its latents).

  Returns:
    ``path``.
  """
  return write_png(_draw_encoder(x, z, x_rec, interpolation, title=title,
                                  roundtrip_error=roundtrip_error, max_examples=max_examples,
                                  lim=lim), path)
