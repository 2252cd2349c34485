"""dequantization.py and the variational dequantizer against answers computed directly.

The answer that is known: a discretized Gaussian. Data ``v`` in {0, ..., L - 1} take the mass of a
Gaussian density ``p`` of ``y`` on the bins ``[v / L, (v + 1) / L)``; its exact bits/dim is
``-log2 P(v)``, ``P`` from the normal CDF. Uniform dequantization pays Jensen's gap on top,
``E_u[-log2 p_w(v + u)]``, a one-dimensional integral per level; the best ``q(u | v)`` is ``p``
restricted to the bin, which closes the gap.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import integrate, stats

import dequantization
from models.dequantizer import Dequantizer, checkerboard

BITS = 2
LEVELS = 2 ** BITS
MEAN, STD = 0.45, 0.12   # of y in [0, 1): the bins are 0.25 wide, the density far from flat
SHAPE = (4, 4, 1)


def _nll(y):
  """Exact ``-log p(y)`` (nats) of the Gaussian, summed over each example, ``[B]``."""
  logp = -0.5 * ((y - MEAN) / STD) ** 2 - jnp.log(STD * jnp.sqrt(2 * jnp.pi))
  return -jnp.sum(logp, axis=tuple(range(1, y.ndim)))


def _level_probs():
  edges = np.arange(LEVELS + 1) / LEVELS
  cdf = stats.norm.cdf(edges, MEAN, STD)
  cdf[0], cdf[-1] = 0.0, 1.0  # the outer bins take the tails
  return np.diff(cdf)


def _draw_images(seed, n):
  """Data-space images ``v / (L - 1)`` with i.i.d. levels from the discretized Gaussian."""
  levels = np.random.default_rng(seed).choice(LEVELS, size=(n,) + SHAPE, p=_level_probs())
  return jnp.asarray(levels / (LEVELS - 1), jnp.float32), levels


def test_offsets_put_every_scaling_on_the_integer_scale():
  assert dequantization.bits_offset("uniform", centered=False) == 8.0
  assert dequantization.bits_offset("uniform", centered=True) == 7.0
  assert dequantization.bits_offset("variational", centered=True, num_bits=5) == 4.0
  assert dequantization.bits_offset("none", centered=False) == pytest.approx(np.log2(255.0))
  # Uniform data on [0, 2^8]^D have exactly 8 bits/dim: 0 bits/dim on [0, 1]^D, 1 on [-1, 1]^D.
  assert 1.0 + dequantization.bits_offset("uniform", centered=True) == 8.0
  with pytest.raises(ValueError, match="num_bits must be in 1..8"):
    dequantization.bits_offset("uniform", centered=True, num_bits=0)
  with pytest.raises(ValueError, match="none, uniform, variational"):
    dequantization.bits_offset("logistic", centered=True)


def test_dequantize_maps_levels_into_their_bins():
  images, levels = _draw_images(0, 8)
  for centered in (False, True):
    scaler = (lambda x: 2 * x - 1) if centered else (lambda x: x)
    y, log_q = dequantization.dequantize(jax.random.PRNGKey(0), images, kind="uniform",
                                         num_bits=BITS, scaler=scaler)
    w = (np.asarray(y) + 1) / 2 * LEVELS if centered else np.asarray(y) * LEVELS
    assert np.all(np.floor(w) == levels) and np.all(np.asarray(log_q) == 0)
    y, _ = dequantization.dequantize(jax.random.PRNGKey(0), images, kind="none", num_bits=BITS,
                                     scaler=scaler)
    np.testing.assert_allclose(y, scaler(images))


def _uniform_bits_per_level():
  """``E_u[-log2 p_w(v + u)]`` per level by quadrature: ``p_w(w) = p(w / L) / L``."""
  def integrand(u, v):
    return -stats.norm.logpdf((v + u) / LEVELS, MEAN, STD) / np.log(2) + np.log2(LEVELS)
  return np.array([integrate.quad(integrand, 0, 1, args=(v,))[0] for v in range(LEVELS)])


def test_uniform_bits_of_a_discretized_gaussian_match_the_direct_integral():
  images, levels = _draw_images(1, 2000)
  offset = dequantization.bits_offset("uniform", centered=False, num_bits=BITS)
  y, _ = dequantization.dequantize(jax.random.PRNGKey(1), images, kind="uniform", num_bits=BITS,
                                   scaler=lambda x: x)
  bits = np.asarray(_nll(y)) / (np.prod(SHAPE) * np.log(2)) + offset
  direct = _uniform_bits_per_level()[levels].mean(axis=(1, 2, 3))
  stderr = (bits - direct).std() / np.sqrt(len(bits))
  assert abs((bits - direct).mean()) < 4 * stderr
  # And above the exact discrete bits/dim, by Jensen's gap.
  exact = -np.log2(_level_probs())[levels].mean(axis=(1, 2, 3))
  assert bits.mean() > exact.mean() + 0.05


def test_a_fresh_dequantizer_is_uniform():
  model = Dequantizer(hidden=8, num_couplings=2)
  images, _ = _draw_images(2, 4)
  u0 = dequantization.uniform_noise(jax.random.PRNGKey(0), images.shape)
  params = model.init(jax.random.PRNGKey(1), u0, images)
  u, log_q = model.apply(params, u0, images)
  np.testing.assert_allclose(u, u0, atol=1e-6)
  np.testing.assert_allclose(log_q, 0.0, atol=1e-4)
  assert checkerboard(2, 2, 0)[0, :, :, 0].tolist() == [[1, 0], [0, 1]]


def test_log_q_is_the_density_of_the_draws():
  """With random (non-zero) weights, ``log q`` equals minus the log-determinant of ``u0 -> u``
  computed by autodiff on one image (16 dimensions)."""
  model = Dequantizer(hidden=8, num_couplings=3)
  images, _ = _draw_images(3, 1)
  u0 = dequantization.uniform_noise(jax.random.PRNGKey(0), images.shape)
  params = model.init(jax.random.PRNGKey(1), u0, images)
  params = jax.tree_util.tree_map(
      lambda p: p + 0.3 * jax.random.normal(jax.random.PRNGKey(2), p.shape), params)
  _, log_q = model.apply(params, u0, images)
  flat = lambda v: model.apply(params, v.reshape(u0.shape), images)[0].reshape(-1)
  jacobian = jax.jacfwd(flat)(u0.reshape(-1))
  np.testing.assert_allclose(log_q[0], -np.linalg.slogdet(np.asarray(jacobian, np.float64))[1],
                             rtol=1e-3, atol=1e-3)


def test_trained_dequantizer_beats_uniform_and_stays_above_the_exact_answer():
  model = Dequantizer(hidden=16, num_couplings=4)
  offset = dequantization.bits_offset("variational", centered=False, num_bits=BITS)
  loss_fn = dequantization.get_loss_fn(model, lambda rng, y: _nll(y), num_bits=BITS,
                                       scaler=lambda x: x, offset=offset)
  images, _ = _draw_images(4, 64)
  params = model.init(jax.random.PRNGKey(0), images, images)
  optimizer = optax.adam(3e-3)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, rng, batch):
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rng, batch)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  for k in range(400):
    batch, _ = _draw_images(100 + k, 64)
    params, opt_state, _ = step(params, opt_state, jax.random.PRNGKey(k), batch)
  test_images, levels = _draw_images(7, 4000)
  per_example = jax.jit(functools.partial(loss_fn, params))
  variational = np.array([float(per_example(jax.random.PRNGKey(10_000 + i), batch)[0])
                          for i, batch in enumerate(np.split(np.asarray(test_images), 40))])
  uniform = _uniform_bits_per_level()[levels].mean()
  exact = -np.log2(_level_probs())[levels].mean()
  stderr = variational.std() / np.sqrt(len(variational))
  assert uniform - exact > 0.1                      # the gap there is to close
  assert variational.mean() < uniform - 0.5 * (uniform - exact)
  assert variational.mean() > exact - 4 * stderr    # never below the exact answer
