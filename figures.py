"""Figures of samplers, SDEs and runs: reverse-process animations, trajectories, comparisons,
encodings, training curves.

Plotting functions over NumPy arrays the caller computes (no model, SDE or config code here);
each writes one file through :func:`outputs.atomic_write_bytes` and returns its path. Image data
are ``[B, H, W, C]`` in [0, 1] with ``C`` 1 (grayscale) or 3 (RGB), shown clipped to [0, 1];
2-D toy data are ``[N, 2]``. Titles are the caller's, typically :func:`run_title`'s
"step, sampler, NFE".

matplotlib is imported inside the functions, so that the rest of the project runs without it.
Figures are drawn on the non-interactive Agg canvas directly, not through ``pyplot``: nothing is
shown, no global backend is switched, and no figure outlives its call (pyplot keeps none open).
Every figure is drawn in matplotlib's default style plus this module's sizes, whatever the
user's matplotlibrc, so the same inputs give the same bytes.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
from typing import (TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence, Tuple, TypeVar,
                    Union)

import numpy as np

from infra import outputs

if TYPE_CHECKING:
  from matplotlib.axes import Axes
  from matplotlib.collections import PathCollection
  from matplotlib.figure import Figure
  from matplotlib.image import AxesImage
  from matplotlib.legend import Legend

_Draw = TypeVar("_Draw", bound=Callable[..., Any])

DPI = 120
"""Resolution of every figure, pixels per inch."""

Density = Union[Callable[[np.ndarray], np.ndarray], np.ndarray]
"""A density for :func:`toy_marginals`: ``p(points: [M, 2]) -> [M]``, or values ``[G, G]``."""

_STYLE = {
    "font.size": 8.0,
    "axes.titlesize": 9.0,
    "axes.labelsize": 8.0,
    "xtick.labelsize": 7.0,
    "ytick.labelsize": 7.0,
    "legend.fontsize": 7.0,
    "figure.titlesize": 10.0,
    "axes.grid": False,
}
_IMAGE_INCHES = 0.8         # size of one image in the encoder figure's rows
_DENSITY_GRID = 120         # points per side where a density callable is evaluated
_DENSITY_LEVELS = (0.05, 0.2, 0.4, 0.6, 0.8)  # contour levels, fractions of the panel's peak
_DATA_COLOR = "tab:blue"
_SAMPLE_COLOR = "tab:orange"
_REFERENCE_COLOR = "0.6"    # the faint data layer under samples


@contextlib.contextmanager
def _style() -> Iterator[None]:
  """matplotlib's defaults plus :data:`_STYLE`, for the duration of the block."""
  import matplotlib.style  # pylint: disable=import-outside-toplevel
  with matplotlib.style.context(["default", _STYLE]):
    yield


def _styled(draw: _Draw) -> _Draw:
  """Runs a ``_draw_*`` function under :func:`_style` (fonts are fixed when text is made)."""
  @functools.wraps(draw)
  def wrapper(*args: Any, **kwargs: Any) -> Any:
    with _style():
      return draw(*args, **kwargs)
  return wrapper


def _figure(width: float, height: float) -> "Figure":
  """An empty figure of ``width x height`` inches on an Agg canvas, constrained layout."""
  # pylint: disable=import-outside-toplevel
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
  FigureCanvasAgg(fig)
  return fig


def _write_png(fig: "Figure", path: str) -> str:
  """Renders ``fig`` to PNG in memory and writes it atomically to ``path``; returns ``path``."""
  buffer = io.BytesIO()
  with _style():
    fig.savefig(buffer, format="png", dpi=DPI)
  outputs.atomic_write_bytes(path, buffer.getvalue())
  return path


def _render_rgb(fig: "Figure") -> np.ndarray:
  """``fig`` drawn as ``[height, width, 3]`` uint8."""
  with _style():
    fig.canvas.draw()
  return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def available() -> bool:
  """Whether matplotlib is installed (GPU images may lack it; the samples are saved without)."""
  return importlib.util.find_spec("matplotlib") is not None


def run_title(step: Union[int, str, None], sampler: Optional[str] = None,
              nfe: Optional[float] = None) -> str:
  """A figure title naming the checkpoint step, the sampler and the NFE, those given.

  ``step`` may instead name what was sampled (``"exact score"``). ``nfe`` may be a mean over a
  batch (adaptive ODE solvers); it is shown to one decimal then.
  """
  parts = []
  if isinstance(step, str):
    parts.append(step)
  elif step is not None:
    parts.append(f"step {int(step)}")
  if sampler:
    parts.append(sampler)
  if nfe is not None:
    parts.append(_format_nfe(nfe))
  return ", ".join(parts)


def _format_nfe(nfe: float) -> str:
  return f"NFE {int(nfe)}" if float(nfe).is_integer() else f"NFE {float(nfe):.1f}"


def _format_t(t: float) -> str:
  return f"t = {float(t):.4g}"


# --- Input checks and shared drawing pieces ------------------------------------------------------


def _kind(name: str, x: np.ndarray, leading: str) -> str:
  """``'images'`` for ``x: [<leading>, H, W, C]``, ``'points'`` for ``[<leading>, 2]``.

  ``leading`` names the leading axes (``'B'``, ``'K, B'``), which set the expected ranks.

  Raises:
    ValueError: naming ``name``, if ``x`` is neither.
  """
  n = len(leading.split(","))
  if x.ndim == n + 3 and x.shape[-1] in (1, 3):
    return "images"
  if x.ndim == n + 1 and x.shape[-1] == 2:
    return "points"
  raise ValueError(f"{name} must be images [{leading}, H, W, C] (C 1 or 3) or 2-D points "
                   f"[{leading}, 2], got shape {x.shape}")


def _as_images(images: np.ndarray) -> np.ndarray:
  return np.clip(np.nan_to_num(np.asarray(images, np.float32), nan=0.0), 0.0, 1.0)


def _image_grid(images: np.ndarray, ncol: Optional[int] = None) -> np.ndarray:
  """``images: [B, H, W, C]`` in [0, 1] tiled ``ncol`` per row (default ``ceil(sqrt(B))``).

  Returns ``[rows * (H + 1) + 1, ncol * (W + 1) + 1, C]``: white 1-pixel separators, which stay
  visible against both MNIST's black and noise.
  """
  b, h, w, c = images.shape
  ncol = ncol or int(np.ceil(np.sqrt(b)))
  nrow = int(np.ceil(b / ncol))
  grid = np.ones((nrow * (h + 1) + 1, ncol * (w + 1) + 1, c), np.float32)
  for i, image in enumerate(_as_images(images)):
    r, col = divmod(i, ncol)
    grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + col * (w + 1):1 + col * (w + 1) + w] = image
  return grid


def _show_image(ax: "Axes", image: np.ndarray) -> "AxesImage":
  """Draws ``image: [H, W, C]`` in [0, 1] on ``ax`` (grayscale ``C == 1`` with cmap 'gray')."""
  ax.set_xticks([])
  ax.set_yticks([])
  if image.shape[-1] == 1:
    return ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
  return ax.imshow(image, interpolation="nearest")


def _toy_lim(arrays: Sequence[np.ndarray], lim: Optional[float]) -> float:
  """Half-width of the square around the origin shown for 2-D points.

  ``lim`` if given, else 1.2 times the 99.5th percentile of ``|x|`` over all finite coordinates
  of ``arrays`` (as :func:`outputs.save_scatter`), so a few outliers do not shrink the rest.
  """
  if lim is not None:
    if not lim > 0:
      raise ValueError(f"lim must be > 0, got {lim}")
    return float(lim)
  values = np.abs(np.concatenate([np.asarray(a, np.float64).reshape(-1) for a in arrays]))
  values = values[np.isfinite(values)]
  return max(float(np.percentile(values, 99.5)) * 1.2, 1e-6) if values.size else 1.0


def _toy_axes(ax: "Axes", lim: float, *, xlabel: bool = True, ylabel: bool = True) -> None:
  ax.set_xlim(-lim, lim)
  ax.set_ylim(-lim, lim)
  ax.set_aspect("equal")
  if xlabel:
    ax.set_xlabel("$x_1$")
  if ylabel:
    ax.set_ylabel("$x_2$")


def _suptitle(fig: "Figure", title: str) -> None:
  # Wrapped at the figure's edges: a run title can be wider than a one-panel figure.
  fig.suptitle(title, wrap=True)


def _marker_size(n: int) -> float:
  """Scatter marker area (points^2) for ``n`` points: dense clouds get smaller dots."""
  return float(np.clip(2000.0 / max(n, 1), 0.6, 12.0))


def _scatter(ax: "Axes", points: np.ndarray, color: str, label: Optional[str] = None,
             alpha: float = 0.6) -> "PathCollection":
  return ax.scatter(points[:, 0], points[:, 1], s=_marker_size(len(points)), c=color,
                    alpha=alpha, linewidths=0, label=label)


def _points_legend(fig_or_ax: Union["Figure", "Axes"], **kwargs: Any) -> "Legend":
  """A legend whose scatter markers are drawn large and opaque, however small the dots."""
  legend = fig_or_ax.legend(**kwargs)
  for handle in legend.legend_handles:
    handle.set_alpha(1.0)
    if hasattr(handle, "set_sizes"):
      handle.set_sizes([16.0])
  return legend


# --- 1. The reverse process as an animation ------------------------------------------------------


@_styled
def _draw_process(frames_x: np.ndarray, frames_t: np.ndarray, *, title: str,
                  reference: Optional[np.ndarray] = None, max_images: int = 64,
                  lim: Optional[float] = None) -> Tuple["Figure", Callable[[int], None]]:
  """The figure of :func:`process_animation` and ``show(k)``, which sets it to frame ``k``.

  The layout is computed once, on frame 0, and then frozen, so frames do not jitter.
  """
  frames_x = np.asarray(frames_x)
  frames_t = np.asarray(frames_t, np.float64)
  kind = _kind("frames_x", frames_x, "K, B")
  if frames_t.ndim != 1 or len(frames_t) != len(frames_x):
    raise ValueError(f"frames_t must be [K] with K = {len(frames_x)} (frames_x's first axis), "
                     f"got shape {frames_t.shape}")
  if len(frames_x) == 0:
    raise ValueError("frames_x must hold at least one frame, got K = 0")
  if kind == "images":
    fig = _figure(4.6, 5.0)
    ax = fig.subplots()
    n = min(frames_x.shape[1], max_images)
    artist = _show_image(ax, _image_grid(frames_x[0, :n]))

    def set_data(k: int) -> None:
      grid = _image_grid(frames_x[k, :n])
      artist.set_data(grid[..., 0] if grid.shape[-1] == 1 else grid)
  else:
    fig = _figure(4.6, 4.9)
    ax = fig.subplots()
    extra = [] if reference is None else [np.asarray(reference)]
    _toy_axes(ax, _toy_lim([frames_x] + extra, lim))
    if reference is not None:
      _scatter(ax, np.asarray(reference), _REFERENCE_COLOR, "data", alpha=0.35)
    artist = _scatter(ax, frames_x[0], _SAMPLE_COLOR, "samples x(t)")
    if reference is not None:
      # A fixed place: "best" is recomputed at every draw and would jump between frames.
      _points_legend(ax, loc="upper right")

    def set_data(k: int) -> None:
      artist.set_offsets(frames_x[k])

  def show(k: int) -> None:
    set_data(k)
    with _style():  # callers run show() outside _draw_process's style
      ax.set_title(_format_t(frames_t[k]))

  _suptitle(fig, title)
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
    frames.append(Image.fromarray(_render_rgb(fig)).quantize(256, Image.Quantize.MEDIANCUT))
  # Milliseconds, which GIF keeps to 10 ms.
  durations = [int(round(1000.0 / fps))] * (len(frames) - 1) + [int(round(1000.0 * hold_last_s))]
  buffer = io.BytesIO()
  frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:],
                 duration=durations, loop=0)
  outputs.atomic_write_bytes(path, buffer.getvalue())
  return path


# --- 2. Coordinate trajectories, SDE against ODE -------------------------------------------------


@_styled
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
  fig = _figure(3.3 * ncol + 0.4, 2.5 * nrow + 0.9)
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
  _suptitle(fig, title)
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
  return _write_png(_draw_trajectories(t, sde_x, ode_x, std_t, title=title, ode_t=ode_t,
                                       labels=labels), path)


# --- 3. Samplers side by side --------------------------------------------------------------------


Panel = Tuple[str, np.ndarray, Optional[float]]
"""One :func:`sampler_comparison` panel: ``(name, samples, nfe)``, ``nfe`` None for no sampler."""


@_styled
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
  kinds = [_kind(f"panels[{i}] samples", x, "B") for i, x in enumerate(samples)]
  if len(set(kinds)) != 1:
    raise ValueError(f"panels must all hold images or all 2-D points, got {kinds}")
  n = len(panels)
  titles = [name if nfe is None else f"{name}, {_format_nfe(nfe)}"
            for name, nfe in zip(names, nfes)]
  if kinds[0] == "images":
    fig = _figure(2.6 * n + 0.2, 3.1)
    for ax, x, panel_title in zip(fig.subplots(1, n, squeeze=False)[0], samples, titles):
      _show_image(ax, _image_grid(x[:max_images]))
      ax.set_title(panel_title)
  else:
    fig = _figure(2.7 * n + 0.4, 3.4 if reference is None else 3.7)
    extra = [] if reference is None else [np.asarray(reference)]
    shown = _toy_lim(samples + extra, lim)
    axes = fig.subplots(1, n, squeeze=False, sharex=True, sharey=True)[0]
    for i, (ax, x, panel_title) in enumerate(zip(axes, samples, titles)):
      if reference is not None:
        _scatter(ax, np.asarray(reference), _REFERENCE_COLOR, "data", alpha=0.35)
      _scatter(ax, x, _SAMPLE_COLOR, "samples")
      _toy_axes(ax, shown, ylabel=i == 0)
      ax.set_title(panel_title)
    if reference is not None:
      _points_legend(fig, handles=axes[0].collections, loc="outside lower center", ncols=2)
  _suptitle(fig, title)
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
  return _write_png(_draw_comparison(panels, title=title, reference=reference,
                                     max_images=max_images, lim=lim), path)


# --- 4. Toy marginals and toy samples against data -----------------------------------------------


@_styled
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
  shown = _toy_lim(samples, lim)
  n = len(times)
  ncol = min(n, 5)
  nrow = int(np.ceil(n / ncol))
  fig = _figure(2.5 * ncol + 0.4, 2.55 * nrow + 0.9)
  axes = fig.subplots(nrow, ncol, squeeze=False, sharex=True, sharey=True)
  for i, ax in enumerate(axes.flat):
    if i >= n:
      ax.set_visible(False)
      continue
    _scatter(ax, samples[i], _DATA_COLOR)
    density = None if densities is None else densities[i]
    if density is not None:
      _contours(ax, density, shown, f"densities[{i}]")
    row, col = divmod(i, ncol)
    _toy_axes(ax, shown, xlabel=row == nrow - 1 or i + ncol >= n, ylabel=col == 0)
    if i + ncol >= n:
      ax.xaxis.set_tick_params(labelbottom=True)
    ax.set_title(_format_t(times[i]))
  handles = [Line2D([], [], ls="", marker="o", ms=4, color=_DATA_COLOR,
                    label="samples of $p_t$")]
  if densities is not None and any(p is not None for p in densities):
    handles.append(Line2D([], [], color="tab:red", lw=1.0, label="exact $p_t$ (contours)"))
  fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
  _suptitle(fig, title)
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
  return _write_png(_draw_marginals(times, samples_per_t, title=title, densities=densities,
                                    lim=lim), path)


@_styled
def _draw_samples_vs_data(samples: np.ndarray, data: np.ndarray, *, title: str,
                          lim: Optional[float] = None) -> "Figure":
  """The figure of :func:`toy_samples_vs_data`."""
  samples, data = np.asarray(samples), np.asarray(data)
  for name, x in (("samples", samples), ("data", data)):
    if x.ndim != 2 or x.shape[-1] != 2:
      raise ValueError(f"{name} must be [N, 2], got shape {x.shape}")
  fig = _figure(4.4, 4.6)
  ax = fig.subplots()
  _scatter(ax, data, _DATA_COLOR, f"data ({len(data)})", alpha=0.5)
  _scatter(ax, samples, _SAMPLE_COLOR, f"samples ({len(samples)})", alpha=0.5)
  _toy_axes(ax, _toy_lim([samples, data], lim))
  _points_legend(ax, loc="best")
  _suptitle(fig, title)
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
  return _write_png(_draw_samples_vs_data(samples, data, title=title, lim=lim), path)


# --- 5. The probability-flow ODE as an encoder ---------------------------------------------------


def _latent_display(z: np.ndarray) -> np.ndarray:
  """Latents ``z`` shown as ``0.5 + z / (6 rms(z))``: +-3 rms span black to white.

  Latents are roughly Gaussian with the prior's scale (``sigma_max`` for VE), not in [0, 1].
  """
  finite = z[np.isfinite(z)]
  rms = float(np.sqrt(np.mean(finite ** 2))) if finite.size else 0.0
  return 0.5 + z / (6.0 * rms) if rms > 0 else np.full_like(z, 0.5)


@_styled
def _draw_encoder(x: np.ndarray, z: np.ndarray, x_rec: np.ndarray, interpolation: np.ndarray,
                  *, title: str, roundtrip_error: float, max_examples: int = 8,
                  lim: Optional[float] = None) -> "Figure":
  """The figure of :func:`encoder_figure`."""
  x, z, x_rec = np.asarray(x), np.asarray(z), np.asarray(x_rec)
  interpolation = np.asarray(interpolation)
  kind = _kind("x", x, "B")
  for name, other in (("z", z), ("x_rec", x_rec)):
    if other.shape != x.shape:
      raise ValueError(f"{name} must have x's shape {x.shape}, got {other.shape}")
  if interpolation.ndim != x.ndim or interpolation.shape[1:] != x.shape[1:]:
    raise ValueError(f"interpolation must be [M, {', '.join(map(str, x.shape[1:]))}] "
                     f"(x's example shape), got {interpolation.shape}")
  if kind == "images":
    n = min(len(x), max_examples)
    width = _IMAGE_INCHES * max(n, len(interpolation)) + 0.6
    fig = _figure(width, 4 * _IMAGE_INCHES + 1.0)
    rows = [("data x", x[:n]), ("latent z", _latent_display(z[:n].astype(np.float64))),
            ("decode(z)", x_rec[:n]), ("interpolation", interpolation)]
    for ax, (label, images) in zip(fig.subplots(4, 1), rows):
      _show_image(ax, _image_grid(images, ncol=len(images)))
      ax.set_ylabel(label)
  else:
    fig = _figure(10.0, 3.9)
    data_ax, latent_ax, path_ax = fig.subplots(1, 3)
    shown = _toy_lim([x, x_rec, interpolation], lim)
    # Big dots under small crosses: a good round trip puts each cross on its dot, and both
    # stay visible.
    data_ax.scatter(x[:, 0], x[:, 1], s=6 * _marker_size(len(x)), c=_DATA_COLOR, alpha=0.5,
                    linewidths=0, label="data x")
    data_ax.scatter(x_rec[:, 0], x_rec[:, 1], s=2 * _marker_size(len(x_rec)), marker="x",
                    c=_SAMPLE_COLOR, linewidths=0.5, label="decode(encode(x))")
    _toy_axes(data_ax, shown)
    _points_legend(data_ax, loc="best")
    data_ax.set_title("data and reconstruction")
    _scatter(latent_ax, z, "tab:green", "z = encode(x)")
    _toy_axes(latent_ax, _toy_lim([z], None))
    latent_ax.set_xlabel("$z_1$")
    latent_ax.set_ylabel("$z_2$")
    _points_legend(latent_ax, loc="best")
    latent_ax.set_title("latents")
    _scatter(path_ax, x, _REFERENCE_COLOR, "data x", alpha=0.35)
    path_ax.plot(interpolation[:, 0], interpolation[:, 1], "-o", color="tab:red", ms=3, lw=1.0,
                 label="decoded interpolation")
    _toy_axes(path_ax, shown)
    _points_legend(path_ax, loc="best")
    path_ax.set_title("latent interpolation, decoded")
  _suptitle(fig, f"{title}\nround-trip error {roundtrip_error:.3g}")
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
  return _write_png(_draw_encoder(x, z, x_rec, interpolation, title=title,
                                  roundtrip_error=roundtrip_error, max_examples=max_examples,
                                  lim=lim), path)



# --- 6. Training curves --------------------------------------------------------------------------


@_styled
def _draw_training_curves(loss_t: np.ndarray, loss: np.ndarray, bpd_t: np.ndarray,
                          bpd: np.ndarray, *, title: str) -> "Figure":
  """The figure of :func:`training_curves`."""
  fig = _figure(7.6, 3.0)
  loss_ax, bpd_ax = fig.subplots(1, 2)
  loss_ax.plot(loss_t / 60.0, loss, color=_DATA_COLOR, linewidth=1.0)
  loss_ax.set_yscale("log")
  loss_ax.set_ylabel("training loss")
  bpd_ax.plot(bpd_t / 60.0, bpd, color=_SAMPLE_COLOR, marker="o", markersize=3.5)
  for t, value in zip(bpd_t, bpd):
    bpd_ax.annotate(f"{value:.3f}", (t / 60.0, value), textcoords="offset points",
                    xytext=(0, 5), ha="center", fontsize=6.5)
  bpd_ax.set_ylabel("test bits/dim (EMA)")
  for ax in (loss_ax, bpd_ax):
    ax.set_xlabel("training time (min)")
  _suptitle(fig, title)
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
  return _write_png(_draw_training_curves(*arrays, title=title), path)
