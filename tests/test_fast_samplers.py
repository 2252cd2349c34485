"""Tests of ``fast_samplers`` (DDIM, DPM-Solver++, UniPC, iPNDM, EDM Heun) driven by exact
scores.

* Convergence order: Gaussian data ``N(mu, s^2 I)`` make the probability-flow ODE exactly
  solvable (marginals ``N(m(t), v(t) I)``, ``m = a mu``, ``v = a^2 s^2 + std^2``; the flow maps
  ``x(T)`` to ``m(t) + sqrt(v(t) / v(T)) (x(T) - m(T))``). Each deterministic solver is run in
  float64 from the same ``x(T)`` with the exact score on the ``karras`` schedule at 32, 64 and
  128 steps (iPNDM 3 and 4: 128, 256, 512); the fitted slope of log(max error) against
  log(steps) must lie within 0.3 of the solver's order, for VE, VP and sub-VP. (On the uniform
  ``logsnr`` grid this problem's leading 3M error term is an exact derivative and integrates to
  zero: 3M measures order 4 there, so the non-uniform ``karras`` grid is the test.)
* Distributions: the toy mixture (8 modes, std 0.1) with its exact score, every sampler at
  10-20 NFE (and churn at its other defaults, 20 steps) built from the toy config, compared with
  the exact ``p_eps`` (no final denoising): mode weights (each sample to its nearest mode) and
  per-mode covariances.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import builders
import exact_scores
import fast_samplers
import sde_lib
from configs.toy import gaussian_mixture_exact

# ----------------------------------------------------------------------------- helpers

_SDES = {"ve": sde_lib.VESDE, "vp": sde_lib.VPSDE, "subvp": sde_lib.subVPSDE}


def _recording_score(score_fn, log: List[float]):
  """Wraps ``score_fn`` to append each call's time ``t[0]`` to ``log`` (in call order)."""

  def recorded(x, t):
    jax.debug.callback(lambda tt: log.append(float(tt[0])), t, ordered=True)
    return score_fn(x, t)

  return recorded


def _sample_recording_times(config, sde):
  """``config``'s sampler on the toy's exact score, 16 samples: ``(x, nfe, [t of each call])``."""
  log: List[float] = []
  score_fn = _recording_score(exact_scores.gaussian_mixture_score(sde, *_MIXTURE), log)
  sample = builders.build_sampling_fn(config, sde, (16, 2))
  x, nfe = jax.jit(lambda rng: sample(rng, score_fn))(jax.random.PRNGKey(0))
  jax.effects_barrier()
  return x, nfe, log


# The parameters the tutorial's SDE and OU read from config.model (their configs' values).
_SDE_PARAMETERS = {"sigmapowersde": dict(sigma=25.0), "ousde": dict(mu=0.5, sigma=1.0, T=10.0),
                   "rectified_flow": dict(T=0.99)}


def _toy_config(**sampling):
  config = gaussian_mixture_exact.get_config()
  for key, value in sampling.items():
    if key == "sde":
      config.training.sde = value
      config.model.update(_SDE_PARAMETERS.get(value, {}))
    else:
      config.sampling[key] = value
  return config


# ----------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("sde_name", sorted(_SDES))
def test_schedules_run_from_T_to_eps_and_invert_sigma(sde_name):
  sde, eps, n = _SDES[sde_name](), 1e-3, 12
  for name in fast_samplers.SCHEDULES.names():
    t = np.asarray(fast_samplers.get_time_schedule(name, sde, n, eps))
    assert t.shape == (n + 1,) and t[0] == sde.T and t[-1] == eps
    assert np.all(np.diff(t) < 0), name
  sigma = np.asarray(fast_samplers.edm_sigma(sde, jnp.asarray([sde.T, eps])))
  lam = -np.log(np.asarray(fast_samplers.edm_sigma(
      sde, fast_samplers.get_time_schedule("logsnr", sde, n, eps))))
  np.testing.assert_allclose(np.diff(lam), np.full(n, np.log(sigma[0] / sigma[1]) / n), rtol=2e-3)
  root = np.asarray(fast_samplers.edm_sigma(
      sde, fast_samplers.get_time_schedule("karras", sde, n, eps, rho=7.0))) ** (1 / 7)
  np.testing.assert_allclose(np.diff(root), np.full(n, np.diff(sigma ** (1 / 7))[0] / n),
                             rtol=2e-3)
  # sub-VP's noise level is 1/a - a, not VP's sqrt(1/a^2 - 1).
  t = jnp.asarray([0.3])
  a = float(sde.mean_coeff(t)[0])
  expected = {"ve": float(sde.marginal_std(t)[0]), "vp": np.sqrt(1 / a**2 - 1), "subvp": 1 / a - a}
  np.testing.assert_allclose(float(fast_samplers.edm_sigma(sde, t)[0]), expected[sde_name],
                             rtol=1e-5)
  levels = jnp.asarray([0.02, 0.5, 3.0, 40.0])
  np.testing.assert_allclose(
      fast_samplers.edm_sigma(sde, fast_samplers.time_of_sigma(sde, levels)), levels, rtol=1e-4)


# ----------------------------------------------------------------------------- convergence

_GAUSS_MEAN, _GAUSS_STD = np.array([0.5, -0.3, 0.2]), 0.5
_ORDER_STEPS = (32, 64, 128)
_SOLVERS = {  # name: (factory, order[, steps])
    "ddim": (lambda sde, n: fast_samplers.get_ddim_sampler(
        sde, (8, 3), num_steps=n, schedule="karras", denoise=False), 1),
    "dpm_solver_2s": (lambda sde, n: fast_samplers.get_dpm_solver_sampler(
        sde, (8, 3), order=2, multistep=False, num_steps=n, schedule="karras", denoise=False), 2),
    "dpm_solver_3s": (lambda sde, n: fast_samplers.get_dpm_solver_sampler(
        sde, (8, 3), order=3, multistep=False, num_steps=n, schedule="karras", denoise=False), 3),
    "dpm_solver_2m": (lambda sde, n: fast_samplers.get_dpm_solver_sampler(
        sde, (8, 3), order=2, num_steps=n, schedule="karras", denoise=False), 2),
    "dpm_solver_3m": (lambda sde, n: fast_samplers.get_dpm_solver_sampler(
        sde, (8, 3), order=3, num_steps=n, schedule="karras", denoise=False), 3),
    "edm_heun": (lambda sde, n: fast_samplers.get_edm_heun_sampler(
        sde, (8, 3), num_steps=n, denoise=False), 2),
    # UniP-p alone has order p; UniC raises it to p + 1 (measured 2026-12-07: slopes 0.97-0.98,
    # 2.15-2.27, 3.06-3.10 alone; 1.96-2.12, 3.03-3.18, 3.96-4.02 corrected, both variants).
    "unip_2": (lambda sde, n: fast_samplers.get_unipc_sampler(
        sde, (8, 3), order=2, corrector=False, num_steps=n, schedule="karras", denoise=False), 2),
    "unip_3": (lambda sde, n: fast_samplers.get_unipc_sampler(
        sde, (8, 3), order=3, corrector=False, num_steps=n, schedule="karras", denoise=False), 3),
    "unipc_1": (lambda sde, n: fast_samplers.get_unipc_sampler(
        sde, (8, 3), order=1, num_steps=n, schedule="karras", denoise=False), 2),
    "unipc_2_bh2": (lambda sde, n: fast_samplers.get_unipc_sampler(
        sde, (8, 3), order=2, variant="bh2", num_steps=n, schedule="karras", denoise=False), 3),
    "unipc_3": (lambda sde, n: fast_samplers.get_unipc_sampler(
        sde, (8, 3), order=3, num_steps=n, schedule="karras", denoise=False), 4),
    # UniC after DPM-Solver++(2M) / (3M) (measured 2026-12-07: 3.03 and 3.96-4.02, both
    # variants; the predictors alone 2.06-2.10 and 3.06-3.10).
    "dpm_solver_2m_unic": (lambda sde, n: fast_samplers.get_unipc_sampler(
        sde, (8, 3), order=2, predictor="dpm_solver++", num_steps=n, schedule="karras",
        denoise=False), 3),
    "dpm_solver_3m_unic_bh2": (lambda sde, n: fast_samplers.get_unipc_sampler(
        sde, (8, 3), order=3, predictor="dpm_solver++", variant="bh2", num_steps=n,
        schedule="karras", denoise=False), 4),
    # iPNDM: its first-order warm start and the stiff end of the sigma grid keep orders 3 and 4
    # pre-asymptotic at 32-128 steps (measured 2026-12-07: 2.60-2.78 and 3.30-3.63); at 128-512
    # steps they are 2.92-2.95 and 3.87-3.89.
    "ipndm_1": (lambda sde, n: fast_samplers.get_ipndm_sampler(
        sde, (8, 3), order=1, num_steps=n, schedule="karras", denoise=False), 1),
    "ipndm_2": (lambda sde, n: fast_samplers.get_ipndm_sampler(
        sde, (8, 3), order=2, num_steps=n, schedule="karras", denoise=False), 2),
    "ipndm_3": (lambda sde, n: fast_samplers.get_ipndm_sampler(
        sde, (8, 3), order=3, num_steps=n, schedule="karras", denoise=False), 3, (128, 256, 512)),
    "ipndm_4": (lambda sde, n: fast_samplers.get_ipndm_sampler(
        sde, (8, 3), order=4, num_steps=n, schedule="karras", denoise=False), 4, (128, 256, 512)),
}


def _fitted_order(solver: str, sde: sde_lib.SDE) -> Tuple[float, List[float]]:
  """The slope of log(max error) against log(steps) of ``solver`` on the exact Gaussian flow map
  from ``T`` to ``eps = 1e-3``, and the errors (module docstring)."""
  make, _, *steps = _SOLVERS[solver]
  steps = steps[0] if steps else _ORDER_STEPS
  with jax.enable_x64(True):
    score_fn = exact_scores.gaussian_mixture_score(sde, _GAUSS_MEAN[None], np.array([_GAUSS_STD]),
                                                   np.ones(1))
    z = sde.prior_sampling(jax.random.PRNGKey(0), (8, 3)).astype(jnp.float64)
    exact = exact_scores.gaussian_flow_map(sde, _GAUSS_MEAN, _GAUSS_STD**2 * np.eye(3), z,
                                           sde.T, 1e-3)
    samplers = [make(sde, n) for n in steps]
    # One program for the three step counts.
    outs = jax.jit(lambda z: [s(jax.random.PRNGKey(1), score_fn, z) for s in samplers])(z)
    errors = [float(jnp.max(jnp.abs(x - exact))) for x, _ in outs]
  return -np.polyfit(np.log(steps), np.log(errors), 1)[0], errors


@pytest.mark.parametrize("sde_name", sorted(_SDES))
@pytest.mark.parametrize("solver", sorted(_SOLVERS))
def test_deterministic_solvers_converge_at_their_order(solver, sde_name):
  with jax.enable_x64(True):
    slope, errors = _fitted_order(solver, _SDES[sde_name]())
  assert abs(slope - _SOLVERS[solver][1]) <= 0.3, (solver, sde_name, slope, errors)
  assert errors[-1] > 1e-12  # far above float64 round-off: the slope is the solver's


@pytest.mark.parametrize("sde_class", [sde_lib.SigmaPowerSDE, sde_lib.OUSDE,
                                       sde_lib.RectifiedFlow], ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("solver", ["ddim", "dpm_solver_3m", "edm_heun", "unipc_2_bh2",
                                    "dpm_solver_2m_unic", "ipndm_2"])
def test_solvers_and_schedules_work_unchanged_on_the_tutorial_and_ou_sdes(solver, sde_class):
  """The (a(t), sigma(t)) view needs nothing VE- or VP-specific: every schedule runs from T (10
  for OU) to eps, and the solvers keep their order on the exact Gaussian flow map (measured
  2026-12-07: slopes 0.98-0.99, 2.91-2.97, 2.02-2.04, 3.02-3.04 for the first four)."""
  with jax.enable_x64(True):
    sde = sde_class()
    for name in fast_samplers.SCHEDULES.names():
      t = np.asarray(fast_samplers.get_time_schedule(name, sde, 12, 1e-3))
      assert t[0] == sde.T and t[-1] == 1e-3 and np.all(np.diff(t) < 0), name
    slope, errors = _fitted_order(solver, sde)
  assert abs(slope - _SOLVERS[solver][1]) <= 0.3, (solver, sde_class.__name__, slope, errors)


def test_unip_2_bh2_is_dpm_solver_2m():
  """UniP-2 with B(h) = e^-h - 1 is DPM-Solver++(2M) (the UniPC paper's remark)."""
  sde = sde_lib.VESDE()
  score_fn = exact_scores.gaussian_mixture_score(sde, _GAUSS_MEAN[None], np.array([_GAUSS_STD]),
                                                 np.ones(1))
  kwargs = dict(num_steps=20, schedule="logsnr")
  samplers = [fast_samplers.get_unipc_sampler(sde, (8, 3), order=2, variant="bh2",
                                              corrector=False, **kwargs),
              fast_samplers.get_dpm_solver_sampler(sde, (8, 3), order=2, **kwargs)]
  (x, nfe), (ref, ref_nfe) = jax.jit(lambda rng: [s(rng, score_fn) for s in samplers])(
      jax.random.PRNGKey(0))
  assert nfe == ref_nfe == 21
  np.testing.assert_allclose(x, ref, rtol=1e-4, atol=1e-4)


def test_ddim_is_dpm_solver_1():
  sde = sde_lib.VPSDE()
  score_fn = exact_scores.gaussian_mixture_score(sde, _GAUSS_MEAN[None], np.array([_GAUSS_STD]),
                                                 np.ones(1))
  kwargs = dict(num_steps=10, schedule="logsnr")
  samplers = [fast_samplers.get_ddim_sampler(sde, (8, 3), **kwargs),
              fast_samplers.get_dpm_solver_sampler(sde, (8, 3), order=1, **kwargs),
              fast_samplers.get_dpm_solver_sampler(sde, (8, 3), order=1, multistep=False,
                                                   **kwargs)]
  outs = jax.jit(lambda rng: [s(rng, score_fn) for s in samplers])(jax.random.PRNGKey(0))
  assert [nfe for _, nfe in outs] == [11, 11, 11]
  for x, _ in outs[1:]:
    np.testing.assert_allclose(x, outs[0][0], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- distributions

N_SAMPLES = 20_000
Z = 4.5
_MIXTURE = exact_scores.toy_mixture("gaussian_mixture")
# (sampling overrides of the toy config, NFE, allowed bias: relative per-mode covariance error).
# The biases are 1.5x (rounded up) the largest |error| / v measured offline with 40 000 samples
# (2026-12-02, another seed); a per-mode variance error of 4.5 standard errors is added on top.
# The modes (std 0.1) are narrow against the path from sigma ~ 150 down to sigma(eps) ~ 0.01,
# so few-step solvers bias their covariance by 10-50 % (churn on sub-VP, whose sigma(eps) is
# 1e-4, by 110 %); the mode weights have no bias beyond
# the allowance below.
_DISTRIBUTION_CASES = {
    "ddim": (dict(method="ddim"), 20, 0.36),
    "ddim_eta1": (dict(method="ddim", eta=1.0), 20, 0.58),
    "dpm_solver_2m": (dict(method="dpm_solver"), 20, 0.20),
    "dpm_solver_3m": (dict(method="dpm_solver", order=3), 20, 0.23),
    "dpm_solver_2s": (dict(method="dpm_solver", multistep=False, steps=10), 20, 0.44),
    "dpm_solver_3s": (dict(method="dpm_solver", order=3, multistep=False, steps=6), 18, 0.44),
    "edm_heun": (dict(method="edm_heun", steps=10), 20, 0.14),
    # UniPC at 10 NFE (measured 2026-12-07, 40 000 samples: 0.31 VP, 0.70 sub-VP).
    "unipc_2": (dict(method="unipc", steps=10), 10, 0.47),
    "unipc_3_bh2_subvp": (dict(method="unipc", order=3, unipc_variant="bh2", steps=10,
                               sde="subvpsde"), 10, 1.05),
    # UniC after DPM-Solver++ and iPNDM at 10 NFE (measured 2026-12-07, 40 000 samples: 0.10
    # after 2M on VP, 0.53 after 3M on sub-VP; iPNDM-4 0.68 on VP, iPNDM-3 0.56 on VE).
    "dpm_solver_2m_unic": (dict(method="unipc", unipc_predictor="dpm_solver++", steps=10), 10,
                           0.16),
    "dpm_solver_3m_unic_subvp": (dict(method="unipc", unipc_predictor="dpm_solver++", order=3,
                                      steps=10, sde="subvpsde"), 10, 0.80),
    "ipndm_4": (dict(method="ipndm", order=4, steps=10), 10, 1.02),
    "ipndm_3_ve": (dict(method="ipndm", order=3, steps=10, sde="vesde"), 10, 0.84),
    # The tutorial's sigma^t SDE and OU (T = 10) need nothing of their own (measured 2026-12-07,
    # 40 000 samples: UniPC-2 0.068 and 0.28, iPNDM-4 0.28 on sigma^t, DPM-Solver++(2M) 0.098 and
    # EDM Heun 0.18 on OU).
    "unipc_2_sigmapower": (dict(method="unipc", steps=10, sde="sigmapowersde"), 10, 0.11),
    "ipndm_4_sigmapower": (dict(method="ipndm", order=4, steps=10, sde="sigmapowersde"), 10,
                           0.42),
    "dpm_solver_2m_ou": (dict(method="dpm_solver", sde="ousde"), 20, 0.15),
    "unipc_2_ou": (dict(method="unipc", steps=10, sde="ousde"), 10, 0.43),
    "edm_heun_ou": (dict(method="edm_heun", steps=10, sde="ousde"), 20, 0.28),
    # Rectified flow (T = 0.99) likewise (measured 2026-12-07, 40 000 samples: DDIM 0.20,
    # UniPC-2 0.52, DPM-Solver++(2M) 0.17, EDM Heun 0.14, iPNDM-4 0.99).
    "ddim_rf": (dict(method="ddim", sde="rectified_flow"), 20, 0.30),
    "unipc_2_rf": (dict(method="unipc", steps=10, sde="rectified_flow"), 10, 0.79),
    "dpm_solver_2m_rf": (dict(method="dpm_solver", sde="rectified_flow"), 20, 0.26),
    "edm_heun_rf": (dict(method="edm_heun", steps=10, sde="rectified_flow"), 20, 0.21),
    "ipndm_4_rf": (dict(method="ipndm", order=4, steps=10, sde="rectified_flow"), 10, 1.49),
    # EDM's stochastic settings (S_churn 40, S_min 0.05, S_max 50, S_noise 1.003).
    "edm_churn": (dict(method="edm_heun", steps=10, s_churn=40.0, s_min=0.05, s_max=50.0,
                       s_noise=1.003), 20, 0.72),
    # Churn at the defaults of every other setting (20 steps, all levels, S_noise 1).
    "edm_churn_defaults": (dict(method="edm_heun", s_churn=40.0), 40, 0.36),
    "ddim_eta1_subvp": (dict(method="ddim", eta=1.0, sde="subvpsde"), 20, 0.58),
    "edm_churn_ve": (dict(method="edm_heun", steps=10, s_churn=40.0, s_min=0.05, s_max=50.0,
                          s_noise=1.003, sde="vesde"), 20, 0.71),
    "edm_churn_subvp": (dict(method="edm_heun", steps=10, s_churn=40.0, s_min=0.05, s_max=50.0,
                             s_noise=1.003, sde="subvpsde"), 20, 1.66),
}
_WEIGHT_BIAS = 0.005


def mode_statistics(config, num_samples: int, seed: int) -> Dict[str, np.ndarray]:
  """Samples ``config``'s sampler (no final denoising) on the toy's exact score; returns the
  NFE, the exact per-mode variance ``v`` at ``eps``, and per mode (nearest mean ``a mu_k``) the
  sample count, weight and covariance."""
  config.sampling.noise_removal = False
  sde = builders.build_sde(config)
  score_fn = exact_scores.gaussian_mixture_score(sde, *_MIXTURE)
  sample = builders.build_sampling_fn(config, sde, (num_samples, 2))
  x, nfe = jax.jit(lambda rng: sample(rng, score_fn))(jax.random.PRNGKey(seed))
  x = np.asarray(x, np.float64)
  eps = jnp.full((1,), config.sampling.eps)
  a, std = float(sde.mean_coeff(eps)[0]), float(sde.marginal_std(eps)[0])
  nearest = np.argmin(((x[:, None] - a * _MIXTURE.means[None]) ** 2).sum(-1), axis=1)
  counts = np.bincount(nearest, minlength=len(_MIXTURE.weights))
  covs = np.stack([np.cov(x[nearest == k].T) for k in range(len(counts))])
  return dict(nfe=int(nfe), finite=np.isfinite(x).all(), counts=counts,
              weights=counts / num_samples, covs=covs, var=a**2 * _MIXTURE.stds[0]**2 + std**2)


@pytest.mark.parametrize("case", sorted(_DISTRIBUTION_CASES))
def test_samplers_reproduce_mode_weights_and_covariances(case):
  overrides, nfe, cov_bias = _DISTRIBUTION_CASES[case]
  stats = mode_statistics(_toy_config(**overrides), N_SAMPLES, seed=0)
  assert stats["nfe"] == nfe and stats["finite"]
  w = _MIXTURE.weights
  weight_tol = Z * np.sqrt(w * (1 - w) / N_SAMPLES) + _WEIGHT_BIAS
  assert np.all(np.abs(stats["weights"] - w) <= weight_tol), (stats["weights"], weight_tol)
  v = stats["var"]
  rel_err = np.abs(stats["covs"] - v * np.eye(2)) / v                      # [K, 2, 2]
  tol = cov_bias + Z * np.sqrt(2.0 / stats["counts"])[:, None, None]
  assert np.all(rel_err <= tol), (case, rel_err.max(), tol.min())


# ----------------------------------------------------------------------------- builders, NFE


@pytest.mark.parametrize("overrides,nfe", [
    (dict(method="ddim", steps=5, eta=0.5, schedule="uniform_t"), 6),
    (dict(method="dpm_solver", steps=5, order=3), 6),
    (dict(method="dpm_solver", steps=5, order=3, multistep=False, noise_removal=False), 15),
    (dict(method="edm_heun", steps=5, s_churn=5.0, noise_removal=False), 10),
    (dict(method="unipc", steps=5, order=3), 6),
    (dict(method="unipc", steps=5, unipc_corrector=False, noise_removal=False), 5),
    (dict(method="unipc", steps=5, order=3, unipc_predictor="dpm_solver++"), 6),
    (dict(method="ipndm", steps=5, order=4), 6),
])
def test_methods_build_from_the_config_and_count_every_evaluation(overrides, nfe):
  config = _toy_config(**overrides)
  sde = builders.build_sde(config)
  x, got, log = _sample_recording_times(config, sde)
  assert got == nfe == len(log) and x.shape == (16, 2) and np.isfinite(np.asarray(x)).all()
  assert max(log) <= sde.T and min(log) >= config.sampling.eps * (1 - 1e-6)
  # The steps: sampling.steps, unless build_sampling_fn is given num_steps (traced only).
  for steps, fn in ((7, builders.build_sampling_fn(_toy_config(**dict(overrides, steps=7)), sde,
                                                   (2, 2))),
                    (3, builders.build_sampling_fn(config, sde, (2, 2), num_steps=3))):
    jaxpr = jax.make_jaxpr(lambda rng: fn(rng, lambda x, t: -x)[0])(jax.random.PRNGKey(0)).jaxpr
    assert [e.params["length"] for e in jaxpr.eqns if e.primitive.name == "scan"
            and e.params["length"] in (3, 7)] == [steps]


def test_loop_is_one_scan_of_num_steps():
  sde = sde_lib.VPSDE()
  sampler = fast_samplers.get_edm_heun_sampler(sde, (4, 2), num_steps=30, s_churn=10.0)
  jaxpr = jax.make_jaxpr(lambda rng: sampler(rng, lambda x, t: -x))(jax.random.PRNGKey(0)).jaxpr
  scans = [e for e in jaxpr.eqns if e.primitive.name == "scan" and e.params["length"] == 30]
  assert len(scans) == 1


def test_a_sampler_built_inside_a_trace_is_the_same():
  sde = sde_lib.subVPSDE()
  build = lambda: fast_samplers.get_dpm_solver_sampler(sde, (4, 2), order=3, multistep=False,
                                                       num_steps=4)
  outside = build()
  rng = jax.random.PRNGKey(0)
  inside = jax.jit(lambda r: build()(r, lambda x, t: -x)[0])(rng)
  np.testing.assert_array_equal(inside, jax.jit(lambda r: outside(r, lambda x, t: -x)[0])(rng))


# ----------------------------------------------------------------------------- trajectories


@pytest.mark.parametrize("num_steps,num_frames", [(6, 4), (3, 9)])
def test_frames_change_no_output_and_hold_the_grid_states(num_steps, num_frames):
  sde = sde_lib.subVPSDE()
  score_fn = exact_scores.gaussian_mixture_score(sde, *_MIXTURE)
  kwargs = dict(eta=1.0, num_steps=num_steps, schedule="logsnr")
  plain = fast_samplers.get_ddim_sampler(sde, (5, 2), **kwargs)
  framed = fast_samplers.get_ddim_sampler(sde, (5, 2), num_frames=num_frames, **kwargs)
  rng = jax.random.PRNGKey(3)
  (x, nfe), (xf, nfef, traj) = jax.jit(lambda r: (plain(r, score_fn), framed(r, score_fn)))(rng)
  np.testing.assert_array_equal(x, xf)
  assert nfe == nfef == num_steps + 1
  assert traj.x.shape == (num_frames, 5, 2) and traj.t.shape == (num_frames,)
  np.testing.assert_array_equal(traj.x[0], sde.prior_sampling(jax.random.split(rng)[0], (5, 2)))
  np.testing.assert_array_equal(traj.x[-1], x)
  times = fast_samplers.get_time_schedule("logsnr", sde, num_steps)
  index = np.asarray((2 * np.arange(num_frames) * num_steps + num_frames - 1)
                     // (2 * (num_frames - 1)))
  np.testing.assert_allclose(traj.t, times[index], rtol=1e-6)
  assert np.all(np.diff(np.asarray(traj.t)) <= 0)


@pytest.mark.parametrize("get_sampler", [fast_samplers.get_unipc_sampler,
                                         fast_samplers.get_ipndm_sampler])
def test_multistep_frames_change_no_output(get_sampler):
  sde = sde_lib.VPSDE()
  score_fn = exact_scores.gaussian_mixture_score(sde, *_MIXTURE)
  plain = get_sampler(sde, (5, 2), num_steps=6)
  framed = get_sampler(sde, (5, 2), num_steps=6, num_frames=4)
  (x, nfe), (xf, nfef, traj) = jax.jit(lambda r: (plain(r, score_fn), framed(r, score_fn)))(
      jax.random.PRNGKey(2))
  np.testing.assert_array_equal(x, xf)
  assert nfe == nfef == 7 and traj.x.shape == (4, 5, 2)
  np.testing.assert_array_equal(traj.x[-1], x)


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("build", [
    lambda sde: fast_samplers.get_ddim_sampler(sde, (2, 2), eta=1.5),
    lambda sde: fast_samplers.get_ddim_sampler(sde, (2, 2), num_steps=0),
    lambda sde: fast_samplers.get_ddim_sampler(sde, (2, 2), schedule="cosine"),
    lambda sde: fast_samplers.get_ddim_sampler(sde, (2, 2), eps=0.0),
    lambda sde: fast_samplers.get_dpm_solver_sampler(sde, (2, 2), order=4),
    lambda sde: fast_samplers.get_dpm_solver_sampler(sde, (2, 2), num_frames=1),
    lambda sde: fast_samplers.get_edm_heun_sampler(sde, (2, 2), rho=0.0),
    lambda sde: fast_samplers.get_edm_heun_sampler(sde, (2, 2), s_churn=-1.0),
    lambda sde: fast_samplers.get_edm_heun_sampler(sde, (2, 2), s_min=2.0, s_max=1.0),
    lambda sde: fast_samplers.get_unipc_sampler(sde, (2, 2), order=4),
    lambda sde: fast_samplers.get_unipc_sampler(sde, (2, 2), variant="bh3"),
    lambda sde: fast_samplers.get_unipc_sampler(sde, (2, 2), predictor="dpm_solver"),
    lambda sde: fast_samplers.get_ipndm_sampler(sde, (2, 2), order=5),
    lambda sde: fast_samplers.get_ipndm_sampler(sde, (2, 2), schedule=[0.9, 0.5, 0.1]),
    lambda sde: fast_samplers.get_ddim_sampler(sde, (2, 2), schedule=[1.0, 0.5, 0.7, 0.1]),
    lambda sde: fast_samplers.get_ddim_sampler(sde, (2, 2), schedule=[1.0, 0.5, 0.0]),
    lambda sde: fast_samplers.get_ddim_sampler(sde, (2, 2), schedule=[1.0]),
    lambda sde: fast_samplers.get_ddim_sampler(sde, (2, 2), schedule=[1.0, float("nan")]),
])
def test_bad_arguments_raise_when_built(build):
  with pytest.raises(ValueError):
    build(sde_lib.VPSDE())


# ----------------------------------------------------------------------------- schedules as data


@pytest.mark.parametrize("get_sampler,kwargs", [
    (fast_samplers.get_ddim_sampler, dict(eta=1.0)),
    (fast_samplers.get_dpm_solver_sampler, dict(order=3, multistep=False)),
    (fast_samplers.get_unipc_sampler, dict(order=3)),
    (fast_samplers.get_ipndm_sampler, dict(order=4)),
    (fast_samplers.get_edm_heun_sampler, dict(s_churn=10.0)),
])
def test_a_list_of_times_is_the_schedule_it_lists(get_sampler, kwargs):
  """The times of a named schedule, given as a list (num_steps and eps then come from the list:
  the ones passed are ignored), give the same samples and NFE; EDM's polynomial schedule takes
  any rho."""
  sde = sde_lib.subVPSDE()
  score_fn = exact_scores.gaussian_mixture_score(sde, *_MIXTURE)
  times = fast_samplers.get_time_schedule("karras", sde, 5, eps=2e-3, rho=3.0)
  named = get_sampler(sde, (4, 2), num_steps=5, schedule="karras", rho=3.0, eps=2e-3, **kwargs)
  listed = get_sampler(sde, (4, 2), num_steps=99, schedule=list(times), eps=0.5, **kwargs)
  (x, nfe), (y, listed_nfe) = jax.jit(lambda r: (named(r, score_fn), listed(r, score_fn)))(
      jax.random.PRNGKey(4))
  np.testing.assert_array_equal(x, y)
  assert nfe == listed_nfe


def test_parse_schedule_reads_names_and_times():
  assert fast_samplers.parse_schedule("karras") == "karras"
  assert fast_samplers.parse_schedule("1, 0.5,0.001") == (1.0, 0.5, 0.001)
  with pytest.raises(ValueError, match="neither a schedule name"):
    fast_samplers.parse_schedule("1,half,0.001")


def test_a_config_lists_times_in_sampling_schedule():
  config = _toy_config(method="ipndm", order=4, schedule="1,0.5,0.1,0.01", noise_removal=False)
  _, nfe, log = _sample_recording_times(config, builders.build_sde(config))
  assert nfe == 3 and np.allclose(log, [1.0, 0.5, 0.1])
  assert builders.sampler_tag(config) == "ipndm-4-3listedsteps"


def test_ddim_on_the_linear_path_is_euler_on_the_velocity():
  """On rectified flow's path DDIM (eta 0) is Euler's method on the flow ``dx/dt = v(x, t)``:
  ``x' = a' D + std' z_hat = x + (t' - t) (z_hat - D)``. So k-step Euler sampling of a flow,
  the measure of reflow, is DDIM on a uniform grid."""
  with jax.enable_x64(True):
    sde = sde_lib.RectifiedFlow(T=0.99)
    score_fn = exact_scores.gaussian_mixture_score(sde, *_MIXTURE)
    flow = sde.reverse(score_fn, probability_flow=True)
    z = jax.random.normal(jax.random.PRNGKey(0), (64, 2), jnp.float64) * sde.T
    times = np.linspace(sde.T, 1e-3, 5)
    sample = fast_samplers.get_ddim_sampler(sde, (64, 2), num_steps=4, schedule=list(times),
                                            denoise=False)
    x, nfe = sample(jax.random.PRNGKey(1), score_fn, z)
    euler = z
    for t, t_next in zip(times[:-1], times[1:]):
      velocity, _ = flow.sde(euler, jnp.full((64,), t))
      euler = euler + (t_next - t) * velocity
    assert nfe == 4
    np.testing.assert_allclose(x, euler, rtol=1e-9, atol=1e-9)
