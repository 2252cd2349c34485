"""Tests of losses.py: the objectives are minimized by the exact score, the discrete
objectives are discretizations of the continuous ones, and the train/eval steps are right;
the classifier's objective perturbs with the SDE, and a class-conditional loss is the DSM of the
conditional score, dropping labels only in training.

Statistical checks use paired draws (same rng) and compare a sample mean with its expected
value to within ``Z_TOL`` standard errors, the standard error being estimated from the same
per-example samples (``sd / sqrt(B)``); everything is seeded, so results are deterministic.
"""

import functools
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from scipy import stats

import builders
import losses
import sde_lib
from models import predictions
from models import utils as mutils
from tests import oracles
from tests.models.tiny_networks import jittered
from tests.runs import toy_config

Z_TOL = 5.0  # standard errors; a correct implementation fails with probability < 1e-6
EPS = 1e-5

SDES = {
    "ve": lambda: sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=1000),
    "vp": lambda: sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000),
    "subvp": lambda: sde_lib.subVPSDE(beta_min=0.1, beta_max=20.0, N=1000),
}


def _sample(mixture, n, seed):
  """``n`` draws from an oracle mixture, in numpy: the same law as ``mixture.sample`` without
  compiling a sampler for every batch size."""
  rng = np.random.default_rng(seed)
  k = rng.choice(len(mixture.weights), size=n, p=mixture.weights)
  chol = np.linalg.cholesky(mixture.covs)
  x = mixture.means[k] + np.einsum("nij,nj->ni", chol[k], rng.normal(size=(n, mixture.dim)))
  return jnp.asarray(x.reshape((n,) + mixture.event_shape), jnp.float32)


def _assert_mean_zero(samples, what):
  samples = np.asarray(samples, np.float64)
  se = samples.std(ddof=1) / np.sqrt(samples.size)
  assert abs(samples.mean()) <= Z_TOL * se, f"{what}: mean {samples.mean():.4g}, SE {se:.3g}"


# ----------------------------------------------------------------------------- the exact score


def _gaussian_score(data, sde):
  """Exact score of Gaussian data, -Sigma_t^{-1} (x - a mu), via the eigenbasis of C: an
  independent (and cheaper to compile) alternative to the oracle's generic mixture score."""
  eig, vecs = (jnp.asarray(v, jnp.float32) for v in np.linalg.eigh(data.covs[0]))
  mu = jnp.asarray(data.means[0], jnp.float32)

  def score_fn(y, t):
    a = sde.mean_coeff(t)
    std = sde.marginal_prob(jnp.zeros_like(y), t)[1]
    diff = y.reshape(y.shape[0], -1) - a[:, None] * mu
    inv = 1.0 / (a[:, None] ** 2 * eig + std[:, None] ** 2)
    return (((diff @ vecs) * inv) @ vecs.T).reshape(y.shape) * -1.0

  return score_fn


@functools.lru_cache(maxsize=None)
def _gaussian_draws(batch=4096):
  data = oracles.image_gaussian()
  t_rng, z_rng = jax.random.split(jax.random.PRNGKey(0))
  x = _sample(data, batch, seed=0)
  t = jax.random.uniform(t_rng, (batch,), minval=EPS, maxval=1.0)
  z = jax.random.normal(z_rng, x.shape)
  return data, x, t, z


@pytest.mark.parametrize("name", sorted(SDES))
def test_dsm_exact_score_is_the_minimum(name):
  """DSM(s) = DSM(s*) + E[lambda ||s - s*||^2]: checked term by term on paired draws, for
  lambda = std^2 and lambda = g^2 (likelihood weighting).

  For Gaussian data N(mu, C), p_t = N(a mu, Sigma_t = a^2 C + std^2 I) and the minimum has
  the closed form E[DSM(s*) | t] = lambda(t) (D / std^2 - tr Sigma_t^{-1}). For s = s* + delta
  and s = (1 + c) s* the excess loss minus lambda ||s - s*||^2 is a cross term with mean 0.
  The public, rng-driven ``sde_loss`` must also be lowest at s* (paired rng).
  """
  sde = SDES[name]()
  data, x, t, z = _gaussian_draws()
  exact = data.score_fn(sde)

  @jax.jit
  def evaluate(scale, delta):
    # One compiled program for every perturbation s = scale * s* + delta and both weightings.
    score_fn = lambda y, s: scale * exact(y, s) + delta
    out = {}
    for weighted in (False, True):
      out[weighted] = (
          losses.dsm_losses(score_fn, sde, x, t, z, likelihood_weighting=weighted),
          losses.sde_loss(score_fn, sde, jax.random.PRNGKey(2), x[:1024],
                          likelihood_weighting=weighted))
    mean, std = sde.marginal_prob(x, t)
    coefficients = (sde.mean_coeff(t), std, sde.sde(x, t)[1] ** 2)
    x_t = mean + sde_lib.batch_mul(std, z)
    return out, exact(x_t, t), _gaussian_score(data, sde)(x_t, t), coefficients

  zero = jnp.zeros(x.shape[1:])
  at_exact, exact_at_xt, closed_form_score, coefficients = evaluate(1.0, zero)
  # The oracle's generic mixture score agrees with the Gaussian's closed form.
  np.testing.assert_allclose(closed_form_score, exact_at_xt, rtol=1e-3, atol=1e-3)
  a, std, g2 = (np.asarray(c, np.float64) for c in coefficients)
  exact_sq_norm = np.sum(np.asarray(exact_at_xt, np.float64).reshape(x.shape[0], -1)**2, axis=1)
  direction = jax.random.normal(jax.random.PRNGKey(7), x.shape[1:])
  # (scale, delta, ||s - s*||^2 at x_t)
  perturbations = [(1.0, c * direction, c**2 * float(jnp.sum(direction**2)))
                   for c in (0.05, 0.3, 1.0)]
  perturbations += [(1.0 + c, zero, c**2 * exact_sq_norm) for c in (-0.5, -0.1, 0.1, 0.5)]
  results = [evaluate(scale, delta)[0] for scale, delta, _ in perturbations]

  # The minimum's closed form, from the eigenvalues of C (float64 numpy).
  eig = np.linalg.eigvalsh(data.covs[0])
  tr_inv = np.sum(1.0 / (a[:, None] ** 2 * eig[None, :] + std[:, None] ** 2), axis=1)
  for weighted in (False, True):
    lam = g2 if weighted else std**2
    loss_exact = np.asarray(at_exact[weighted][0], np.float64)
    _assert_mean_zero(loss_exact - lam * (data.dim / std**2 - tr_inv),
                      f"weighted={weighted}: DSM(s*) - closed form")
    for (scale, delta, sq_dist), result in zip(perturbations, results):
      loss, public = np.asarray(result[weighted][0], np.float64), result[weighted][1]
      what = f"weighted={weighted}, scale {scale}, shift {float(jnp.abs(delta).max()):.3g}"
      assert loss.mean() > loss_exact.mean(), what
      assert float(public) > float(at_exact[weighted][1]), what
      _assert_mean_zero(loss - loss_exact - lam * sq_dist, what)


# ----------------------------------------------------------------------------- delta data


def _x0_batch(batch=512, shape=(3,)):
  x0 = jnp.array([0.7, -1.3, 0.2]).reshape(shape)
  return x0, jnp.broadcast_to(x0, (batch,) + shape)


@pytest.mark.parametrize("likelihood_weighting", [False, True])
@pytest.mark.parametrize("name", sorted(SDES))
def test_sde_loss_zero_for_point_data(name, likelihood_weighting):
  """For data at one point x0 the kernel's own score -(x - mean(x0, t)) / std^2 is exact,
  so the loss vanishes; a wrong kernel (mean, std, or time) would leave a loss of order D."""
  sde = SDES[name]()
  x0, x = _x0_batch()

  def score_fn(y, t):
    mean, std = sde.marginal_prob(jnp.broadcast_to(x0, y.shape), t)
    return sde_lib.batch_mul(-1.0 / std**2, y - mean)

  loss = losses.sde_loss(score_fn, sde, jax.random.PRNGKey(0), x,
                         likelihood_weighting=likelihood_weighting)
  assert loss.dtype == jnp.float32
  # float32 rounding of x_t - mean is ~1e-7 |x0|, amplified by 1/std (and g / std when weighted).
  assert float(loss) < 1e-3
  shifted = losses.sde_loss(lambda y, t: score_fn(y, t) + 0.1, sde, jax.random.PRNGKey(0), x,
                            likelihood_weighting=likelihood_weighting)
  assert float(shifted) > 1e-2


def _label(sde, t):
  """The integer label a discretely trained model gets at time t (models.utils' convention)."""
  return jnp.round(t * (sde.N - 1)).astype(jnp.int32)


def test_smld_loss_zero_for_point_data():
  """The SMLD level i is paired with sigma_i and with the time t_i that models.utils maps
  back to the label i; the exact point-data score at sigma_i zeroes the loss."""
  sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=10)
  x0, x = _x0_batch()

  def score_fn(y, t):
    sigma = sde.discrete_sigmas()[_label(sde, t)]
    return sde_lib.batch_mul(-1.0 / sigma**2, y - x0)

  assert float(losses.discrete_loss(score_fn, sde, jax.random.PRNGKey(0), x)) < 1e-6
  wrong_level = lambda y, t: score_fn(y, jnp.minimum(t + 1.0 / (sde.N - 1), 1.0))
  assert float(losses.discrete_loss(wrong_level, sde, jax.random.PRNGKey(0), x)) > 0.1


def test_ddpm_loss_zero_for_point_data_with_discrete_kernel():
  """DDPM perturbs with (a_i, s_i) = discrete_marginal(i), not the continuous kernel at t_i:
  the discrete kernel's score zeroes the loss, the continuous one's does not (O(1/N) off)."""
  sde = sde_lib.VPSDE(N=50)  # DDPM needs beta_max / N < 1
  x0, x = _x0_batch()

  def discrete_score(y, t):
    a, s = sde.discrete_marginal(_label(sde, t))
    return sde_lib.batch_mul(-1.0 / s**2, y - sde_lib.batch_mul(a, jnp.broadcast_to(x0, y.shape)))

  def continuous_score(y, t):
    mean, std = sde.marginal_prob(jnp.broadcast_to(x0, y.shape), t)
    return sde_lib.batch_mul(-1.0 / std**2, y - mean)

  rng = jax.random.PRNGKey(0)
  assert float(losses.discrete_loss(discrete_score, sde, rng, x, reduce_mean=True)) < 1e-6
  assert float(losses.discrete_loss(continuous_score, sde, rng, x, reduce_mean=True)) > 1e-2


def _record_times(loss, sde, batch=20000):
  """Runs ``loss`` eagerly with a score function that records the times it is asked for."""
  seen = []

  def score_fn(y, t):
    seen.append(np.asarray(t))
    return jnp.zeros_like(y)

  loss(score_fn, sde, jax.random.PRNGKey(5), jnp.zeros((batch, 2)))
  return np.concatenate(seen)


@pytest.mark.parametrize("loss, sde", [(losses.discrete_loss, sde_lib.VESDE(N=10)),
                                       (losses.discrete_loss, sde_lib.VPSDE(N=25))])
def test_discrete_levels_uniform_on_grid(loss, sde):
  t = _record_times(loss, sde)
  levels = t * (sde.N - 1)
  np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)  # t on the grid i / (N - 1)
  counts = np.bincount(np.round(levels).astype(int), minlength=sde.N)
  assert counts.size == sde.N
  chi2 = stats.chisquare(counts)
  assert chi2.pvalue > 1e-6, counts


def test_continuous_times_uniform():
  sde = sde_lib.VPSDE()
  t = _record_times(losses.sde_loss, sde)
  assert t.min() >= EPS and t.max() <= sde.T
  assert stats.kstest(t, stats.uniform(loc=EPS, scale=sde.T - EPS).cdf).pvalue > 1e-6


# --------------------------------------------------------------------------- discrete vs continuous


def _level_draws(n_levels=64, batch_per_level=8):
  data = oracles.image_gaussian()
  fractions = np.linspace(0.05, 1.0, n_levels).repeat(batch_per_level)
  x = _sample(data, fractions.size, seed=11)
  z = jax.random.normal(jax.random.PRNGKey(11), x.shape)
  return data, fractions, x, z


def test_smld_equals_continuous_ve_on_its_grid():
  """SMLD's level-i loss is the continuous VE loss at t_i = i / (N - 1): sigma_i = sigma(t_i)."""
  sde = sde_lib.VESDE(N=100)
  data, fractions, x, z = _level_draws()
  levels = jnp.asarray(np.round(fractions * (sde.N - 1)).astype(np.int32))
  t = levels / (sde.N - 1)
  score_fn = _gaussian_score(data, sde)
  discrete, continuous = jax.jit(lambda: (losses.discrete_losses(score_fn, sde, x, levels, z),
                                          losses.dsm_losses(score_fn, sde, x, t, z)))()
  # Only float32 rounding separates sigma_i = discrete_sigmas()[i] from sigma(t_i).
  np.testing.assert_allclose(discrete, continuous, rtol=1e-4, atol=1e-5)


def test_ddpm_converges_to_continuous_vp_at_rate_one_over_n():
  """DDPM is the discretization of VP DSM: with the same x, z and t_i = i / (N - 1), the
  per-example DDPM loss (sum over dims) approaches the continuous one with error O(1/N).

  Why O(1/N): log alpha_bar_i = sum_{j <= i} log(1 - beta(t_j) / N) is a Riemann sum of
  -int_0^{t_i} beta with step 1/N on a grid spaced 1/(N-1), off by O(1/N).
  """
  data, fractions, x, z = _level_draws()
  errors = []
  n_values = (25, 100, 400)
  for n in n_values:
    sde = sde_lib.VPSDE(N=n)
    levels = jnp.asarray(np.round(fractions * (n - 1)).astype(np.int32))
    score_fn = _gaussian_score(data, sde)
    discrete, continuous = jax.jit(lambda lv, sde=sde, f=score_fn: (
        losses.discrete_losses(f, sde, x, lv, z, reduce_mean=False),
        losses.dsm_losses(f, sde, x, lv / (sde.N - 1), z)))(levels)
    errors.append(float(jnp.max(jnp.abs(discrete - continuous))))
    relative_mean_error = float(jnp.mean(jnp.abs(discrete - continuous)) / jnp.mean(continuous))
  slope = np.polyfit(np.log(n_values), np.log(errors), 1)[0]
  assert -1.25 < slope < -0.75, (errors, slope)
  assert relative_mean_error < 0.02  # at N = 400 (about 8 / N)


# ----------------------------------------------------------------------------- dtype and jit


def test_losses_float32_for_low_precision_scores_and_jittable():
  x = _sample(oracles.image_gaussian(), 64, seed=0)
  score_fn = lambda y, t: sde_lib.batch_mul(-1.0 / (0.1 + t), y - 0.2)
  low = lambda y, t: score_fn(y, t).astype(jnp.bfloat16)
  rng = jax.random.PRNGKey(1)
  cases = ((losses.sde_loss, sde_lib.VPSDE(N=100)), (losses.discrete_loss, sde_lib.VESDE(N=100)))
  results = jax.jit(lambda r, y: [(loss(score_fn, sde, r, y), loss(low, sde, r, y))
                                  for loss, sde in cases])(rng, x)
  for full, reduced in results:
    assert reduced.dtype == jnp.float32 and reduced.shape == ()
    np.testing.assert_allclose(reduced, full, rtol=5e-2)  # bf16 has an 8-bit mantissa


# ----------------------------------------------------------------------------- loss_fn and model


@functools.lru_cache(maxsize=None)
def _toy_model():
  config = ml_collections.ConfigDict({
      "model": {"name": "toy_mlp", "nf": 64, "num_blocks": 2},
      "data": {"dim": 2},
      "training": {"mixed_precision": False},
  })
  return builders.init_model(jax.random.PRNGKey(0), config)


TOY_BATCH = 64


@functools.lru_cache(maxsize=None)
def _toy_training():
  """The VP toy problem's jitted functions, compiled once and shared by the step tests."""
  model, params = _toy_model()
  sde = sde_lib.VPSDE()
  optimizer = losses.get_optimizer(3e-3, warmup=20)
  loss_fn = losses.get_loss_fn(sde, model, train=True)
  step_fn = losses.get_step_fn(loss_fn, optimizer, train=True, ema_rate=0.9)

  return dict(model=model, params=params, sde=sde, optimizer=optimizer,
              state=losses.init_train_state(jax.random.PRNGKey(3), params, optimizer),
              single=jax.jit(step_fn), multi=jax.jit(losses.get_multi_step_fn(step_fn)))


def _toy_batches(n, seed=1):
  data = oracles.two_moons_mixture()
  return _sample(data, n * TOY_BATCH, seed).reshape(n, TOY_BATCH, 2)


def test_get_loss_fn_discrete_rejects_other_sdes():
  model, _ = _toy_model()
  with pytest.raises(ValueError, match="VESDE.*VPSDE"):
    losses.get_loss_fn(sde_lib.subVPSDE(), model, train=True, continuous=False)
  with pytest.raises(ValueError, match="likelihood_weighting"):
    losses.get_loss_fn(sde_lib.VPSDE(), model, train=True, continuous=False,
                       likelihood_weighting=True)


@pytest.mark.parametrize("sde, continuous, loss", [
    (sde_lib.subVPSDE(N=100), True, losses.sde_loss),
    (sde_lib.VPSDE(N=100), False, losses.discrete_loss),
    (sde_lib.VESDE(N=100), False, losses.discrete_loss),
])
def test_get_loss_fn_dispatch(sde, continuous, loss):
  """loss_fn = the matching objective on the network's score, with the noise half of the rng."""
  model, params = _toy_model()
  batch = _sample(oracles.two_moons_mixture(), 128, seed=1)
  rng = jax.random.PRNGKey(2)
  loss_fn = losses.get_loss_fn(sde, model, train=False, continuous=continuous, reduce_mean=True)

  @jax.jit
  def both(params):
    score_fn = mutils.get_score_fn(sde, model, params, train=False, continuous=continuous)
    expected = loss(score_fn, sde, jax.random.split(rng)[1], batch, reduce_mean=True)
    return loss_fn(params, rng, batch), expected

  got, expected = both(params)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


# ----------------------------------------------------------------------------- optimizer


def test_lr_schedule_values():
  schedule = losses.get_lr_schedule(2e-4, 10)
  for k in range(25):
    np.testing.assert_allclose(schedule(k), 2e-4 * min(k / 10, 1.0), rtol=1e-6, atol=1e-12)
  assert float(losses.get_lr_schedule(3e-4, 0)(0)) == pytest.approx(3e-4)


def test_optimizer_warmup_seen_in_updates():
  """With a constant gradient Adam's bias-corrected step is lr_k g / (|g| + eps) = lr_k."""
  lr, warmup = 1e-3, 4
  optimizer = losses.get_optimizer(lr, warmup=warmup, eps=1e-12)
  params = {"w": jnp.zeros(3)}
  opt_state = optimizer.init(params)
  grads = {"w": jnp.array([0.5, -2.0, 3.0])}
  for k in range(8):
    updates, opt_state = optimizer.update(grads, opt_state, params)
    np.testing.assert_allclose(-updates["w"], lr * min(k / warmup, 1.0) * jnp.sign(grads["w"]),
                               rtol=1e-4, atol=1e-12)  # float32 Adam moments


def _reference_adam(grad_seq, params, *, lr, warmup, beta1, eps, weight_decay, grad_clip):
  """Clip-then-Adam(W) with the linear warmup, in float64 numpy; returns the param trajectory."""
  beta2 = 0.999
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(val) for k, val in p.items()}
  out = []
  for k, grads in enumerate(grad_seq):
    g = {key: np.asarray(val, np.float64) for key, val in grads.items()}
    norm = np.sqrt(sum(np.sum(val**2) for val in g.values()))
    if grad_clip >= 0 and norm > grad_clip:
      g = {key: val * grad_clip / norm for key, val in g.items()}
    lr_k = lr * min(k / warmup, 1.0)
    for key in p:
      m[key] = beta1 * m[key] + (1 - beta1) * g[key]
      v[key] = beta2 * v[key] + (1 - beta2) * g[key] ** 2
      m_hat = m[key] / (1 - beta1 ** (k + 1))
      v_hat = v[key] / (1 - beta2 ** (k + 1))
      p[key] = p[key] - lr_k * (m_hat / (np.sqrt(v_hat) + eps) + weight_decay * p[key])
    out.append({key: val.copy() for key, val in p.items()})
  return out


@pytest.mark.parametrize("grad_clip, weight_decay", [(1.0, 0.0), (-1.0, 0.0), (0.5, 0.1)])
def test_optimizer_matches_reference_clip_adam(grad_clip, weight_decay):
  """Gradients whose global norm (over both leaves) varies from 0.1 to 30 across steps, so
  clipping changes Adam's moment ratios; the two settings must also differ from each other."""
  rng = np.random.default_rng(0)
  params = {"a": rng.normal(size=(3,)).astype(np.float32),
            "b": rng.normal(size=(2, 2)).astype(np.float32)}
  scales = [30.0, 0.1, 5.0, 1.0, 0.3, 12.0, 2.0]
  grad_seq = [{k: (s * rng.normal(size=v.shape)).astype(np.float32) for k, v in params.items()}
              for s in scales]
  kwargs = dict(lr=1e-2, warmup=3, beta1=0.9, eps=1e-8, weight_decay=weight_decay)
  optimizer = losses.get_optimizer(kwargs["lr"], beta1=0.9, eps=1e-8, weight_decay=weight_decay,
                                   warmup=3, grad_clip=grad_clip)
  state = optimizer.init(params)
  p = jax.tree_util.tree_map(jnp.asarray, params)
  expected = _reference_adam(grad_seq, params, grad_clip=grad_clip, **kwargs)
  unclipped = _reference_adam(grad_seq, params, grad_clip=-1.0, **kwargs)
  for grads, want, other in zip(grad_seq, expected, unclipped):
    updates, state = optimizer.update(grads, state, p)
    p = optax.apply_updates(p, updates)
    for key in want:
      np.testing.assert_allclose(p[key], want[key], rtol=1e-5, atol=1e-6)
  if grad_clip >= 0:
    assert max(np.max(np.abs(expected[-1][k] - unclipped[-1][k])) for k in params) > 1e-3


@pytest.mark.parametrize("scale", [0.01, 100.0])
def test_clip_by_global_norm_matches_optax_in_one_reduction(scale):
  """Same result as optax's clipping (below and above the threshold), but the compiled norm does
  not grow a reduction per leaf: a train step's kernel count stays flat in the leaf count."""
  rng = np.random.default_rng(1)
  tree = {f"w{i}": jnp.asarray(scale * rng.normal(size=(i + 1, 3)), jnp.float32)
          for i in range(30)}
  ours, reference = losses.clip_by_global_norm(1.0), optax.clip_by_global_norm(1.0)

  def compiled(transform):
    # One program per transform: run eagerly, the 30 differently shaped leaves would compile
    # each primitive 30 times.
    return jax.jit(lambda t: transform.update(t, transform.init(t))[0]).lower(tree).compile()

  ours_compiled, reference_compiled = compiled(ours), compiled(reference)
  got, want = ours_compiled(tree), reference_compiled(tree)
  for key in tree:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-7)
  if scale > 1:
    norm = np.sqrt(sum(np.sum(np.square(np.asarray(v, np.float64))) for v in got.values()))
    assert norm == pytest.approx(1.0, rel=1e-5)
  reductions = [c.as_text().count(" reduce(") for c in (ours_compiled, reference_compiled)]
  assert reductions[0] <= 2 < 30 <= reductions[1]


# ----------------------------------------------------------------------------- steps


def _quadratic_loss_fn(params, rng, batch):
  """A deterministic loss (ignores ``rng``) for checking the step plumbing."""
  del rng
  return jnp.mean((batch @ params["w"] - 1.0) ** 2)


def test_init_train_state():
  _, params = _toy_model()
  optimizer = losses.get_optimizer(1e-3)
  state = losses.init_train_state(jax.random.PRNGKey(0), params, optimizer)
  assert state.step.dtype == jnp.int32 and int(state.step) == 0
  assert jax.tree_util.tree_structure(state.ema_params) == jax.tree_util.tree_structure(params)
  for e, p in zip(jax.tree_util.tree_leaves(state.ema_params), jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(e, p)
  jax.tree_util.tree_leaves(state)  # a pytree


def _noisy_quadratic_loss_fn(params, rng, batch):
  """A cheap loss that, like the real ones, depends on its ``rng``."""
  noise = jax.random.normal(rng, params["w"].shape)
  return jnp.mean((batch @ params["w"] - 1.0) ** 2) + 0.1 * jnp.sum(params["w"] * noise)


def test_per_example_losses():
  """Example b's loss is loss_fn on that example alone with key split(rng, B)[b]."""
  w = {"w": jnp.array([0.3, -0.2])}
  batch = jnp.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])
  rng = jax.random.PRNGKey(5)
  got = losses.per_example_losses(_noisy_quadratic_loss_fn, w, rng, batch)
  assert got.shape == (3,)
  keys = jax.random.split(rng, 3)
  want = [_noisy_quadratic_loss_fn(w, keys[b], batch[b:b + 1]) for b in range(3)]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # A loss that is a batch mean is the mean of its per-example losses.
  np.testing.assert_allclose(jnp.mean(losses.per_example_losses(_quadratic_loss_fn, w, rng, batch)),
                             _quadratic_loss_fn(w, rng, batch), rtol=1e-6)


def test_train_step_update_and_ema_formula():
  """One step = value_and_grad at the split-off key, the optimizer update, EMA of the new params."""
  optimizer = losses.get_optimizer(1e-2, warmup=2)
  ema_rate = 0.9
  step = jax.jit(losses.get_step_fn(_noisy_quadratic_loss_fn, optimizer, train=True,
                                    ema_rate=ema_rate))
  batch = jnp.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])
  state = losses.init_train_state(jax.random.PRNGKey(0), {"w": jnp.array([0.3, -0.2])}, optimizer)
  state, _ = step(state, batch)  # step 0 has learning rate 0 (warmup)
  state = state.replace(ema_params={"w": jnp.array([0.5, 0.5])})
  new_state, loss = step(state, batch)

  next_rng, step_rng = jax.random.split(state.rng)
  want_loss, grads = jax.value_and_grad(_noisy_quadratic_loss_fn)(state.params, step_rng, batch)
  updates, want_opt_state = optimizer.update(grads, state.opt_state, state.params)
  want_params = optax.apply_updates(state.params, updates)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  assert int(new_state.step) == 2
  np.testing.assert_array_equal(jax.random.key_data(new_state.rng), jax.random.key_data(next_rng))
  np.testing.assert_allclose(new_state.params["w"], want_params["w"], rtol=1e-6)
  assert np.all(np.abs(new_state.params["w"] - state.params["w"]) > 1e-3)
  for got, want in zip(jax.tree_util.tree_leaves(new_state.opt_state),
                       jax.tree_util.tree_leaves(want_opt_state)):
    np.testing.assert_allclose(got, want, rtol=1e-6)
  # EMA uses the *updated* params.
  np.testing.assert_allclose(new_state.ema_params["w"],
                             ema_rate * 0.5 + (1 - ema_rate) * new_state.params["w"], rtol=1e-6)


def test_eval_step_leaves_state_unchanged_and_uses_ema():
  params = {"w": jnp.array([1.0, -2.0])}
  optimizer = losses.get_optimizer(1e-2, warmup=0)
  state = losses.init_train_state(jax.random.PRNGKey(0), params, optimizer)
  state = state.replace(ema_params={"w": jnp.array([0.5, 0.5])})
  batch = jnp.array([[1.0, 2.0], [3.0, -1.0]])
  new_state, loss = jax.jit(losses.get_step_fn(_quadratic_loss_fn, optimizer, train=False,
                                               ema_rate=0.99))(state, batch)
  for a, b in zip(jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.asarray, state)),
                  jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.asarray, new_state))):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(loss, _quadratic_loss_fn(state.ema_params, None, batch), rtol=1e-6)
  assert abs(float(loss) - float(_quadratic_loss_fn(params, None, batch))) > 1.0


def test_eval_noise_depends_on_state_rng_only():
  optimizer = losses.get_optimizer(1e-2)
  eval_step = jax.jit(losses.get_step_fn(_noisy_quadratic_loss_fn, optimizer, train=False,
                                         ema_rate=0.9))
  state = losses.init_train_state(jax.random.PRNGKey(0), {"w": jnp.array([0.3, -0.2])}, optimizer)
  batch = jnp.array([[1.0, 2.0], [3.0, -1.0]])
  state, first = eval_step(state, batch)
  _, again = eval_step(state, batch)
  _, other = eval_step(state.replace(rng=jax.random.PRNGKey(9)), batch)
  assert float(first) == float(again) and float(first) != float(other)


def test_multi_step_equals_repeated_single_steps():
  toy = _toy_training()
  state = toy["state"]
  batches = _toy_batches(4)
  multi_state, multi_losses = toy["multi"](state, batches)
  single_losses = []
  for batch in batches:
    state, loss = toy["single"](state, batch)
    single_losses.append(loss)
  assert multi_losses.shape == (4,)
  np.testing.assert_allclose(multi_losses, np.array(single_losses), rtol=1e-5)
  assert int(multi_state.step) == int(state.step) == 4
  np.testing.assert_array_equal(jax.random.key_data(multi_state.rng),
                                jax.random.key_data(state.rng))
  for a, b in zip(jax.tree_util.tree_leaves((multi_state.params, multi_state.ema_params,
                                             multi_state.opt_state)),
                  jax.tree_util.tree_leaves((state.params, state.ema_params, state.opt_state))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_training_reduces_loss_toward_exact_score_minimum():
  """A few hundred steps on a 2-D mixture close over 3/4 of the gap between the initial
  network's loss and the exact-score minimum (all evaluated on one fixed batch and rng)."""
  toy = _toy_training()
  sde, model, params = toy["sde"], toy["model"], toy["params"]
  data = oracles.two_moons_mixture()
  state = toy["state"]
  for chunk in range(100):  # 400 steps, reusing the 4-step compiled scan
    state, train_losses = toy["multi"](state, _toy_batches(4, seed=100 + chunk))
    assert np.all(np.isfinite(train_losses))

  eval_x = _sample(data, 8192, seed=2)
  eval_rng = jax.random.PRNGKey(3)
  eval_loss_fn = jax.jit(losses.get_loss_fn(sde, model, train=False))
  initial = float(eval_loss_fn(params, eval_rng, eval_x))
  trained = float(eval_loss_fn(state.params, eval_rng, eval_x))
  # get_loss_fn hands the second half of the rng to the objective.
  minimum = float(jax.jit(lambda r, x: losses.sde_loss(data.score_fn(sde), sde, r, x))(
      jax.random.split(eval_rng)[1], eval_x))
  assert minimum < trained < initial
  assert trained - minimum < 0.25 * (initial - minimum), (initial, trained, minimum)


# ----------------------------------------------------------------------------- classifier objective


def test_the_training_objective_perturbs_with_the_sde():
  sde = sde_lib.VPSDE()
  x = jnp.ones((4096, 2))
  t = jnp.full((4096,), 0.4)
  x_t = losses.perturb(sde, jax.random.PRNGKey(0), x, t)
  a, std = float(sde.mean_coeff(t)[0]), float(sde.marginal_std(t)[0])
  np.testing.assert_allclose(x_t.mean(0), a, atol=4 * std / 64)
  np.testing.assert_allclose(x_t.std(0), std, rtol=0.05)


# ------------------------------------------------------------------------ class-conditional losses


def _conditional_setup(num_classes=4):
  config = toy_config(**{"model.num_classes": num_classes, "model.nf": 16})
  model, params = builders.init_model(jax.random.PRNGKey(0), config)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.normal(size=(16, 2)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, num_classes, 16), jnp.int32)}
  return model, jittered(params, 0.3), batch


def test_the_conditional_loss_is_dsm_of_the_conditional_score_and_drops_labels_only_in_training():
  sde = sde_lib.VPSDE()
  model, params, batch = _conditional_setup()
  rng = jax.random.PRNGKey(7)
  dropout_rng, noise_rng = jax.random.split(rng)
  for train in (False, True):
    # Without label dropout: DSM of score(x, t, y), with the keys of an unconditional loss.
    got = losses.get_loss_fn(sde, model, train=train, label_dropout=0.0)(params, rng, batch)
    score_fn = mutils.get_score_fn(sde, model, params, train=train, rng=dropout_rng,
                                   class_labels=batch["label"])
    np.testing.assert_allclose(got, losses.sde_loss(score_fn, sde, noise_rng, batch["image"]),
                               rtol=1e-6)
  dropping = losses.get_loss_fn(sde, model, train=True, label_dropout=0.5)
  assert float(dropping(params, rng, batch)) != pytest.approx(float(got), rel=1e-6)
  # The dropped labels are drop_labels' on the label-dropout key: the null label's score.
  dropped = losses.drop_labels(jax.random.fold_in(rng, 2), batch["label"], 0.5, 4)
  assert 0 < int(jnp.sum(dropped == 4)) < 16
  score_fn = mutils.get_score_fn(sde, model, params, train=True, rng=dropout_rng,
                                 class_labels=dropped)
  np.testing.assert_allclose(dropping(params, rng, batch),
                             losses.sde_loss(score_fn, sde, noise_rng, batch["image"]), rtol=1e-6)
  # Evaluation is the conditional loss whatever the dropout.
  np.testing.assert_allclose(
      losses.get_loss_fn(sde, model, train=False, label_dropout=0.5)(params, rng, batch),
      losses.get_loss_fn(sde, model, train=False)(params, rng, batch), rtol=1e-7)


def test_per_example_losses_of_labelled_batches_are_each_examples_own():
  sde = sde_lib.VPSDE(N=100)
  model, params, batch = _conditional_setup()
  for continuous in (True, False):
    loss_fn = losses.get_loss_fn(sde, model, train=False, continuous=continuous)
    rng = jax.random.PRNGKey(1)
    got = losses.per_example_losses(loss_fn, params, rng, batch)
    keys = jax.random.split(rng, 16)
    for b in (0, 5, 15):
      one = {"image": batch["image"][b:b + 1], "label": batch["label"][b:b + 1]}
      np.testing.assert_allclose(got[b], loss_fn(params, keys[b], one), rtol=1e-5)


def test_a_conditional_loss_refuses_unlabelled_batches_and_bad_dropout():
  sde = sde_lib.VPSDE()
  model, params, batch = _conditional_setup()
  with pytest.raises(TypeError, match="'label'"):
    losses.get_loss_fn(sde, model, train=True)(params, jax.random.PRNGKey(0), batch["image"])
  with pytest.raises(ValueError, match=re.escape("label_dropout must be in [0, 1)")):
    losses.get_loss_fn(sde, model, train=True, label_dropout=1.0)


# ----------------------------------------------------------------------------- predictions, flows


def test_logit_normal_times_follow_their_law():
  sde = sde_lib.RectifiedFlow(T=0.99)
  for mean, std in ((0.0, 1.0), (-0.5, 0.7)):
    t = np.asarray(losses.sample_times(jax.random.PRNGKey(3), 20000, sde, EPS, "logit_normal",
                                       (mean, std)))
    assert t.min() >= EPS and t.max() <= sde.T
    logit = np.log((t - EPS) / (sde.T - t))
    assert stats.kstest(logit, stats.norm(loc=mean, scale=std).cdf).pvalue > 1e-6
  with pytest.raises(ValueError, match="training.time_sampling must be one of uniform, "
                                       "logit_normal, importance, got 'beta'"):
    losses.sample_times(jax.random.PRNGKey(3), 4, sde, EPS, "beta")


def test_noise_regression_is_dsm_and_velocity_regression_is_flow_matching():
  """Same draws: regressing the noise is DSM (std^2 weighting); regressing the velocity on the
  linear path is |out - (z - x0)|^2."""
  model, params = _toy_model()
  x = _sample(oracles.two_moons_mixture(), 64, seed=3)
  t = jnp.linspace(0.01, 0.98, 64)
  z = jax.random.normal(jax.random.PRNGKey(4), x.shape)
  vp, rf = sde_lib.VPSDE(), sde_lib.RectifiedFlow(T=0.99)
  model_fn = mutils.get_model_fn(model, params)
  for sde, name in ((vp, "noise"), (rf, "velocity")):
    def output_fn(x_t, t, sde=sde):
      return model_fn(x_t, sde.noise_label(t))
    regression = losses.regression_losses(output_fn, predictions.get_prediction(name), sde, x,
                                          t, z)
    if name == "noise":
      score_fn = mutils.get_score_fn(sde, model, params)
      np.testing.assert_allclose(regression, losses.dsm_losses(score_fn, sde, x, t, z),
                                 rtol=1e-5)
    else:
      x_t = (1 - t)[:, None] * x + t[:, None] * z
      want = jnp.sum((output_fn(x_t, t) - (z - x)) ** 2, axis=1)
      np.testing.assert_allclose(regression, want, rtol=1e-5)


def test_flow_matching_loss_at_the_exact_velocity_is_the_irreducible_variance():
  """Data N(mu, s^2 I) on the linear path: Var(z - x0 | x_t) = s^2 / ((1 - t)^2 s^2 + t^2) per
  dimension, so that is the loss of the exact velocity field at each t."""
  mu, s, dim, n = 0.7, 0.5, 3, 40000
  sde = sde_lib.RectifiedFlow(T=0.99)

  def exact_velocity(x, t):
    a, var = (1 - t)[:, None], ((1 - t) ** 2 * s**2 + t**2)[:, None]
    r = x - a * mu
    return t[:, None] / var * r - (mu + a * s**2 / var * r)

  velocity = predictions.get_prediction("velocity")
  for t0 in (0.05, 0.5, 0.9):
    x = mu + s * jax.random.normal(jax.random.PRNGKey(5), (n, dim))
    z = jax.random.normal(jax.random.PRNGKey(6), (n, dim))
    per_example = np.asarray(losses.regression_losses(exact_velocity, velocity, sde, x,
                                                      jnp.full((n,), t0), z))
    want = dim * s**2 / ((1 - t0) ** 2 * s**2 + t0**2)
    assert abs(per_example.mean() - want) < Z_TOL * per_example.std() / np.sqrt(n)


def test_get_loss_fn_regression_uses_the_prediction_and_refuses_what_it_cannot_do():
  model, params = _toy_model()
  batch = _sample(oracles.two_moons_mixture(), 128, seed=1)
  rng = jax.random.PRNGKey(2)
  rf = sde_lib.RectifiedFlow(T=0.99)
  loss_fn = losses.get_loss_fn(rf, model, train=False, reduce_mean=True, objective="regression",
                               time_sampling="logit_normal")
  model_fn = mutils.get_model_fn(model, params)
  want = losses.regression_loss(lambda x, t: model_fn(x, rf.noise_label(t)),
                                predictions.get_prediction("velocity"), rf,
                                jax.random.split(rng)[1], batch, reduce_mean=True,
                                time_sampling="logit_normal")
  np.testing.assert_allclose(loss_fn(params, rng, batch), want, rtol=1e-5)
  with pytest.raises(ValueError, match="'regression' has its own weighting"):
    losses.get_loss_fn(rf, model, train=True, objective="regression", likelihood_weighting=True)
  with pytest.raises(ValueError, match="training.objective must be one of dsm, regression"):
    losses.get_loss_fn(rf, model, train=True, objective="fm")
  with pytest.raises(ValueError, match="only defined for the continuous objectives"):
    losses.get_loss_fn(sde_lib.VPSDE(), model, train=True, continuous=False,
                       objective="regression")
  with pytest.raises(ValueError, match="Unknown prediction 'x0'"):
    losses.get_loss_fn(rf, model, train=True, prediction="x0")


def _likelihood_weighted_expectation(sde, s_data, dim, eps):
  """The likelihood-weighted DSM loss of the exact score of N(mu, s^2 I) under uniform t, in
  closed form: per dimension and time ``g^2 E|score + z / std|^2 = g^2 a^2 s^2 / (std^2 v)``
  with ``v = a^2 s^2 + std^2``, averaged over t by quadrature (float64)."""
  t = np.geomspace(eps, sde.T, 400001)
  with jax.enable_x64(True):
    tt = jnp.asarray(t)
    g2 = np.asarray(sde.sde(jnp.zeros((len(t), 1)), tt)[1]) ** 2
    a, std = np.asarray(sde.mean_coeff(tt)), np.asarray(sde.marginal_std(tt))
  integrand = dim * g2 * a**2 * s_data**2 / (std**2 * (a**2 * s_data**2 + std**2))
  return np.trapezoid(integrand, t) / (sde.T - eps)


@pytest.mark.parametrize("name", ["vp", "subvp", "rectified_flow", "ve"])
def test_importance_sampling_keeps_the_likelihood_weighted_expectation_and_cuts_its_variance(
    name):
  """Gaussian data, exact score: the uniform-t and importance-sampled estimators of the
  likelihood-weighted loss both match its closed form; importance sampling's per-example
  variance is far smaller (VE: the proposal is uniform, the two estimators coincide)."""
  sde = {"rectified_flow": lambda: sde_lib.RectifiedFlow(T=0.99), **SDES}[name]()
  mu_data, s_data, dim, n = 0.5, 0.3, 4, 100000
  x = mu_data + s_data * jax.random.normal(jax.random.PRNGKey(0), (n, dim))

  def exact_score(x_t, t):
    a, std = sde.mean_coeff(t)[:, None], sde.marginal_std(t)[:, None]
    return -(x_t - a * mu_data) / (a**2 * s_data**2 + std**2)

  want = _likelihood_weighted_expectation(sde, s_data, dim, EPS)
  proposal = losses.importance_times(sde, EPS)
  rng = jax.random.PRNGKey(1)
  t_rng, z_rng = jax.random.split(rng)
  z = jax.random.normal(z_rng, x.shape)
  t_uniform = jax.random.uniform(t_rng, (n,), minval=EPS, maxval=sde.T)
  uniform = np.asarray(losses.dsm_losses(exact_score, sde, x, t_uniform, z,
                                         likelihood_weighting=True), np.float64)
  t_importance = proposal.sample(t_rng, n)
  importance = np.asarray(losses.dsm_losses(exact_score, sde, x, t_importance, z),
                          np.float64) * proposal.normalizer / (sde.T - EPS)
  for per_example in (uniform, importance):
    assert abs(per_example.mean() - want) < Z_TOL * per_example.std() / np.sqrt(n), (
        name, per_example.mean(), want)
  if name == "ve":
    np.testing.assert_allclose(proposal.cdf, (proposal.times - EPS) / (sde.T - EPS), atol=1e-6)
  else:
    # Measured 2026-12-07: ratios 0.0034 (VP), 0.0026 (sub-VP), 0.0019 (rectified flow).
    assert importance.var() < 0.02 * uniform.var(), (importance.var(), uniform.var())
  # sde_loss draws the same times from the same key.
  got = losses.sde_loss(exact_score, sde, rng, x, likelihood_weighting=True, eps=EPS,
                        time_sampling="importance", z=z, proposal=proposal)
  np.testing.assert_allclose(got, importance.mean(), rtol=1e-4)


def test_importance_proposal_has_the_density_g2_over_std2():
  """The tabulated CDF's derivative is g^2 / std^2 / Z (VP: beta(t) / (1 - exp(-int beta)))."""
  sde = sde_lib.VPSDE()
  proposal = losses.importance_times(sde, EPS)
  t = np.array([1e-4, 1e-2, 0.3, 0.9])
  big_b = 0.1 * t + 0.5 * 19.9 * t**2
  want = (0.1 + 19.9 * t) / -np.expm1(-big_b) / proposal.normalizer
  got = np.interp(t, proposal.times[1:], np.diff(proposal.cdf) / np.diff(proposal.times))
  np.testing.assert_allclose(got, want, rtol=1e-3)
  samples = np.asarray(proposal.sample(jax.random.PRNGKey(0), 20000))
  assert samples.min() >= EPS and samples.max() <= sde.T
  # The proposal puts about half its mass below t = 0.02 (its 1 / t head).
  assert 0.3 < np.mean(samples < 0.02) < 0.7


def test_importance_sampling_is_refused_without_likelihood_weighting():
  model, _ = _toy_model()
  with pytest.raises(ValueError, match="set training.likelihood_weighting = True and "
                                       "training.objective = 'dsm'"):
    losses.get_loss_fn(sde_lib.VPSDE(), model, train=True, time_sampling="importance")
  with pytest.raises(ValueError, match="set training.likelihood_weighting = True"):
    losses.sde_loss(lambda x, t: x, sde_lib.VPSDE(), jax.random.PRNGKey(0), jnp.ones((2, 2)),
                    time_sampling="importance")
