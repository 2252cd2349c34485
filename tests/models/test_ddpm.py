"""The DDPM network (``models.ddpm``): fidelity to the authors' architecture, the model interface
(shapes, conditioning, centring, dropout, mixed precision), trainability, configs and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import builders
from models import ddpm
from tests.models.tiny_networks import (AUTHORS_PARAM_COUNTS, KEY, abstract_init,
                                        check_config_builds_its_model, check_mixed_precision_dtypes,
                                        check_training_lowers_the_loss, get_config, lecun_params,
                                        param_count, tiny_config, uniform_images)

# The authors' DDPM networks among the counts (the rest are NCSN ones: test_ncsnv2.py).
DDPM_PARAM_COUNTS = [case for case in AUTHORS_PARAM_COUNTS if ".ddpm." in case[0]]
MY_CONFIGS = [
    "configs.vp.ddpm.cifar10", "configs.vp.ddpm.cifar10_continuous",
    "configs.vp.ddpm.cifar10_unconditional", "configs.vp.ddpm.celebahq",
    "configs.vp.ddpm.bedroom", "configs.vp.ddpm.church", "configs.subvp.cifar10_ddpm_continuous",
    "configs.ve.cifar10_ddpm",
]


# Tiny versions of each family, for real computation on CPU (compiling dominates the cost, so the
# DDPM used for interface checks has a single resolution; training uses two, see tiny_config).
def tiny_ddpm(**kw):
  kw = dict(dict(nf=8, num_groups=2, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(),
                 dropout=0.0), **kw)
  return ddpm.DDPM(**kw)


def _jit_apply(model):
  """``f(params, x, labels, train=False, rng=None)``: jitted, as op-by-op execution is slow."""
  apply = jax.jit(model.apply, static_argnames="train")

  def f(params, x, labels, train=False, rng=None):
    rngs = None if rng is None else {"dropout": rng}
    return apply({"params": params}, x, labels, train=train, rngs=rngs)

  return f


# --- fidelity -----------------------------------------------------------------------------------


@pytest.mark.parametrize("module,size,expected", DDPM_PARAM_COUNTS)
def test_parameter_count_matches_authors(module, size, expected):
  config = get_config(module)
  assert config.data.image_size == size
  model = builders.build_model(config)
  out, variables = abstract_init(model, (1, size, size, config.data.num_channels))
  assert set(variables) == {"params"}
  assert param_count(variables["params"]) == expected
  assert out.shape == (1, size, size, config.data.num_channels) and out.dtype == jnp.float32


def test_design_rounded_counts():
  by_module = {m: n for m, _, n in AUTHORS_PARAM_COUNTS}
  assert round(by_module["configs.vp.ddpm.cifar10"] / 1e6, 2) == 35.22
  assert round(by_module["configs.ve.ncsnv2.celeba"] / 1e6, 2) == 33.97


# --- interface ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name,build,size,channels", [
    ("ddpm", lambda: ddpm.DDPM(ch_mult=(1, 2, 2)), 28, 1),
    ("ddpm", lambda: ddpm.DDPM(), 64, 3),
])
def test_output_shape_equals_input_shape(name, build, size, channels):
  del name
  shape = (2, size, size, channels)
  out, variables = abstract_init(build(), shape)
  assert out.shape == shape and out.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables))


def test_unconditional_ddpm_ignores_labels_and_centers_its_input():
  x = uniform_images((2, 8, 8, 3))
  model = tiny_ddpm(conditional=False)
  params = lecun_params(model, x, jnp.zeros(2))
  out = _jit_apply(model)(params, x, jnp.zeros(2))
  # Same parameters, data already in [-1, 1] and other labels: same output.
  out_centered = _jit_apply(tiny_ddpm(conditional=False, centered=True))(params, 2 * x - 1,
                                                                         jnp.full(2, 9.0))
  np.testing.assert_allclose(out, out_centered, rtol=1e-5, atol=1e-5)


def test_dropout_only_in_training():
  model = tiny_ddpm(dropout=0.5)
  x, labels = uniform_images((2, 8, 8, 3)), jnp.array([1.0, 2.0])
  params = lecun_params(model, x, labels)
  apply = _jit_apply(model)

  def run(train, seed):
    return apply(params, x, labels, train=train, rng=jax.random.PRNGKey(seed))

  assert float(jnp.max(jnp.abs(run(True, 1) - run(True, 2)))) > 1e-2
  np.testing.assert_array_equal(run(True, 1), run(True, 1))
  np.testing.assert_array_equal(run(False, 1), run(False, 2))
  np.testing.assert_array_equal(run(False, 1), apply(params, x, labels))


@pytest.mark.parametrize("name", ["ddpm"])
def test_mixed_precision_dtypes(name):
  check_mixed_precision_dtypes(name)


def test_mixed_precision_output_is_close_to_float32():
  model = tiny_ddpm(dtype=jnp.bfloat16)
  x, labels = uniform_images((2, 8, 8, 3)), jnp.array([1.0, 2.0])
  params = lecun_params(model, x, labels)
  out = _jit_apply(model)(params, x, labels)
  ref = _jit_apply(model.clone(dtype=jnp.float32))(params, x, labels)
  # bf16 keeps 8 significant bits (unit roundoff 2^-9 ~ 0.002); through this network's ~10
  # layers the relative error should stay within ~25 roundoffs.
  assert float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref)) < 0.05


# --- training -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ddpm"])
def test_training_lowers_the_loss_and_labels_condition_per_example(name):
  check_training_lowers_the_loss(name)


# --- configs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", MY_CONFIGS)
def test_config_builds_its_model(module):
  check_config_builds_its_model(module)


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("build,shape,match", [
    (lambda: ddpm.DDPM(), (1, 28, 28, 1), "divisible by 8"),
])
def test_bad_input_shapes_fail_while_tracing(build, shape, match):
  with pytest.raises(ValueError, match=match):
    abstract_init(build(), shape)


@pytest.mark.parametrize("name", ["ddpm"])
def test_remat_is_refused_where_not_implemented(name):
  config = tiny_config(name)
  config.training.remat = True
  with pytest.raises(ValueError, match="training.remat is implemented for the ncsnpp network"):
    builders.build_model(config)


def test_bad_label_shape_fails():
  x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
  with pytest.raises(ValueError, match="labels"):
    jax.eval_shape(lambda x: tiny_ddpm().init(KEY, x, jnp.zeros((2, 1))), x)


@pytest.mark.parametrize("build,match", [
    (lambda: ddpm.DDPM(normalization="BatchNorm"), "Unknown normalization"),
    (lambda: ddpm.DDPM(nonlinearity="tanh"), "Unknown activation"),
    (lambda: ddpm.DDPM(nf=48), "divisible"),
])
def test_bad_options_fail_at_construction(build, match):
  with pytest.raises(ValueError, match=match):
    build()
