"""Diffrax solvers for the probability-flow ODE, shared by ODE sampling and likelihoods.

:data:`SOLVERS` is the one table of methods (``sampling.ode_solver``, ``likelihood``'s
``method``): adaptive ones step with a PID controller on their embedded error estimate, fixed-step
ones on an exact grid. :func:`solve` runs one solve on the device (jittable, no host callbacks)
and counts the vector-field evaluations it made, derived from the solver's Butcher tableau.

NFE. A Runge-Kutta step of ``s`` stages evaluates the vector field ``s`` times, except that an
FSAL tableau (first stage same as last) reuses the last stage of an accepted step as the next
step's first: each step attempt, accepted or rejected (a rejection keeps the stored first stage),
then costs ``s - 1`` evaluations, plus one for the very first stage. Tsit5 and Dopri5 have 7
stages (``1 + 6 n`` for ``n`` attempts, as scipy's ``nfev`` without its 2 evaluations for choosing
the first step), Heun 2 (``2 n``), Euler 1. The first step of an adaptive solve is fixed at 1 %
of the interval, so no evaluations go into choosing it. (Should the very first attempt be
rejected, diffrax re-evaluates the first stage on the retry: one evaluation per such rejection
that its statistics cannot show.)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Tuple

import diffrax
import jax
import jax.numpy as jnp

from infra.registry import Registry

Array = jax.Array
PyTree = Any
VectorField = Callable[[Array, PyTree], PyTree]
"""``vector_field(t: scalar, y: PyTree) -> dy/dt``, a PyTree shaped like ``y``."""

# First step of an adaptive solve, as a fraction of the interval.
_FIRST_STEP_FRACTION = 1e-2


@dataclasses.dataclass(frozen=True)
class ODESolver:
  """A diffrax solver and how it steps.

  Attributes:
    solver_cls: the diffrax solver class (an explicit Runge-Kutta method or Euler).
    adaptive: step with a PID controller on the embedded error estimate (``rtol``, ``atol``);
      otherwise take ``num_steps`` equal steps.
  """
  solver_cls: type
  adaptive: bool

  def evaluations_per_step(self) -> Tuple[int, int]:
    """``(per_step, once)``: evaluations per step attempt, and extra ones at the start."""
    tableau = getattr(self.solver_cls, "tableau", None)
    if tableau is None:  # Euler: one evaluation per step
      return 1, 0
    stages = len(tableau.c) + 1
    return (stages - 1, 1) if tableau.fsal else (stages, 0)


SOLVERS: Registry[ODESolver] = Registry("ODE solver")
SOLVERS.add("tsit5", ODESolver(diffrax.Tsit5, adaptive=True))  # 5th order, 7 stages (FSAL)
SOLVERS.add("dopri5", ODESolver(diffrax.Dopri5, adaptive=True))  # 5th order, 7 stages (FSAL)
SOLVERS.add("dopri8", ODESolver(diffrax.Dopri8, adaptive=True))  # 8th order, 14 stages (FSAL)
SOLVERS.add("bosh3", ODESolver(diffrax.Bosh3, adaptive=True))  # 3rd order, 4 stages (FSAL)
SOLVERS.add("heun", ODESolver(diffrax.Heun, adaptive=False))  # 2nd order, 2 stages
SOLVERS.add("euler", ODESolver(diffrax.Euler, adaptive=False))  # 1st order, 1 stage


def adaptive_solver_names() -> Tuple[str, ...]:
  return tuple(name for name, solver in SOLVERS.items() if solver.adaptive)


def solve(vector_field: VectorField, y0: PyTree, t0: float, t1: float, *, method: str,
          rtol: float = 1e-5, atol: float = 1e-5, num_steps: Optional[int] = None,
          max_steps: int = 4096, save_ts: Optional[Array] = None) -> Tuple[PyTree, Array]:
  """Integrates ``dy/dt = vector_field(t, y)`` from ``t0`` to ``t1`` (either direction).

  Args:
    vector_field: ``(t, y) -> dy/dt``.
    y0: the state at ``t0``, any PyTree of arrays.
    method: a name in :data:`SOLVERS`.
    rtol, atol: tolerances of the adaptive methods' PID controller; the error norm is the RMS
      over the whole state (a batch shares one step size).
    num_steps: steps of a fixed-step method on ``linspace(t0, t1, num_steps + 1)``.
    max_steps: cap on step attempts of an adaptive method.
    save_ts: ``[M]`` times strictly between ``t0`` and ``t1``, in the direction of integration,
      at which to also return the state (each step's dense output, interpolated: the steps
      taken, ``y1`` and ``nfe`` are those of the solve without it).

  Returns:
    ``(y1, nfe)``: the state at ``t1`` -- NaN in every leaf if the solve failed (an adaptive
    solve that reached ``max_steps``), so the caller checks on the host and the device program
    waits on nothing -- and the int32 number of vector-field evaluations (module docstring).
    With ``save_ts``: ``(y1, ys, nfe)``, ``ys`` the states at ``save_ts`` stacked on a leading
    ``[M]`` axis (NaN too if the solve failed).
  """
  solver = SOLVERS.get(method)
  if solver.adaptive:
    controller = diffrax.PIDController(rtol=rtol, atol=atol)
    dt0 = _FIRST_STEP_FRACTION * (t1 - t0)
  else:
    if num_steps is None or num_steps < 1:
      raise ValueError(f"The fixed-step ODE solver {method!r} needs num_steps >= 1, got "
                       f"{num_steps}.")
    # The exact grid, free of accumulated rounding.
    controller = diffrax.StepTo(ts=jnp.linspace(t0, t1, num_steps + 1))
    dt0, max_steps = None, num_steps
  saving = save_ts is not None and save_ts.size > 0
  saveat = diffrax.SaveAt(ts=save_ts, t1=True) if saving else diffrax.SaveAt(t1=True)
  solution = diffrax.diffeqsolve(
      diffrax.ODETerm(lambda t, y, args: vector_field(t, y)), solver.solver_cls(), t0=t0, t1=t1,
      dt0=dt0, y0=y0, saveat=saveat, stepsize_controller=controller, max_steps=max_steps,
      throw=False)
  ok = solution.result == diffrax.RESULTS.successful
  ys = jax.tree_util.tree_map(lambda y: jnp.where(ok, y, jnp.nan), solution.ys)
  y1 = jax.tree_util.tree_map(lambda y: y[-1], ys)
  per_step, once = solver.evaluations_per_step()
  nfe = jnp.asarray(once + per_step * solution.stats["num_steps"], jnp.int32)
  if save_ts is None:
    return y1, nfe
  interior = jax.tree_util.tree_map(lambda y: y[:-1], ys)
  return y1, interior, nfe
