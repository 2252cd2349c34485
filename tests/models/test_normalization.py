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
