"""NCSN++ / DDPM++ (``models.ncsnpp``): fidelity to the authors' networks, every architecture
option, bf16, remat, conditioning on noise levels and class labels, dropout, a short training run
and errors. (FIR resampling: test_up_or_down_sampling.py.)"""

import functools
import importlib
import inspect
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import builders
from models import layerspp
from models import ncsnpp
from models import utils as mutils
from models.ncsnpp import NCSNpp
from tests.models.fast_compile import BF16_U, fast_jit, normal
from tests.models.tiny_networks import jittered
from tests.runs import REPO

CONFIG_DIR = pathlib.Path(REPO) / "configs"
NCSNPP_CONFIGS = sorted(
    f"configs.{p.parent.name}.{p.stem}"
    for sub in ("ve", "vp", "subvp") for p in (CONFIG_DIR / sub).glob("*.py")
    if "ncsnpp" in p.stem or "ddpmpp" in p.stem)


def get_config(name):
  return importlib.import_module(name).get_config()


def tiny_model(**overrides):
  """A 16x16-capable NCSN++ (3 resolutions, 1 block each, attention at 8x8). ``init_scale=1``
  so that no layer starts at zero and every path shows in the output."""
  kwargs = dict(nf=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0,
                init_scale=1.0)
  kwargs.update(overrides)
  return ncsnpp.NCSNpp(**kwargs)


def small_model(**overrides):
  """An 8x8-capable NCSN++ (2 resolutions, attention at 4x4), the cheapest to compile."""
  return tiny_model(**{**dict(nf=8, ch_mult=(1, 2), attn_resolutions=(4,)), **overrides})


def random_params(model, x, labels, seed=0):
  """Random parameters shaped like ``model.init``'s, drawn in numpy: compiling ``init`` (a
  threefry draw per parameter) costs XLA on CPU ~10x more than compiling ``apply``. Kernels get
  N(0, 1/fan_in), norm scales 1 + N(0, 0.1^2), biases and Fourier frequencies N(0, 0.1^2)."""
  return random_params_like(jax.eval_shape(model.init, jax.random.PRNGKey(0), x, labels)["params"],
                            seed)


def random_params_like(shapes, seed=0):
  """Random parameters for the tree of ``shapes``; see :func:`random_params`."""
  rng = np.random.RandomState(seed)

  def draw(path, leaf):
    z = rng.randn(*leaf.shape).astype(np.float32)
    if leaf.ndim >= 2:
      return jnp.asarray(z / np.sqrt(np.prod(leaf.shape[:-1])))
    if path[-1].key == "scale":
      return jnp.asarray(1.0 + 0.1 * z)
    return jnp.asarray(0.1 * z)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def random_apply(model, x, labels, seed=0):
  """``(output, params)`` of ``model`` with :func:`random_params`, compiled once."""
  params = random_params(model, x, labels, seed)
  return fast_jit(model.apply)({"params": params}, x, labels), params


def count(params):
  return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(params))


def abstract_init(model, shape, labels_dtype=jnp.float32):
  """``(output ShapeDtypeStruct, params shapes)`` via one trace, with no weights allocated."""
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  labels = jax.ShapeDtypeStruct(shape[:1], labels_dtype)
  out, variables = jax.eval_shape(model.init_with_output, jax.random.PRNGKey(0), x, labels)
  return out, variables["params"]


# ----------------------------------------------------------------------------------------------
# Fidelity to the authors' networks.

# Reference counts: the authors' CIFAR-10 networks built from their modules, in millions, as
# their design notes list them. The exact integers were obtained by building the
# authors' own JAX modules (yang-song/score_sde models/ncsnpp.py) with jax.eval_shape; the same
# check showed identical parameter trees and outputs equal to ~1e-6 on random weights.
@pytest.mark.parametrize("config_name, millions, exact", [
    ("configs.ve.cifar10_ncsnpp_continuous", 62.76, 62_758_915),
    ("configs.ve.cifar10_ncsnpp_deep_continuous", 107.59, 107_587_075),
    ("configs.vp.cifar10_ddpmpp_continuous", 61.80, 61_804_419),
    ("configs.vp.cifar10_ddpmpp_deep_continuous", 106.63, 106_632_579),
])
def test_cifar10_parameter_counts_match_authors(config_name, millions, exact):
  config = get_config(config_name)
  model = builders.build_model(config)
  assert isinstance(model, ncsnpp.NCSNpp)
  out, params = abstract_init(model, (2, 32, 32, 3))
  n = count(params)
  assert round(n / 1e6, 2) == millions
  assert n == exact
  assert out.shape == (2, 32, 32, 3) and out.dtype == jnp.float32


def test_subvp_and_vp_configs_share_the_architecture():
  # The sub-VP configs differ from the VP ones only in the SDE.
  for stem in ("cifar10_ddpmpp_continuous", "cifar10_ncsnpp_deep_continuous"):
    vp, subvp = get_config(f"configs.vp.{stem}"), get_config(f"configs.subvp.{stem}")
    assert subvp.training.sde == "subvpsde" and vp.training.sde == "vpsde"
    assert vp.model.to_dict() == subvp.model.to_dict()


@pytest.mark.parametrize("config_name", NCSNPP_CONFIGS)
def test_every_config_builds_without_torch(config_name):
  source = (CONFIG_DIR.parent / (config_name.replace(".", "/") + ".py")).read_text()
  assert "torch" not in source
  config = get_config(config_name)
  model = ncsnpp.NCSNpp.from_config(config)
  assert model.scale_by_sigma == (config.training.sde == "vesde")
  # Discrete models are conditioned on integer levels: only the positional embedding fits.
  assert config.training.continuous or model.embedding_type == "positional"
  assert model.centered == config.data.centered


# ----------------------------------------------------------------------------------------------
# Shapes for every image size and every architecture option.

@pytest.mark.parametrize("size, channels, ch_mult, attn", [
    (28, 1, (1, 2, 2), (7,)),    # MNIST-like: 28 -> 14 -> 7
    (32, 3, (1, 2), (16,)),
])
def test_output_shape_small_images(size, channels, ch_mult, attn):
  model = tiny_model(nf=8, ch_mult=ch_mult, attn_resolutions=attn)
  x = normal(0, (2, size, size, channels))
  y, _ = random_apply(model, x, jnp.array([0.1, 10.0]))
  assert y.shape == x.shape and y.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(y)))


@pytest.mark.parametrize("config_name, size", [
    ("configs.ve.celeba_ncsnpp", 64),
    ("configs.ve.bedroom_ncsnpp_continuous", 256),
])
def test_output_shape_large_images_abstract(config_name, size):
  config = get_config(config_name)
  model = ncsnpp.NCSNpp.from_config(config)
  labels_dtype = jnp.float32 if config.training.continuous else jnp.int32
  for channels in (1, 3):
    out, _ = abstract_init(model, (1, size, size, channels), labels_dtype)
    assert out.shape == (1, size, size, channels) and out.dtype == jnp.float32


# Together the cases use every value of every option, and all eight (fir, with_conv, up/down)
# resamplers (each compile costs seconds on CPU, so cases are combined).
OPTION_CASES = {
    # BigGAN blocks; FIR conv-downsampled input pyramid; Fourier embedding.
    "ncsnpp_cifar10": dict(),
    # Box/nearest pyramids, 'cat' combine, positional embedding, centered data, no rescale.
    "biggan_nofir_skips_cat": dict(fir=False, progressive="output_skip",
                                   progressive_input="input_skip", progressive_combine="cat",
                                   embedding_type="positional", centered=True, skip_rescale=False),
    # FIR conv-upsampled output pyramid, FIR input pyramid summed, an odd-length FIR kernel.
    "biggan_fir121_residual_skip_sum": dict(fir_kernel=(1, 2, 1), progressive="residual",
                                            progressive_input="input_skip"),
    # DDPM blocks with FIR resampling without convolutions.
    "ddpm_fir_noconv_skips": dict(resblock_type="ddpm", resamp_with_conv=False,
                                  progressive="output_skip"),
    # DDPM blocks, plain resampling; conv resamplers only in the pyramids; unconditional.
    "ddpm_nofir_residual_uncond": dict(resblock_type="ddpm", fir=False, resamp_with_conv=False,
                                       progressive="residual", conditional=False,
                                       nonlinearity="elu"),
    "ddpm_nofir_conv": dict(resblock_type="ddpm", fir=False, progressive_input="none"),
}


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_every_option_builds_runs_and_is_noise_conditional(case):
  model = small_model(**OPTION_CASES[case])
  # The same image under two noise levels: sigma for 'fourier', 999 t or a level for 'positional'.
  x = jnp.tile(normal(0, (1, 8, 8, 3)), (2, 1, 1, 1))
  labels = jnp.array([0.05, 20.0] if model.embedding_type == "fourier" else [3.0, 900.0])
  y, _ = random_apply(model, x, labels)
  assert y.shape == x.shape and y.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(y))) and float(jnp.std(y)) > 1e-2
  change = float(jnp.linalg.norm(y[0] - y[1]) / jnp.linalg.norm(y[0]))
  if model.conditional:
    assert change > 0.05
  else:
    # Equal up to float32 roundoff (XLA may vectorize batch entries differently).
    assert change < 1e-5


# ----------------------------------------------------------------------------------------------
# Mixed precision and rematerialization.

def test_mixed_precision_model_matches_float32():
  config = get_config("configs.ve.cifar10_ncsnpp_continuous")
  config.training.mixed_precision = True
  assert builders.build_model(config).dtype == jnp.bfloat16
  x = normal(0, (2, 8, 8, 3))
  labels = jnp.array([0.5, 5.0])
  y32, params = random_apply(small_model(), x, labels)
  model16 = small_model(dtype=jnp.bfloat16)
  params16 = jax.eval_shape(model16.init, jax.random.PRNGKey(1), x, labels)["params"]
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params16))
  y16 = fast_jit(model16.apply)({"params": params}, x, labels)
  assert y16.dtype == jnp.float32
  # About 40 roundings in sequence, normalizations re-scaling in between: errors grow like a
  # random walk, sqrt(40) u ~ 6 u; 16 u = 6 % leaves room for the FIR/attention sums.
  rel = float(jnp.linalg.norm(y16 - y32) / jnp.linalg.norm(y32))
  assert rel < 16 * BF16_U


def test_remat_changes_memory_not_math():
  """``remat``: the same parameter tree (checkpoints stay interchangeable), the same training
  output -- dropout masks included -- and the same gradients, computed with recomputation."""
  config = get_config("configs.vp.cifar10_ddpmpp_continuous")
  config.training.remat = True
  assert builders.build_model(config).remat
  x = normal(0, (4, 8, 8, 3))
  labels = jnp.array([0.1, 0.5, 2.0, 9.0])
  plain, rematted = small_model(dropout=0.3), small_model(dropout=0.3, remat=True)
  shapes = [jax.eval_shape(m.init, jax.random.PRNGKey(0), x, labels)["params"]
            for m in (plain, rematted)]
  assert jax.tree_util.tree_structure(shapes[0]) == jax.tree_util.tree_structure(shapes[1])
  params = random_params_like(shapes[0])

  def loss(model, p, seed=3):
    y = model.apply({"params": p}, x, labels, train=True,
                    rngs={"dropout": jax.random.PRNGKey(seed)})
    return jnp.mean(y ** 2)

  grad_fns = [jax.jit(jax.value_and_grad(functools.partial(loss, m))) for m in (plain, rematted)]
  (l0, g0), (l1, g1) = (f(params) for f in grad_fns)
  assert float(l0) == pytest.approx(float(l1), rel=1e-6)
  # Recomputation may reorder float32 sums: compare on the scale of the whole gradient (some
  # leaves, e.g. biases right before a GroupNorm, have a true gradient of 0 and only roundoff).
  scale = max(float(jnp.max(jnp.abs(a))) for a in jax.tree_util.tree_leaves(g0))
  for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale)
  # Dropout is on: another key gives another loss, so the match above includes the masks.
  other_key = float(jax.jit(functools.partial(loss, rematted, seed=4))(params))
  assert abs(other_key - float(l1)) > 1e-3 * abs(float(l1))
  # The compiled gradient really recomputes: more convolutions than the plain one. (XLA:CPU does
  # not schedule for memory, so the saving itself shows only on accelerators: the benchmark
  # case train/ddpmpp/fp32/remat measures it.)
  convs = [len(re.findall(r"= \S+ convolution\(", f.lower(params).compile().as_text()))
           for f in grad_fns]
  assert convs[1] > convs[0] > 0, convs


# ----------------------------------------------------------------------------------------------
# Conditioning and dropout.

# A tiny class-conditional network's architecture (positional embedding, DDPM blocks, no FIR).
TINY = dict(nf=8, ch_mult=(1, 2), attn_resolutions=(), num_res_blocks=1, progressive_input="none",
            fir=False, resblock_type="ddpm", embedding_type="positional", dropout=0.0)


def test_ncsnpp_class_embedding_adds_one_vector_per_class_and_the_null_label():
  x, t = jnp.ones((3, 8, 8, 1)), jnp.full((3,), 500.0)
  plain = NCSNpp(**TINY)
  plain_params = plain.init(jax.random.PRNGKey(0), x, t)["params"]
  model = NCSNpp(**TINY, num_classes=10)
  params = model.init(jax.random.PRNGKey(0), x, t)["params"]
  assert "ClassEmbedding_0" not in plain_params
  assert params["ClassEmbedding_0"]["embedding"].shape == (11, 4 * 8)  # 10 classes + null
  assert count(params) - count(plain_params) == 11 * 4 * 8
  params = jittered(params)
  apply = jax.jit(lambda y: model.apply({"params": params}, x, t, class_labels=y))
  null = jax.jit(lambda: model.apply({"params": params}, x, t))()
  np.testing.assert_allclose(null, apply(jnp.full((3,), 10)), rtol=1e-6, atol=1e-6)
  per_class = [apply(jnp.full((3,), k)) for k in (0, 1)]
  assert float(jnp.abs(per_class[0] - per_class[1]).max()) > 1e-4
  # Each example is conditioned on its own label only.
  mixed = apply(jnp.array([0, 1, 0]))
  np.testing.assert_allclose(mixed[1], per_class[1][1], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(mixed[2], per_class[0][2], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="unconditional network"):
    plain.apply({"params": plain_params}, x, t, class_labels=jnp.zeros(3, jnp.int32))
  with pytest.raises(ValueError, match="set model.conditional = True"):
    NCSNpp(**TINY, num_classes=10, conditional=False)


def test_dropout_active_only_in_training():
  # In the network: training needs a dropout rng (this fails while tracing), evaluation does not.
  model = small_model(dropout=0.5)
  x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
  labels = jax.ShapeDtypeStruct((2,), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, labels)
  jax.eval_shape(functools.partial(model.apply, train=False), params, x, labels)
  with pytest.raises(Exception, match="dropout"):
    jax.eval_shape(functools.partial(model.apply, train=True), params, x, labels)
  # In the blocks, numerically (far cheaper to compile than the network).
  block = layerspp.ResnetBlockBigGANpp(act=jax.nn.swish, dropout=0.5)
  h, temb = normal(0, (2, 4, 4, 8)), normal(1, (2, 16))
  shapes = jax.eval_shape(block.init, jax.random.PRNGKey(2), h, temb)["params"]
  params = {"params": random_params_like(shapes)}
  y_eval = fast_jit(block.apply)(params, h, temb)
  apply_train = fast_jit(lambda p, h, t, key: block.apply(p, h, t, train=True,
                                                          rngs={"dropout": key}))
  y1 = apply_train(params, h, temb, jax.random.PRNGKey(1))
  y2 = apply_train(params, h, temb, jax.random.PRNGKey(2))
  assert float(jnp.linalg.norm(y1 - y_eval) / jnp.linalg.norm(y_eval)) > 0.05
  assert float(jnp.linalg.norm(y1 - y2) / jnp.linalg.norm(y1)) > 0.05


# ----------------------------------------------------------------------------------------------
# A few training steps.

def test_tiny_ncsnpp_learns_denoising():
  """VE denoising score matching, ``out ~ sigma * score = -z``, on two mirrored 8x8 images."""
  model = ncsnpp.NCSNpp(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                        dropout=0.0, centered=True, scale_by_sigma=True)
  rng = np.random.RandomState(0)
  template = np.sign(rng.randn(1, 8, 8, 1)) * 0.8

  def batch(n=16):
    # Drawn in numpy: threefry inside the jitted step would dominate its compile time on CPU.
    sign = rng.choice([-1.0, 1.0], size=(n, 1, 1, 1))
    sigma = np.exp(rng.uniform(np.log(0.05), np.log(2.0), size=n))
    z = rng.randn(n, 8, 8, 1)
    x = sign * template + sigma[:, None, None, None] * z
    return tuple(jnp.asarray(a, jnp.float32) for a in (x, sigma, z))

  def loss_fn(params, data):
    x, sigma, z = data
    out = model.apply({"params": params}, x, sigma)
    return jnp.mean(jnp.sum((out + z) ** 2, axis=(1, 2, 3))) / 64

  params = random_params(model, *batch()[:2])
  opt = optax.adam(3e-3)
  opt_state = opt.init(params)

  @fast_jit
  def step(params, opt_state, data):
    loss, grads = jax.value_and_grad(loss_fn)(params, data)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for _ in range(60):
    params, opt_state, loss = step(params, opt_state, batch())
    losses.append(float(loss))
  # A batch loss varies by ~15 % with its 16 sampled sigmas (z alone gives sqrt(2 / 1024) =
  # 4 %), so a mean of five batches varies by ~7 %: a drop below 70 % is no accident.
  before, after = np.mean(losses[:5]), np.mean(losses[-5:])
  assert after < 0.7 * before


# ----------------------------------------------------------------------------------------------
# Clear errors before any compilation.

@pytest.mark.parametrize("field, value", [
    ("progressive", "output"), ("progressive_input", "skip"), ("resblock_type", "resnet"),
    ("embedding_type", "learned"), ("progressive_combine", "mean"), ("nonlinearity", "gelu2"),
])
def test_unknown_option_names_fail_on_construction(field, value):
  with pytest.raises(ValueError, match=value):
    tiny_model(**{field: value})


def test_config_errors_are_raised_by_from_config():
  config = get_config("configs.ve.cifar10_ncsnpp_continuous")
  config.data.image_size = 36          # 4 resolutions need a multiple of 8
  with pytest.raises(ValueError, match="divisible"):
    ncsnpp.NCSNpp.from_config(config)
  config = get_config("configs.ve.cifar10_ncsnpp_continuous")
  config.training.continuous = False   # integer levels cannot go through log(sigma)
  with pytest.raises(ValueError, match="positional"):
    ncsnpp.NCSNpp.from_config(config)
  config = get_config("configs.ve.cifar10_ncsnpp_continuous")
  config.model.resblock_type = "resnet"
  with pytest.raises(ValueError, match="resblock_type"):
    ncsnpp.NCSNpp.from_config(config)


def test_bad_image_size_fails_while_tracing():
  model = tiny_model()                 # 3 resolutions: sizes must be multiples of 4
  x = jax.ShapeDtypeStruct((1, 18, 18, 3), jnp.float32)
  labels = jax.ShapeDtypeStruct((1,), jnp.float32)
  with pytest.raises(ValueError, match="divisible"):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), x, labels)


def test_registered_and_documented():
  assert mutils.get_model("ncsnpp").__self__ is ncsnpp.NCSNpp
  assert "scale_by_sigma" in inspect.signature(ncsnpp.NCSNpp).parameters


def test_fused_group_norm_leaves_output_and_gradient_unchanged(monkeypatch):
  # The network's GroupNorm (models.normalization, activation fused, backward recomputed) is
  # flax's GroupNorm followed by the activation, to float32 round-off: same parameter tree,
  # same output, same gradient of a loss.
  import flax.linen as nn
  from models import normalization

  class GroupNorm(nn.GroupNorm):  # flax's, called as the network calls the fused one
    def __call__(self, x, act=None):
      y = super().__call__(x)
      return y if act is None else act(y)

  model = tiny_model(nf=8)
  x = normal(3, (2, 16, 16, 3))
  labels = jnp.array([0.3, 0.8])
  params = random_params(model, x, labels)

  def loss_and_grad():
    return jax.jit(jax.value_and_grad(
        lambda p: jnp.mean(jnp.square(model.apply({"params": p}, x, labels)))))(params)

  fused_loss, fused_grad = loss_and_grad()
  monkeypatch.setattr(normalization, "GroupNorm", GroupNorm)
  flax_loss, flax_grad = loss_and_grad()
  assert jax.tree_util.tree_structure(fused_grad) == jax.tree_util.tree_structure(flax_grad)
  np.testing.assert_allclose(fused_loss, flax_loss, rtol=1e-5)
  # Some gradients are zero in exact arithmetic (a bias that GroupNorm subtracts again): the
  # tolerance is relative to the largest gradient of all.
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(flax_grad))
  for got, want in zip(jax.tree_util.tree_leaves(fused_grad), jax.tree_util.tree_leaves(flax_grad)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)
