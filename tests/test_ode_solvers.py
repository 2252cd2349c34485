"""``ode_solvers``: one diffrax solver table for ODE sampling and likelihoods, NFE from the tableau.

The test problem ``dy/dt = -2 t y`` has the exact solution ``y(t) = y0 exp(-(t^2 - t0^2))``.
"""

from typing import List

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ode_solvers

T0, T1 = 1.0, 0.0  # integrated backwards in time, as the samplers do
Y0 = jnp.array([[1.0, -2.0], [0.5, 3.0]])


def _exact(t):
  return Y0 * np.exp(-(t**2 - T0**2))


def _recording_field(log: List[float]):
  def field(t, y):
    jax.debug.callback(lambda s: log.append(float(s)), t)
    return -2.0 * t * y

  return field


@pytest.mark.parametrize("name, per_step, once", [
    ("tsit5", 6, 1), ("dopri5", 6, 1), ("dopri8", 13, 1), ("bosh3", 3, 1), ("heun", 2, 0),
    ("euler", 1, 0)])
def test_evaluations_per_step_from_the_tableau(name, per_step, once):
  assert ode_solvers.SOLVERS.get(name).evaluations_per_step() == (per_step, once)


@pytest.mark.parametrize("name", ode_solvers.SOLVERS.names())
def test_nfe_counts_every_vector_field_evaluation(name):
  log: List[float] = []
  y1, nfe = jax.jit(lambda y: ode_solvers.solve(_recording_field(log), y, T0, T1, method=name,
                                                rtol=1e-6, atol=1e-6, num_steps=16))(Y0)
  jax.effects_barrier()
  assert int(nfe) == len(log) > 0
  assert np.all(np.isfinite(y1))
  tolerance = {"euler": 0.1, "heun": 5e-3}.get(name, 1e-4)
  np.testing.assert_allclose(y1, _exact(T1), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("name, order", [("euler", 1), ("heun", 2)])
def test_fixed_step_solvers_show_their_order(name, order):
  """The global error falls as ``h^order``: the fitted log-log slope over 8..64 steps."""
  steps = (8, 16, 32, 64)
  errors = []
  for n in steps:
    y1, nfe = ode_solvers.solve(lambda t, y: -2.0 * t * y, Y0.astype(jnp.float32), T0, T1,
                                method=name, num_steps=n)
    assert int(nfe) == n * ode_solvers.SOLVERS.get(name).evaluations_per_step()[0]
    errors.append(float(jnp.max(jnp.abs(y1 - _exact(T1)))))
  slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
  assert -order - 0.25 < slope < -order + 0.25, (errors, slope)


def test_adaptive_error_follows_the_tolerance():
  errors = []
  for tol in (1e-3, 1e-6):
    y1, _ = ode_solvers.solve(lambda t, y: -2.0 * t * y, Y0, T0, T1, method="tsit5", rtol=tol,
                              atol=tol)
    errors.append(float(jnp.max(jnp.abs(y1 - _exact(T1)))))
  assert errors[1] < 1e-5 and errors[1] < errors[0]


def test_failed_solve_is_nan_in_every_leaf():
  state = (Y0, jnp.zeros((2,)))
  (y, div), _ = ode_solvers.solve(lambda t, s: (-2.0 * t * s[0], s[1] + 1.0), state, T0, T1,
                                  method="tsit5", max_steps=1)
  assert np.all(np.isnan(y)) and np.all(np.isnan(div))


def test_fixed_step_solver_needs_num_steps():
  with pytest.raises(ValueError, match="heun.*num_steps"):
    ode_solvers.solve(lambda t, y: -y, Y0, T0, T1, method="heun")
  with pytest.raises(ValueError, match="Unknown ODE solver 'rk4'"):
    ode_solvers.solve(lambda t, y: -y, Y0, T0, T1, method="rk4")
