"""``figures``: each figure is a valid, deterministic file with the titles, labels and legends."""

import os

import numpy as np
import pytest
from PIL import Image

import figures

pytest.importorskip("matplotlib")

K = 3
TITLE = figures.run_title(1200, "pc: euler_maruyama", 1000)


def _images(rng, shape, channels):
  return rng.random(shape + (channels,)).astype(np.float32)


def _size(fig):
  """The pixel size ``(width, height)`` a figure is saved at."""
  width, height = fig.get_size_inches() * fig.dpi
  return int(round(width)), int(round(height))


def _open(path, fmt):
  image = Image.open(path)
  assert image.format == fmt
  return image


def _written(write, tmp_path, name, twice=True):
  """Writes a figure, ``twice`` to check the two files are byte-identical; returns its path.

  Also checks the file is alone in its folder: no temporary file is left behind.
  """
  first, second = tmp_path / "a" / name, tmp_path / "b" / name
  assert write(str(first)) == str(first)
  if twice:
    write(str(second))
    assert first.read_bytes() == second.read_bytes()
  assert os.listdir(first.parent) == [name]
  return str(first)


def test_run_title():
  assert figures.run_title(1200, "ode", 146) == "step 1200, ode, NFE 146"
  assert figures.run_title(1200, "ode", 146.25) == "step 1200, ode, NFE 146.2"
  assert figures.run_title(1200) == "step 1200"


@pytest.mark.parametrize("channels", [1, 3])
def test_process_animation_images(tmp_path, channels):
  rng = np.random.default_rng(0)
  frames = _images(rng, (K, 8, 8, 8), channels) * 1.4 - 0.2  # out of [0, 1]: clipped
  t = np.linspace(1.0, 1e-3, K)
  path = _written(lambda p: figures.process_animation(frames, t, p, title=TITLE, fps=5,
                                                      hold_last_s=1.5),
                  tmp_path, "process.gif", twice=channels == 1)
  fig, show = figures.process._draw_process(frames, t, title=TITLE)
  gif = _open(path, "GIF")
  assert gif.n_frames == K and gif.size == _size(fig) and gif.info["loop"] == 0
  durations = []
  for k in range(K):
    gif.seek(k)
    durations.append(gif.info["duration"])
  assert durations == [200] * (K - 1) + [1500]
  assert fig.get_suptitle() == TITLE
  show(K - 1)
  assert fig.axes[0].get_title() == "t = 0.001"


def test_process_animation_points(tmp_path):
  # The figures bypass pyplot, so none stays in its registry of open figures.
  from matplotlib._pylab_helpers import Gcf  # pylint: disable=import-outside-toplevel
  open_figures = Gcf.get_num_fig_managers()
  rng = np.random.default_rng(1)
  data = rng.standard_normal((300, 2))
  # Frames shrink from the prior to the data: the axes must not follow them.
  frames = np.stack([data * (1.0 + 3.0 * s) for s in np.linspace(1.0, 0.0, K)])
  t = np.linspace(1.0, 0.01, K)
  path = _written(lambda p: figures.process_animation(frames, t, p, title=TITLE,
                                                      reference=data),
                  tmp_path, "process.gif")
  fig, show = figures.process._draw_process(frames, t, title=TITLE, reference=data)
  gif = _open(path, "GIF")
  assert gif.n_frames == K and gif.size == _size(fig)
  ax = fig.axes[0]
  limits = (ax.get_xlim(), ax.get_ylim())
  assert limits[0][1] > 3.0 * np.percentile(np.abs(data), 99)  # covers the widest frame
  show(K - 1)
  assert (ax.get_xlim(), ax.get_ylim()) == limits
  assert ax.get_title() == "t = 0.01" and ax.get_xlabel() and ax.get_ylabel()
  assert [text.get_text() for text in ax.get_legend().get_texts()] == ["data", "samples x(t)"]
  assert Gcf.get_num_fig_managers() == open_figures


@pytest.mark.parametrize("frames_shape, t_shape, match", [
    ((K, 8, 8, 8), (K,), "frames_x"),           # images without a channel axis
    ((K, 8, 3), (K,), "frames_x"),              # 3-D points
    ((K, 8, 8, 8, 1), (K + 1,), "frames_t"),    # one time too many
    ((K, 8, 2), (K, 1), "frames_t"),
])
def test_process_animation_rejects_bad_input(tmp_path, frames_shape, t_shape, match):
  with pytest.raises(ValueError, match=match) as info:
    figures.process_animation(np.zeros(frames_shape), np.zeros(t_shape),
                              str(tmp_path / "x.gif"), title=TITLE)
  assert "\n" not in str(info.value)
  assert not os.path.exists(tmp_path / "x.gif")


def test_coordinate_trajectories(tmp_path):
  rng = np.random.default_rng(2)
  t = np.linspace(1.0, 1e-3, 30)
  sde_x = np.cumsum(rng.standard_normal((30, 3, 4)), 0) * 0.1
  ode_t = np.linspace(1.0, 1e-3, 12)  # an adaptive solver's own times
  ode_x = np.cumsum(rng.standard_normal((12, 3, 4)), 0) * 0.1
  std_t = np.sqrt(t)
  labels = ["pixel (0, 0)", "pixel (4, 4)", "pixel (7, 7)", "pixel (2, 5)"]
  path = _written(lambda p: figures.coordinate_trajectories(t, sde_x, ode_x, std_t, p,
                                                            title=TITLE, ode_t=ode_t,
                                                            labels=labels),
                  tmp_path, "trajectories.png")
  fig = figures.trajectories._draw_trajectories(t, sde_x, ode_x, std_t, title=TITLE,
                                                ode_t=ode_t, labels=labels)
  assert _open(path, "PNG").size == _size(fig)
  assert fig.get_suptitle() == TITLE
  panels = [ax for ax in fig.axes if ax.get_visible()]
  assert [ax.get_title() for ax in panels] == labels
  left, right = panels[0].get_xlim()
  assert left == pytest.approx(1.0) and right == pytest.approx(1e-3)  # T on the left
  assert all(ax.get_xlabel() for ax in panels[-3:]) and panels[0].get_ylabel() == "x(t)"
  # Per panel: +-std, then an SDE and an ODE line per draw.
  assert all(len(ax.get_lines()) == 2 + 2 * 3 for ax in panels)
  (legend,) = fig.legends
  texts = " ".join(text.get_text() for text in legend.get_texts())
  assert "SDE" in texts and "ODE" in texts and "std" in texts


def test_coordinate_trajectories_rejects_bad_input(tmp_path):
  t, x, std = np.linspace(1, 0, 5), np.zeros((5, 2, 3)), np.ones(5)
  path = str(tmp_path / "x.png")
  for args, match in [((t, x[0], x, std), "sde_x"), ((t[:4], x, x, std), "t must"),
                      ((t, x, x[:, :1], std), "ode_x"), ((t, x, x, std[:4]), "std_t")]:
    with pytest.raises(ValueError, match=match):
      figures.coordinate_trajectories(*args, path, title=TITLE)
  with pytest.raises(ValueError, match="labels"):
    figures.coordinate_trajectories(t, x, x, std, path, title=TITLE, labels=["a"])


@pytest.mark.parametrize("channels", [1, 3])
def test_sampler_comparison_images(tmp_path, channels):
  rng = np.random.default_rng(3)
  panels = [("prior noise", _images(rng, (8, 8, 8), channels), None),
            ("Euler-Maruyama", _images(rng, (8, 8, 8), channels), 1000),
            ("ODE", _images(rng, (5, 8, 8), channels), 146.5)]
  path = _written(lambda p: figures.sampler_comparison(panels, p, title=TITLE), tmp_path,
                  "comparison.png", twice=channels == 1)
  fig = figures.comparison._draw_comparison(panels, title=TITLE)
  assert _open(path, "PNG").size == _size(fig)
  assert fig.get_suptitle() == TITLE
  assert [ax.get_title() for ax in fig.axes] == [
      "prior noise", "Euler-Maruyama, NFE 1000", "ODE, NFE 146.5"]
  # 8 images of 8x8 in a 3x3 grid with 1-pixel separators.
  assert fig.axes[0].get_images()[0].get_array().shape[:2] == (28, 28)


def test_sampler_comparison_points(tmp_path):
  rng = np.random.default_rng(4)
  data = rng.standard_normal((200, 2))
  panels = [("prior noise", 3.0 * rng.standard_normal((150, 2)), None),
            ("PC", data + 0.1, 2000), ("ODE", data - 0.1, 120)]
  path = _written(lambda p: figures.sampler_comparison(panels, p, title=TITLE,
                                                       reference=data),
                  tmp_path, "comparison.png")
  fig = figures.comparison._draw_comparison(panels, title=TITLE, reference=data)
  assert _open(path, "PNG").size == _size(fig)
  assert len({(ax.get_xlim(), ax.get_ylim()) for ax in fig.axes}) == 1  # shared axes
  assert all(ax.get_xlabel() for ax in fig.axes) and fig.axes[0].get_ylabel()
  (legend,) = fig.legends
  assert [text.get_text() for text in legend.get_texts()] == ["data", "samples"]
  fig = figures.comparison._draw_comparison(panels, title=TITLE, lim=2.5)
  assert fig.axes[1].get_xlim() == (-2.5, 2.5)


def test_sampler_comparison_rejects_bad_input(tmp_path):
  path = str(tmp_path / "x.png")
  with pytest.raises(ValueError, match="all hold images or all 2-D points"):
    figures.sampler_comparison([("a", np.zeros((4, 8, 8, 1)), 1), ("b", np.zeros((4, 2)), 1)],
                               path, title=TITLE)
  with pytest.raises(ValueError, match=r"panels\[1\] samples"):
    figures.sampler_comparison([("a", np.zeros((4, 2)), 1), ("b", np.zeros((4, 3)), 1)], path,
                               title=TITLE)
  with pytest.raises(ValueError, match=r"panels\[0\] must be"):
    figures.sampler_comparison([("a", np.zeros((4, 2)))], path, title=TITLE)
  with pytest.raises(ValueError, match="at least one"):
    figures.sampler_comparison([], path, title=TITLE)


def _gaussian(std):
  return lambda points: np.exp(-0.5 * np.sum(points ** 2, -1) / std ** 2) / (2 * np.pi * std ** 2)


def test_toy_marginals(tmp_path):
  rng = np.random.default_rng(5)
  times = [1e-3, 0.5, 1.0]
  stds = [0.3 + t for t in times]
  samples = [std * rng.standard_normal((200, 2)) for std in stds]
  densities = [_gaussian(std) for std in stds[:-1]] + [None]
  path = _written(lambda p: figures.toy_marginals(times, samples, p, title="VP SDE",
                                                  densities=densities),
                  tmp_path, "marginals.png")
  fig = figures.toy._draw_marginals(times, samples, title="VP SDE", densities=densities)
  assert _open(path, "PNG").size == _size(fig)
  assert [ax.get_title() for ax in fig.axes] == ["t = 0.001", "t = 0.5", "t = 1"]
  assert len({(ax.get_xlim(), ax.get_ylim()) for ax in fig.axes}) == 1
  contoured = [ax for ax in fig.axes if len(ax.collections) > 1]  # the scatter plus contours
  assert contoured == fig.axes[:2]
  (legend,) = fig.legends
  assert [text.get_text() for text in legend.get_texts()] == ["samples of $p_t$",
                                                              "exact $p_t$ (contours)"]


def test_toy_marginals_layout_and_density_grids():
  """Six times make two rows of five (four panels hidden); grid values span [-lim, lim]^2."""
  rng = np.random.default_rng(6)
  times = [1e-3, 0.2, 0.4, 0.6, 0.8, 1.0]
  axis = np.linspace(-3.0, 3.0, 50)
  grid = _gaussian(1.0)(np.stack(np.meshgrid(axis, axis), -1))
  fig = figures.toy._draw_marginals(times, [rng.standard_normal((50, 2)) for _ in times],
                                title="VP SDE", densities=[grid] + [None] * 5, lim=3.0)
  panels = [ax for ax in fig.axes if ax.get_visible()]
  assert len(fig.axes) == 10 and len(panels) == 6
  assert panels[0].get_xlim() == (-3.0, 3.0) and len(panels[0].collections) > 1
  assert all(ax.get_xlabel() for ax in panels[1:]) and not panels[0].get_xlabel()


def test_toy_marginals_rejects_bad_input(tmp_path):
  path, x = str(tmp_path / "x.png"), np.zeros((10, 2))
  with pytest.raises(ValueError, match="samples_per_t must"):
    figures.toy_marginals([0.1, 0.2], [x], path, title="")
  with pytest.raises(ValueError, match=r"samples_per_t\[0\]"):
    figures.toy_marginals([0.1], [np.zeros((10, 3))], path, title="")
  with pytest.raises(ValueError, match="lim must be given"):
    figures.toy_marginals([0.1], [x], path, title="", densities=[np.ones((5, 5))])
  with pytest.raises(ValueError, match=r"densities\[0\]"):
    figures.toy_marginals([0.1], [x], path, title="", densities=[lambda p: p], lim=1.0)


def test_toy_samples_vs_data(tmp_path):
  rng = np.random.default_rng(7)
  samples, data = rng.standard_normal((300, 2)), rng.standard_normal((400, 2))
  path = _written(lambda p: figures.toy_samples_vs_data(samples, data, p, title=TITLE),
                  tmp_path, "samples.png")
  fig = figures.toy._draw_samples_vs_data(samples, data, title=TITLE)
  assert _open(path, "PNG").size == _size(fig)
  ax = fig.axes[0]
  assert fig.get_suptitle() == TITLE and ax.get_xlabel() and ax.get_ylabel()
  assert [t.get_text() for t in ax.get_legend().get_texts()] == ["data (400)", "samples (300)"]
  with pytest.raises(ValueError, match="samples must be"):
    figures.toy_samples_vs_data(samples[:, :1], data, str(tmp_path / "x.png"), title=TITLE)


@pytest.mark.parametrize("channels", [1, 3])
def test_encoder_figure_images(tmp_path, channels):
  rng = np.random.default_rng(8)
  x = _images(rng, (10, 8, 8), channels)
  z = 40.0 * rng.standard_normal(x.shape)  # a VE latent: far outside [0, 1]
  interpolation = _images(rng, (6, 8, 8), channels)
  path = _written(lambda p: figures.encoder_figure(x, z, x, interpolation, p, title=TITLE,
                                                   roundtrip_error=1.5e-3),
                  tmp_path, "encoder.png", twice=channels == 1)
  fig = figures.encoder._draw_encoder(x, z, x, interpolation, title=TITLE, roundtrip_error=1.5e-3)
  assert _open(path, "PNG").size == _size(fig)
  assert fig.get_suptitle() == f"{TITLE}\nround-trip error 0.0015"
  assert [ax.get_ylabel() for ax in fig.axes] == ["data x", "latent z", "decode(z)",
                                                  "interpolation"]
  # max_examples (8) examples per row, the whole interpolation in the last: widths 8*9+1, 6*9+1.
  widths = [ax.get_images()[0].get_array().shape[1] for ax in fig.axes]
  assert widths == [73, 73, 73, 55]
  # Latents are rescaled to 0.5 + z / (6 rms(z)), then clipped to [0, 1] like any image.
  shown = figures.encoder._latent_display(z)
  assert abs(shown.mean() - 0.5) < 0.02 and abs(shown.std() - 1 / 6) < 0.01
  latent = np.asarray(fig.axes[1].get_images()[0].get_array())
  assert latent.min() >= 0.0 and latent.max() <= 1.0


def test_encoder_figure_points(tmp_path):
  rng = np.random.default_rng(9)
  x = rng.standard_normal((200, 2))
  z = 5.0 * rng.standard_normal((200, 2))
  interpolation = np.stack([np.linspace(-1, 1, 9), np.zeros(9)], -1)
  path = _written(lambda p: figures.encoder_figure(x, z, x + 0.01, interpolation, p,
                                                   title=TITLE, roundtrip_error=0.01),
                  tmp_path, "encoder.png")
  fig = figures.encoder._draw_encoder(x, z, x + 0.01, interpolation, title=TITLE,
                                      roundtrip_error=0.01)
  assert _open(path, "PNG").size == _size(fig)
  assert "round-trip error 0.01" in fig.get_suptitle()
  assert all(ax.get_title() and ax.get_xlabel() and ax.get_legend() for ax in fig.axes)
  assert fig.axes[1].get_xlim()[1] > 2.0 * fig.axes[0].get_xlim()[1]  # latents fit their own
  assert fig.axes[0].get_xlim() == fig.axes[2].get_xlim()
  with pytest.raises(ValueError, match="x_rec"):
    figures.encoder_figure(x, z, x[:5], interpolation, str(tmp_path / "x.png"), title=TITLE,
                           roundtrip_error=0.0)
  with pytest.raises(ValueError, match="interpolation"):
    figures.encoder_figure(x, z, x, np.zeros((4, 3)), str(tmp_path / "x.png"), title=TITLE,
                           roundtrip_error=0.0)



def test_training_curves(tmp_path):
  loss_t, loss = np.arange(1.0, 11.0) * 30.0, np.linspace(1.0, 0.03, 10)
  bpd_t, bpd = [100.0, 200.0, 300.0], [2.1, 1.6, 1.4]
  path = _written(lambda p: figures.training_curves(loss_t, loss, bpd_t, bpd, p, title="run"),
                  tmp_path, "curves.png")
  fig = figures.curves._draw_training_curves(loss_t, loss, np.asarray(bpd_t), np.asarray(bpd),
                                      title="run")
  assert _open(path, "PNG").size == _size(fig)
  loss_ax, bpd_ax = fig.axes
  assert fig.get_suptitle() == "run" and loss_ax.get_yscale() == "log"
  assert np.allclose(bpd_ax.lines[0].get_xdata(), np.asarray(bpd_t) / 60.0)  # minutes
  assert [t.get_text() for t in bpd_ax.texts] == ["2.100", "1.600", "1.400"]
  with pytest.raises(ValueError, match="must pair up"):
    figures.training_curves(loss_t, loss[:3], bpd_t, bpd, str(tmp_path / "x.png"), title="run")
