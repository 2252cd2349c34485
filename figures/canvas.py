"""The canvas every figure shares: matplotlib's default style plus this package's sizes, an Agg
figure, atomic PNG writing, run titles, input checks and the drawing pieces several figures use.

matplotlib is imported inside the functions, so that the rest of the project runs without it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
from typing import (TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence, TypeVar,
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
DATA_COLOR = "tab:blue"
SAMPLE_COLOR = "tab:orange"
REFERENCE_COLOR = "0.6"    # the faint data layer under samples

@contextlib.contextmanager
def house_style() -> Iterator[None]:
  """matplotlib's defaults plus :data:`_STYLE`, for the duration of the block."""
  import matplotlib.style  # pylint: disable=import-outside-toplevel
  with matplotlib.style.context(["default", _STYLE]):
    yield


def styled(draw: _Draw) -> _Draw:
  """Runs a ``_draw_*`` function under :func:`house_style` (fonts are fixed when text is made)."""
  @functools.wraps(draw)
  def wrapper(*args: Any, **kwargs: Any) -> Any:
    with house_style():
      return draw(*args, **kwargs)
  return wrapper


def new_figure(width: float, height: float) -> "Figure":
  """An empty figure of ``width x height`` inches on an Agg canvas, constrained layout."""
  # pylint: disable=import-outside-toplevel
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
  FigureCanvasAgg(fig)
  return fig


def write_png(fig: "Figure", path: str) -> str:
  """Renders ``fig`` to PNG in memory and writes it atomically to ``path``; returns ``path``."""
  buffer = io.BytesIO()
  with house_style():
    fig.savefig(buffer, format="png", dpi=DPI)
  outputs.atomic_write_bytes(path, buffer.getvalue())
  return path


def render_rgb(fig: "Figure") -> np.ndarray:
  """``fig`` drawn as ``[height, width, 3]`` uint8."""
  with house_style():
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
    parts.append(format_nfe(nfe))
  return ", ".join(parts)


def format_nfe(nfe: float) -> str:
  return f"NFE {int(nfe)}" if float(nfe).is_integer() else f"NFE {float(nfe):.1f}"


def format_t(t: float) -> str:
  return f"t = {float(t):.4g}"


# --- Input checks and shared drawing pieces ------------------------------------------------------


def data_kind(name: str, x: np.ndarray, leading: str) -> str:
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


def as_images(images: np.ndarray) -> np.ndarray:
  return np.clip(np.nan_to_num(np.asarray(images, np.float32), nan=0.0), 0.0, 1.0)


def image_grid(images: np.ndarray, ncol: Optional[int] = None) -> np.ndarray:
  """``images: [B, H, W, C]`` in [0, 1] tiled ``ncol`` per row (default ``ceil(sqrt(B))``).

  Returns ``[rows * (H + 1) + 1, ncol * (W + 1) + 1, C]``: white 1-pixel separators, which stay
  visible against both MNIST's black and noise.
  """
  b, h, w, c = images.shape
  ncol = ncol or int(np.ceil(np.sqrt(b)))
  nrow = int(np.ceil(b / ncol))
  grid = np.ones((nrow * (h + 1) + 1, ncol * (w + 1) + 1, c), np.float32)
  for i, image in enumerate(as_images(images)):
    r, col = divmod(i, ncol)
    grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + col * (w + 1):1 + col * (w + 1) + w] = image
  return grid


def show_image(ax: "Axes", image: np.ndarray) -> "AxesImage":
  """Draws ``image: [H, W, C]`` in [0, 1] on ``ax`` (grayscale ``C == 1`` with cmap 'gray')."""
  ax.set_xticks([])
  ax.set_yticks([])
  if image.shape[-1] == 1:
    return ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
  return ax.imshow(image, interpolation="nearest")


def toy_lim(arrays: Sequence[np.ndarray], lim: Optional[float]) -> float:
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


def toy_axes(ax: "Axes", lim: float, *, xlabel: bool = True, ylabel: bool = True) -> None:
  ax.set_xlim(-lim, lim)
  ax.set_ylim(-lim, lim)
  ax.set_aspect("equal")
  if xlabel:
    ax.set_xlabel("$x_1$")
  if ylabel:
    ax.set_ylabel("$x_2$")


def suptitle(fig: "Figure", title: str) -> None:
  # Wrapped at the figure's edges: a run title can be wider than a one-panel figure.
  fig.suptitle(title, wrap=True)


def marker_size(n: int) -> float:
  """Scatter marker area (points^2) for ``n`` points: dense clouds get smaller dots."""
  return float(np.clip(2000.0 / max(n, 1), 0.6, 12.0))


def scatter_points(ax: "Axes", points: np.ndarray, color: str, label: Optional[str] = None,
             alpha: float = 0.6) -> "PathCollection":
  return ax.scatter(points[:, 0], points[:, 1], s=marker_size(len(points)), c=color,
                    alpha=alpha, linewidths=0, label=label)


def points_legend(fig_or_ax: Union["Figure", "Axes"], **kwargs: Any) -> "Legend":
  """A legend whose scatter markers are drawn large and opaque, however small the dots."""
  legend = fig_or_ax.legend(**kwargs)
  for handle in legend.legend_handles:
    handle.set_alpha(1.0)
    if hasattr(handle, "set_sizes"):
      handle.set_sizes([16.0])
  return legend
