"""Normalization layers (``models.normalization``): InstanceNorm++ and its class-conditional form
against their formula, and every normalization per example and in the model's dtype."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import normalization
from tests.models.tiny_networks import KEY


def _perturbed(params, scale=0.1):
  """Small params plus noise (so the scales and shifts under test are not all 1 and 0)."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  noisy = [p + scale * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
  return jax.tree_util.tree_unflatten(treedef, noisy)


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


def _group_norm_reference(x, scale, bias, groups, eps):
  """GroupNorm in float64 numpy, with the two-pass variance."""
  x = np.asarray(x, np.float64)
  grouped = x.reshape(x.shape[:-1] + (groups, x.shape[-1] // groups))
  axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)
  mean = grouped.mean(axis=axes, keepdims=True)
  var = grouped.var(axis=axes, keepdims=True)
  return ((grouped - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias


@pytest.mark.parametrize("act", [None, jax.nn.silu, jax.nn.relu])
@pytest.mark.parametrize("shape", [(3, 6, 5, 8), (2, 7, 12)])
def test_group_norm_value_and_gradient(act, shape):
  # The layer's value against float64, and its derivatives (which recompute the normalized map
  # from x and the saved statistics) against autodiff of flax's GroupNorm and the activation.
  x = 2.0 + 3.0 * jax.random.normal(KEY, shape)
  groups = 4 if shape[-1] == 8 else 3
  fused = normalization.GroupNorm(num_groups=groups, epsilon=1e-6)
  flax_norm = nn.GroupNorm(num_groups=groups, epsilon=1e-6)
  params = _perturbed(jax.jit(fused.init)(KEY, x)["params"], scale=0.5)
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
      flax_norm.init(KEY, x)["params"])
  act_np = {None: lambda v: v, jax.nn.silu: lambda v: v / (1 + np.exp(-v)),
            jax.nn.relu: lambda v: np.maximum(v, 0)}[act]
  expected = act_np(_group_norm_reference(x, params["scale"], params["bias"], groups, 1e-6))
  out = jax.jit(lambda p, x: fused.apply({"params": p}, x, act))(params, x)
  np.testing.assert_allclose(out, expected, rtol=2e-5, atol=2e-5)

  def through_flax(p, x):
    y = flax_norm.apply({"params": p}, x)
    return y if act is None else act(y)

  # Forward mode too (the likelihood's divergence is a Jacobian-vector product).
  tangents = _perturbed(params, scale=1.0), jax.random.normal(jax.random.PRNGKey(6), shape)
  _, jvp = jax.jvp(lambda p, x: fused.apply({"params": p}, x, act), (params, x), tangents)
  _, want_jvp = jax.jvp(through_flax, (params, x), tangents)
  np.testing.assert_allclose(jvp, want_jvp, rtol=1e-5,
                             atol=1e-5 * float(jnp.max(jnp.abs(want_jvp))))

  cotangent = jax.random.normal(jax.random.PRNGKey(7), shape)
  grads = jax.jit(lambda p, x: jax.vjp(lambda p, x: fused.apply({"params": p}, x, act),
                                       p, x)[1](cotangent))(params, x)
  want = jax.jit(lambda p, x: jax.vjp(through_flax, p, x)[1](cotangent))(params, x)
  for got, ref in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(ref))))


def test_group_norm_in_bfloat16_rounds_once():
  # Statistics and the backward pass run in float32; results are within one bf16 rounding of
  # the float32 computation, and gradients keep the dtypes of x and of the parameters.
  x = (1.0 + 2.0 * jax.random.normal(KEY, (2, 4, 4, 8))).astype(jnp.bfloat16)
  norm16 = normalization.GroupNorm(num_groups=2, dtype=jnp.bfloat16)
  norm32 = normalization.GroupNorm(num_groups=2, dtype=jnp.float32)
  params = _perturbed(norm16.init(KEY, x)["params"])
  out16 = norm16.apply({"params": params}, x, jax.nn.silu)
  out32 = norm32.apply({"params": params}, x.astype(jnp.float32), jax.nn.silu)
  assert out16.dtype == jnp.bfloat16
  np.testing.assert_allclose(out16.astype(jnp.float32), out32, rtol=2 ** -7, atol=2 ** -7)
  dparams, dx = jax.grad(lambda p, x: jnp.sum(norm16.apply({"params": p}, x, jax.nn.silu)
                                               .astype(jnp.float32)), argnums=(0, 1))(params, x)
  assert dx.dtype == jnp.bfloat16
  assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(dparams))


def test_group_norm_needs_groups_dividing_channels():
  with pytest.raises(ValueError, match="3 groups needs a channel count divisible by it, got 8"):
    normalization.GroupNorm(num_groups=3).init(KEY, jnp.ones((1, 2, 2, 8)))
