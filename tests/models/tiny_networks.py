"""Tiny networks for the model tests, without the cost of running their initializers: the DDPM
and NCSN families' configs, parameters drawn in the shape of ``model.init``'s, abstract
initialisation, a denoising problem per family, and the authors' parameter counts to compare
with (``tests/models/test_ddpm.py``, ``test_ncsnv2.py``); parameters jittered off their initial
values (NCSN++ starts its output layer at zero, hiding every input); and the checks both families'
test modules run."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

import builders
import sde_lib
from configs.default_configs import get_default_configs
from models import ddpm, ncsnv2

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


def get_config(module):
  """The config of the config module ``module``."""
  return importlib.import_module(module).get_config()


def param_count(tree):
  """The number of parameters in ``tree``."""
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def abstract_init(model, shape):
  """``(output, variables)`` shapes of ``model.init_with_output``, without computing anything."""
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  labels = jax.ShapeDtypeStruct(shape[:1], jnp.float32)
  return jax.eval_shape(lambda x, y: model.init_with_output(KEY, x, y, train=False), x, labels)


def lecun_params(model, x, labels, seed=0):
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


def uniform_images(shape, seed=0):
  """Images ``shape`` of uniform [0, 1) pixels, seeded."""
  return jax.random.uniform(jax.random.PRNGKey(seed), shape)


def assert_heavy_ops_in_bf16(model, params, x, labels):
  """Every convolution and matrix product of ``model`` reads bfloat16 operands."""
  jaxpr = jax.make_jaxpr(lambda p: model.apply({"params": p}, x, labels))(params)
  heavy = [e for e in jaxpr.jaxpr.eqns
           if e.primitive.name in ("conv_general_dilated", "dot_general")]
  assert heavy and all(v.aval.dtype == jnp.bfloat16 for e in heavy for v in e.invars)


def tiny_config(name):
  """An 8x8, 2-resolution config of the family ``name`` (ddpm, ncsnv2 or ncsn), 10 levels."""
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


def dsm_problem(name, x, noise, levels):
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


def jittered(params, scale=0.05):
  """Random parameters (NCSN++ starts its output layer at zero, hiding every input)."""
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(5), len(leaves))
  return jax.tree_util.tree_unflatten(
      tree, [leaf + scale * jax.random.normal(key, leaf.shape) for key, leaf in zip(keys, leaves)])


def check_mixed_precision_dtypes(name):
  """The family ``name`` in bf16: bf16 compute, float32 parameters and output."""
  config = tiny_config(name)
  config.training.mixed_precision = True
  model = builders.build_model(config)
  assert model.dtype == jnp.bfloat16
  x, labels = uniform_images((2, 8, 8, 3)), jnp.array([1.0, 2.0])
  out, variables = abstract_init(model, x.shape)
  assert out.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables))
  assert_heavy_ops_in_bf16(model, lecun_params(model, x, labels), x, labels)


def check_training_lowers_the_loss(name):
  """Adam lowers a fixed denoising loss of the family ``name``, and its labels condition each
  example alone (NCSNv2 ignores them)."""
  model = builders.build_model(tiny_config(name))
  keys = jax.random.split(KEY, 2)
  x = 2 * uniform_images((4, 8, 8, 3)) - 1 if name == "ddpm" else uniform_images((4, 8, 8, 3))
  noise = jax.random.normal(keys[0], x.shape)
  levels = jax.random.randint(keys[1], (4,), 0, 1000 if name == "ddpm" else 10)
  x_t, a = dsm_problem(name, x, noise, levels)
  labels = levels.astype(jnp.float32)
  params = lecun_params(model, x, labels)
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


def check_config_builds_its_model(module):
  """The config ``module`` has no stray keys and builds the network it names, as the authors'."""
  config = get_config(module)
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
