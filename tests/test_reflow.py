"""Reflow's pieces (``reflow.py``) against exact answers: the coupling's path passes both ends;
the straightness of the exact flow of Gaussian data equals its closed form; the flow of a
deterministic coupling is straight, and one Euler step of it is exact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import exact_scores
import reflow
import sde_lib


@pytest.mark.parametrize("sde", [sde_lib.RectifiedFlow(T=0.99), sde_lib.VPSDE()],
                         ids=lambda sde: type(sde).__name__)
def test_the_coupled_path_passes_both_ends(sde):
  rng = np.random.default_rng(0)
  x0, x_end = jnp.asarray(rng.normal(size=(5, 3))), jnp.asarray(rng.normal(size=(5, 3)))
  z = reflow.coupling_noise(sde, x0, x_end)
  t = jnp.full((5,), sde.T)
  mean, std = sde.marginal_prob(x0, t)
  np.testing.assert_allclose(mean + std[:, None] * z, x_end, rtol=1e-5, atol=1e-5)
  if isinstance(sde, sde_lib.RectifiedFlow):
    np.testing.assert_allclose(z, (x_end - (1 - sde.T) * x0) / sde.T, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("data_std", [0.5, 1.0, 0.05])
def test_straightness_of_the_exact_gaussian_flow_matches_its_closed_form(data_std):
  """Data N(mu, s^2 I): trajectories a(t) mu + h(t) xi, so S = mean h'^2 - (mean h')^2 per
  dimension; 2000 Euler steps of the exact flow reach it to 0.5 %."""
  with jax.enable_x64(True):
    sde = sde_lib.RectifiedFlow(T=0.99)
    mu = np.array([0.7, -0.3, 0.2])
    score_fn = exact_scores.gaussian_mixture_score(sde, mu[None], np.array([data_std]),
                                                   np.array([1.0]))
    x_end = jax.random.normal(jax.random.PRNGKey(0), (4000, 3), jnp.float64) * sde.T
    # The exact flow maps N(a(T) mu, h(T)^2 I), not the prior, so start from its p_T.
    h_end = np.sqrt((1 - sde.T) ** 2 * data_std**2 + sde.T**2)
    x_end = (1 - sde.T) * mu + x_end / sde.T * h_end
    paths = reflow.euler_straightness(reflow.flow_velocity(sde, score_fn), x_end, sde.T, 1e-3,
                                      2000)
    want = reflow.gaussian_straightness(sde, data_std, 1e-3)
    got, se = reflow.straightness_summary(paths.straightness)
    # Every trajectory's S is want * xi^2 summed over 3 dims / 3: the mean carries that noise.
    assert abs(got - want) < 5 * se + 5e-3 * want, (got, want, se)
    assert want > 0


def test_the_flow_of_a_deterministic_coupling_is_straight_and_one_euler_step_exact():
  """Pairs x0 = A x(T) + b (what reflow draws from a flow of Gaussian data): the straight lines
  between the ends never cross, so the velocity E[z - x0 | x(t)] is z - x0 itself and the flow
  is straight: S = 0, and one Euler step lands on x0."""
  with jax.enable_x64(True):
    sde = sde_lib.RectifiedFlow(T=0.99)
    scale, shift = 0.3, jnp.array([0.5, -1.0])
    x_end = jax.random.normal(jax.random.PRNGKey(1), (64, 2), jnp.float64) * sde.T
    x0 = scale * x_end + shift

    def velocity(x, t):
      # x(t) = x0 + t / T (x(T) - x0) is affine in x(T): invert it, then v = (x(T) - x0) / T.
      c = (t / sde.T)[:, None]
      end = (x - (1 - c) * shift) / ((1 - c) * scale + c)
      return (end - (scale * end + shift)) / sde.T

    straight = reflow.euler_straightness(velocity, x_end, sde.T, 0.0, 50, keep_path=True)
    np.testing.assert_allclose(straight.straightness, 0.0, atol=1e-12)
    assert straight.path.shape == (51, 64, 2)
    np.testing.assert_allclose(straight.x, x0, rtol=1e-10, atol=1e-10)
    one_step = reflow.euler_straightness(velocity, x_end, sde.T, 0.0, 1)
    np.testing.assert_allclose(one_step.x, x0, rtol=1e-10, atol=1e-10)


def test_bad_settings_are_refused():
  with pytest.raises(ValueError, match="num_steps >= 1 and 0 <= eps < T"):
    reflow.euler_straightness(lambda x, t: x, jnp.ones((2, 2)), 1.0, 1.0, 10)
  with pytest.raises(ValueError, match="linear path's closed form"):
    reflow.gaussian_straightness(sde_lib.VPSDE(), 1.0, 1e-3)
