"""The figures mode (``modes.make_figures``, ``python main.py --mode figures``): every figure
drawn from the exact score of the toy mixture, each a valid file."""

import importlib
import os

from PIL import Image

import run_lib


def test_figures_mode_draws_every_figure_from_the_exact_score(tmp_path):
  """No checkpoint: the exact score of the toy mixture; every figure is a valid file."""
  config = importlib.import_module("configs.toy.gaussian_mixture_exact").get_config()
  config.model.num_scales = 50
  config.eval.batch_size = 200
  paths = run_lib.make_figures(config, str(tmp_path), num_frames=6)
  assert sorted(paths) == ["comparison", "encoder", "marginals", "process_ode-tsit5",
                           "process_pc-euler_maruyama-none",
                           "process_pc-reverse_diffusion-langevin", "trajectories"]
  for name, path in paths.items():
    assert os.path.dirname(path) == str(tmp_path / "figures" / "exact")
    with Image.open(path) as image:
      assert image.format == ("GIF" if name.startswith("process") else "PNG")
      if image.format == "GIF":
        assert image.n_frames == 6
      assert min(image.size) > 300
