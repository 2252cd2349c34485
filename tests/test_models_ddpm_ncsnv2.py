"""DDPM, NCSNv2 and NCSN (v1) networks: fidelity to the authors' architectures, the model
interface (shapes, conditioning, dropout, mixed precision), trainability, configs and errors."""

import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import builders
import sde_lib
from configs.default_configs import get_default_configs
from models import ddpm, ncsnv2, normalization
from models import utils as mutils

KEY = jax.random.PRNGKey(0)

# Exact parameter counts of the authors' networks, obtained by building yang-song/score_sde
# (commit 0acb9e0ea3b8cccd935068cd9c657318fbc6ce4c) models/ddpm.py and models/ncsnv2.py with their
# own configs and counting jax.eval_shape(model.init, ...) leaves; the two bugs that stop NCSN v1
# from building were fixed and num_classes = 10 (= num_scales) given. DESIGN.md quotes the first
# two rounded: "DDPM 35.22 M", "NCSNv2 (64 px) 33.97 M".
AUTHORS_PARAM_COUNTS = [
    ("configs.vp.ddpm.cifar10", 32, 35_218_947),      # DDPM, CIFAR-10
    ("configs.ve.ncsnv2.celeba", 64, 33_970_563),     # NCSNv2, 64-px network
    ("configs.ve.ncsn.cifar10", 32, 34_428_675),      # NCSN v1, 10 noise levels
    ("configs.ve.ncsnv2.bedroom", 128, 83_445_379),   # NCSNv2, 128-px network
    ("configs.vp.ddpm.church", 256, 111_569_923),     # DDPM, 256 px, ch_mult (1, 1, 2, 2, 4, 4)
]

MY_CONFIGS = [
    "configs.vp.ddpm.cifar10", "configs.vp.ddpm.cifar10_continuous",
    "configs.vp.ddpm.cifar10_unconditional", "configs.vp.ddpm.celebahq",
    "configs.vp.ddpm.bedroom", "configs.vp.ddpm.church", "configs.subvp.cifar10_ddpm_continuous",
    "configs.ve.cifar10_ddpm", "configs.ve.ncsn.cifar10", "configs.ve.ncsn.cifar10_5",
    "configs.ve.ncsn.cifar10_124", "configs.ve.ncsn.cifar10_1245", "configs.ve.ncsn.celeba",
    "configs.ve.ncsn.celeba_5", "configs.ve.ncsn.celeba_124", "configs.ve.ncsn.celeba_1245",
    "configs.ve.ncsnv2.cifar10", "configs.ve.ncsnv2.celeba", "configs.ve.ncsnv2.bedroom",
]


def _get_config(module):
  return importlib.import_module(module).get_config()


def _param_count(tree):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def _abstract_init(model, shape):
  """``(output, variables)`` shapes of ``model.init_with_output``, without computing anything."""
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  labels = jax.ShapeDtypeStruct(shape[:1], jnp.float32)
  return jax.eval_shape(lambda x, y: model.init_with_output(KEY, x, y, train=False), x, labels)


# Tiny versions of each family, for real computation on CPU (compiling dominates the cost, so the
# DDPM used for interface checks has a single resolution; training uses two, see _tiny_config).
def tiny_ddpm(**kw):
  kw = dict(dict(nf=8, num_groups=2, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(),
                 dropout=0.0), **kw)
  return ddpm.DDPM(**kw)


def tiny_ncsnv2(**kw):
  return ncsnv2.NCSNv2(**dict(dict(nf=8, arch=64), **kw))


def _test_params(model, x, labels, seed=0):
  """Parameters for ``model`` without running its initializers.

  Compiling ``model.init`` costs tens of seconds on CPU (one PRNG expansion per parameter), so
  the parameter tree is taken from ``jax.eval_shape`` and filled with a LeCun-style draw: kernels
  and embeddings ``N(0, 1/fan_in)``, biases ``N(0, 0.1^2)``, normalization scales
  ``1 + N(0, 0.1^2)``.
  Unlike the real init, no output layer starts at zero, so every path through the network shows.
  """
  shapes = jax.eval_shape(model.init, {"params": KEY, "dropout": KEY}, x, labels)["params"]
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    z = rng.standard_normal(leaf.shape).astype(np.float32)
    if name in ("scale", "gamma", "alpha"):
      return jnp.asarray(1.0 + 0.1 * z)
    if name in ("bias", "beta", "b") or len(leaf.shape) == 1:
      return jnp.asarray(0.1 * z)
    fan_in = int(np.prod(leaf.shape[:-1])) if name != "embedding" else leaf.shape[1] // 3
    return jnp.asarray(z / np.sqrt(fan_in))

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _jit_apply(model):
  """``f(params, x, labels, train=False, rng=None)``: jitted, as op-by-op execution is slow."""
  apply = jax.jit(model.apply, static_argnames="train")

  def f(params, x, labels, train=False, rng=None):
    rngs = None if rng is None else {"dropout": rng}
    return apply({"params": params}, x, labels, train=train, rngs=rngs)

  return f


def _perturbed(params, scale=0.1):
  """Small params plus noise (so the scales and shifts under test are not all 1 and 0)."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  noisy = [p + scale * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
  return jax.tree_util.tree_unflatten(treedef, noisy)


def _images(shape, seed=0):
  return jax.random.uniform(jax.random.PRNGKey(seed), shape)


# --- fidelity -----------------------------------------------------------------------------------


@pytest.mark.parametrize("module,size,expected", AUTHORS_PARAM_COUNTS)
def test_parameter_count_matches_authors(module, size, expected):
  config = _get_config(module)
  assert config.data.image_size == size
  model = builders.build_model(config)
  out, variables = _abstract_init(model, (1, size, size, config.data.num_channels))
  assert set(variables) == {"params"}
  assert _param_count(variables["params"]) == expected
  assert out.shape == (1, size, size, config.data.num_channels) and out.dtype == jnp.float32


def test_design_rounded_counts():
  by_module = {m: n for m, _, n in AUTHORS_PARAM_COUNTS}
  assert round(by_module["configs.vp.ddpm.cifar10"] / 1e6, 2) == 35.22
  assert round(by_module["configs.ve.ncsnv2.celeba"] / 1e6, 2) == 33.97


def test_ncsnv2_256_parameter_count():
  # The authors' NCSNv2_256 (yang-song/score_sde models/ncsnv2.py, nf=128), counted as above.
  _, variables = _abstract_init(ncsnv2.NCSNv2(arch=256), (1, 256, 256, 3))
  assert _param_count(variables["params"]) == 94_132_611


# --- interface ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name,build,size,channels", [
    ("ddpm", lambda: ddpm.DDPM(ch_mult=(1, 2, 2)), 28, 1),
    ("ddpm", lambda: ddpm.DDPM(), 64, 3),
    ("ncsnv2_64", lambda: ncsnv2.NCSNv2(arch=64), 28, 1),
    ("ncsnv2_128", lambda: ncsnv2.NCSNv2(arch=128), 28, 1),
    ("ncsnv2_256", lambda: ncsnv2.NCSNv2(arch=256), 32, 1),
    ("ncsn", lambda: ncsnv2.NCSNv2(num_levels=10), 28, 1),
])
def test_output_shape_equals_input_shape(name, build, size, channels):
  del name
  shape = (2, size, size, channels)
  out, variables = _abstract_init(build(), shape)
  assert out.shape == shape and out.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables))


def test_unconditional_ddpm_ignores_labels_and_centers_its_input():
  x = _images((2, 8, 8, 3))
  model = tiny_ddpm(conditional=False)
  params = _test_params(model, x, jnp.zeros(2))
  out = _jit_apply(model)(params, x, jnp.zeros(2))
  # Same parameters, data already in [-1, 1] and other labels: same output.
  out_centered = _jit_apply(tiny_ddpm(conditional=False, centered=True))(params, 2 * x - 1,
                                                                         jnp.full(2, 9.0))
  np.testing.assert_allclose(out, out_centered, rtol=1e-5, atol=1e-5)


def test_ncsnv2_noise_level_enters_only_through_sigma_scaling():
  model = tiny_ncsnv2()
  sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=10)
  x = jnp.repeat(_images((1, 8, 8, 3)), 2, axis=0)
  params = _test_params(model, x, jnp.zeros(2))
  t = jnp.array([0.0, 1.0])  # levels 0 (sigma_min) and N - 1 (sigma_max), same image
  score = jax.jit(mutils.get_score_fn(sde, model, params, continuous=False))(x, t)
  # The network ignores the level; the score is its output over sigma_i.
  np.testing.assert_allclose(score[0] * 0.01, score[1] * 50.0, rtol=1e-4, atol=1e-6)
  assert float(jnp.max(jnp.abs(score[0]))) > 1.0


def test_dropout_only_in_training():
  model = tiny_ddpm(dropout=0.5)
  x, labels = _images((2, 8, 8, 3)), jnp.array([1.0, 2.0])
  params = _test_params(model, x, labels)
  apply = _jit_apply(model)

  def run(train, seed):
    return apply(params, x, labels, train=train, rng=jax.random.PRNGKey(seed))

  assert float(jnp.max(jnp.abs(run(True, 1) - run(True, 2)))) > 1e-2
  np.testing.assert_array_equal(run(True, 1), run(True, 1))
  np.testing.assert_array_equal(run(False, 1), run(False, 2))
  np.testing.assert_array_equal(run(False, 1), apply(params, x, labels))


def _assert_heavy_ops_in_bf16(model, params, x, labels):
  jaxpr = jax.make_jaxpr(lambda p: model.apply({"params": p}, x, labels))(params)
  heavy = [e for e in jaxpr.jaxpr.eqns
           if e.primitive.name in ("conv_general_dilated", "dot_general")]
  assert heavy and all(v.aval.dtype == jnp.bfloat16 for e in heavy for v in e.invars)


@pytest.mark.parametrize("name", ["ddpm", "ncsnv2", "ncsn"])
def test_mixed_precision_dtypes(name):
  config = _tiny_config(name)
  config.training.mixed_precision = True
  model = builders.build_model(config)
  assert model.dtype == jnp.bfloat16
  x, labels = _images((2, 8, 8, 3)), jnp.array([1.0, 2.0])
  out, variables = _abstract_init(model, x.shape)
  assert out.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables))
  _assert_heavy_ops_in_bf16(model, _test_params(model, x, labels), x, labels)


def test_mixed_precision_output_is_close_to_float32():
  model = tiny_ddpm(dtype=jnp.bfloat16)
  x, labels = _images((2, 8, 8, 3)), jnp.array([1.0, 2.0])
  params = _test_params(model, x, labels)
  out = _jit_apply(model)(params, x, labels)
  ref = _jit_apply(model.clone(dtype=jnp.float32))(params, x, labels)
  # bf16 keeps 8 significant bits (unit roundoff 2^-9 ~ 0.002); through this network's ~10
  # layers the relative error should stay within ~25 roundoffs.
  assert float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref)) < 0.05


# --- training -----------------------------------------------------------------------------------


def _tiny_config(name):
  config = get_default_configs()
  config.training.sde = "vpsde" if name == "ddpm" else "vesde"
  config.training.continuous = False
  config.data.image_size = 8
  config.model.name = name
  config.model.nf = 16 if name == "ddpm" else 8
  config.model.num_groups = 4
  config.model.ch_mult = (1, 2)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = (4,)
  config.model.dropout = 0.0
  config.model.resamp_with_conv = True
  config.model.conditional = True
  config.model.nonlinearity = "swish" if name == "ddpm" else "elu"
  config.model.normalization = "GroupNorm" if name == "ddpm" else "InstanceNorm++"
  config.model.interpolation = "bilinear"
  config.model.num_scales = 10
  config.model.scale_by_sigma = name == "ncsnv2"
  return config


def _dsm_problem(name, x, noise, levels):
  """A plain denoising loss per family: ``(x_t, a)`` such that the loss is
  ``mean_b sum (a_b out_b + noise_b)^2`` for the network output ``out`` at ``x_t``.

  DDPM: VP with N = 1000 levels, ``out`` predicts the noise (``a = -1``). NCSN/NCSNv2: VE with 10
  levels from 0.01 to 50, score matching weighted by sigma^2; NCSNv2's output is score * sigma
  (``a = 1``), NCSN v1's is the score (``a = sigma``).
  """
  if name == "ddpm":
    mean_coeff, std = sde_lib.VPSDE(N=1000).discrete_marginal(levels)
    return mean_coeff[:, None, None, None] * x + std[:, None, None, None] * noise, -jnp.ones(4)
  sigma = sde_lib.VESDE(N=10).discrete_sigmas()[levels]
  x_t = x + sigma[:, None, None, None] * noise
  return x_t, (jnp.ones(4) if name == "ncsnv2" else sigma)


@pytest.mark.parametrize("name", ["ddpm", "ncsnv2", "ncsn"])
def test_training_lowers_the_loss_and_labels_condition_per_example(name):
  model = builders.build_model(_tiny_config(name))
  keys = jax.random.split(KEY, 2)
  x = 2 * _images((4, 8, 8, 3)) - 1 if name == "ddpm" else _images((4, 8, 8, 3))
  noise = jax.random.normal(keys[0], x.shape)
  levels = jax.random.randint(keys[1], (4,), 0, 1000 if name == "ddpm" else 10)
  x_t, a = _dsm_problem(name, x, noise, levels)
  labels = levels.astype(jnp.float32)
  params = _test_params(model, x, labels)
  optimizer = optax.adam(3e-3)

  def loss_fn(params, labels):
    out = model.apply({"params": params}, x_t, labels)
    return jnp.mean(jnp.sum((a[:, None, None, None] * out + noise) ** 2, axis=(1, 2, 3))), out

  # One compiled step serves both checks (compiling dominates the cost): labels are an argument.
  @jax.jit
  def step(params, opt_state, labels):
    (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, labels)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, out

  opt_state = optimizer.init(params)
  other_labels = labels.at[1].set(labels[1] + 5.0)
  out_other = step(params, opt_state, other_labels)[3]
  losses = []
  for i in range(8):
    params, opt_state, loss, out = step(params, opt_state, labels)
    losses.append(float(loss))
    if i == 0:
      out_first = out

  # Only example 1's label changed. NCSNv2 ignores labels; the others' example 1 output moves and
  # the rest stay (nothing mixes across the batch).
  if name == "ncsnv2":
    np.testing.assert_array_equal(out_other, out_first)
  else:
    assert float(jnp.max(jnp.abs(out_other[1] - out_first[1]))) > 1e-2
    np.testing.assert_allclose(out_other[::2], out_first[::2], rtol=1e-5, atol=1e-5)
  assert np.all(np.isfinite(losses))
  # Fixed batch and noise: the loss is a deterministic function of the parameters, so Adam's first
  # steps must lower it.
  assert losses[-1] < 0.9 * losses[0], losses


# --- configs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", MY_CONFIGS)
def test_config_builds_its_model(module):
  config = _get_config(module)
  defaults = get_default_configs()
  # No stray keys (the authors had `training.continuouse` and `training.loss`).
  for section in ("training", "sampling", "eval", "optim"):
    assert set(config[section].keys()) <= set(defaults[section].keys()), section
  model = builders.build_model(config)
  name = config.model.name
  assert isinstance(model, ddpm.DDPM if name == "ddpm" else ncsnv2.NCSNv2)
  assert model.centered == config.data.centered
  if name == "ddpm":
    assert model.scale_by_sigma == (config.training.sde == "vesde")
  elif name == "ncsn":
    # NCSN v1 outputs the score itself and needs one normalization class per noise level.
    assert not model.scale_by_sigma and model.num_levels == config.model.num_scales
  else:
    assert model.scale_by_sigma and model.num_levels == 0
    assert model.arch == ncsnv2.arch_for_image_size(config.data.image_size)


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("build,shape,match", [
    (lambda: ddpm.DDPM(), (1, 28, 28, 1), "divisible by 8"),
    (lambda: ncsnv2.NCSNv2(arch=256), (1, 28, 28, 1), "divisible by 8"),
    (lambda: ncsnv2.NCSNv2(arch=64), (1, 33, 33, 3), "divisible by 2"),
    (lambda: ncsnv2.NCSNv2(arch=64), (1, 32, 3), "images"),
])
def test_bad_input_shapes_fail_while_tracing(build, shape, match):
  with pytest.raises(ValueError, match=match):
    _abstract_init(build(), shape)


def test_continuous_ncsn_v1_is_refused():
  config = _get_config("configs.ve.ncsn.cifar10")
  config.training.continuous = True
  with pytest.raises(ValueError, match="continuous"):
    builders.build_model(config)


@pytest.mark.parametrize("name", ["ddpm", "ncsnv2", "ncsn"])
def test_remat_is_refused_where_not_implemented(name):
  config = _tiny_config(name)
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


# --- normalization layers -----------------------------------------------------------------------


def _instance_norm_plus_reference(x, alpha, gamma, beta):
  x = np.asarray(x, np.float64)
  means = x.mean(axis=(1, 2))
  means_plus = ((means - means.mean(-1, keepdims=True))
                / np.sqrt(means.var(-1, keepdims=True) + 1e-5))
  h = (x - means[:, None, None]) / np.sqrt(x.var(axis=(1, 2))[:, None, None] + 1e-5)
  return gamma * (h + alpha * means_plus[:, None, None]) + beta


def test_instance_norm_plus_matches_formula():
  x = 3.0 + 2.0 * jax.random.normal(KEY, (2, 5, 5, 4))
  norm = normalization.InstanceNorm2dPlus()
  params = _perturbed(jax.jit(norm.init)(KEY, x)["params"])
  expected = _instance_norm_plus_reference(x, params["alpha"], params["gamma"], params["beta"])
  out = jax.jit(norm.apply)({"params": params}, x)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_conditional_instance_norm_plus_looks_up_per_class():
  x = 3.0 + 2.0 * jax.random.normal(KEY, (2, 5, 5, 4))
  norm = normalization.ConditionalInstanceNorm2dPlus(num_classes=3)
  table = jax.jit(norm.init)(KEY, x, jnp.zeros(2))["params"]["embedding"]
  # Init: gamma and alpha ~ N(1, 0.02^2), beta = 0, for every class.
  assert table.shape == (3, 12)
  assert float(jnp.max(jnp.abs(table[:, :8] - 1.0))) < 0.1 and not jnp.any(table[:, 8:])
  params = _perturbed({"embedding": table})
  apply = jax.jit(norm.apply)
  out = apply({"params": params}, x, jnp.array([2.0, 0.0]))
  for b, cls in enumerate([2, 0]):
    gamma, alpha, beta = np.split(np.asarray(params["embedding"][cls]), 3)
    expected = _instance_norm_plus_reference(x[b:b + 1], alpha, gamma, beta)[0]
    np.testing.assert_allclose(out[b], expected, rtol=1e-4, atol=1e-4)
  # A level outside the table is an error made visible, not a silently clipped lookup.
  assert np.all(np.isnan(apply({"params": params}, x, jnp.array([3.0, 0.0]))[0]))


@pytest.mark.parametrize("name", normalization.NORMALIZATIONS)
def test_normalizations_are_per_example_and_keep_dtype(name):
  norm = normalization.get_normalization(name, num_groups=2, dtype=jnp.bfloat16)()
  assert isinstance(norm, nn.Module)
  x = jax.random.normal(KEY, (2, 4, 4, 4))
  params = jax.jit(norm.init)(KEY, x)["params"]
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
  apply = jax.jit(norm.apply)
  out = apply({"params": params}, x)
  assert out.dtype == jnp.bfloat16 and out.shape == x.shape
  out_changed = apply({"params": params}, x.at[1].multiply(5.0).at[1].add(1.0))
  np.testing.assert_array_equal(out_changed[0], out[0])
