"""experiments/likelihood_solvers.py on a small exact mixture: every adaptive solver and the
authors' RK45 reach the exact bits/dim, tighter tolerances get closer, and this project's Dopri5
costs what scipy's RK45, the same method, costs."""

import os

from experiments import likelihood_solvers


def test_solvers_against_the_exact_answer(tmp_path):
  stem = likelihood_solvers.main(["--dim", "4", "--batch", "2", "--tolerances", "1e-3,1e-5",
                                  "--out", str(tmp_path)])
  assert os.path.isfile(stem + ".json") and os.path.isfile(stem + ".md")
  rows = likelihood_solvers.measure(4, 2, [1e-3, 1e-5])
  by = {(r["tolerance"], r["solver"]): r for r in rows}
  assert {s for _, s in by} == {"bosh3", "dopri5", "dopri8", "tsit5", "scipy_rk45"}
  for (tol, solver), r in by.items():
    assert r["max_error"] < (0.02 if tol == 1e-3 else 1e-4), (tol, solver, r)
  for solver in ("dopri5", "tsit5", "scipy_rk45"):
    assert by[(1e-5, solver)]["max_error"] < by[(1e-3, solver)]["max_error"]
    assert by[(1e-5, solver)]["nfe"] > by[(1e-3, solver)]["nfe"]
  for tol in (1e-3, 1e-5):
    ours, authors = by[(tol, "dopri5")]["nfe"], by[(tol, "scipy_rk45")]["nfe"]
    assert abs(ours - authors) <= 0.25 * authors, (tol, ours, authors)
