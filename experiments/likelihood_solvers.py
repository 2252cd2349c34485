"""Bits/dim through the probability-flow ODE by each adaptive solver, against the exact answer:
evaluations (NFE) and error at given tolerances, beside the authors' solver (scipy's RK45).

``python -m experiments.likelihood_solvers [--dim 64] [--batch 8] [--tolerances 1e-3,1e-5]
[--out experiments/results]``

The data are a Gaussian mixture in ``--dim`` dimensions (3 components, random means and
covariances, seed 0), so the score is exact (:class:`exact_scores.GaussianMixture`) and so is
``log p_eps(x)`` for ``--batch`` samples. The ODE's answer is ``log N(z; 0, I) + int div``
with ``z`` the flow's image of ``x`` at ``T``, where ``p_T`` is close to, not equal to, the prior
``N(0, I)``; the exact value of that answer is ``log p_eps(x) - log p_T(z) + log N(z; 0, I)``,
taken at each solver's own ``z``, so the error reported is the solver's alone (exact divergence,
no Hutchinson noise; without this correction every solver stops at the same floor). Every
solver of :func:`ode_solvers.adaptive_solver_names` runs through
``likelihood.get_likelihood_fn``; ``scipy_rk45`` runs ``scipy.integrate.solve_ivp(method='RK45')``
on the same vector field with the state flattened into one float64 vector, as the authors'
PyTorch code does (scipy is a test dependency). All share one step size per batch and the RMS
error norm over the whole state. Outputs: ``likelihood_solvers_<UTC time>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import exact_scores
import likelihood
import ode_solvers
import sde_lib
from experiments.records import save_record
from infra.commands import one_line_errors

EPS = 1e-5


def oracle(dim: int, seed: int = 0) -> exact_scores.GaussianMixture:
  """Three Gaussians in ``dim`` dimensions with random means and full covariances."""
  rng = np.random.default_rng(seed)
  means = rng.normal(size=(3, dim)) * 1.5
  factors = rng.normal(size=(3, dim, dim)) / np.sqrt(dim)
  covs = 0.3 * np.einsum("kij,klj->kil", factors, factors) + 0.02 * np.eye(dim)
  return exact_scores.GaussianMixture(np.ones(3) / 3, means, covs, (dim,))


def scipy_rk45(sde: sde_lib.SDE, score_fn: sde_lib.ScoreFn, x: jax.Array, tol: float):
  """``(bpd: [B], z: [B, D], nfe)`` by scipy's RK45 on ``[x, integrated divergence]`` as one
  vector."""
  from scipy import integrate  # pylint: disable=import-outside-toplevel
  batch, dim = x.shape
  ode = sde.reverse(score_fn, probability_flow=True)

  @jax.jit
  def drift_and_div(y, t):
    time_ = jnp.full((batch,), t, y.dtype)
    return likelihood.drift_and_exact_div(lambda u: ode.sde(u, time_)[0], y)

  def field(t, state):
    drift, div = drift_and_div(jnp.asarray(state[:-batch].reshape(batch, dim), x.dtype), t)
    return np.concatenate([np.asarray(drift).ravel(), np.asarray(div)]).astype(np.float64)

  start = np.concatenate([np.asarray(x, np.float64).ravel(), np.zeros(batch)])
  solution = integrate.solve_ivp(field, (EPS, sde.T), start, rtol=tol, atol=tol, method="RK45")
  z = jnp.asarray(solution.y[:-batch, -1].reshape(batch, dim), x.dtype)
  logp = np.asarray(sde.prior_logp(z), np.float64) + solution.y[-batch:, -1]
  return -logp / (dim * np.log(2.0)), z, int(solution.nfev)


def measure(dim: int, batch: int, tolerances: Sequence[float]) -> List[Dict[str, Any]]:
  """One row per (tolerance, solver): NFE, largest and mean |bpd - exact|, seconds."""
  sde = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000)
  data = oracle(dim)
  score_fn = data.score_fn(sde)
  x = data.sample(jax.random.PRNGKey(0), batch)
  log_p_eps = np.asarray(data.marginal_log_prob(sde, x, jnp.full((batch,), EPS)), np.float64)
  ones = jnp.ones((batch,))

  def exact_bpd(z):
    logp = (log_p_eps - np.asarray(data.marginal_log_prob(sde, z, sde.T * ones), np.float64)
            + np.asarray(sde.prior_logp(z), np.float64))
    return -logp / (dim * np.log(2.0))

  rows = []
  for tol in tolerances:
    for method in list(ode_solvers.adaptive_solver_names()) + ["scipy_rk45"]:
      start = time.perf_counter()
      if method == "scipy_rk45":
        bpd, z, nfe = scipy_rk45(sde, score_fn, x, tol)
      else:
        fn = likelihood.get_likelihood_fn(sde, hutchinson_type="exact", rtol=tol, atol=tol,
                                          method=method, eps=EPS)
        bpd, z, nfe = jax.jit(lambda r, y, fn=fn: fn(r, score_fn, y))(jax.random.PRNGKey(1), x)
        bpd, nfe = np.asarray(bpd), int(nfe)
      error = np.abs(np.asarray(bpd, np.float64) - exact_bpd(z))
      rows.append({"tolerance": tol, "solver": method, "nfe": nfe,
                   "max_error": float(error.max()), "mean_error": float(error.mean()),
                   "seconds": time.perf_counter() - start})
  return rows


def _markdown(record: Dict[str, Any]) -> str:
  lines = [f"Likelihood ODE solvers on an exact Gaussian mixture ({record['dim']} dimensions, "
           f"{record['batch']} examples, exact divergence), {record['date']}, "
           f"`{record['command']}`", "",
           "| rtol = atol | solver | NFE | max abs bpd error | mean abs bpd error |",
           "|---|---|---|---|---|"]
  for r in record["rows"]:
    lines.append(f"| {r['tolerance']:g} | {r['solver']} | {r['nfe']} | {r['max_error']:.2e} | "
                 f"{r['mean_error']:.2e} |")
  return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dim", type=int, default=64)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--tolerances", default="1e-3,1e-5")
  parser.add_argument("--out", default="experiments/results")
  args = parser.parse_args(argv)
  tolerances = [float(t) for t in args.tolerances.split(",")]
  record = {"dim": args.dim, "batch": args.batch, "rows": measure(args.dim, args.batch, tolerances),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": " ".join(["python -m experiments.likelihood_solvers"] + list(argv or []))}
  return save_record(record, args.out, "likelihood_solvers", _markdown, lambda r, path: None)


if __name__ == "__main__":
  with one_line_errors():
    main(sys.argv[1:])
