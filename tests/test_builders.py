"""``builders``: the one place a config becomes objects, and the SDE plug-in contract.

A new SDE is its class plus one registry line: the config builds it, the network conditioning,
the continuous loss and the samplers use it, and what it lacks (a discrete chain) is refused in
one line -- all without touching any other module. Class-conditional networks, sampler tags
and sampler trajectories come out of the builders as the config says.
"""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import builders
import datasets
import losses
import sampling
import sde_lib
from configs import default_configs, vpsde_mnist
from configs.toy import gaussian_mixture, gaussian_mixture_exact
from infra.devices import Devices, gather
from models import utils as mutils
from modes import make_figures
from tests.runs import toy_config


def _config(**fields):
  config = default_configs.get_default_configs()
  for key, value in fields.items():
    section, name = key.split(".")
    config[section][name] = value
  return config


@pytest.mark.parametrize("name, cls, params", [
    ("vesde", sde_lib.VESDE, {"sigma_min": 0.02, "sigma_max": 30.0}),
    ("VPSDE", sde_lib.VPSDE, {"beta_min": 0.2, "beta_max": 15.0}),
    ("subvpsde", sde_lib.subVPSDE, {"beta_min": 0.3, "beta_max": 10.0}),
])
def test_build_sde_reads_its_parameters_from_config_model(name, cls, params):
  config = _config(**{"training.sde": name, "model.num_scales": 77},
                   **{f"model.{k}": v for k, v in params.items()})
  sde = builders.build_sde(config)
  assert type(sde) is cls and sde.N == 77
  for key, value in params.items():
    assert getattr(sde, key) == value


class _BrownianSDE(sde_lib.SDE):
  """``dx = sigma dw``: a fourth SDE stating only its coefficients and network conventions."""
  prediction = "noise"

  def __init__(self, sigma: float = 2.0, N: int = 100):
    super().__init__(N)
    self.sigma = sigma

  def sde(self, x, t):
    return jnp.zeros_like(x), jnp.full(t.shape, self.sigma)

  def marginal_prob(self, x, t):
    return x, self.sigma * jnp.sqrt(t)

  def prior_sampling(self, rng, shape):
    return self.sigma * jax.random.normal(rng, shape)

  def prior_logp(self, z):
    d = np.prod(z.shape[1:])
    return -d / 2 * np.log(2 * np.pi * self.sigma**2) - sde_lib.sum_non_batch(z**2) / (
        2 * self.sigma**2)

  def noise_label(self, t):
    return t


def test_a_new_sde_plugs_in_with_its_class_and_one_table_entry(monkeypatch):
  monkeypatch.setattr(sde_lib.SDES, "_entries", dict(sde_lib.SDES._entries))
  sde_lib.SDES.add("brownian", _BrownianSDE)
  config = gaussian_mixture.get_config()
  config.training.sde = "Brownian"
  config.model.sigma = 1.5  # its own parameter, read by name
  sde = builders.build_sde(config)
  assert isinstance(sde, _BrownianSDE) and sde.sigma == 1.5 and sde.N == config.model.num_scales

  model, params = builders.init_model(jax.random.PRNGKey(0), config)
  x = jnp.ones((4, 2))
  loss = builders.build_loss_fn(config, sde, model, train=False)(params, jax.random.PRNGKey(1), x)
  assert np.isfinite(float(loss))
  samples, nfe = builders.build_sampler(config, sde, model, Devices(), 8, num_steps=5)(
      jax.random.PRNGKey(2), params)
  assert samples.shape == (8, 2) and int(nfe) == 5 + 1

  # The network's output is read as predicted noise: score = -out / std(t).
  score_fn = mutils.score_fn_from_model_fn(sde, lambda y, labels: y * labels[:, None], True)
  t = jnp.array([0.25, 1.0, 0.25, 1.0])
  np.testing.assert_allclose(score_fn(x, t), -x * (t / (1.5 * jnp.sqrt(t)))[:, None], rtol=1e-6)
  # What it lacks is refused in one line naming the SDEs that have it.
  with pytest.raises(ValueError, match="only defined for VESDE and VPSDE, got _BrownianSDE"):
    losses.get_loss_fn(sde, model, train=True, continuous=False)
  with pytest.raises(ValueError, match="VESDE and VPSDE only, got _BrownianSDE"):
    sampling.get_pc_sampler(sde, (2, 2), "ancestral_sampling", "none")
  with pytest.raises(ValueError, match="discrete noise levels"):
    mutils.score_fn_from_model_fn(sde, lambda y, labels: y, continuous=False)


def test_build_sde_names_a_missing_parameter():
  config = _config(**{"training.sde": "vesde"})
  del config.model["sigma_max"]
  with pytest.raises(ValueError, match="VESDE needs config.model.sigma_max"):
    builders.build_sde(config)


def test_build_sampling_fn_pc_counts_nfe():
  config = default_configs.get_default_configs()  # reverse_diffusion + langevin, denoised
  sde = sde_lib.VPSDE(N=6)
  sample = builders.build_sampling_fn(config, sde, (3, 4, 4, 1))
  x, nfe = jax.jit(lambda rng: sample(rng, lambda x, t: -x))(jax.random.PRNGKey(0))
  assert x.shape == (3, 4, 4, 1) and nfe == 6 * 2 + 1
  fewer = builders.build_sampling_fn(config, sde, (3, 4, 4, 1), num_steps=2)
  assert jax.jit(lambda rng: fewer(rng, lambda x, t: -x))(jax.random.PRNGKey(0))[1] == 2 * 2 + 1


def test_unknown_names_list_the_valid_ones():
  config = default_configs.get_default_configs()
  config.sampling.method = "plms"
  with pytest.raises(ValueError, match="Unknown sampling method 'plms'; valid names are: ddim, "
                     "dpm_solver, edm_heun, ipndm, ode, pc, unipc"):
    builders.build_sampling_fn(config, sde_lib.VPSDE(), (1, 2))
  config = default_configs.get_default_configs()
  config.optim.optimizer = "SGD"
  with pytest.raises(ValueError, match="Unknown optimizer 'SGD'; valid names are: adam, adamw"):
    builders.build_optimizer(config)
  config.training.sde = "cosine"
  with pytest.raises(ValueError, match="Unknown SDE 'cosine'; valid names are: ousde, "
                     "rectified_flow, sigmapowersde, subvpsde, vesde, vpsde"):
    builders.build_sde(config)


def test_build_model_applies_training_options():
  config = gaussian_mixture.get_config()
  assert builders.build_model(config).dtype == jnp.float32
  config.training.mixed_precision = True
  assert builders.build_model(config).dtype == jnp.bfloat16
  config.training.remat = True
  with pytest.raises(ValueError, match="training.remat is implemented for the ncsnpp network"):
    builders.build_model(config)


def test_shapes_and_scalers():
  toy = gaussian_mixture.get_config()
  assert datasets.is_vector_data(toy) and datasets.input_shape(toy, 5) == (5, 2)
  scaler, inverse = datasets.data_scalers(toy)
  assert scaler(0.3) == 0.3 and inverse(0.3) == 0.3 and builders.bpd_offset_bits(toy) == 0.0
  images = ml_collections.ConfigDict(default_configs.get_default_configs().to_dict())
  images.data.centered = True
  assert datasets.input_shape(images, 2) == (2, 32, 32, 3)
  scaler, inverse = datasets.data_scalers(images)
  assert scaler(1.0) == 1.0 and scaler(0.0) == -1.0 and inverse(-1.0) == 0.0
  assert builders.bpd_offset_bits(images) == 7.0


def test_model_num_classes_builds_a_conditional_ddpmpp_and_is_refused_elsewhere():
  config = vpsde_mnist.get_config()
  config.model.update(nf=8, num_res_blocks=1, num_classes=10)
  model, params = builders.init_model(jax.random.PRNGKey(0), config)
  assert mutils.num_classes(model) == 10 and "ClassEmbedding_0" in params
  config.model.update(name="ddpm", nf=32)
  with pytest.raises(ValueError, match=re.escape("'ddpm' has no class conditioning; "
                                                 "class-conditional networks: ncsnpp, toy_mlp")):
    builders.build_model(config)


def test_sampler_tags_tell_samplers_and_their_steps_apart():
  config = toy_config()
  tags = set()
  for fields in (dict(method="pc"), dict(method="ode"), dict(method="ddim"),
                 dict(method="ddim", eta=1.0), dict(method="ddim", steps=10),
                 dict(method="dpm_solver"), dict(method="dpm_solver", multistep=False),
                 dict(method="dpm_solver", order=3), dict(method="edm_heun"),
                 dict(method="edm_heun", s_churn=40.0), dict(method="unipc"),
                 dict(method="unipc", unipc_variant="bh2"),
                 dict(method="unipc", unipc_corrector=False),
                 dict(method="unipc", unipc_predictor="dpm_solver++"),
                 dict(method="ipndm"), dict(method="ipndm", order=4),
                 dict(method="ipndm", schedule="1,0.5,0.001")):
    tags.add(builders.sampler_tag(make_figures._with_sampling(config, **fields)))
  assert len(tags) == 17
  three_m = make_figures._with_sampling(config, method="dpm_solver", order=3)
  assert builders.sampler_tag(three_m) == "dpm_solver-3m-20steps"
  unipc = make_figures._with_sampling(config, method="unipc", steps=10)
  assert builders.sampler_tag(unipc) == "unipc-2bh1-10steps"


def test_build_sampler_passes_frames_through_sharded_like_the_samples():
  config = gaussian_mixture_exact.get_config()
  sde = builders.build_sde(config)
  devices = Devices()
  model, params = builders.init_model(jax.random.PRNGKey(0), config)
  sampler = builders.build_sampler(config, sde, model, devices, 8, num_steps=20, num_frames=3)
  samples, nfe, traj = sampler(jax.random.PRNGKey(4), params)
  assert samples.sharding.is_equivalent_to(devices.batch, 2)
  assert traj.x.sharding.is_equivalent_to(devices.stacked_batch, 3)
  frames = gather(traj.x)
  assert frames.shape == (3, 8, 2) and np.asarray(traj.t).shape == (3,) and int(nfe) > 1
  np.testing.assert_array_equal(frames[-1], gather(samples))
