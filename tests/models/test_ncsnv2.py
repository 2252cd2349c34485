"""NCSNv2 and NCSN (v1) networks (``models.ncsnv2``): fidelity to the authors' architectures, the
model interface (shapes, noise conditioning, mixed precision), trainability, configs and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import builders
import sde_lib
from models import ncsnv2
from models import utils as mutils
from tests.models.tiny_networks import (AUTHORS_PARAM_COUNTS, abstract_init,
                                        check_config_builds_its_model, check_mixed_precision_dtypes,
                                        check_training_lowers_the_loss, get_config, lecun_params,
                                        param_count, tiny_config, uniform_images)

# The authors' NCSNv2 and NCSN v1 networks among the counts (the rest are DDPM ones: test_ddpm.py).
NCSN_PARAM_COUNTS = [case for case in AUTHORS_PARAM_COUNTS if ".ncsn" in case[0]]
MY_CONFIGS = [
    "configs.ve.ncsn.cifar10", "configs.ve.ncsn.cifar10_5",
    "configs.ve.ncsn.cifar10_124", "configs.ve.ncsn.cifar10_1245", "configs.ve.ncsn.celeba",
    "configs.ve.ncsn.celeba_5", "configs.ve.ncsn.celeba_124", "configs.ve.ncsn.celeba_1245",
    "configs.ve.ncsnv2.cifar10", "configs.ve.ncsnv2.celeba", "configs.ve.ncsnv2.bedroom",
]


def tiny_ncsnv2(**kw):
  return ncsnv2.NCSNv2(**dict(dict(nf=8, arch=64), **kw))


# --- fidelity -----------------------------------------------------------------------------------


@pytest.mark.parametrize("module,size,expected", NCSN_PARAM_COUNTS)
def test_parameter_count_matches_authors(module, size, expected):
  config = get_config(module)
  assert config.data.image_size == size
  model = builders.build_model(config)
  out, variables = abstract_init(model, (1, size, size, config.data.num_channels))
  assert set(variables) == {"params"}
  assert param_count(variables["params"]) == expected
  assert out.shape == (1, size, size, config.data.num_channels) and out.dtype == jnp.float32


def test_ncsnv2_256_parameter_count():
  # The authors' NCSNv2_256 (yang-song/score_sde models/ncsnv2.py, nf=128), counted as above.
  _, variables = abstract_init(ncsnv2.NCSNv2(arch=256), (1, 256, 256, 3))
  assert param_count(variables["params"]) == 94_132_611


# --- interface ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name,build,size,channels", [
    ("ncsnv2_64", lambda: ncsnv2.NCSNv2(arch=64), 28, 1),
    ("ncsnv2_128", lambda: ncsnv2.NCSNv2(arch=128), 28, 1),
    ("ncsnv2_256", lambda: ncsnv2.NCSNv2(arch=256), 32, 1),
    ("ncsn", lambda: ncsnv2.NCSNv2(num_levels=10), 28, 1),
])
def test_output_shape_equals_input_shape(name, build, size, channels):
  del name
  shape = (2, size, size, channels)
  out, variables = abstract_init(build(), shape)
  assert out.shape == shape and out.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables))


def test_ncsnv2_noise_level_enters_only_through_sigma_scaling():
  model = tiny_ncsnv2()
  sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=10)
  x = jnp.repeat(uniform_images((1, 8, 8, 3)), 2, axis=0)
  params = lecun_params(model, x, jnp.zeros(2))
  t = jnp.array([0.0, 1.0])  # levels 0 (sigma_min) and N - 1 (sigma_max), same image
  score = jax.jit(mutils.get_score_fn(sde, model, params, continuous=False))(x, t)
  # The network ignores the level; the score is its output over sigma_i.
  np.testing.assert_allclose(score[0] * 0.01, score[1] * 50.0, rtol=1e-4, atol=1e-6)
  assert float(jnp.max(jnp.abs(score[0]))) > 1.0


@pytest.mark.parametrize("name", ["ncsnv2", "ncsn"])
def test_mixed_precision_dtypes(name):
  check_mixed_precision_dtypes(name)


# --- training -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ncsnv2", "ncsn"])
def test_training_lowers_the_loss_and_labels_condition_per_example(name):
  check_training_lowers_the_loss(name)


# --- configs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", MY_CONFIGS)
def test_config_builds_its_model(module):
  check_config_builds_its_model(module)


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("build,shape,match", [
    (lambda: ncsnv2.NCSNv2(arch=256), (1, 28, 28, 1), "divisible by 8"),
    (lambda: ncsnv2.NCSNv2(arch=64), (1, 33, 33, 3), "divisible by 2"),
    (lambda: ncsnv2.NCSNv2(arch=64), (1, 32, 3), "images"),
])
def test_bad_input_shapes_fail_while_tracing(build, shape, match):
  with pytest.raises(ValueError, match=match):
    abstract_init(build(), shape)


def test_continuous_ncsn_v1_is_refused():
  config = get_config("configs.ve.ncsn.cifar10")
  config.training.continuous = True
  with pytest.raises(ValueError, match="continuous"):
    builders.build_model(config)


@pytest.mark.parametrize("name", ["ncsnv2", "ncsn"])
def test_remat_is_refused_where_not_implemented(name):
  config = tiny_config(name)
  config.training.remat = True
  with pytest.raises(ValueError, match="training.remat is implemented for the ncsnpp network"):
    builders.build_model(config)


@pytest.mark.parametrize("build,match", [
    (lambda: ncsnv2.NCSNv2(normalization="Batch"), "Unknown normalization"),
    (lambda: ncsnv2.NCSNv2(nonlinearity="gelu"), "Unknown activation"),
    (lambda: ncsnv2.NCSNv2(interpolation="cubic"), "interpolation"),
    (lambda: ncsnv2.NCSNv2(arch=96), "arch"),
    (lambda: ncsnv2.NCSNv2(num_levels=10, normalization="GroupNorm"), "Conditional"),
    (lambda: ncsnv2.NCSNv2(num_levels=10, arch=128), "64"),
    (lambda: ncsnv2.arch_for_image_size(512), "512"),
])
def test_bad_options_fail_at_construction(build, match):
  with pytest.raises(ValueError, match=match):
    build()
