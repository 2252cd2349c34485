"""Tests of ``controllable_generation`` driven by exact scores and exact classifiers.

Oracles (``exact_scores``): for Gaussian-mixture data the posterior over components
``p_t(k | x)`` and the component's score are closed form at every ``t``, so guided sampling
must reproduce the component; for Gaussian data the law of the unknown coordinates given the
known ones is closed form, so the inpainter's (approximate) replacement method can be measured.

Tolerances: component samples (std 0.1 per coordinate, N = 2000): the standard error of a mean
is 0.0022 and of a variance 0.0003. Measured with 200 steps (Euler-Maruyama; reverse diffusion
+ Langevin): |mean error| <= 0.004, |covariance error| <= 0.0012 over VE, VP and sub-VP; the
allowances below are 4.5 standard errors plus that bias rounded up.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import controllable_generation as cg
import exact_scores
import losses
import sampling
import sde_lib
from datasets import toy_data
from models.mlp import ToyMLP

N = 2000
NUM_STEPS = 200
MEAN_TOL = 0.015
COV_TOL = 0.0025
MIXTURE = exact_scores.toy_mixture("gaussian_mixture")  # 8 components, std 0.1
COMPONENT = 3


def _sde(name: str) -> sde_lib.SDE:
  # sigma_max = 10 suits the 2-D data (spread ~1.4); the prior is then close to p_T, as for the
  # tutorial's sigma^t SDE (prior std 9.85) and OU (T = 10).
  return {"ve": lambda: sde_lib.VESDE(sigma_max=10.0), "vp": sde_lib.VPSDE,
          "subvp": sde_lib.subVPSDE, "sigma_power": sde_lib.SigmaPowerSDE,
          "ou": sde_lib.OUSDE, "rectified_flow": sde_lib.RectifiedFlow}[name]()


def _num_steps(sde: sde_lib.SDE) -> int:
  """``NUM_STEPS`` per unit of time: OU's horizon T = 10 gets ten times as many steps (at 200
  its Euler-Maruyama samples put 1.15 % in a neighbouring component)."""
  return int(round(NUM_STEPS * sde.T))


def _assert_component(x: jax.Array, sde: sde_lib.SDE, k: int) -> None:
  """Samples ``x: [N, 2]`` are component ``k`` of the mixture: weight, mean and covariance."""
  log_post = exact_scores.gaussian_mixture_log_posterior(sde, *MIXTURE)
  weight = float(jnp.mean(jnp.argmax(log_post(x, jnp.zeros(x.shape[0])), axis=-1) == k))
  assert weight >= 0.99
  x = np.asarray(x, np.float64)
  np.testing.assert_allclose(x.mean(0), MIXTURE.means[k], atol=MEAN_TOL)
  np.testing.assert_allclose(np.cov(x.T), MIXTURE.stds[k]**2 * np.eye(2), atol=COV_TOL)


# --------------------------------------------------------------------------- guidance


@pytest.mark.parametrize("sde_name", ["ve", "vp", "subvp", "sigma_power", "ou",
                                      "rectified_flow"])
def test_guided_scores_are_bayes_rule(sde_name):
  # score + grad log p_t(k | x) is the score of p_t(x | k) exactly; CFG is its stated formula.
  sde = _sde(sde_name)
  x = jax.random.normal(jax.random.PRNGKey(0), (16, 2)) * 1.5
  t = jax.random.uniform(jax.random.PRNGKey(1), (16,), minval=1e-3, maxval=1.0)
  labels = jnp.arange(16) % 8
  score = exact_scores.gaussian_mixture_score(sde, *MIXTURE)
  conditional = exact_scores.gaussian_mixture_conditional_score(sde, MIXTURE.means, MIXTURE.stds)
  log_post = exact_scores.gaussian_mixture_log_posterior(sde, *MIXTURE)

  @jax.jit
  def scores(x, t):
    return (cg.classifier_guided_score(score, log_post, labels, 1.0)(x, t),
            cg.classifier_free_guided_score(conditional, score, labels, 2.0)(x, t),
            conditional(x, t, labels), score(x, t), jnp.exp(log_post(x, t)).sum(-1))

  guided, cfg, expected, unconditional, total = scores(x, t)
  np.testing.assert_allclose(total, 1.0, rtol=1e-5)
  np.testing.assert_allclose(guided, expected, atol=2e-3 * float(jnp.abs(expected).max()))
  np.testing.assert_allclose(cfg, 3.0 * expected - 2.0 * unconditional, rtol=1e-5, atol=1e-4)


def test_cfg_at_zero_weight_does_not_evaluate_the_unconditional_score():

  def unconditional(x, t):
    raise AssertionError("evaluated")

  conditional = exact_scores.gaussian_mixture_conditional_score(_sde("vp"), MIXTURE.means,
                                                                MIXTURE.stds)
  x, t, labels = jnp.ones((4, 2)), jnp.full((4,), 0.5), jnp.zeros(4, jnp.int32)
  np.testing.assert_array_equal(
      cg.classifier_free_guided_score(conditional, unconditional, labels, 0.0)(x, t),
      conditional(x, t, labels))
  with pytest.raises(ValueError, match="guidance_weight"):
    cg.classifier_free_guided_score(conditional, unconditional, labels, -1.0)


@pytest.mark.parametrize("sde_name,predictor,corrector", [
    ("ve", "euler_maruyama", "none"), ("vp", "reverse_diffusion", "langevin"),
    ("subvp", "euler_maruyama", "none"), ("sigma_power", "reverse_diffusion", "langevin"),
    ("ou", "euler_maruyama", "none"), ("rectified_flow", "reverse_diffusion", "langevin")])
def test_classifier_guided_sampling_reproduces_the_component(sde_name, predictor, corrector):
  sde = _sde(sde_name)
  score = exact_scores.gaussian_mixture_score(sde, *MIXTURE)
  log_post = exact_scores.gaussian_mixture_log_posterior(sde, *MIXTURE)
  guided = cg.classifier_guided_score(score, log_post, jnp.full((N,), COMPONENT), 1.0)
  sample = sampling.get_pc_sampler(sde, (N, 2), predictor, corrector, num_steps=_num_steps(sde))
  x, _ = jax.jit(lambda rng: sample(rng, guided))(jax.random.PRNGKey(0))
  _assert_component(x, sde, COMPONENT)


@pytest.mark.parametrize("sde_name", ["ve", "vp", "subvp", "sigma_power", "ou",
                                      "rectified_flow"])
def test_classifier_free_guidance_at_zero_weight_reproduces_the_component(sde_name):
  sde = _sde(sde_name)
  conditional = exact_scores.gaussian_mixture_conditional_score(sde, MIXTURE.means, MIXTURE.stds)
  unconditional = exact_scores.gaussian_mixture_score(sde, *MIXTURE)
  guided = cg.classifier_free_guided_score(conditional, unconditional, jnp.full((N,), COMPONENT),
                                           0.0)
  sample = sampling.get_pc_sampler(sde, (N, 2), "euler_maruyama", "none",
                                   num_steps=_num_steps(sde))
  x, _ = jax.jit(lambda rng: sample(rng, guided))(jax.random.PRNGKey(1))
  _assert_component(x, sde, COMPONENT)


def test_guided_probability_flow_ode_reproduces_the_component():
  sde = _sde("vp")
  score = exact_scores.gaussian_mixture_score(sde, *MIXTURE)
  log_post = exact_scores.gaussian_mixture_log_posterior(sde, *MIXTURE)
  guided = cg.classifier_guided_score(score, log_post, jnp.full((N,), COMPONENT), 1.0)
  sample = sampling.get_ode_sampler(sde, (N, 2), rtol=1e-4, atol=1e-4)
  x, _ = jax.jit(lambda rng: sample(rng, guided))(jax.random.PRNGKey(2))
  _assert_component(x, sde, COMPONENT)


def test_classifier_free_guidance_sharpens():
  # Two overlapping classes (means -+1, std 0.7): w > 0 must raise the exact classifier's
  # confidence in the requested class and shrink the spread along the axis between them.
  # Measured (VP, 200 Euler-Maruyama steps, N = 2000): confidence 0.888 / 0.968 / 0.988 and
  # variance 0.48 / 0.33 / 0.30 along that axis for w = 0 / 1 / 3 (exact: 0.49 at w = 0).
  sde = _sde("vp")
  means, stds, weights = np.array([[-1.0, 0.0], [1.0, 0.0]]), np.full(2, 0.7), np.full(2, 0.5)
  conditional = exact_scores.gaussian_mixture_conditional_score(sde, means, stds)
  unconditional = exact_scores.gaussian_mixture_score(sde, means, stds, weights)
  log_post = exact_scores.gaussian_mixture_log_posterior(sde, means, stds, weights)
  sample = sampling.get_pc_sampler(sde, (N, 2), "euler_maruyama", "none", num_steps=NUM_STEPS)
  confidence, spread = [], []
  for w in (0.0, 1.0, 3.0):
    guided = cg.classifier_free_guided_score(conditional, unconditional, jnp.ones(N, jnp.int32), w)
    x, _ = jax.jit(lambda rng: sample(rng, guided))(jax.random.PRNGKey(3))
    confidence.append(float(jnp.mean(jnp.exp(log_post(x, jnp.zeros(N))[:, 1]))))
    spread.append(float(jnp.var(x[:, 0])))
  assert abs(spread[0] - 0.49) < 0.05                       # w = 0: the class itself
  assert confidence[0] + 0.05 < confidence[1] < confidence[2]
  assert spread[0] - 0.1 > spread[1] > spread[2]


# --------------------------------------------------------------------------- colour


def test_colour_decoupling_is_orthonormal_with_a_grey_channel():
  for channels in (2, 3, 4):
    m = cg.colour_decoupling(channels)
    np.testing.assert_allclose(m.T @ m, np.eye(channels), atol=1e-12)
    np.testing.assert_allclose(m[:, 0], np.full(channels, channels**-0.5))
  # The authors' fixed RGB matrix: the same grey column and the same colour plane.
  authors = np.array([[5.7735014e-01, -8.1649649e-01, 4.7008697e-08],
                      [5.7735026e-01, 4.0824834e-01, 7.0710671e-01],
                      [5.7735026e-01, 4.0824822e-01, -7.0710683e-01]])
  m = cg.colour_decoupling(3)
  np.testing.assert_allclose(m[:, 1:] @ m[:, 1:].T, authors[:, 1:] @ authors[:, 1:].T, atol=1e-6)
  with pytest.raises(ValueError, match="at least 2 channels"):
    cg.colour_decoupling(1)
  x = jnp.arange(12.0).reshape(1, 2, 2, 3)
  np.testing.assert_allclose(cg.to_gray(x)[..., 2], x.mean(-1))


# --------------------------------------------------------------------------- replacement


def _gaussian(dim: int, seed: int = 0):
  """``(mean [dim], cov [dim, dim])`` of a correlated Gaussian."""
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(dim, dim))
  return rng.normal(size=dim) * 0.5, a @ a.T / dim + 0.05 * np.eye(dim)


INPAINT_MEAN = np.array([0.5, -0.3, 0.2, 0.0])
INPAINT_COV = _gaussian(4)[1]


@pytest.mark.parametrize("sde_name", ["ve", "vp", "subvp"])
def test_inpainting_error_shrinks_with_corrector_steps(sde_name):
  # Replacement is an approximation. On this correlated 4-D Gaussian (2 of 4 coordinates known,
  # conditional mean up to 1.5 away from the marginal one), reverse diffusion + Langevin (snr
  # 0.16, 50 steps, N = 1000), the largest |mean error| of the unknown coordinates measured for
  # n_steps = 0 / 1 / 4 / 16 is VE 1.02 / 0.80 / 0.33 / 0.036, VP 1.01 / 0.89 / 0.67 / 0.29,
  # sub-VP 0.96 / 0.84 / 0.59 / 0.135 (covariance VE 0.84 / 0.43 / 0.035 / 0.032, VP 0.63 / 0.50 /
  # 0.21 / 0.046, sub-VP 0.57 / 0.47 / 0.15 / 0.032): without a corrector the unknown part stays
  # near its marginal. The standard error of a mean here is about 0.03.
  sde = _sde(sde_name)
  mean, cov = INPAINT_MEAN, INPAINT_COV
  known = np.array([True, False, True, False])
  values = np.array([1.0, 0.0, -0.8, 0.0])
  cond_mean, cond_cov = exact_scores.gaussian_conditional(mean, cov, known, values)
  n = N // 2
  data = jnp.broadcast_to(jnp.asarray(values, jnp.float32), (n, 4))
  score = exact_scores.gaussian_score(sde, mean, cov)
  mean_errors, cov_errors = [], []
  for n_steps in (1, 4, 16):
    inpaint = cg.get_pc_inpainter(sde, "reverse_diffusion", "langevin", n_steps=n_steps,
                                  num_steps=50)
    x, nfe = jax.jit(lambda rng: inpaint(rng, score, data, known))(jax.random.PRNGKey(4))
    assert nfe == 50 * (1 + n_steps) + 1
    np.testing.assert_array_equal(x[:, known], data[:, known])
    unknown = np.asarray(x, np.float64)[:, ~known]
    mean_errors.append(np.abs(unknown.mean(0) - cond_mean).max())
    cov_errors.append(np.abs(np.cov(unknown.T) - cond_cov).max())
  assert mean_errors[0] > mean_errors[1] + 0.05 > mean_errors[2] + 0.1
  assert cov_errors[0] > cov_errors[2] + 0.1
  assert mean_errors[2] < {"ve": 0.1, "vp": 0.4, "subvp": 0.25}[sde_name]


def test_colorization_matches_the_gaussian_conditional():
  # Pixels [1, 1, 3] ~ N(m, C): the colour given the grey component is Gaussian in closed form
  # (in colour_decoupling's coordinates; here 0.61 away from the colour's marginal mean). VE,
  # reverse diffusion + Langevin, 50 steps, N = 2000, measured: |mean error| 0.022 and
  # |covariance error| 0.005 with n_steps = 16 (0.16 and 0.04 with n_steps = 1).
  sde = _sde("ve")
  mean, cov = _gaussian(3, seed=1)
  m = cg.colour_decoupling(3)
  gray_value = m[:, 0] * 2.5                                  # grey component 2.5
  cond_mean, cond_cov = exact_scores.gaussian_conditional(
      m.T @ mean, m.T @ cov @ m, np.array([True, False, False]), m.T @ gray_value)
  gray = jnp.broadcast_to(jnp.asarray(gray_value, jnp.float32), (N, 1, 1, 3))
  colorize = cg.get_pc_colorizer(sde, "reverse_diffusion", "langevin", n_steps=16, num_steps=50)
  x, _ = jax.jit(lambda rng: colorize(rng, exact_scores.gaussian_score(sde, mean, cov), gray))(
      jax.random.PRNGKey(5))
  latent = np.asarray(x, np.float64).reshape(N, 3) @ m
  np.testing.assert_allclose(latent[:, 0], 2.5, atol=1e-5)   # the grey component is the data's
  np.testing.assert_allclose(latent[:, 1:].mean(0), cond_mean, atol=0.06)
  np.testing.assert_allclose(np.cov(latent[:, 1:].T), cond_cov, atol=0.02)


# Every predictor, corrector and SDE at least once (the colorizer's test below adds others).
@pytest.mark.parametrize("sde_name,predictor,corrector", [
    ("vp", "ancestral_sampling", "langevin"), ("vp", "none", "ald"),
    ("ve", "euler_maruyama", "none"), ("subvp", "reverse_diffusion", "langevin")])
def test_every_predictor_and_corrector_keeps_the_known_region(sde_name, predictor, corrector):
  sde = _sde(sde_name)
  mean, cov = _gaussian(16, seed=2)
  score = exact_scores.gaussian_score(sde, mean, cov)
  data = jax.random.normal(jax.random.PRNGKey(6), (3, 4, 4, 1))
  mask = jnp.zeros((1, 4, 4, 1)).at[:, :, :2].set(1.0)      # left half known, broadcast
  inpaint = cg.get_pc_inpainter(sde, predictor, corrector, n_steps=2, num_steps=4)
  x, nfe = jax.jit(lambda rng: inpaint(rng, score, data, mask))(jax.random.PRNGKey(7))
  evals = {"none": 0}.get(predictor, 1) + (0 if corrector == "none" else 2)
  assert nfe == 4 * evals + 1
  assert x.shape == data.shape and bool(jnp.all(jnp.isfinite(x)))
  np.testing.assert_array_equal(x[:, :, :2], data[:, :, :2])


@pytest.mark.parametrize("sde_name,predictor,corrector", [
    ("ve", "ancestral_sampling", "ald"), ("vp", "euler_maruyama", "none"),
    ("subvp", "reverse_diffusion", "langevin")])
def test_colorizer_keeps_the_grey_component(sde_name, predictor, corrector):
  sde = _sde(sde_name)
  mean, cov = _gaussian(16, seed=3)
  score = exact_scores.gaussian_score(sde, mean, cov)
  image = jax.random.normal(jax.random.PRNGKey(8), (3, 2, 2, 4))
  colorize = cg.get_pc_colorizer(sde, predictor, corrector, num_channels=4, n_steps=2,
                                 num_steps=4)
  x, nfe = jax.jit(lambda rng: colorize(rng, score, cg.to_gray(image)))(jax.random.PRNGKey(9))
  assert nfe == 4 * (1 + (corrector != "none") * 2) + 1
  np.testing.assert_allclose(x.mean(-1), image.mean(-1), atol=1e-5)
  assert float(jnp.std(x - cg.to_gray(x))) > 0.1             # colour was sampled


@pytest.mark.parametrize("sde_name", ["ve", "vp"])
def test_known_region_is_perturbed_from_initialisation_on(sde_name):
  # Every frame's known part is the data perturbed to the frame's time (the authors started it
  # from the clean data), the last frame excepted: the output's known part is the data.
  sde = _sde(sde_name)
  mean, cov = _gaussian(4)
  data = jnp.broadcast_to(jnp.asarray([1.0, 0.0, -0.8, 0.0]), (N, 4))
  known = np.array([True, False, True, False])
  inpaint = cg.get_pc_inpainter(sde, "reverse_diffusion", "none", num_steps=4, num_frames=5)
  x, _, trajectory = inpaint(jax.random.PRNGKey(10), exact_scores.gaussian_score(sde, mean, cov),
                             data, known)
  np.testing.assert_array_equal(trajectory.x[-1], x)
  for frame, t in zip(trajectory.x[:-1], trajectory.t[:-1]):
    t = jnp.full((N,), t)
    a, std = float(sde.mean_coeff(t)[0]), float(sde.marginal_std(t)[0])
    z = (np.asarray(frame)[:, known] - a * np.asarray(data)[:, known]) / std
    np.testing.assert_allclose(z.mean(0), 0.0, atol=0.1)
    np.testing.assert_allclose(z.std(0), 1.0, atol=0.05)


@pytest.mark.parametrize("colour", [False, True])
def test_denoised_output_is_the_posterior_mean_of_the_final_state(colour):
  # Known and unknown parts independent (block-diagonal covariance), so E[x(0)_u | x(eps)]
  # depends on the unknown part of the final state alone, which the undenoised run (same keys)
  # returns. A large eps makes the denoising step large (the authors' output skipped it).
  sde, eps, dim = _sde("vp"), 0.3, 3
  m = cg.colour_decoupling(3) if colour else np.eye(dim)
  known = np.array([True, False, False]) if colour else np.array([False, True, False])
  latent_cov = np.array([[0.5, 0.0, 0.0], [0.0, 1.0, 0.6], [0.0, 0.6, 0.8]])
  if not colour:
    latent_cov = latent_cov[[1, 0, 2]][:, [1, 0, 2]]        # the known coordinate is 1
  latent_mean = np.array([0.3, -0.5, 0.4])
  score = exact_scores.gaussian_score(sde, m @ latent_mean, m @ latent_cov @ m.T)
  data = jnp.broadcast_to(jnp.asarray(m @ np.array([0.7, 0.7, 0.7])), (256, 1, 1, dim))
  outputs = []
  for denoise in (False, True):
    options = dict(denoise=denoise, eps=eps, num_steps=10)
    if colour:
      colorize = cg.get_pc_colorizer(sde, "euler_maruyama", "langevin", **options)
      x, nfe = jax.jit(lambda rng: colorize(rng, score, data))(jax.random.PRNGKey(11))
    else:
      inpaint = cg.get_pc_inpainter(sde, "euler_maruyama", "langevin", **options)
      x, nfe = jax.jit(lambda rng: inpaint(rng, score, data, known))(jax.random.PRNGKey(11))
    assert nfe == 20 + denoise
    outputs.append(np.asarray(x, np.float64).reshape(-1, dim) @ m)
  noisy, denoised = outputs
  u = ~known
  np.testing.assert_allclose(noisy[:, known], denoised[:, known], atol=1e-6)
  t = jnp.full((1,), eps)
  a, std = float(sde.mean_coeff(t)[0]), float(sde.marginal_std(t)[0])
  cov_u = latent_cov[np.ix_(u, u)]
  gain = a * cov_u @ np.linalg.inv(a**2 * cov_u + std**2 * np.eye(u.sum()))
  expected = latent_mean[u] + (noisy[:, u] - a * latent_mean[u]) @ gain.T
  np.testing.assert_allclose(denoised[:, u], expected, atol=1e-4)
  assert np.abs(denoised[:, u] - noisy[:, u]).mean() > 0.1


def test_replacement_samplers_check_their_arguments():
  with pytest.raises(ValueError, match="ancestral_sampling"):
    cg.get_pc_inpainter(_sde("subvp"), "ancestral_sampling", "none")
  with pytest.raises(ValueError, match="num_frames"):
    cg.get_pc_inpainter(_sde("vp"), "euler_maruyama", "none", num_steps=3, num_frames=5)
  with pytest.raises(ValueError, match="n_steps"):
    cg.get_pc_colorizer(_sde("vp"), "euler_maruyama", "langevin", n_steps=-1)
  colorize = cg.get_pc_colorizer(_sde("vp"), "euler_maruyama", "none", num_steps=2)
  with pytest.raises(ValueError, match="3 channels"):
    colorize(jax.random.PRNGKey(0), lambda x, t: -x, jnp.zeros((1, 2, 2, 1)))


# --------------------------------------------------------------------------- class-conditional


def test_toy_mlp_class_conditioning_and_its_null_label():
  x, noise_labels = jnp.ones((3, 2)), jnp.full((3,), 10.0)
  plain = ToyMLP(nf=16, num_blocks=1)
  params = plain.init(jax.random.PRNGKey(0), x, noise_labels)["params"]
  assert "ClassEmbedding_0" not in params                     # unconditional: as before
  with pytest.raises(ValueError, match="unconditional network"):
    plain.apply({"params": params}, x, noise_labels, class_labels=jnp.zeros(3, jnp.int32))
  model = ToyMLP(nf=16, num_blocks=1, num_classes=4)
  params = model.init(jax.random.PRNGKey(0), x, noise_labels)["params"]
  assert params["ClassEmbedding_0"]["embedding"].shape == (5, 16)  # 4 classes + the null label
  # Random parameters (the residual blocks start at zero, hiding every label).
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
  params = jax.tree_util.tree_unflatten(
      tree, [jax.random.normal(key, leaf.shape) for key, leaf in zip(keys, leaves)])
  apply = jax.jit(lambda labels: model.apply({"params": params}, x, noise_labels,
                                             class_labels=labels))
  np.testing.assert_allclose(jax.jit(lambda: model.apply({"params": params}, x, noise_labels))(),
                             apply(jnp.full((3,), 4)), rtol=1e-5)
  assert float(jnp.abs(apply(jnp.zeros(3, jnp.int32)) - apply(jnp.ones(3, jnp.int32))).max()) > 0
  labels = jnp.arange(10000) % 4
  dropped = losses.drop_labels(jax.random.PRNGKey(1), labels, 0.2, 4)
  assert abs(float(jnp.mean(dropped == 4)) - 0.2) < 0.02
  np.testing.assert_array_equal(jnp.where(dropped == 4, labels, dropped), labels)


def test_classifier_free_guidance_of_a_trained_toy_model():
  # One ToyMLP learns the 8 class-conditional scores and (null label, 20 % label dropout) the
  # unconditional one: 600 Adam steps on the toy mixture, classes = components. Measured with
  # 1500 steps and 200 sampling steps: samples of the requested class 100 % at w = 0, 1 and 3;
  # unconditional samples spread over the 8 components with frequencies 0.11 .. 0.15.
  sde = sde_lib.VPSDE(N=200)
  model = ToyMLP(nf=64, num_blocks=2, num_classes=8)
  x_all, y_all = toy_data.sample_with_labels("gaussian_mixture", 20000, np.random.default_rng(0))
  x_all, y_all = jnp.asarray(x_all), jnp.asarray(y_all)
  params = model.init(jax.random.PRNGKey(0), x_all[:1], jnp.ones(1))["params"]
  optimizer = losses.get_optimizer(2e-3, warmup=100)
  loss_fn = losses.get_loss_fn(sde, model, train=True, label_dropout=0.2, reduce_mean=True)

  @jax.jit
  def train(params):

    def step(carry, key):
      params, opt_state = carry
      index_key, loss_key = jax.random.split(key)
      index = jax.random.randint(index_key, (256,), 0, x_all.shape[0])
      batch = {"image": x_all[index], "label": y_all[index]}
      grads = jax.grad(loss_fn)(params, loss_key, batch)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None

    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)),
                                  jax.random.split(jax.random.PRNGKey(1), 600))
    return params

  params = train(params)
  conditional = cg.get_conditional_score_fn(sde, model, params)
  unconditional = cg.unconditional_score_fn(conditional, 8)
  log_post = exact_scores.gaussian_mixture_log_posterior(sde, *MIXTURE)
  labels = jnp.arange(1000) % 8
  sample = sampling.get_pc_sampler(sde, (1000, 2), "euler_maruyama", "none", num_steps=100)
  for w in (0.0, 1.0):
    guided = cg.classifier_free_guided_score(conditional, unconditional, labels, w)
    x, _ = jax.jit(lambda rng: sample(rng, guided))(jax.random.PRNGKey(2))
    assert float(jnp.mean(jnp.argmax(log_post(x, jnp.zeros(1000)), -1) == labels)) >= 0.95
  x, _ = jax.jit(lambda rng: sample(rng, unconditional))(jax.random.PRNGKey(3))
  counts = np.bincount(np.asarray(jnp.argmax(log_post(x, jnp.zeros(1000)), -1)), minlength=8)
  np.testing.assert_allclose(counts / 1000, 0.125, atol=0.05)
