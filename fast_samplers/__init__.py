"""Fast samplers of the probability-flow ODE and its stochastic relatives: DDIM, DPM-Solver++,
UniPC, iPNDM and EDM's Heun sampler (with churn), for every SDE of ``sde_lib``.

They share ``sampling``'s interface: ``sample(rng, score_fn, z=None) -> (x: [B, ...], nfe)``
(``(x, nfe, trajectory)`` with ``num_frames``), a plain ``score_fn(x: [B, ...], t: [B])``, times
with their forward meaning (from ``t = T`` down to ``t = eps``), one ``jax.lax.scan`` over the
steps, not jitted (callers jit a wrapper, as for :func:`sampling.get_pc_sampler`).

One parameterisation for every SDE (the EDM view)
-------------------------------------------------
Every SDE here has the perturbation kernel ``x(t) = a(t) x0 + std(t) z`` (``a = sde.mean_coeff``,
``std = sde.marginal_std``), i.e. ``x(t) = a(t) (x0 + sigma(t) z)`` with the noise level
``sigma(t) = std(t) / a(t)`` (:func:`edm_sigma`): ``sigma`` of VE, ``sqrt(1/a^2 - 1)`` of VP and
``1/a - a`` of sub-VP (not VP's). In ``y = x / a`` the probability-flow ODE is
``dy/dsigma = (y - D(y, sigma)) / sigma`` with the data prediction (posterior mean)
``D = E[x0 | x(t)] = (x + std^2 score(x, t)) / a`` (:func:`sampling.tweedie_denoise`), and in
``lambda = -log sigma`` (half the log-SNR) ``dy/dlambda = D - y``. The samplers step ``y`` on
these variables and hand the network ``x = a(t) y`` at the time ``t`` of each noise level, so
one implementation serves VE, VP and sub-VP. ``sigma(t)`` increases with ``t`` for all three;
times of given noise levels come from :func:`time_of_sigma` (bisection on ``[0, T]`` to the
resolution of the dtype), and every coefficient is then recomputed from the time actually used,
so the network's input and the solver's noise level always agree. All times a sampler visits
(its grid, DPM-Solver's intermediate points, EDM's churned levels) depend on the grid alone, so
they are found once, on the host, when the sampler is built, and enter the program as

Where things live
-----------------
* :mod:`fast_samplers.noise_levels`: ``sigma(t)`` (:func:`edm_sigma`), its inverse
  (:func:`time_of_sigma`) and the :class:`Grid` of times and levels a sampler steps on.
* :mod:`fast_samplers.schedules`: the time schedules (:data:`SCHEDULES`, or a list of times).
* :mod:`fast_samplers.solver`: the one scan every sampler runs (:class:`solver.Method`, a
  sampler's steps; :func:`solver.build`), the ``denoise`` step, NFE counting and trajectories.
* :mod:`fast_samplers.multistep`: the multistep predictor-corrector stepper that
  DPM-Solver++(2M, 3M) and UniPC state as weights.
* One module per sampler, its order and NFE in its docstring: :mod:`fast_samplers.ddim`,
  :mod:`fast_samplers.dpm_solver`, :mod:`fast_samplers.unipc`, :mod:`fast_samplers.ipndm`,
  :mod:`fast_samplers.edm_heun`.
  A new sampler is a module that states its :class:`solver.Method` and a ``get_*_sampler``
  that builds it.

Every sampler takes ``denoise=True``: it ends with one more evaluation, ``D`` at ``eps``,
returned in place of ``x(eps)`` (the PC sampler's Tweedie step). ``num_frames = K >= 2`` also
returns the states ``x = a y`` at the grid indices :func:`sampling.pc_frame_indices` (frame 0
the prior draw, frame ``K - 1`` the returned samples), written inside the one scan; the samples
and NFE are the same with or without frames.
"""

from fast_samplers.ddim import get_ddim_sampler
from fast_samplers.dpm_solver import get_dpm_solver_sampler
from fast_samplers.edm_heun import get_edm_heun_sampler
from fast_samplers.ipndm import get_ipndm_sampler
from fast_samplers.noise_levels import Grid, edm_sigma, grid_of_times, time_of_sigma
from fast_samplers.schedules import SCHEDULES, Schedule, get_time_schedule, parse_schedule
from fast_samplers.unipc import get_unipc_sampler

__all__ = ["SCHEDULES", "Grid", "Schedule", "edm_sigma", "get_ddim_sampler",
           "get_dpm_solver_sampler", "get_edm_heun_sampler", "get_ipndm_sampler",
           "get_time_schedule", "get_unipc_sampler", "grid_of_times", "parse_schedule",
           "time_of_sigma"]
