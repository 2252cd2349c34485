"""Every runnable config under configs/ says how to run it and loads with all its sections.

A runnable config is a file under ``configs/`` that defines ``get_config()`` and is neither a
``default_*.py`` base nor an ``__init__.py``. The MNIST configs build their SDE, network and
sampler, and ``configs.apply_overrides`` changes a copy of a config.
"""

import ast
import importlib
import os

import jax
import numpy as np
import pytest

import builders
import configs
import datasets
import run_lib
import sde_lib
from configs import tutorial_mnist
from configs.toy import gaussian_mixture, ou_swiss_roll, rectified_flow_swiss_roll, swiss_roll
from infra import run_config
from infra.devices import Devices
from models import tutorial_scorenet
from models import utils as mutils
from tests import runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ("training", "sampling", "eval", "data", "model", "optim")


def _runnable_configs():
  """``[(path relative to REPO, parsed module)]`` of the runnable configs, sorted."""
  found = []
  for root, dirs, files in os.walk(os.path.join(REPO, "configs")):
    dirs[:] = sorted(d for d in dirs if d != "__pycache__")
    for name in sorted(files):
      if not name.endswith(".py") or name.startswith("default_") or name == "__init__.py":
        continue
      path = os.path.join(root, name)
      with open(path) as f:
        module = ast.parse(f.read(), filename=path)
      if any(isinstance(node, ast.FunctionDef) and node.name == "get_config"
             for node in module.body):
        found.append((os.path.relpath(path, REPO).replace(os.sep, "/"), module))
  return sorted(found, key=lambda item: item[0])


def test_runnable_configs_are_found():
  paths = [path for path, _ in _runnable_configs()]
  assert "configs/vpsde_mnist.py" in paths
  assert "configs/classifier/vpsde_mnist_wrn.py" in paths
  assert not any(os.path.basename(p).startswith("default_") for p in paths)


def test_every_runnable_config_docstring_gives_its_command():
  offending = []
  for path, module in _runnable_configs():
    doc = ast.get_docstring(module) or ""
    if f"python main.py --config {path}" not in doc or "--mode" not in doc:
      offending.append(path)
  assert not offending, (
      "these configs' docstrings lack the command that runs them "
      f"(``python main.py --config <path> --mode ...``): {', '.join(offending)}")


def test_every_runnable_config_loads_with_all_sections():
  offending = []
  for path, _ in _runnable_configs():
    config = configs.load_config(os.path.join(REPO, path))
    missing = [section for section in SECTIONS if section not in config]
    if missing:
      offending.append(f"{path} (no {', '.join(missing)})")
  assert not offending, f"configs lacking sections: {'; '.join(offending)}"


@pytest.mark.parametrize("name", ["vpsde_mnist", "vesde_mnist", "subvpsde_mnist",
                                  "vpsde_discrete_mnist", "subvpsde_pc_mnist",
                                  "vpsde_mnist_conditional", "tutorial_mnist",
                                  "rectified_flow_mnist"])
def test_mnist_configs_build(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  sde = builders.build_sde(config)
  model = builders.build_model(config)
  shape = datasets.input_shape(config, 2)
  assert shape == (2, 28, 28, 1)
  variables = jax.eval_shape(lambda: builders.init_model(jax.random.PRNGKey(0), config)[1])
  assert sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(variables)) > 10 ** 6
  assert builders.build_sampling_fn(config, sde, shape) is not None and model is not None
  if name == "vpsde_discrete_mnist":
    assert not config.training.continuous and sde.N == 1000
    assert builders.sampler_tag(config) == "pc-ancestral_sampling-none"
  if name == "subvpsde_pc_mnist":
    assert builders.sampler_tag(config) == "pc-reverse_diffusion-langevin"
  if name == "vpsde_mnist_conditional":
    assert mutils.num_classes(model) == 10 and "ClassEmbedding_0" in variables


def test_tutorial_mnist_is_the_tutorials_setup():
  """The SDE dx = 25^t dw, the ScoreNet (1,115,297 parameters), data in [0, 1], DSM summed over
  pixels from t = 1e-5, Adam 1e-4 without warmup, clipping or EMA, batch 32 for 50 epochs, and
  its samplers (EM / PC with snr 0.16, 500 steps; RK45 at 1e-5) ending at t = 1e-3."""
  config = tutorial_mnist.get_config()
  sde = builders.build_sde(config)
  assert isinstance(sde, sde_lib.SigmaPowerSDE) and sde.sigma == 25.0 and sde.N == 500
  model, params = builders.abstract_model(config)
  assert isinstance(model, tutorial_scorenet.TutorialScoreNet) and model.scale_by_sigma
  assert mutils.parameter_count(params) == 1_115_297
  training, optim = config.training, config.optim
  assert training.continuous and not training.reduce_mean and not training.likelihood_weighting
  assert (training.eps, training.batch_size, training.n_iters) == (1e-5, 32, 50 * 1875)
  assert not config.data.centered and config.model.ema_rate == 0.0
  assert (optim.lr, optim.warmup, optim.weight_decay) == (1e-4, 0, 0.0) and optim.grad_clip < 0
  assert builders.sampler_tag(config) == "pc-euler_maruyama-langevin"
  assert (config.sampling.snr, config.sampling.eps, config.sampling.ode_solver) == (
      0.16, 1e-3, "dopri5")
  assert config.sampling.ode_rtol == config.sampling.ode_atol == 1e-5


def _trains_a_few_steps(config, workdir):
  """Trains ``config`` 20 steps in ``workdir`` and checks the parameters it ends with."""
  for name, value in (("n_iters", 20), ("n_jitted_steps", 10), ("eval_freq", 10),
                      ("snapshot_freq", 20), ("snapshot_freq_for_preemption", 10),
                      ("snapshot_sampling", False)):
    config.training[name] = value
  run_lib.train(config, workdir)
  state = runs.final_state(workdir, config)
  assert int(state.step) == 20
  assert all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(state.params))


def test_ou_swiss_roll_builds_and_trains_a_few_steps(tmp_path):
  config = ou_swiss_roll.get_config()
  sde = builders.build_sde(config)
  assert isinstance(sde, sde_lib.OUSDE) and (sde.mu, sde.sigma, sde.T) == (0.5, 1.0, 10.0)
  _trains_a_few_steps(config, str(tmp_path))


def test_apply_overrides():
  config = gaussian_mixture.get_config()
  changed = configs.apply_overrides(config, (("training.batch_size", 8), ("model.nf", 4)))
  assert (changed.training.batch_size, changed.model.nf) == (8, 4)
  assert config.training.batch_size == 512  # the original is untouched
  with pytest.raises(KeyError, match="no such field"):
    configs.apply_overrides(config, (("training.batchsize", 8),))


def test_rectified_flow_configs_change_only_the_process_and_train(tmp_path):
  """The rectified-flow toy is the VP toy with the process, prediction, objective and sampler
  changed: same network, data, optimizer and budget."""
  config, vp = rectified_flow_swiss_roll.get_config(), swiss_roll.get_config()
  flat = lambda c: run_config.flatten(c.to_dict())
  changed = {k for k, v in flat(config).items() if flat(vp).get(k, object()) != v}
  assert changed == {"training.sde", "training.objective", "model.prediction", "model.T",
                     "sampling.method"}
  sde = builders.build_sde(config)
  assert isinstance(sde, sde_lib.RectifiedFlow) and sde.T == 0.99
  _trains_a_few_steps(config, str(tmp_path))


@pytest.mark.parametrize("name,standard", [
    ("vp.likelihood.mnist_ddpmpp_deep_continuous", "vpsde_mnist"),
    ("vp.likelihood.cifar10_ddpmpp_deep_continuous", "vp.cifar10_ddpmpp_deep_continuous")])
def test_likelihood_configs_change_only_the_likelihood_fields(name, standard):
  """ScoreFlow's recipe on the standard config: g^2 weighting with importance-sampled times on
  dequantized data, both likelihoods in eval; MNIST's network twice as deep."""
  config = importlib.import_module(f"configs.{name}").get_config()
  base = importlib.import_module(f"configs.{standard}").get_config()
  changed = {k for k, v in run_config.flatten(config.to_dict()).items()
             if run_config.flatten(base.to_dict()).get(k) != v}
  expected = {"training.likelihood_weighting", "training.time_sampling", "sampling.method",
              "data.uniform_dequantization", "eval.enable_bpd", "eval.enable_bound"}
  if "mnist" in name:
    expected.add("model.num_res_blocks")
  assert changed <= expected and config.training.reduce_mean
  assert config.training.likelihood_weighting and config.training.time_sampling == "importance"
  assert config.data.uniform_dequantization and config.sampling.method == "ode"
  assert config.eval.enable_bpd and config.eval.enable_bound
  sde = builders.build_sde(config)
  model = builders.build_model(config)
  assert builders.build_bound_fn(config, sde, model, Devices()) is not None
